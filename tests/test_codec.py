import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter, shift
from scipy.spatial.transform import Rotation

from action_images.benchmarks.codec import random_poses, sim_cameras
from action_images.codec import ActionImageCodec, overlay
from action_images.geometry import Camera, pose_to_matrix, rotation_angle_deg

codec = ActionImageCodec()


def pose_errors(a, b):
    _, Ra, _ = pose_to_matrix(a)
    _, Rb, _ = pose_to_matrix(b)
    return np.linalg.norm(a[:, :3] - b[:, :3], axis=-1) * 1000, rotation_angle_deg(Ra, Rb)


def test_encode_shapes_dtypes_and_values():
    cams = sim_cameras(3, 64)
    poses = random_poses(5, seed=1)
    img = codec.encode(poses, cams)
    assert img.shape == (3, 5, 64, 64, 3) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    u8 = codec.encode(poses, cams, dtype=np.uint8)
    assert u8.dtype == np.uint8 and np.abs(u8 / 255.0 - img).max() <= 0.5 / 255 + 1e-6
    assert codec.encode(poses[0], cams).shape == (3, 64, 64, 3)


def test_encode_channels_follow_the_paper():
    cam = Camera.look_at((1.0, 0.0, 0.0), (0, 0, 0), 60, 101, 101)
    # camera on +x looking at the origin; rotate the tool so that its three points are visible and separated
    R = Rotation.from_euler("z", 90, degrees=True)           # tool x -> world y
    pose = np.r_[0, 0, 0, R.as_quat(), 1.0]
    img = codec.encode(pose, [cam])[0]                        # [H, W, 3]
    pts = codec.points(pose)                                  # pos, nrm (= p - 0.1 z), up (= p + 0.1 y)
    np.testing.assert_allclose(pts, [[0, 0, 0], [0, 0, -0.1], [0, 0.1, 0]], atol=1e-12)
    uv, _ = cam.project(pts)
    sigma = 0.05 * 101
    for c in range(3):
        u, v = uv[c]
        ui, vi = int(round(u)), int(round(v))
        expect = np.exp(-((ui - u) ** 2 + (vi - v) ** 2) / (2 * sigma**2))
        assert img[vi, ui, c] == pytest.approx(expect, abs=1e-5)
    # B pedestal: open gripper -> 0.25 far from the up point; closed -> 0
    assert img[0, 0, 2] == pytest.approx(0.25)
    closed = codec.encode(np.r_[pose[:7], 0.0], [cam])[0]
    assert closed[0, 0, 2] == 0.0
    assert closed[..., 2].max() == pytest.approx(img[..., 2].max())
    half = codec.encode(np.r_[pose[:7], 0.5], [cam])[0]
    assert half[0, 0, 2] == pytest.approx(0.125)


def test_points_behind_or_outside_draw_nothing():
    cam = Camera.look_at((1.0, 0.0, 0.0), (0, 0, 0), 60, 32, 32)
    behind = np.r_[3.0, 0, 0, 0, 0, 0, 1, 1.0]               # behind the camera
    far_side = np.r_[0, 5.0, 0, 0, 0, 0, 1, 0.0]             # in front but far outside the image
    img = codec.encode(np.stack([behind, far_side]), [cam])[0]
    assert np.isfinite(img).all()
    assert img[0, ..., :2].max() == 0 and np.allclose(img[0, ..., 2], 0.25)
    assert img[1].max() < 1e-6


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_views=st.sampled_from([2, 3, 4]), size=st.sampled_from([48, 64, 96]))
def test_round_trip_random_poses(seed, n_views, size):
    cams = sim_cameras(n_views, size)
    poses = random_poses(8, seed)
    res = codec.decode(codec.encode(poses, cams), cams)
    assert res.valid.all()
    pos_mm, rot_deg = pose_errors(poses, res.poses)
    assert pos_mm.max() < 0.5 and rot_deg.max() < 0.5
    assert ((res.poses[:, 7] > 0.5) == (poses[:, 7] > 0.5)).all()
    assert np.nanmax(res.view_error) < 0.1 and not res.disagree.any()
    assert (res.n_views == n_views).all() and res.confidence.min() > 0.9


