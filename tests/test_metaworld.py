"""The Meta-World suite: task names, the 8-D <-> 4-D action conversion, the adapter against Meta-World itself,
camera calibration against segmentation masks, collect / train / eval through ``--suite metaworld``."""

import argparse
import json

import numpy as np
import pytest

mw_suite = pytest.importorskip("action_images.sim.metaworld")
pytest.importorskip("metaworld")

from action_images.sim.metaworld import (CAMERA_NAMES, STATIC_CAMERAS, TOOL_QUAT, action_to_target,  # noqa: E402
                                         centroid_errors, make_env, parse_tasks, target_to_action, task_names)

FAST_TASKS = ("reach-v3", "drawer-open-v3", "button-press-topdown-v3")


def raw_metaworld(task: str, seed: int):
    """Meta-World's own env, set up as the adapter sets it (seeded goals, goal observable), reset with ``seed``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[task]()
    env._partially_observable = False
    if "sawyer_observation_space" in env.__dict__:
        del env.sawyer_observation_space
    env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
    env.seed(seed)
    obs, _ = env.reset()
    return env, obs


# ---- task names ------------------------------------------------------------------------------------------------------

def test_all_fifty_task_names():
    names = task_names()
    assert len(names) == 50 and len(set(names)) == 50 and all(n.endswith("-v3") for n in names)
    assert parse_tasks("all") == list(names)
    assert parse_tasks("drawer-open-v3, reach-v3") == ["drawer-open-v3", "reach-v3"]


def test_unknown_task_is_one_line_naming_the_flag_with_close_matches():
    with pytest.raises(ValueError) as e:
        parse_tasks("drawer-opn-v3", "--tasks")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--tasks:") and "did you mean drawer-open-v3" in msg
    with pytest.raises(ValueError, match="named twice"):
        parse_tasks("reach-v3,reach-v3")
    with pytest.raises(ValueError, match="^task: unknown Meta-World task 'pick_cube'"):
        make_env("pick_cube")


# ---- the action conversion -------------------------------------------------------------------------------------------

def test_tool_quaternion_is_the_fixed_mocap_orientation_in_our_convention():
    from scipy.spatial.transform import Rotation

    assert TOOL_QUAT.tolist() == [0.0, 1.0, 0.0, 0.0]                   # scalar last: tool +z points down
    R_hand = Rotation.from_quat([1, 0, 1, 0], scalar_first=True).as_matrix()   # MuJoCo's w-first mocap_quat
    R_tool = Rotation.from_quat(TOOL_QUAT).as_matrix()
    np.testing.assert_allclose(R_tool[:, 2], [0, 0, -1], atol=1e-12)     # approach = world down = hand +x
    np.testing.assert_allclose(R_tool[:, 2], R_hand[:, 0], atol=1e-12)
    np.testing.assert_allclose(R_tool[:, 1], R_hand[:, 1], atol=1e-12)  # fingers close along hand y


def test_target_to_action_inverts_action_to_target_exactly():
    rng = np.random.default_rng(0)
    offset = np.array([0.0, 0.0, -0.045])
    for _ in range(2000):
        a = rng.uniform(-1, 1, 4).astype(np.float32)
        a[rng.random(4) < 0.2] = rng.choice([-1.0, 0.0, 1.0, 0.6])      # the experts' usual values
        mocap = rng.uniform((-0.5, 0.4, 0.05), (0.5, 1.0, 0.5))
        t = action_to_target(a, mocap, offset)
        assert t.shape == (8,) and np.array_equal(t[3:7], TOOL_QUAT) and 0.0 <= t[7] <= 1.0
        assert np.array_equal(target_to_action(t, mocap, offset), a)       # bit for bit, float32
    # g: 1 open (effort -1), 0 closed (effort +1); efforts beyond [-1, 1] are clipped as Meta-World clips them
    mocap = np.array([0.0, 0.6, 0.2])
    assert action_to_target([0, 0, 0, -1], mocap, offset)[7] == 1.0
    assert action_to_target([0, 0, 0, 1], mocap, offset)[7] == 0.0
    assert action_to_target([0, 0, 0, 0.6], mocap, offset)[7] == pytest.approx(0.2)
    t = action_to_target([3, -2, 0.5, 5], mocap, offset)
    np.testing.assert_allclose(t[:3], mocap + [0.01, -0.01, 0.005] + offset)
    assert target_to_action(t, mocap, offset).tolist() == [1.0, -1.0, 0.5, 1.0]
    # a target far away gives a full step toward it
    far = np.r_[mocap + offset + [0.3, 0, -0.001], TOOL_QUAT, 1.0]
    np.testing.assert_allclose(target_to_action(far, mocap, offset), [1.0, 0.0, -0.1, -1.0], atol=1e-6)


@pytest.mark.parametrize("task", FAST_TASKS)
def test_expert_through_adapter_matches_metaworld_bit_for_bit(task):
    # the adapter steps with 8-D targets converted back to 4-D; Meta-World's own env steps with the expert's 4-D
    # actions: same actions bit for bit, same observations, same success
    env = make_env(task, render=False, cameras=())
    obs, info = env.reset(seed=3)
    raw, raw_obs = raw_metaworld(task, 3)
    assert np.array_equal(raw_obs, env._mw_obs) and obs["instruction"] == task.removesuffix("-v3").replace("-", " ")
    limit = env.max_steps if task == "reach-v3" else 30       # reach to success, the others a short stretch
    for _ in range(limit):
        a4 = env.expert_action_4d()
        target = env.expert_action()
        assert np.array_equal(env.target_to_action(target), np.clip(a4, -1, 1))
        obs, _, terminated, truncated, info = env.step(target)
        raw_obs, _, _, _, raw_info = raw.step(a4)
        assert np.array_equal(raw_obs, env._mw_obs)
        assert info["success"] == bool(raw_info["success"]) and np.array_equal(info["action_4d"], np.clip(a4, -1, 1))
        if terminated or truncated:
            break
    if task == "reach-v3":
        assert info["success"] and terminated
    pose = obs["ee_pose"]
    np.testing.assert_allclose(pose[:3], env.mw.tcp_center)
    assert abs(abs(pose[3:7] @ TOOL_QUAT) - 1.0) < 0.01                  # the hand keeps the fixed orientation
    env.close()


def test_bad_targets_are_refused():
    env = make_env("reach-v3", render=False, cameras=())
    env.reset(seed=0)
    for bad, match in (([0.0] * 7, "8-D"), ([np.nan] + [0.0] * 7, "NaN"), ([0.0] * 7 + [1.5], r"\[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            env.step(np.asarray(bad))
    env.close()


def test_step_past_success_and_the_step_limit():
    # Meta-World refuses steps past its own 500; the adapter keeps stepping after success (collect --hold-steps) and
    # truncates an unsuccessful episode at MAX_STEPS itself
    env = make_env("reach-v3", render=False, cameras=())
    env.reset(seed=0)
    for _ in range(env.max_steps + 5):
        env.step(env.expert_action())
    assert env.step_count == env.max_steps + 5
    env.reset(seed=0)
    stay = np.r_[env.mocap_pos + env.tcp_offset, TOOL_QUAT, 1.0]
    for _ in range(env.max_steps):
        _, _, terminated, truncated, _ = env.step(stay)
        assert not terminated
        if truncated:
            break
    assert truncated and env.step_count == env.max_steps == 500
    env.close()


def test_gymnasium_check_env():
    from gymnasium.utils.env_checker import check_env

    env = make_env("drawer-open-v3", cameras=("corner", "topview"), image_size=16)
    check_env(env, skip_render_check=True)
    env.close()


# ---- cameras ---------------------------------------------------------------------------------------------------------

def test_static_cameras_are_upright_and_calibrated_against_segmentation_masks():
    cams = STATIC_CAMERAS + ("behindGripper",)      # gripperPOV sees the marker from centimetres: not a fair check
    env = make_env("pick-place-v3", cameras=cams, image_size=64)
    env.reset(seed=0)
    for cam in env.cameras[:4]:                    # the corner views: image "down" points down in the world
        assert cam.T_cam_world[1, 2] < -0.3, cam.name
    assert set(env.rolled) == {"corner", "corner2", "corner3", "corner4"}
    errs = centroid_errors(env)
    assert len(errs) >= 12 and np.mean(errs) <= 0.5 and np.max(errs) <= 1.5, (np.mean(errs), np.max(errs))
    # a principal point at W/2 instead of (W-1)/2 fits worse
    assert np.mean(centroid_errors(env, seeds=(0, 1), principal_shift=0.5)) > np.mean(errs)
    env.close()


def test_random_rig_per_episode_is_calibrated():
    env = make_env("pick-place-v3", rig_distribution="heldout", rig_views=5, image_size=64)
    obs, _ = env.reset(seed=5)
    assert env.camera_names == ("rig0", "rig1", "rig2", "rig3", "rig4") and env.rig_seed == 5
    T5 = obs["camera_T_cam_world"].copy()
    obs, _ = env.reset(seed=6)
    assert not np.allclose(T5, obs["camera_T_cam_world"])                 # a new rig every episode
    np.testing.assert_allclose(obs["camera_T_cam_world"][0], mw_suite.random_rig(6, 5, 64, "heldout")[0].T_cam_world,
                               atol=1e-9)
    errs = centroid_errors(env)
    assert len(errs) >= 12 and np.mean(errs) <= 0.5 and np.max(errs) <= 1.5, (np.mean(errs), np.max(errs))
    with pytest.raises(ValueError, match="rig_views must be in 1..5"):
        make_env("reach-v3", rig_distribution="train", rig_views=6)
    with pytest.raises(ValueError, match="not supported with the Meta-World suite"):
        make_env("reach-v3", rig="rig.json")
    env.close()


def test_perturbed_cameras_and_a_fixed_heldout_rig():
    from action_images.eval_settings import EvalSettings, env_kwargs, resolve_settings

    env = make_env("reach-v3", cameras=("corner", "corner2"), image_size=16, perturb_cameras=True)
    T = [env.reset(seed=s)[0]["camera_T_cam_world"].copy() for s in (1, 2, 1)]
    assert not np.allclose(T[0], T[1]) and np.array_equal(T[0], T[2])      # a jitter per episode seed
    env.close()
    # eval --random-rig SEED: one held-out rig for every episode
    cfg = argparse.Namespace(num_views=2, camera_names=None)
    s = resolve_settings(EvalSettings(suite="metaworld", tasks="reach-v3", random_rig=4, rig_views=3,
                                      image_size=16), cfg, warn=False)
    kwargs = env_kwargs(s)
    env = make_env("reach-v3", cameras=s.cameras, image_size=16, **kwargs)
    obs, _ = env.reset(seed=0)
    assert env.camera_names == ("rig0", "rig1", "rig2")
    np.testing.assert_allclose(obs["camera_T_cam_world"][1], kwargs["rig"][1].T_cam_world, atol=1e-9)
    np.testing.assert_allclose(obs["camera_K"][1], kwargs["rig"][1].K)
    env.close()


def test_named_cameras():
    env = make_env("reach-v3", cameras=CAMERA_NAMES, image_size=16)
    obs, _ = env.reset(seed=0)
    assert list(obs["images"]) == list(CAMERA_NAMES) and obs["camera_K"].shape == (7, 3, 3)
    assert all(im.shape == (16, 16, 3) and im.dtype == np.uint8 for im in obs["images"].values())
    with pytest.raises(ValueError, match="cameras must be distinct names"):
        make_env("reach-v3", cameras=("front",))
    env.close()


def test_observe_images_off_skips_rendering_without_changing_the_episode():
    """``observe_images = False`` (the evaluator, between replanning steps): observations carry no images, and the
    episode is the same as with every step rendered."""
    def run(skip):
        env = make_env("reach-v3", cameras=("corner", "corner4"), image_size=16)
        env.reset(seed=3)
        poses, shown = [], []
        for k in range(12):
            env.observe_images = not (skip and k % 3)
            obs, *_ = env.step(env.expert_action())
            poses.append(obs["ee_pose"])
            shown.append("images" in obs)
        env.close()
        return np.array(poses), shown

    (a, shown_a), (b, shown_b) = run(True), run(False)
    assert np.array_equal(a, b) and all(shown_b) and shown_a == [k % 3 == 0 for k in range(12)]


# ---- collect, train, eval --------------------------------------------------------------------------------------------

def collect_main(*argv):
    from action_images.data import collect

    p = argparse.ArgumentParser()
    collect.add_arguments(p)
    return collect.run(p.parse_args(list(argv)))


@pytest.fixture(scope="module")
def mw_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "ds"
    assert collect_main("--suite", "metaworld", "--tasks", "coffee-button-v3", "--episodes", "2", "--out", str(out),
                        "--cameras", "corner,corner2,corner3", "--image-size", "32", "--hold-steps", "2") == 0
    return out


def test_collect_writes_the_same_layout_with_calibration(mw_dataset):
    from action_images.data import LeRobotDataset
    from action_images.data.collect import episode_seed

    ds = LeRobotDataset(mw_dataset)
    assert ds.fps == 80 and ds.num_episodes == 2 and ds.camera_names == ["corner", "corner2", "corner3"]
    assert ds.image_size == (32, 32)
    record = json.loads((mw_dataset / "meta" / "collect.json").read_text())
    assert record["config"]["suite"] == "metaworld" and record["status"] == "complete"
    ep = ds.episode(0)
    assert ep.extra["task_name"] == "coffee-button-v3" and ep.extra["success"] and ep.extra["hold_steps"] == 2
    assert ep.instruction == "coffee button"
    # the stored actions are the expert's 8-D targets: replaying them through the adapter reproduces the episode
    env = make_env("coffee-button-v3", cameras=("corner", "corner2", "corner3"), image_size=32)
    obs, _ = env.reset(seed=ep.extra["seed"])
    assert ep.extra["seed"] == episode_seed(0, "coffee-button-v3", 0)
    for name, cam in ds.cameras.items():
        c = env.cameras[env.camera_names.index(name)]
        np.testing.assert_allclose(cam.K, c.K)
        np.testing.assert_allclose(cam.T_cam_world, c.T_cam_world)
    for t, target in enumerate(ep.actions):
        np.testing.assert_array_equal(ep.states[t], obs["ee_pose"])
        np.testing.assert_array_equal(target, env.expert_action())
        obs, _, _, _, info = env.step(target)
    assert info["success"]
    env.close()


def test_collect_with_a_random_rig_per_episode(tmp_path):
    from action_images.data import LeRobotDataset

    out = tmp_path / "rig"
    assert collect_main("--suite", "metaworld", "--tasks", "handle-press-v3", "--episodes", "2", "--out", str(out),
                        "--rig-distribution", "train", "--rig-views", "3", "--image-size", "16") == 0
    ds = LeRobotDataset(out)
    assert ds.camera_names == ["rig0", "rig1", "rig2"] and ds.per_frame_cameras
    a, b = ds.episode(0).frame_cameras["rig0"][0], ds.episode(1).frame_cameras["rig0"][0]
    assert not np.allclose(a.T_cam_world, b.T_cam_world)


def test_collect_refuses_bad_metaworld_flags(tmp_path, capsys):
    assert collect_main("--suite", "metaworld", "--tasks", "drawer-opn-v3", "--out", str(tmp_path / "a")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--tasks" in err and "did you mean drawer-open-v3" in err
    assert collect_main("--suite", "metaworld", "--tasks", "reach-v3", "--rig-distribution", "train",
                        "--rig-views", "6", "--out", str(tmp_path / "b")) == 2
    assert "--rig-views must be in 2..5" in capsys.readouterr().err
    assert collect_main("--suite", "metaworld", "--tasks", "reach-v3", "--camera-rig", "x.json",
                        "--out", str(tmp_path / "c")) == 2
    assert "--camera-rig is not supported with --suite metaworld" in capsys.readouterr().err
    assert collect_main("--suite", "metaworld", "--tasks", "reach-v3", "--missed-grasps", "0.5",
                        "--out", str(tmp_path / "e")) == 2
    assert "--missed-grasps is not supported with --suite metaworld" in capsys.readouterr().err
    assert collect_main("--suite", "metaworld", "--tasks", "reach-v3", "--policy", "checkpoints/any",
                        "--out", str(tmp_path / "f")) == 2
    assert "--policy is not supported with --suite metaworld" in capsys.readouterr().err
    assert collect_main("--suite", "metaworld", "--tasks", "reach-v3", "--cameras", "front",
                        "--out", str(tmp_path / "d")) == 2
    assert "--cameras" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abcdef")


def test_eval_settings_for_the_suite():
    from action_images.eval_settings import EvalSettings, resolve_settings

    s = EvalSettings(suite="metaworld", tasks="reach-v3,drawer-open-v3")
    assert s.tasks == ("reach-v3", "drawer-open-v3") and s.record_dict()["suite"] == "metaworld"
    assert "suite" not in EvalSettings(tasks="reach_target").record_dict()   # old records still resume
    with pytest.raises(ValueError, match="^--tasks: unknown Meta-World task 'reach_target'"):
        EvalSettings(suite="metaworld", tasks="reach_target")
    with pytest.raises(ValueError, match="--suite must be one of sim, metaworld"):
        EvalSettings(suite="robosuite")
    cfg = argparse.Namespace(num_views=2, camera_names=["corner", "corner2"])
    r = resolve_settings(EvalSettings(suite="metaworld", tasks="reach-v3"), cfg, warn=False)
    assert r.cameras == ("corner", "corner2") and r.policy.camera_names == ("corner", "corner2")
    with pytest.raises(ValueError, match="--cameras: unknown camera"):
        resolve_settings(EvalSettings(suite="metaworld", tasks="reach-v3", cameras=("corner", "corner2", "front")),
                         cfg)


def test_train_and_eval_smoke(mw_dataset, tmp_path):
    # data flow sim -> dataset -> windows -> model -> policy -> codec -> env on Meta-World, two training steps
    from action_images import evaluate, train

    run = tmp_path / "run"
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    assert train.run(p.parse_args(["--data", str(mw_dataset), "--out", str(run), "--preset", "cpu-tiny", "--steps",
                                   "2", "--batch-size", "2", "--no-progress", "--threads", "1"])) == 0
    out = tmp_path / "eval"
    assert evaluate.main(["--suite", "metaworld", "--checkpoint", str(run), "--tasks", "coffee-button-v3",
                          "--episodes", "1", "--out", str(out), "--sampler-steps", "1", "--max-steps", "6",
                          "--videos", "1", "--no-progress", "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["suite"] == "metaworld" and m["tasks"]["coffee-button-v3"]["episodes"] == 1
    assert m["policy"]["cameras"] == ["corner", "corner2", "corner3"][:len(m["policy"]["cameras"])]
    assert (out / "report.html").exists() and m["videos"]["coffee-button-v3"]


# ---- every task's expert through the adapter -------------------------------------------------------------------------

@pytest.mark.slow
def test_every_task_expert_succeeds_through_the_adapter():
    from action_images.data.collect import episode_seed

    results = {}
    for task in task_names():
        env = make_env(task, render=False, cameras=())
        wins = 0
        for k in range(3):
            env.reset(seed=episode_seed(0, task, k))
            for _ in range(env.max_steps):
                _, _, terminated, truncated, info = env.step(env.expert_action())
                if terminated or truncated:
                    break
            wins += int(info["success"])
        env.close()
        results[task] = wins
    assert all(w >= 1 for w in results.values()), results
    assert sum(results.values()) >= 0.9 * 3 * len(results), results
