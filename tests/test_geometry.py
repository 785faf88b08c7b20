import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from action_images import geometry as G
from action_images.geometry import Camera


def simple_camera(w=64, h=48):
    # at (0, 0, -2) looking along +z world: camera axes = world axes
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 2.0]  # world -> camera: p_cam = p_world + (0, 0, 2)
    K = np.array([[50.0, 0.0, 31.5], [0.0, 60.0, 23.5], [0.0, 0.0, 1.0]])
    return Camera(K=K, T_cam_world=T, width=w, height=h, name="cam")


def test_projection_hand_computed():
    cam = simple_camera()
    uv, depth = cam.project(np.array([[0.2, -0.1, 0.5]]))
    # p_cam = (0.2, -0.1, 2.5): u = 50*0.2/2.5 + 31.5 = 35.5, v = 60*(-0.1)/2.5 + 23.5 = 21.1
    np.testing.assert_allclose(uv[0], [35.5, 21.1])
    np.testing.assert_allclose(depth[0], 2.5)


def test_project_points_batched_matches_per_view_and_torch(rng):
    cams = [Camera.look_at(e, (0, 0, 0), 50, 64, 64) for e in [(2, 0, 1), (0, 2, 1), (-1, -1, 2)]]
    K, T = G.stack_cameras(cams)
    pts = rng.normal(size=(5, 7, 3)) * 0.3
    uv, depth = G.project_points(pts, K, T)
    assert uv.shape == (3, 5, 7, 2) and depth.shape == (3, 5, 7)
    for v, c in enumerate(cams):
        uv_v, d_v = c.project(pts)
        np.testing.assert_allclose(uv[v], uv_v)
        np.testing.assert_allclose(depth[v], d_v)
    uv_t, d_t = G.project_points_torch(torch.tensor(pts.reshape(1, 35, 3)), torch.tensor(K), torch.tensor(T))
    np.testing.assert_allclose(uv_t.numpy().reshape(3, 5, 7, 2), uv, atol=1e-9)
    np.testing.assert_allclose(d_t.numpy().reshape(3, 5, 7), depth, atol=1e-9)


def test_points_behind_camera_are_nan():
    cam = simple_camera()
    uv, depth = cam.project(np.array([[0.0, 0.0, -3.0]]))
    assert depth[0] < 0 and np.isnan(uv).all()
    assert not cam.in_image(uv, depth)[0]


def test_unproject_inverts_project(rng):
    cam = Camera.look_at((1.0, 0.5, 1.2), (0, 0, 0), 60, 80, 60)
    pts = rng.uniform(-0.3, 0.3, size=(20, 3))
    uv, depth = cam.project(pts)
    np.testing.assert_allclose(cam.unproject(uv, depth), pts, atol=1e-9)
    o, d = cam.rays(uv)
    # points lie on their rays
    t = ((pts - o) * d).sum(-1)
    np.testing.assert_allclose(o + t[:, None] * d, pts, atol=1e-9)


def test_plucker_matches_direct_ray_computation():
    cam = Camera.look_at((1.0, -0.7, 0.9), (0.1, 0.0, 0.0), 45, 16, 12)
    pl = cam.plucker()
    assert pl.shape == (12, 16, 6) and pl.dtype == np.float32
    C = cam.position
    Kinv = np.linalg.inv(cam.K)
    R_wc = cam.T_world_cam[:3, :3]
    for v, u in [(0, 0), (5, 7), (11, 15)]:
        d = R_wc @ Kinv @ np.array([u, v, 1.0])
        d /= np.linalg.norm(d)
        np.testing.assert_allclose(pl[v, u, :3], d, atol=1e-6)
        np.testing.assert_allclose(pl[v, u, 3:], np.cross(C, d), atol=1e-6)
    # moment is orthogonal to direction; the moment of any point on the ray is the same
    np.testing.assert_allclose((pl[..., :3] * pl[..., 3:]).sum(-1), 0, atol=1e-6)
    np.testing.assert_allclose(np.cross(C + 0.37 * pl[5, 7, :3], pl[5, 7, :3]), pl[5, 7, 3:], atol=1e-6)


def test_resize_and_crop_keep_projection_consistent(rng):
    cam = Camera.look_at((1.0, 0.3, 0.8), (0, 0, 0), 50, 64, 64)
    pts = rng.uniform(-0.2, 0.2, size=(10, 3))
    uv, _ = cam.project(pts)
    # resize 64 -> 32: pixel centres map as u' = (u + 0.5) / 2 - 0.5
    uv2, _ = cam.resized(32, 32).project(pts)
    np.testing.assert_allclose(uv2, (uv + 0.5) / 2 - 0.5, atol=1e-9)
    uv3, _ = cam.cropped(8, 4, 40, 50).project(pts)
    np.testing.assert_allclose(uv3, uv - [8, 4], atol=1e-9)
    with pytest.raises(ValueError, match="outside"):
        cam.cropped(40, 0, 40, 10)


def test_camera_dict_round_trip():
    cam = Camera.look_at((1.0, 0.3, 0.8), (0, 0, 0), 50, 64, 48, name="front")
    cam2 = Camera.from_dict(cam.to_dict())
    np.testing.assert_array_equal(cam.K, cam2.K)
    np.testing.assert_array_equal(cam.T_cam_world, cam2.T_cam_world)
    assert (cam2.width, cam2.height, cam2.name) == (64, 48, "front")
    with pytest.raises(ValueError, match="missing"):
        Camera.from_dict({"K": cam.K.tolist()})