def test_round_trip_non_square_images_and_uint8():
    cams = [c.resized(80, 60) for c in sim_cameras(3, 64)]
    poses = random_poses(20, seed=3)
    res = codec.decode(codec.encode(poses, cams, dtype=np.uint8), cams)
    pos_mm, rot_deg = pose_errors(poses, res.poses)
    assert np.median(pos_mm) < 1.0 and np.median(rot_deg) < 1.0


def test_decode_generated_like_images(rng):
    """Noisy, blurred and slightly shifted blobs (what a generator produces) still decode to millimetres."""
    cams = sim_cameras(3, 64)
    poses = random_poses(40, seed=5)
    img = codec.encode(poses, cams)
    noisy = np.clip(img + rng.normal(0, 0.05, img.shape).astype(np.float32), 0, 1)
    blurred = gaussian_filter(img, sigma=(0, 0, 1.0, 1.0, 0))
    shifted = img.copy()
    shifted[1] = shift(img[1], (0, 0.6, -0.4, 0), order=1)  # view 1 off by (-0.4, +0.6) px
    # at 64 px one pixel spans ~2 cm at the workspace, so a 0.7 px shift in one view costs millimetres
    for name, x, tol_mm in (("noisy", noisy, 4.0), ("blurred", blurred, 1.0), ("shifted", shifted, 8.0)):
        res = codec.decode(x, cams)
        pos_mm, rot_deg = pose_errors(poses, res.poses)
        assert np.median(pos_mm) < tol_mm, name
        assert np.median(rot_deg) < 3.0, name
        assert ((res.poses[:, 7] > 0.5) == (poses[:, 7] > 0.5)).all(), name
    # the shift shows up as reprojection error
    assert np.nanmedian(codec.decode(shifted, cams).reproj_error) > np.nanmedian(codec.decode(img, cams).reproj_error)


def test_decode_rejects_one_corrupted_view():
    cams = sim_cameras(4, 64)
    poses = random_poses(10, seed=7)
    img = codec.encode(poses, cams)
    other = random_poses(10, seed=8)
    img[2] = codec.encode(other, cams)[2]                     # view 2 shows a different action
    res = codec.decode(img, cams)
    pos_mm, rot_deg = pose_errors(poses, res.poses)
    assert np.median(pos_mm) < 1.0 and np.median(rot_deg) < 1.0
    assert res.disagree.all()
    # the bad view is dropped wherever it is inconsistent; a good view is never dropped
    assert res.rejected[..., 2].mean() >= 0.8 and res.rejected[..., [0, 1, 3]].sum() == 0


def test_decode_reports_points_seen_by_fewer_than_two_views():
    cams = sim_cameras(3, 64)
    poses = random_poses(4, seed=9)
    img = codec.encode(poses, cams)
    img[1:, :2, ..., :2] = 0.0                                # frames 0, 1: views 1, 2 lose q_pos and q_nrm
    res = codec.decode(img, cams)
    assert not res.valid[:2].any() and res.valid[2:].all()
    assert np.isnan(res.poses[:2]).all() and np.isfinite(res.poses[2:]).all()
    assert (res.n_views[:2, :2] == 1).all()
    assert np.isnan(res.points[:2, :2]).all()


def test_depth_sweep_decoder_is_close_but_ours_is_better():
    cams = sim_cameras(3, 64)
    poses = random_poses(30, seed=11)
    img = codec.encode(poses, cams)
    ds = codec.decode(img, cams, method="depth_sweep")
    tri = codec.decode(img, cams)
    pos_ds, rot_ds = pose_errors(poses, ds.poses)
    pos_tri, _ = pose_errors(poses, tri.poses)
    assert np.median(pos_ds) < 2.0 and np.median(rot_ds) < 2.0
    assert np.median(pos_tri) < np.median(pos_ds)


