"""The gymnasium env: API shape, determinism, control convention, bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from action_images.geometry import Camera, matrix_to_pose, rotation_angle_deg
from action_images.sim import GYM_IDS, TASKS, make_env
from action_images.sim.robot import quat_down


@pytest.fixture(scope="module")
def env():
    e = make_env("pick_cube", cameras=("front", "left", "right", "top"), image_size=32)
    yield e
    e.close()


@pytest.fixture(scope="module")
def blind():
    return make_env("reach_target", render=False)


def pose(p, yaw=0.0, g=1.0):
    return np.concatenate([p, quat_down(yaw), [g]])


def test_observation_layout(env):
    obs, info = env.reset(seed=0)
    assert set(obs) == {"images", "ee_pose", "instruction", "camera_K", "camera_T_cam_world"}
    assert list(obs["images"]) == ["front", "left", "right", "top"]
    for img in obs["images"].values():
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert obs["ee_pose"].shape == (8,) and obs["ee_pose"].dtype == np.float64
    assert obs["camera_K"].shape == (4, 3, 3) and obs["camera_T_cam_world"].shape == (4, 4, 4)
    assert isinstance(obs["instruction"], str) and obs["instruction"] == env.instruction != ""
    assert [c.name for c in env.cameras] == ["front", "left", "right", "top"]
    assert all(isinstance(c, Camera) and c.width == c.height == 32 for c in env.cameras)
    np.testing.assert_array_equal(obs["camera_K"][2], env.cameras[2].K)
    assert env.observation_space.contains(obs)
    assert env.task_name == "pick_cube" and env.fps == 10 and env.max_steps > 0
    assert info["success"] is False


def test_step_contract(env):
    env.reset(seed=1)
    a = env.expert_action()
    assert a.shape == (8,) and a.dtype == np.float64 and env.action_space.contains(a)
    obs, reward, terminated, truncated, info = env.step(a)
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
    assert isinstance(info["success"], bool) and info["step"] == 1
    assert env.render().shape == (32, 4 * 32, 3)


def test_observe_renders_the_current_state_again_without_a_step(env):
    """observe() after an edit of the scene shows the edit, and changes neither the step count nor the arm."""
    import mujoco

    obs, _ = env.reset(seed=2)
    again = env.observe()
    for c in obs["images"]:
        np.testing.assert_array_equal(again["images"][c], obs["images"][c])
    cube = env.model.body("cube").id
    qadr = env.model.jnt_qposadr[env.model.body_jntadr[cube]]
    env.data.qpos[qadr:qadr + 2] += 0.08                       # the cube moved 8 cm across the table
    mujoco.mj_forward(env.model, env.data)
    moved = env.observe()
    assert any((moved["images"][c] != obs["images"][c]).any() for c in obs["images"])
    np.testing.assert_array_equal(moved["ee_pose"], obs["ee_pose"])
    assert env.step_count == 0


def test_render_false_has_no_images_but_calibration(blind):
    obs, _ = blind.reset(seed=0)
    assert "images" not in obs and obs["camera_K"].shape == (4, 3, 3)
    assert blind.observation_space.contains(obs)


def test_same_seed_same_first_frame_and_expert_trajectory():
    a, b = (make_env("stack_cube", cameras=("front", "top"), image_size=24) for _ in range(2))
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    for c in ("front", "top"):
        np.testing.assert_array_equal(oa["images"][c], ob["images"][c])
    assert oa["instruction"] == ob["instruction"]
    for _ in range(12):
        xa, xb = a.expert_action(), b.expert_action()
        np.testing.assert_array_equal(xa, xb)
        oa, *_ = a.step(xa)
        ob, *_ = b.step(xb)
    np.testing.assert_array_equal(oa["ee_pose"], ob["ee_pose"])
    np.testing.assert_array_equal(oa["images"]["front"], ob["images"]["front"])
    oc, _ = a.reset(seed=8)
    assert not np.array_equal(oc["images"]["front"], ob["images"]["front"])
    a.close(), b.close()


def test_reset_after_other_steps_is_reproducible(blind):
    first = blind.reset(seed=3)[0]["ee_pose"], blind.expert_action()
    for _ in range(5):
        blind.step(pose([0.1, 0.2, 0.1], g=0.0))
    again = blind.reset(seed=3)[0]["ee_pose"], blind.expert_action()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def test_tracks_absolute_targets_in_tool_convention(blind):
    blind.reset(seed=0)
    target = pose([0.1, -0.1, 0.15], yaw=0.6, g=0.0)
    for _ in range(8):
        obs, *_ = blind.step(target)
    ee = obs["ee_pose"]
    assert np.linalg.norm(ee[:3] - target[:3]) < 0.004
    R_ee = Rotation.from_quat(ee[3:7]).as_matrix()
    assert rotation_angle_deg(R_ee, Rotation.from_quat(target[3:7]).as_matrix()) < 1.5
    assert ee[7] < 0.05  # closed, nothing in between
    # design §2: +z from the wrist toward the fingertips, fingers along ±y of the tool
    m, d = blind.model, blind.data
    palm = d.geom_xpos[m.geom("palm").id] - ee[:3]
    assert np.dot(palm, R_ee[:, 2]) < -0.05
    for _ in range(4):
        obs, *_ = blind.step(pose([0.1, -0.1, 0.15], yaw=0.6, g=1.0))
    fingers = d.geom_xpos[m.geom("finger_l").id] - d.geom_xpos[m.geom("finger_r").id]
    assert abs(np.dot(fingers / np.linalg.norm(fingers), R_ee[:, 1])) > 0.99
    assert obs["ee_pose"][7] > 0.95


def test_targets_are_clipped_to_the_workspace(blind):
    blind.reset(seed=0)
    for _ in range(15):
        obs, *_ = blind.step(pose([2.0, 0.0, -1.0]))
    from action_images.sim.scene import WORKSPACE_HIGH, WORKSPACE_LOW
    p = obs["ee_pose"][:3]
    assert np.all(p > WORKSPACE_LOW - 0.01) and np.all(p < WORKSPACE_HIGH + 0.01)


@pytest.mark.parametrize("bad", [np.zeros(7), np.zeros((1, 8)), pose([0, 0, 0.1]) * np.nan,
                                 np.r_[0, 0, 0.1, 0, 0, 0, np.inf, 1.0], np.r_[0, 0, 0.1, 1, 0, 0, 0, 1.5],
                                 np.r_[0, 0, 0.1, 1, 0, 0, 0, -0.1]])
def test_bad_actions_raise(blind, bad):
    blind.reset(seed=0)
    with pytest.raises(ValueError):
        blind.step(bad)


def test_non_unit_quaternion_is_normalised(blind):
    unit = pose([0.05, 0.1, 0.2], yaw=0.4)
    scaled = unit.copy()
    scaled[3:7] *= 2.7
    blind.reset(seed=0)
    *_, info_unit = blind.step(unit)
    blind.reset(seed=0)
    *_, info_scaled = blind.step(scaled)
    np.testing.assert_allclose(info_scaled["target"], info_unit["target"], atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(info_scaled["target"][3:7]), 1.0, atol=1e-15)


def test_zero_quaternion_keeps_the_current_orientation(blind):
    blind.reset(seed=0)
    for _ in range(4):
        obs, *_ = blind.step(pose([0.0, 0.0, 0.2], yaw=0.5))
    q_before = obs["ee_pose"][3:7]
    zero = np.r_[0.1, -0.1, 0.15, 0, 0, 1e-9, 0, 1.0]
    for _ in range(3):
        obs, _, _, _, info = blind.step(zero)
        assert np.allclose(np.abs(np.dot(info["target"][3:7], obs["ee_pose"][3:7])), 1.0, atol=1e-3)
    R_before = Rotation.from_quat(q_before).as_matrix()
    assert rotation_angle_deg(Rotation.from_quat(obs["ee_pose"][3:7]).as_matrix(), R_before) < 1.0
    assert np.linalg.norm(obs["ee_pose"][:3] - [0.1, -0.1, 0.15]) < 0.02  # the position part is still followed


def test_random_actions_from_the_action_space_run(blind):
    blind.reset(seed=0)
    blind.action_space.seed(0)
    for _ in range(10):
        a = blind.action_space.sample()
        assert blind.action_space.contains(a)
        obs, *_ = blind.step(a)
        assert np.isfinite(obs["ee_pose"]).all()


@pytest.mark.parametrize("gym_id", sorted(GYM_IDS.values()))
def test_gymnasium_env_checker_passes(gym_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(gym_id, cameras=("front", "wrist"), image_size=16, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # advice about unbounded boxes, not failures
        check_env(env.unwrapped)
    env.close()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown task"):
        make_env("fly_to_moon")
    from action_images.sim.tasks import parse_tasks
    with pytest.raises(ValueError, match="--tasks: name at least one task"):
        parse_tasks(" , ")
    with pytest.raises(ValueError, match="cameras"):
        make_env("pick_cube", cameras=("front", "back"))


def test_gymnasium_registration():
    assert set(GYM_IDS) == set(TASKS) and GYM_IDS["pick_cube"] == "ActionImages/PickCube-v0"
    env = gym.make("ActionImages/PickCube-v0", render=False)
    obs, info = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(env.unwrapped.expert_action())
    assert obs["ee_pose"].shape == (8,)
    env.close()


def test_ee_pose_matches_site(blind):
    obs, _ = blind.reset(seed=2)
    m, d = blind.model, blind.data
    sid = m.site("tcp").id
    ref = matrix_to_pose(d.site_xpos[sid], d.site_xmat[sid].reshape(3, 3), obs["ee_pose"][7])
    np.testing.assert_allclose(obs["ee_pose"], ref)


@pytest.mark.parametrize("task", TASKS)
def test_start_jitter_moves_the_hand_and_nothing_else(task):
    """start_jitter: the hand starts at a seeded offset inside the documented box, pointing down and at rest; every
    other joint, the instruction and the scene are the episode seed's as without it, whatever else the reset draws."""
    from action_images.sim.robot import START_POS

    home, moved = make_env(task, render=False), make_env(task, render=False, start_jitter=0.1)
    for seed in (0, 1):
        oh, _ = home.reset(seed=seed)
        om, _ = moved.reset(seed=seed)
        assert om["instruction"] == oh["instruction"]
        arm = set(moved.arm.arm_qadr) | set(moved.arm.finger_qadr)
        rest = [i for i in range(moved.model.nq) if i not in arm]
        np.testing.assert_allclose(moved.data.qpos[rest], home.data.qpos[rest], atol=1e-6)
        np.testing.assert_array_equal(moved.model.body_pos, home.model.body_pos)
        np.testing.assert_array_equal(moved.model.geom_rgba, home.model.geom_rgba)
        off = om["ee_pose"][:3] - START_POS
        assert np.all(np.abs(off) <= [0.105, 0.105, 0.055]) and np.linalg.norm(off) > 0.005
        np.testing.assert_allclose(oh["ee_pose"][:3], START_POS, atol=0.02)
        assert rotation_angle_deg(Rotation.from_quat(om["ee_pose"][3:7]).as_matrix(),
                                  Rotation.from_quat(oh["ee_pose"][3:7]).as_matrix()) < 2.0
        assert np.abs(moved.data.qvel).max() < 0.05
        assert om["ee_pose"][7] == pytest.approx(oh["ee_pose"][7], abs=0.02)       # the jaw open as at home
    home.close(), moved.close()