def test_look_at_points_camera_z_at_target():
    cam = Camera.look_at((1.0, 0.3, 0.8), (0.1, 0.2, 0.0), 50, 64, 64)
    uv, d = cam.project(np.array([0.1, 0.2, 0.0]))
    np.testing.assert_allclose(uv, [31.5, 31.5], atol=1e-9)  # principal point = (W-1)/2, (H-1)/2
    assert d > 0
    # world "up" appears toward the top of the image (smaller v)
    uv_up, _ = cam.project(np.array([0.1, 0.2, 0.1]))
    assert uv_up[1] < uv[1]


@pytest.mark.parametrize("bad, match", [
    (dict(K=np.zeros((3, 3))), "not invertible"),
    (dict(K=np.eye(2)), "3x3"),
    (dict(T_cam_world=np.diag([1.0, 1.0, -1.0, 1.0])), "proper rotation"),
    (dict(T_cam_world=np.eye(3)), "4x4"),
    (dict(T_cam_world=np.full((4, 4), np.nan)), "NaN"),
    (dict(width=0), "positive"),
])
def test_camera_bad_input(bad, match):
    kw = dict(K=np.array([[50.0, 0, 10], [0, 50.0, 10], [0, 0, 1]]), T_cam_world=np.eye(4), width=20, height=20)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        Camera(**kw)


@pytest.mark.parametrize("poses, match", [
    (np.zeros((3, 7)), "shape"),
    (np.array([[0, 0, 0, 0, 0, 0, 2.0, 1]]), "unit norm"),
    (np.array([[0, 0, np.nan, 0, 0, 0, 1.0, 1]]), "NaN"),
    (np.array([[0, 0, 0, 0, 0, 0, 1.0, 1.5]]), "gripper"),
])
def test_validate_poses_errors(poses, match):
    with pytest.raises(ValueError, match=match):
        G.validate_poses(poses)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_pose_matrix_round_trip_against_scipy(seed):
    rng = np.random.default_rng(seed)
    q = Rotation.random(4, random_state=seed).as_quat()
    poses = np.c_[rng.normal(size=(4, 3)), q, rng.uniform(0, 1, 4)]
    p, R, g = G.pose_to_matrix(poses)
    np.testing.assert_allclose(R, Rotation.from_quat(q).as_matrix(), atol=1e-12)
    back = G.matrix_to_pose(p, R, g)
    # q and -q are the same rotation: compare matrices, and check the canonical sign (qw >= 0)
    np.testing.assert_allclose(G.quat_to_matrix(back[:, 3:7]), R, atol=1e-10)
    assert (back[:, 6] >= 0).all()
    np.testing.assert_allclose(back[:, [0, 1, 2, 7]], poses[:, [0, 1, 2, 7]])
    T = G.pose_to_homogeneous(poses)
    np.testing.assert_allclose(G.invert_transform(T) @ T, np.broadcast_to(np.eye(4), T.shape), atol=1e-10)


def test_euler_conversions_against_scipy(rng):
    e = rng.uniform(-1, 1, size=(6, 3))
    for seq in ("xyz", "ZYX"):
        q = G.euler_to_quat(e, seq)
        np.testing.assert_allclose(G.quat_to_matrix(q), Rotation.from_euler(seq, e).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(G.quat_to_euler(q, seq), e, atol=1e-9)
    np.testing.assert_allclose(G.euler_to_quat([90, 0, 0], degrees=True), [np.sqrt(0.5), 0, 0, np.sqrt(0.5)])


def test_nearest_rotation_and_angle(rng):
    R = Rotation.random(5, random_state=3).as_matrix()
    noisy = R + rng.normal(scale=1e-3, size=R.shape)
    Rn = G.nearest_rotation(noisy)
    np.testing.assert_allclose(Rn @ np.swapaxes(Rn, 1, 2), np.broadcast_to(np.eye(3), Rn.shape), atol=1e-10)
    assert (np.linalg.det(Rn) > 0).all()
    assert (G.rotation_angle_deg(R, Rn) < 0.5).all()
    Rz = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    np.testing.assert_allclose(G.rotation_angle_deg(np.eye(3), Rz), 30.0)
    with pytest.raises(ValueError, match="zero"):
        G.normalize_quat(np.zeros(4))


def test_plucker_maps_requires_one_size():
    a = Camera.look_at((1, 0, 1), (0, 0, 0), 50, 8, 8)
    b = Camera.look_at((0, 1, 1), (0, 0, 0), 50, 16, 16)
    assert G.plucker_maps([a, a]).shape == (2, 8, 8, 6)
    with pytest.raises(ValueError, match="different image sizes"):
        G.plucker_maps([a, b])


def test_topdown_rotation_is_the_top_down_tool_at_a_yaw():
    from action_images.geometry import topdown_rotation

    yaw = np.array([0.0, 0.7, -2.5])
    R = topdown_rotation(yaw)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.tile(np.eye(3), (3, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(R[:, :, 2], np.tile([0.0, 0.0, -1.0], (3, 1)))          # approach straight down
    np.testing.assert_allclose(R[:, :, 0], np.stack([np.cos(yaw), np.sin(yaw), 0 * yaw], -1))   # tool x at yaw
    assert topdown_rotation(0.3).shape == (3, 3)