@pytest.mark.parametrize("make, match", [
    (lambda img, cams: (img[:, 0, :, :, 0], cams), "shape"),
    (lambda img, cams: (img, cams[:2]), "3 views of images but 2 cameras"),
    (lambda img, cams: (img[:1], cams[:1]), "at least 2 views"),
    (lambda img, cams: (img[:, :, :32], cams), "cameras are"),
    (lambda img, cams: (np.where(img > 0.9, np.nan, img), cams), "NaN"),
    (lambda img, cams: (img, [cams[0], cams[1], cams[2].resized(32, 32)]), "one image size"),
])
def test_decode_bad_input(make, match):
    cams = sim_cameras(3, 64)
    img = codec.encode(random_poses(2, seed=0), cams)
    x, c = make(img, cams)
    with pytest.raises(ValueError, match=match):
        codec.decode(x, c)
    with pytest.raises(ValueError, match="unknown decode method"):
        codec.decode(img, cams, method="magic")


def test_encode_bad_input():
    cams = sim_cameras(2, 32)
    with pytest.raises(ValueError, match="unit norm"):
        codec.encode(np.array([[0.5, 0, 0.1, 0, 0, 0, 3.0, 1.0]]), cams)
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(np.array([[np.nan, 0, 0.1, 0, 0, 0, 1.0, 1.0]]), cams)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((2, 3, 8)), cams)
    with pytest.raises(ValueError):
        ActionImageCodec(ell=0)


def test_overlay():
    cams = sim_cameras(1, 32)
    rgb = np.full((32, 32, 3), 100, np.uint8)
    act = codec.encode(random_poses(1, seed=2)[0], cams)[0]
    out = overlay(rgb, act)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    far = act[..., :2].max(-1) < 1e-3
    far &= act[..., 2] <= 0.25 + 1e-6
    assert (out[far] == 100).all()                            # pedestal hidden: background untouched
    assert (out != 100).any()
    with pytest.raises(ValueError, match="same shape"):
        overlay(rgb[:16], act)


def test_decode_never_raises_on_degenerate_generated_images(rng):
    """Generated images can be anything: blank, constant, pure noise, a blob in one view only."""
    cams = sim_cameras(2, 48)
    base = codec.encode(random_poses(3, seed=4), cams)
    one_view = base.copy()
    one_view[1, ..., 0] = 0.0                                   # q_pos seen by view 0 only
    cases = {"zeros": np.zeros_like(base), "pedestal": np.full_like(base, 0.25), "one_view": one_view,
             "noise": rng.uniform(0, 1, base.shape).astype(np.float32)}
    for name, img in cases.items():
        res = codec.decode(img, cams)
        assert res.poses.shape == (3, 8), name
        assert np.isfinite(res.poses[res.valid]).all(), name
        assert np.isnan(res.poses[~res.valid]).all(), name
    assert not codec.decode(one_view, cams).valid.any()
    assert not codec.decode(cases["zeros"], cams).valid.any()


