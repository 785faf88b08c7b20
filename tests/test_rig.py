"""Calibrated rigs in the simulator: placing cameras at a rig file, rejecting bad rigs, random rigs per episode."""

from __future__ import annotations

import json
import numpy as np
import pytest

from action_images.data.lerobot_format import cameras_from_json, cameras_to_json
from action_images.geometry import Camera
from action_images.sim import (CAMERA_NAMES, CAMERA_SETS, DEFAULT_CAMERAS, RIG_DISTRIBUTION, RigError, load_rig,
                               make_env, random_rig, save_rig)
from action_images.sim import cameras as simcam
from action_images.sim import rig as simrig

SIZE = 48


def centroid_errors(env, seeds=(0, 1, 2)) -> list[float]:
    return simcam.centroid_errors(env, ("cube", "tcp_marker"), seeds=seeds)


def odd_rig(size: int = SIZE) -> list[Camera]:
    """Two cameras MuJoCo's fovy cannot render: non-square pixels and an off-centre principal point."""
    a = Camera.look_at((0.55, -0.45, 0.5), (0.0, 0.05, 0.05), 55.0, size, size, name="cam_a")
    b = Camera.look_at((-0.05, 0.7, 0.6), (0.02, 0.0, 0.1), 50.0, size, size, name="cam_b")
    Ka, Kb = a.K.copy(), b.K.copy()
    Ka[0, 0] *= 1.15
    Ka[:2, 2] += (3.25, -2.5)
    Kb[1, 1] *= 0.9
    Kb[:2, 2] += (-4.0, 1.75)
    return [Camera(Ka, a.T_cam_world, size, size, "cam_a"), Camera(Kb, b.T_cam_world, size, size, "cam_b")]


# ---- placing a calibrated rig ----------------------------------------------------------------------------------------

def test_rig_file_is_placed_exactly_and_renders_as_calibrated(tmp_path):
    # a rig file written by the dataset writer (meta/cameras.json), from jittered static views and a random rig
    ref = make_env("pick_cube", cameras=("front", "left"), image_size=SIZE, render=False, perturb_cameras=True,
                   camera_seed=3)
    rig = [Camera(c.K, c.T_cam_world, c.width, c.height, n) for c, n in zip(ref.cameras, ("north", "west"))]
    rig += random_rig(11, 2, SIZE, split="heldout")
    path = tmp_path / "meta" / "cameras.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cameras_to_json(rig, per_frame=False)))
    env = make_env("pick_cube", rig=path)
    obs, _ = env.reset(seed=0)
    assert env.image_size == SIZE and env.camera_names == ("north", "west", "rig0", "rig1")
    assert list(obs["images"]) == ["north", "west", "rig0", "rig1"]
    file_cams, per_frame = cameras_from_json(json.loads(path.read_text()), path)
    assert not per_frame
    for c, f, K, T in zip(env.cameras, file_cams, obs["camera_K"], obs["camera_T_cam_world"]):
        assert c.name == f.name
        np.testing.assert_allclose(c.K, f.K, atol=1e-6)
        np.testing.assert_allclose(c.T_cam_world, f.T_cam_world, atol=1e-6)
        np.testing.assert_array_equal(K, c.K)
        np.testing.assert_array_equal(T, c.T_cam_world)
    for cid in env._cam_ids:  # what MuJoCo itself renders with (fovy path), not only what the env reports
        mj = simcam.camera_from_mujoco(env.model, env.data, cid, SIZE, SIZE)
        np.testing.assert_allclose(mj.K, env._exact_K[cid], atol=1e-9)
    errs = centroid_errors(env)
    assert len(errs) >= 12 and np.mean(errs) <= 0.5 and np.max(errs) <= 1.5, (np.mean(errs), np.max(errs))
    env.close()


def test_general_intrinsics_render_through_mujoco_camera_intrinsics(tmp_path):
    rig = odd_rig()
    assert not any(simrig.fovy_representable(c) for c in rig)
    env = make_env("pick_cube", rig=save_rig(rig, tmp_path / "odd.json"), cameras=("cam_b", "wrist", "cam_a"))
    env.reset(seed=0)
    by_name = {c.name: c for c in env.cameras}
    for c in rig:
        np.testing.assert_allclose(by_name[c.name].K, c.K, atol=1e-6)
        np.testing.assert_allclose(by_name[c.name].T_cam_world, c.T_cam_world, atol=1e-6)
        cid = env._view_ids[c.name]  # MuJoCo's float32 intrinsics differ from the exact K by far less than a pixel
        np.testing.assert_allclose(simcam.camera_from_mujoco(env.model, env.data, cid, SIZE, SIZE).K, c.K, atol=1e-4)
    errs = centroid_errors(env)
    assert len(errs) >= 12 and np.mean(errs) <= 0.5 and np.max(errs) <= 1.5, (np.mean(errs), np.max(errs))
    # the same check with the principal point the fovy camera would have: clearly worse (the intrinsics are used)
    for cid in env._exact_K:
        K = env._exact_K[cid].copy()
        K[:2, 2] = (SIZE - 1) / 2
        env._exact_K[cid] = K
    assert np.mean(centroid_errors(env, seeds=(0,))) > 1.0
    env.close()