def test_start_jitter_is_seeded_apart_from_the_cameras_and_stays_in_its_box():
    """The start offset of a seed is the same with perturbed cameras or without, differs between seeds, and comes
    back on a second reset; offsets fill the box (±M along x and y, ±M/2 along z); bad values are refused."""
    from action_images.sim.env import start_offset
    from action_images.sim.robot import START_POS
    from action_images.sim.scene import MAX_START_JITTER

    plain = make_env("push_cube", render=False, start_jitter=0.1)
    perturbed = make_env("push_cube", render=False, start_jitter=0.1, perturb_cameras=True)
    offsets = []
    for seed in range(6):
        a = plain.reset(seed=seed)[0]["ee_pose"][:3]
        np.testing.assert_allclose(perturbed.reset(seed=seed)[0]["ee_pose"][:3], a, atol=1e-9)
        offsets.append(a - START_POS)
    assert np.ptp(np.array(offsets)[:, :2], axis=0).min() > 0.05
    np.testing.assert_allclose(plain.reset(seed=3)[0]["ee_pose"][:3] - START_POS, offsets[3], atol=1e-9)
    rng = np.random.default_rng(0)
    box = np.array([start_offset(rng, 0.08) for _ in range(2000)])
    np.testing.assert_allclose(np.abs(box).max(0), [0.08, 0.08, 0.04], rtol=0.02)
    for bad in (-0.01, MAX_START_JITTER + 0.01, float("nan"), "x"):
        with pytest.raises(ValueError, match=r"start_jitter must be in 0.0..0.12 \(metres\)"):
            make_env("push_cube", render=False, start_jitter=bad)


def test_start_jitter_without_a_seed_draws_a_new_start_in_its_box_each_reset():
    from action_images.sim.robot import START_POS

    env = make_env("reach_target", render=False, start_jitter=0.06)
    env.reset(seed=0)
    offsets = [env.reset()[0]["ee_pose"][:3] - START_POS for _ in range(3)]
    for off in offsets:
        assert np.all(np.abs(off) <= [0.065, 0.065, 0.035])
    assert not np.allclose(offsets[0], offsets[1]) and not np.allclose(offsets[1], offsets[2])