def test_constructor_settings_are_keywords_and_validated():
    c = ActionImageCodec(reject_px=3.5, min_confidence=0.4, refine_iters=0)
    assert (c.reject_px, c.min_confidence, c.refine_iters) == (3.5, 0.4, 0)
    assert ActionImageCodec().reject_px is None
    for bad in ({"ell": np.nan}, {"ell": np.inf}, {"ell": -0.1}, {"sigma_frac": np.inf}, {"sigma_frac": 0},
                {"sigma_frac": np.nan}, {"pedestal": 1.0}, {"pedestal": np.nan}, {"min_confidence": 1.5},
                {"min_confidence": np.nan}, {"reject_px": 0}, {"reject_px": np.nan}, {"refine_iters": -1},
                {"refine_iters": 1.5}, {"ell": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ActionImageCodec(**bad)


def test_topdown_decoding_fits_a_yaw_and_ignores_tilt(rng):
    """orientation="topdown": exact on top-down poses; on noisy points its rotation stays top-down and lands nearer
    the truth than the free fit, and the tool centre moves no more than the free fit moves it."""
    from action_images.geometry import matrix_to_pose, topdown_rotation

    cams = sim_cameras(3, 64)
    base = random_poses(30, seed=11)                     # positions every view sees; rotations made top-down
    poses = matrix_to_pose(base[:, :3], topdown_rotation(rng.uniform(-np.pi, np.pi, 30)), base[:, 7])
    img = codec.encode(poses, cams)
    exact = codec.decode(img, cams, orientation="topdown")
    pos_mm, rot_deg = pose_errors(poses, exact.poses)
    assert pos_mm.max() < 0.5 and rot_deg.max() < 0.5
    R = pose_to_matrix(exact.poses)[1]
    np.testing.assert_allclose(R[:, :, 2], np.tile([0.0, 0.0, -1.0], (30, 1)), atol=1e-9)   # tool +z = world -z
    shifted = img.copy()
    for v in range(3):                                   # every view's blobs off by a different sub-pixel shift
        shifted[v] = shift(img[v], (0, 0.8 * (v - 1), 0.6 * (1 - v), 0), order=1)
    free, top = codec.decode(shifted, cams), codec.decode(shifted, cams, orientation="topdown")
    assert np.median(pose_errors(poses, top.poses)[1]) < np.median(pose_errors(poses, free.poses)[1])
    np.testing.assert_allclose(pose_to_matrix(top.poses)[1][:, 2, 2], -1.0, atol=1e-9)
    with pytest.raises(ValueError, match="orientation"):
        codec.decode(img, cams, orientation="tilted")


def test_position_from_the_point_ignores_an_outer_point_that_is_off():
    """position="point": the position point's triangulation, untouched by an "up" blob drawn 3 cm from where it
    belongs (the three points no longer rigid); the default rigid fit moves the position toward it. Both keep the
    same rotation; an unknown mode names the setting."""
    cams = sim_cameras(3, 64)
    poses = random_poses(20, seed=5)
    moved = poses.copy()
    moved[:, 0] += 0.03
    img = codec.encode(poses, cams)
    img[..., 2] = codec.encode(moved, cams)[..., 2]      # the up point (B) of a pose 3 cm along world x
    fit, point = codec.decode(img, cams), codec.decode(img, cams, position="point")
    ok = fit.valid & point.valid
    assert ok.sum() >= 15
    assert pose_errors(poses[ok], point.poses[ok])[0].max() < 0.5                          # mm
    assert np.median(pose_errors(poses[ok], fit.poses[ok])[0]) > 5.0
    np.testing.assert_allclose(point.poses[ok, 3:], fit.poses[ok, 3:])
    np.testing.assert_allclose(point.poses[ok, :3], point.points[ok, 0])
    with pytest.raises(ValueError, match="position"):
        codec.decode(img, cams, position="centroid")


def test_to_topdown_projects_rotations_and_keeps_the_rest():
    from action_images.geometry import matrix_to_pose, topdown_rotation

    poses = matrix_to_pose(np.array([[0.4, 0.1, 0.2], [0.5, -0.1, 0.1]]), topdown_rotation(np.array([0.3, -2.0])),
                           np.array([1.0, 0.2]))
    np.testing.assert_allclose(codec.to_topdown(poses), poses, atol=1e-12)      # top-down already: unchanged
    tilted = poses.copy()
    tilted[:, 3:7] = (Rotation.from_euler("x", 12, degrees=True) * Rotation.from_quat(poses[:, 3:7])).as_quat()
    out = codec.to_topdown(tilted)
    np.testing.assert_allclose(out[:, [0, 1, 2, 7]], tilted[:, [0, 1, 2, 7]])
    # the fit follows the tilted points, so the yaw moves a little, far less than the 12° tilt it removes
    assert (rotation_angle_deg(pose_to_matrix(out)[1], pose_to_matrix(poses)[1]) < 6.0).all()
    np.testing.assert_allclose(pose_to_matrix(out)[1][:, 2, 2], -1.0, atol=1e-12)