def test_rig_round_trip_and_size(tmp_path):
    rig = random_rig(2, 3, 32)
    path = save_rig(rig, tmp_path / "rig.json")
    back = load_rig(path)
    for a, b in zip(rig, back):
        assert a.name == b.name
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.T_cam_world, b.T_cam_world)
    with pytest.raises(RigError, match=r"rig\.json.*'rig0'.*32x32.*64x64"):
        make_env("reach_target", rig=path, image_size=64)
    with pytest.raises(ValueError, match="cameras must be distinct names"):
        make_env("reach_target", rig=path, cameras=("front",))
    env = make_env("reach_target", rig=rig, render=False)
    assert env.image_size == 32 and [c.name for c in env.cameras] == ["rig0", "rig1", "rig2"]


def test_perturbed_rig_jitters_around_the_rig(tmp_path):
    rig = random_rig(4, 2, SIZE)
    env = make_env("reach_target", rig=rig, render=False, perturb_cameras=True, camera_seed=1)
    env.reset(seed=0)
    for c, r in zip(env.cameras, rig):
        d = np.abs(c.position - r.position)
        assert d.max() > 1e-4 and np.all(d <= simcam.PERTURB_POS + 1e-9)
        np.testing.assert_array_equal(c.K, r.K)


# ---- bad rigs --------------------------------------------------------------------------------------------------------

def _good_doc() -> dict:
    return cameras_to_json(random_rig(0, 2, SIZE), per_frame=False)


def _view(eye, direction=None):
    """Camera 1 of the document moved to ``eye``, looking along ``direction`` (default: at the workspace centre)."""
    centre = simrig.WORKSPACE_CENTRE
    target = centre if direction is None else np.asarray(eye) + np.asarray(direction)

    def edit(doc):
        doc["cameras"][1]["T_cam_world"] = Camera.look_at(eye, target, 50.0, SIZE, SIZE).T_cam_world.tolist()
    return edit


def _edit_T(fn):
    def edit(doc):
        doc["cameras"][1]["T_cam_world"] = fn(np.array(doc["cameras"][1]["T_cam_world"])).tolist()
    return edit


def _scale_rot(T):
    T = T.copy()
    T[:3, :3] *= 1.01
    return T


def _reflect(T):
    T = T.copy()
    T[0, :] *= -1
    return T


_EYE = np.array([0.8, 0.0, 0.4])
_TO_CENTRE = simrig.WORKSPACE_CENTRE - _EYE
_TURNED_60 = np.array([[0.5, -np.sqrt(0.75), 0], [np.sqrt(0.75), 0.5, 0], [0, 0, 1.0]]) @ _TO_CENTRE


def _set(key, value, cam=1):
    def edit(doc):
        doc["cameras"][cam][key] = value
    return edit


def _nan_K(doc):
    doc["cameras"][1]["K"][0][2] = float("nan")


def _drop(key):
    def edit(doc):
        del doc["cameras"][1][key]
    return edit


def _dup(doc):
    doc["cameras"][1]["name"] = doc["cameras"][0]["name"]


def _top(key, value):
    def edit(doc):
        doc[key] = value
    return edit


BAD = {
    "non-orthonormal rotation": (_edit_T(_scale_rot), r"not orthonormal"),
    "det -1": (_edit_T(_reflect), r"det -1"),
    "looks away": (_view(_EYE, -_TO_CENTRE), r"looks away.*behind"),
    "workspace outside view": (_view(_EYE, _TURNED_60), r"looks away.*outside its"),
    "below the table": (_view((0.6, 0.0, -0.05)), r"below the table top"),
    "K shape": (_set("K", [[60.0, 0, 23.5], [0, 60.0, 23.5]]), r"K must be 3x3"),
    "non-positive focal": (_set("K", [[-60.0, 0, 23.5], [0, 60.0, 23.5], [0, 0, 1]]), r"focal lengths must be > 0"),
    "skew": (_set("K", [[60.0, 1.0, 23.5], [0, 60.0, 23.5], [0, 0, 1]]), r"zero skew"),
    "size mismatch": (_set("width", 64), r"image size 64x48"),
    "bad size type": (_set("height", "48"), r"height must be a positive integer"),
    "NaN": (_nan_K, r"NaN or inf"),
    "inf T": (_set("T_cam_world", [[1, 0, 0, float("inf")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
              r"NaN or inf"),
    "unknown key": (_set("distortion", [0.1, 0.0]), r"unknown keys \['distortion'\]"),
    "missing key": (_drop("T_cam_world"), r"missing keys \['T_cam_world'\]"),
    "per-frame entry": (_set("static", False), r"'static' must be true"),
    "duplicate names": (_dup, r"duplicate name"),
    "unknown top-level key": (_top("rig", 1), r"unknown top-level keys \['rig'\]"),
    "wrong format": (_top("format", "something/else"), r"format 'something/else'"),
    "too many cameras": (lambda d: d.__setitem__("cameras", d["cameras"] * 5), r"10 cameras"),
    "empty": (lambda d: d.__setitem__("cameras", []), r"no cameras"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rig_file_gives_one_clear_error(tmp_path, case):
    edit, pattern = BAD[case]
    doc = _good_doc()
    edit(doc)
    name = doc["cameras"][1]["name"] if len(doc["cameras"]) > 1 else None
    path = tmp_path / "bad_rig.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RigError, match=pattern) as err:
        make_env("pick_cube", rig=path, image_size=SIZE, render=False)
    msg = str(err.value)
    assert msg.startswith(str(path))
    if case not in ("unknown top-level key", "wrong format", "too many cameras", "empty"):
        assert f"'{name}'" in msg and "(entry 1)" in msg, msg


def test_good_doc_is_accepted(tmp_path):
    # the unmodified document of the bad-rig cases loads (so each case fails for its own reason)
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_good_doc()))
    assert [c.name for c in load_rig(path, SIZE)] == ["rig0", "rig1"]
    with pytest.raises(RigError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        load_rig(tmp_path / "broken.json")


# ---- random rigs -----------------------------------------------------------------------------------------------------

def _spherical(cam: Camera) -> tuple[float, float, float]:
    v = cam.position - simrig.WORKSPACE_CENTRE
    return (np.degrees(np.arctan2(v[1], v[0])), np.degrees(np.arcsin(v[2] / np.linalg.norm(v))),
            float(np.linalg.norm(v)))


def test_random_rig_is_seeded_split_keyed_and_inside_the_distribution():
    a, b = random_rig(5, 4, 64), random_rig(5, 4, 64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.T_cam_world, y.T_cam_world)
        np.testing.assert_array_equal(x.K, y.K)
    assert [c.name for c in a] == ["rig0", "rig1", "rig2", "rig3"]
    np.testing.assert_array_equal(random_rig(5, 2, 64)[1].T_cam_world, a[1].T_cam_world)  # view i ignores n_views
    held = random_rig(5, 4, 64, split="heldout")
    assert all(not np.allclose(h.T_cam_world, t.T_cam_world) for h, t in zip(held, a))
    with pytest.raises(ValueError, match="split"):
        random_rig(0, split="test")
    d = RIG_DISTRIBUTION
    azs, els, fovs = [], [], []
    for seed in range(25):
        for cam in random_rig(seed, 4, 64, split="train" if seed % 2 else "heldout"):
            az, el, _ = _spherical(cam)
            fovy = np.degrees(2 * np.arctan(0.5 * cam.height / cam.K[1, 1]))
            # eye = look_at + distance · direction: with the look-at jitter the angles seen from the centre move a bit
            assert d.azimuth_deg[0] - 8 <= az <= d.azimuth_deg[1] + 8 and d.elevation_deg[0] - 6 <= el <= 72
            assert d.fovy_deg[0] - 1e-9 <= fovy <= d.fovy_deg[1] + 1e-9 and simrig.fovy_representable(cam)
            assert simrig.sees_workspace(cam)
            azs.append(az), els.append(el), fovs.append(fovy)
    # a real viewpoint change, not jitter: the draws spread over most of the ranges
    assert np.ptp(azs) > 150 and np.ptp(els) > 30 and np.ptp(fovs) > 10


def test_random_rig_views_see_the_table_and_the_objects():
    env = make_env("stack_cube", rig_distribution="heldout", rig_views=6, image_size=64)
    m, d = env.model, env.data
    table, big, small = (m.geom(n).id for n in ("table", "big", "small"))
    seen = []
    for seed in (0, 1, 2):
        env.reset(seed=seed)
        for cam in env.cameras:
            uv, depth = cam.project(d.geom_xpos[[big, small]])
            assert cam.in_image(uv, depth).all(), (seed, cam.name)  # framed in every view
            seg = env.segmentation(cam.name)
            assert (seg == table).mean() > 0.25, (seed, cam.name)
            seen += [(seg == big).sum() >= 6, (seg == small).sum() >= 4]
    # and actually visible in nearly all: the arm or hand may hide an object from a view, as in any real rig
    assert np.mean(seen) >= 0.85, np.mean(seen)
    env.close()


def test_env_draws_a_rig_per_episode_from_the_seed():
    env = make_env("push_cube", rig_distribution="train", rig_views=3, image_size=SIZE)
    plain = make_env("push_cube", render=False)
    obs0, _ = env.reset(seed=7)
    assert env.camera_names == ("rig0", "rig1", "rig2") and list(obs0["images"]) == list(env.camera_names)
    assert env.rig_seed == 7
    for c, r, K, T in zip(env.cameras, random_rig(7, 3, SIZE, "train"), obs0["camera_K"], obs0["camera_T_cam_world"]):
        np.testing.assert_allclose(c.T_cam_world, r.T_cam_world, atol=1e-9)
        np.testing.assert_array_equal(c.K, r.K)
        np.testing.assert_array_equal(K, c.K)
        np.testing.assert_array_equal(T, c.T_cam_world)
    # the task layout is the one the plain env draws for the same seed: only the cameras change
    assert plain.reset(seed=7)[0]["instruction"] == obs0["instruction"]
    np.testing.assert_array_equal(plain.data.qpos, env.data.qpos)
    obs1, _ = env.reset(seed=8)
    assert not np.allclose(obs1["camera_T_cam_world"], obs0["camera_T_cam_world"])
    obs0b, _ = env.reset(seed=7)
    np.testing.assert_array_equal(obs0b["camera_T_cam_world"], obs0["camera_T_cam_world"])
    np.testing.assert_array_equal(obs0b["images"]["rig1"], obs0["images"]["rig1"])
    env.reset()  # no seed: a fresh rig seed from the env's generator
    assert env.rig_seed not in (None, 7, 8)
    held = make_env("push_cube", rig_distribution="heldout", rig_views=3, render=False)
    held.reset(seed=7)
    assert not np.allclose(held.cameras[0].T_cam_world, obs0["camera_T_cam_world"][0])
    errs = centroid_errors(env, seeds=(2, 3))
    assert len(errs) >= 5 and np.mean(errs) <= 0.5, errs
    env.close()


def test_rig_argument_errors():
    with pytest.raises(ValueError, match="either rig"):
        make_env("pick_cube", rig=random_rig(0, 1, 64), rig_distribution="train")
    with pytest.raises(ValueError, match="rig_distribution must be one of"):
        make_env("pick_cube", rig_distribution="test")
    with pytest.raises(ValueError, match="perturb_cameras does not combine"):
        make_env("pick_cube", rig_distribution="train", perturb_cameras=True)
    with pytest.raises(ValueError, match="rig_views"):
        make_env("pick_cube", rig_distribution="train", rig_views=9)


# ---- camera sets -----------------------------------------------------------------------------------------------------

def test_camera_sets_are_valid_and_default():
    assert DEFAULT_CAMERAS == CAMERA_SETS["all_static"] == ("front", "left", "right", "top")
    assert CAMERA_SETS["eval"] == ("front", "left", "right")
    for name, cams in CAMERA_SETS.items():
        assert cams and set(cams) <= set(CAMERA_NAMES) and len(set(cams)) == len(cams), name
    assert make_env("reach_target", render=False).camera_names == CAMERA_SETS["all_static"]
    assert not set(CAMERA_NAMES) & set(simrig.SLOT_NAMES)


@pytest.mark.parametrize("kwargs", [{"rig_distribution": "heldout", "rig_views": 2}, {"rig": odd_rig(16)}])
def test_rig_envs_pass_the_gymnasium_env_checker(kwargs):
    import warnings

    from gymnasium.utils.env_checker import check_env

    env = make_env("place_in_bin", image_size=16, render_mode="rgb_array", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # advice about unbounded boxes, not failures
        check_env(env)
    env.close()
