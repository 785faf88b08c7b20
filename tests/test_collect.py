"""``action-images collect``: fake-sim runs (fast), kill -9 + --resume reproduces an uninterrupted run, real-sim smoke."""

from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np
import pytest

import collect_fake_env as fake
from action_images.data import LeRobotDataset
from action_images.data import collect


@pytest.fixture(autouse=True)
def fake_sim(monkeypatch):
    monkeypatch.setattr(collect, "_load_sim", lambda: (fake.make_env, fake.TASKS))
    monkeypatch.setattr(collect, "_load_cameras", lambda: tuple(fake.EYES))
    fake.KILL["after_steps"] = None
    yield


def args_for(out, *extra):
    p = argparse.ArgumentParser()
    collect.add_arguments(p)
    return p.parse_args(["--out", str(out), "--cameras", "front,top", "--image-size", "16", *extra])


def summary(root):
    ds = LeRobotDataset(root)
    return [(ds.episode_info(i)["extra/task_name"], ds.episode_info(i)["extra/attempt"], ds.episode(i).actions)
            for i in range(ds.num_episodes)]


def test_collect_all_tasks_into_one_dataset(tmp_path, capsys):
    out = tmp_path / "d"
    assert collect.run(args_for(out, "--tasks", "all", "--episodes", "3", "--no-progress")) == 0
    assert "collect " not in capsys.readouterr().err                    # no progress bar
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 6 and ds.camera_names == ["front", "top"] and ds.image_size == (16, 16)
    names = [ds.episode_info(i)["extra/task_name"] for i in range(6)]
    assert sorted(names) == ["push_fake"] * 3 + ["reach_fake"] * 3
    assert set(ds.tasks) == {"reach the thing", "push the thing"}
    for i in range(6):
        ep = ds.episode(i)
        info = ds.episode_info(i)
        assert info["extra/success"] is True
        assert info["extra/seed"] == collect.episode_seed(0, info["extra/task_name"], info["extra/attempt"])
        assert ds.tasks[ep.task_index] == ep.instruction
        assert ep.images["front"].shape == (len(ep), 16, 16, 3)
    rec = json.loads((out / "meta/collect.json").read_text())
    assert rec["status"] == "complete" and rec["seed"] == 0 and rec["args"]["episodes"] == 3
    failed = sum(v["failed_attempts"] for v in rec["tasks"].values())
    assert "no_progress" not in rec["args"]
    assert collect.run(args_for(out, "--tasks", "all", "--episodes", "3", "--resume")) == 0   # not a setting
    assert f"{failed} failed attempt(s) dropped" in capsys.readouterr().out


def test_seeds_are_deterministic_and_per_task(tmp_path):
    assert collect.run(args_for(tmp_path / "a", "--tasks", "reach_fake,push_fake", "--episodes", "2")) == 0
    assert collect.run(args_for(tmp_path / "b", "--tasks", "reach_fake,push_fake", "--episodes", "2")) == 0
    a, b = summary(tmp_path / "a"), summary(tmp_path / "b")
    assert [x[:2] for x in a] == [x[:2] for x in b] and all(np.array_equal(x[2], y[2]) for x, y in zip(a, b))
    # a task's episodes do not depend on which other tasks are collected
    assert collect.run(args_for(tmp_path / "c", "--tasks", "push_fake", "--episodes", "2")) == 0
    push_ab = [x for x in a if x[0] == "push_fake"]
    c = summary(tmp_path / "c")
    assert [x[1] for x in c] == [x[1] for x in push_ab]
    assert all(np.array_equal(x[2], y[2]) for x, y in zip(c, push_ab))
    assert collect.episode_seed(0, "push_fake", 1) != collect.episode_seed(1, "push_fake", 1)


def test_keep_failed_and_perturbed_cameras(tmp_path):
    out = tmp_path / "d"
    assert collect.run(args_for(out, "--tasks", "reach_fake", "--episodes", "6", "--keep-failed",
                                "--perturb-cameras")) == 0
    ds = LeRobotDataset(out)
    ok = [ds.episode_info(i)["extra/success"] for i in range(6)]
    assert [ds.episode_info(i)["extra/attempt"] for i in range(6)] == list(range(6)) and not all(ok)
    assert ds.per_frame_cameras
    K0 = ds.episode(0).cameras["front"].T_cam_world
    K1 = ds.episode(1).cameras["front"].T_cam_world
    assert not np.allclose(K0, K1)  # perturbed per episode, stored per frame


def test_kill_mid_episode_then_resume_matches_uninterrupted_run(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    argv = ("--tasks", "all", "--episodes", "4")
    assert collect.run(args_for(ref, *argv)) == 0
    pid = os.fork()
    if pid == 0:  # child: dies with SIGKILL in the middle of an episode
        try:
            fake._steps["n"] = 0
            fake.KILL["after_steps"] = 23
            collect.run(args_for(out, *argv))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    partial = LeRobotDataset(out)
    assert 0 < partial.num_episodes < 8
    assert collect.run(args_for(out, *argv)) == 2  # refuses to touch it without --resume
    assert collect.run(args_for(out, *argv, "--resume")) == 0
    a, b = summary(ref), summary(out)
    assert [x[:2] for x in a] == [x[:2] for x in b] and all(np.array_equal(x[2], y[2]) for x, y in zip(a, b))
    assert not list(out.rglob("*.partial"))
    ra = json.loads((ref / "meta/collect.json").read_text())["tasks"]
    rb = json.loads((out / "meta/collect.json").read_text())["tasks"]
    assert ra == rb  # failure counts are exact across the resume


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    assert collect.run(args_for(out, "--tasks", "reach_fake", "--episodes", "1")) == 0
    assert collect.run(args_for(out, "--tasks", "reach_fake", "--episodes", "1", "--seed", "5", "--resume")) == 2
    assert "seed" in capsys.readouterr().err
    assert collect.run(args_for(out, "--tasks", "reach_fake", "--episodes", "2", "--resume")) == 0
    assert LeRobotDataset(out).num_episodes == 2


def test_hold_steps_record_frames_after_success(tmp_path, capsys):
    """--hold-steps N: successful episodes go on for N more expert frames; the count is stored per episode."""
    assert collect.run(args_for(tmp_path / "a", "--tasks", "reach_fake", "--episodes", "3")) == 0
    assert collect.run(args_for(tmp_path / "b", "--tasks", "reach_fake", "--episodes", "3", "--hold-steps", "3")) == 0
    a, b = LeRobotDataset(tmp_path / "a"), LeRobotDataset(tmp_path / "b")
    for i in range(3):
        assert b.episode_info(i)["extra/hold_steps"] == 3 and a.episode_info(i)["extra/hold_steps"] == 0
        ea, eb = a.episode(i), b.episode(i)
        assert len(eb) == len(ea) + 3
        np.testing.assert_array_equal(eb.actions[:len(ea)], ea.actions)   # same rollout, then the hold
    assert collect.run(args_for(tmp_path / "b", "--tasks", "reach_fake", "--episodes", "4", "--resume")) == 2
    assert "hold_steps: was 3, now 0" in capsys.readouterr().err
    assert collect.run(args_for(tmp_path / "c", "--hold-steps", "-1")) == 2


def test_hold_action_still_holds_the_pose_at_success(tmp_path, capsys):
    """--hold-action still: the frames after success command one fixed target, the hand's pose at success with the
    last gripper command, instead of the expert's next moves; the frames up to success are the expert's."""
    argv = ("--tasks", "reach_fake", "--episodes", "3", "--hold-steps", "3")
    assert collect.run(args_for(tmp_path / "e", *argv)) == 0
    assert collect.run(args_for(tmp_path / "s", *argv, "--hold-action", "still")) == 0
    e, s = LeRobotDataset(tmp_path / "e"), LeRobotDataset(tmp_path / "s")
    for i in range(3):
        ee, es = e.episode(i), s.episode(i)
        n = len(es) - 3                                    # frames up to and including the successful step
        assert len(es) == len(ee) and n > 0
        np.testing.assert_array_equal(es.actions[:n], ee.actions[:n])
        still = np.concatenate([es.states[n, :7], es.actions[n - 1, 7:]])
        np.testing.assert_allclose(es.actions[n:], np.tile(still, (3, 1)), atol=1e-6)
        assert not np.allclose(ee.actions[n:], es.actions[n:])       # the expert would have moved on
    assert collect.run(args_for(tmp_path / "s", *argv[:-4], "--episodes", "4", "--hold-steps", "3",
                                "--resume")) == 2
    assert "hold_action: was 'still', now 'expert'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="hold_action must be one of"):
        collect.run_episode(None, 0, [], 1, "freeze")


def test_action_noise_moves_the_executed_targets_and_stores_the_experts(tmp_path, capsys):
    """--action-noise: the hand goes where the noisy targets sent it (the fake env puts it there), the stored actions
    are the expert's own targets from those states, the noise is seeded per episode, and a resume must match it."""
    argv = ("--tasks", "reach_fake", "--episodes", "3")
    assert collect.run(args_for(tmp_path / "a", *argv)) == 0
    assert collect.run(args_for(tmp_path / "n", *argv, "--action-noise", "0.02", "--action-noise-prob", "1")) == 0
    assert collect.run(args_for(tmp_path / "m", *argv, "--action-noise", "0.02", "--action-noise-prob", "1")) == 0
    a, n, m = (LeRobotDataset(tmp_path / d) for d in "anm")
    for i in range(3):
        ea, en = a.episode(i), n.episode(i)
        assert len(en) == len(ea)                               # the fake's episode length comes from the seed
        np.testing.assert_allclose(en.states[0], ea.states[0])  # the scene's draws are not touched by the noise
        # the fake expert targets the hand's position + 1 cm: the stored action is that, from the noisy state ...
        np.testing.assert_allclose(en.actions[:, :3], en.states[:, :3] + 0.01, atol=1e-6)
        # ... and the next state is not it (the executed target was moved), unlike the noise-free run
        np.testing.assert_allclose(ea.states[1:, :3], ea.actions[:-1, :3], atol=1e-6)
        offsets = en.states[1:, :3] - en.actions[:-1, :3]
        assert np.all(np.linalg.norm(offsets, axis=1) > 1e-4) and np.abs(offsets).max() < 0.2
        np.testing.assert_array_equal(m.episode(i).actions, en.actions)
    assert collect.run(args_for(tmp_path / "n", *argv[:2], "--episodes", "4", "--resume")) == 2
    assert "action_noise: was 0.02, now 0.0" in capsys.readouterr().err
    for flag, value in (("--action-noise", "-0.01"), ("--action-noise", "0.2"), ("--action-noise", "nan"),
                        ("--action-noise-prob", "1.5")):
        assert collect.run(args_for(tmp_path / "bad", *argv, flag, value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "bad").exists()


def test_action_noise_prob_zero_is_the_experts_run(tmp_path):
    """No step drawn for noise: the same dataset as a noise-free collection."""
    argv = ("--tasks", "reach_fake", "--episodes", "2")
    assert collect.run(args_for(tmp_path / "a", *argv)) == 0
    assert collect.run(args_for(tmp_path / "z", *argv, "--action-noise", "0.03", "--action-noise-prob", "0")) == 0
    a, z = LeRobotDataset(tmp_path / "a"), LeRobotDataset(tmp_path / "z")
    for i in range(2):
        np.testing.assert_array_equal(a.episode(i).actions, z.episode(i).actions)


def test_missed_grasps_is_checked_and_recorded(tmp_path, capsys):
    """--missed-grasps: a share in 0..1, refused otherwise before anything is written; 0 is a plain collection, its
    value is recorded in meta/collect.json and a resume must match it (the planted misses themselves are tested on
    the real tasks in test_sim_tasks.py)."""
    argv = ("--tasks", "reach_fake", "--episodes", "2")
    for value in ("-0.1", "1.5", "nan"):
        assert collect.run(args_for(tmp_path / "bad", *argv, "--missed-grasps", value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--missed-grasps" in err[0], err
    assert not (tmp_path / "bad").exists()
    assert collect.run(args_for(tmp_path / "a", *argv, "--missed-grasps", "0")) == 0
    rec = json.loads((tmp_path / "a" / "meta/collect.json").read_text())
    assert rec["config"]["missed_grasps"] == 0.0
    assert "extra/grasp_miss" not in LeRobotDataset(tmp_path / "a").episode_info(0)
    capsys.readouterr()
    # a task whose expert does not grasp gets no miss, and says so
    assert collect.run(args_for(tmp_path / "m", *argv, "--missed-grasps", "1")) == 0
    assert "--missed-grasps plants misses only where the expert grasps; reach_fake: none" in capsys.readouterr().err
    assert LeRobotDataset(tmp_path / "m").episode_info(0)["extra/grasp_miss"] == 0.0
    assert collect.run(args_for(tmp_path / "a", *argv[:2], "--episodes", "3", "--missed-grasps", "0.5",
                                "--resume")) == 2
    assert "missed_grasps: was 0.0, now 0.5" in capsys.readouterr().err


class SideStepper:
    """A driving policy for the fake env: the hand 2 cm along +y each step; counts its resets and calls."""

    def __init__(self):
        self.resets, self.calls = [], 0

    def reset(self, seed):
        self.resets.append(seed)

    def act(self, obs, cameras):
        self.calls += 1
        assert [c.name for c in cameras] == ["front", "top"] and set(obs["images"]) == {"front", "top"}
        return np.concatenate([obs["ee_pose"][:3] + [0.0, 0.02, 0.0], obs["ee_pose"][3:7], [1.0]])


def test_policy_drives_the_first_steps_and_the_expert_labels_every_frame(tmp_path, capsys, monkeypatch):
    """--policy (DAgger): the checkpoint's policy is reset with each episode's seed and its actions executed until a
    step drawn per episode in 1..--policy-steps (recorded as extra/takeover), the expert's after; every stored action
    is the expert's target from the state the frame shows. The draws are the episode's own, so a second run stores
    the same dataset; a resume must match the policy settings; bad values are refused naming the flag."""
    from action_images import baselines
    from action_images.baselines import policy as baseline_policy

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    drivers = []
    monkeypatch.setattr(baselines, "load_model", lambda path: ("model", path))

    def make(model, settings, **kw):
        assert model == ("model", str(tmp_path / "ckpt")) and settings.sampler_steps == 2
        drivers.append(SideStepper())
        return drivers[-1]

    monkeypatch.setattr(baseline_policy, "make_policy", make)
    argv = ("--tasks", "reach_fake", "--episodes", "4", "--policy", str(tmp_path / "ckpt"), "--policy-steps", "3",
            "--policy-sampler-steps", "2")
    assert collect.run(args_for(tmp_path / "p", *argv)) == 0
    assert collect.run(args_for(tmp_path / "q", *argv)) == 0
    ds = LeRobotDataset(tmp_path / "p")
    attempts = json.loads((tmp_path / "p" / "meta/collect.json").read_text())["tasks"]["reach_fake"]["attempts"]
    assert len(drivers[0].resets) == attempts                           # every attempt, failed ones too
    assert {ds.episode_info(i)["extra/seed"] for i in range(ds.num_episodes)} <= set(drivers[0].resets)
    driven = 0
    for i in range(ds.num_episodes):
        ep, info = ds.episode(i), ds.episode_info(i)
        k = info["extra/takeover"]                                  # the steps the policy drove
        assert 1 <= k <= min(3, len(ep))
        np.testing.assert_allclose(ep.actions[:, :3], ep.states[:, :3] + 0.01, atol=1e-6)    # the expert's labels
        steps = np.diff(ep.states[:, :3], axis=0)
        n = min(k, len(ep) - 1)
        np.testing.assert_allclose(steps[:n], np.tile([0.0, 0.02, 0.0], (n, 1)), atol=1e-6)   # the policy's moves
        np.testing.assert_allclose(steps[n:], 0.01, atol=1e-6)                                # then the expert's
        driven += n
        np.testing.assert_array_equal(LeRobotDataset(tmp_path / "q").episode(i).actions, ep.actions)
    assert driven > 0 and drivers[0].calls >= driven
    config = json.loads((tmp_path / "p" / "meta/collect.json").read_text())["config"]
    assert (config["policy"], config["policy_steps"], config["policy_sampler_steps"]) == (
        str((tmp_path / "ckpt").resolve()), 3, 2)
    assert collect.run(args_for(tmp_path / "p", "--tasks", "reach_fake", "--episodes", "5", "--resume")) == 2
    assert "policy: was" in capsys.readouterr().err
    # a run stopped after 2 episodes and resumed to 4 stores what the uninterrupted run did
    assert collect.run(args_for(tmp_path / "r", *argv[:2], "--episodes", "2", *argv[4:])) == 0
    assert collect.run(args_for(tmp_path / "r", *argv[:2], "--episodes", "4", *argv[4:], "--resume")) == 0
    resumed, whole = summary(tmp_path / "r"), summary(tmp_path / "p")
    assert len(resumed) == len(whole) == 4
    for a, b in zip(resumed, whole):
        assert a[:2] == b[:2]
        np.testing.assert_array_equal(a[2], b[2])
    # the policy's settings without --policy are named as unused
    assert collect.run(args_for(tmp_path / "w", "--tasks", "reach_fake", "--episodes", "1", "--policy-steps", "5")) == 0
    assert "apply with --policy only" in capsys.readouterr().err
    for flag, value in (("--policy-steps", "0"), ("--policy-sampler-steps", "0"), ("--policy-sampler-steps", "99"),
                        ("--policy", str(tmp_path / "nothing"))):
        extra = () if flag == "--policy" else ("--policy", str(tmp_path / "ckpt"))
        assert collect.run(args_for(tmp_path / "bad", "--tasks", "reach_fake", *extra, flag, value)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "bad").exists()


def test_bad_arguments(tmp_path, capsys):
    assert collect.run(args_for(tmp_path / "d", "--tasks", "nope")) == 2
    assert "choose from" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    (tmp_path / "afile").write_text("keep")
    for out, says in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "d", "a parent is a file")):
        assert collect.run(args_for(out, "--tasks", "reach_fake", "--episodes", "1")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out" in err[0] and says in err[0], err
    assert (tmp_path / "afile").read_text() == "keep"


def test_max_attempts_gives_up_with_status_1(tmp_path, capsys):
    """Too few attempts for the episodes asked: exit 1, every attempt accounted for, the stored ones kept."""
    out = tmp_path / "d"
    assert collect.run(args_for(out, "--tasks", "reach_fake", "--episodes", "2", "--max-attempts", "1")) == 1
    assert "gave up after 1 attempts on reach_fake" in capsys.readouterr().err
    rec = json.loads((out / "meta/collect.json").read_text())
    assert rec["status"] == "incomplete"
    assert rec["tasks"]["reach_fake"]["attempts"] == 1
    stored = rec["tasks"]["reach_fake"]["stored"]
    assert stored + rec["tasks"]["reach_fake"]["failed_attempts"] == 1
    assert LeRobotDataset(out).num_episodes == stored
    # attempt 0 of reach_fake with seed 0 succeeds in the fake sim: the one attempt is stored
    assert stored == 1 and LeRobotDataset(out).episode_info(0)["extra/attempt"] == 0


def collect_real(monkeypatch, out, *argv: str) -> int:
    """``collect`` on the real simulator (in place of the fake one), views front + top."""
    sim = pytest.importorskip("action_images.sim")
    monkeypatch.setattr(collect, "_load_sim", lambda: (sim.make_env, tuple(sim.TASKS)))
    monkeypatch.setattr(collect, "_load_cameras", lambda: tuple(sim.CAMERA_NAMES))
    p = argparse.ArgumentParser()
    collect.add_arguments(p)
    return collect.run(p.parse_args(["--out", str(out), "--cameras", "front,top", *argv]))


def test_real_sim_smoke(tmp_path, monkeypatch):
    """One episode of the real simulator: the expert solves reach_target, so the run completes and stores it."""
    out = tmp_path / "real"
    assert collect_real(monkeypatch, out, "--tasks", "reach_target", "--episodes", "1", "--image-size", "32",
                        "--max-attempts", "3") == 0
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 1 and ds.episode_info(0)["extra/success"] is True
    ep = ds.episode(0)
    assert ep.images["front"].shape == (len(ep), 32, 32, 3) and ep.actions.shape == (len(ep), 8)
    assert ds.cameras["front"].width == 32


def test_real_sim_policy_drives_then_the_expert_finishes(tmp_path, monkeypatch, checkpoint):
    """--policy with a real (tiny, random) checkpoint on the real simulator: it drives the first step or two, the
    expert takes over and solves reach_target, and the episode is stored with its takeover step."""
    out = tmp_path / "dagger"
    assert collect_real(monkeypatch, out, "--tasks", "reach_target", "--episodes", "1", "--image-size", "32",
                        "--max-attempts", "3", "--policy", str(checkpoint), "--policy-steps", "2",
                        "--policy-sampler-steps", "1") == 0
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 1 and ds.episode_info(0)["extra/takeover"] in (1, 2)
    assert ds.episode_info(0)["extra/success"] is True


def test_real_sim_missed_grasps_are_stored(tmp_path, monkeypatch):
    """A pick_cube demo with a planted miss: stored, with the miss in extra/grasp_miss (metres, 0 when none)."""
    out = tmp_path / "miss"
    assert collect_real(monkeypatch, out, "--tasks", "pick_cube", "--episodes", "1", "--image-size", "16",
                        "--missed-grasps", "1") == 0
    info = LeRobotDataset(out).episode_info(0)
    assert info["extra/success"] is True
    assert collect.MISS_DISTANCE[0] <= abs(info["extra/grasp_miss"]) <= collect.MISS_DISTANCE[1]


# a stand-in for another suite (Meta-World) where the built-in experts' flags do not apply
OTHER_SUITE = argparse.Namespace(name="metaworld", hand_cameras=(), max_rig_views=4,
                                 parse_tasks=lambda spec, flag: [spec], collect_cameras=("front",),
                                 camera_rig_files=False)


@pytest.mark.parametrize("flag, key, default, other, task", [("--push-style", "push_style", "jaw", "palm", "push_cube"),
                                                          ("--stack-sizes", "stack_sizes", "fixed", "equal",
                                                           "stack_cube")])
def test_a_task_flag_is_recorded_and_must_match_on_resume(tmp_path, capsys, flag, key, default, other, task):
    """--push-style, --stack-sizes: recorded in meta/collect.json (the task's own by default), a resume with another
    value is refused, another suite refuses the flag in one line, and a collection without its task says the flag
    changes nothing."""
    argv = ("--tasks", "push_fake", "--episodes", "1")
    assert collect.run(args_for(tmp_path / "a", *argv)) == 0
    assert json.loads((tmp_path / "a" / "meta/collect.json").read_text())["config"][key] == default
    assert collect.run(args_for(tmp_path / "p", *argv, flag, other)) == 0
    assert json.loads((tmp_path / "p" / "meta/collect.json").read_text())["config"][key] == other
    assert f"{task} is not among --tasks" in capsys.readouterr().err
    assert collect.run(args_for(tmp_path / "p", *argv[:2], "--episodes", "2", "--resume")) == 2
    assert f"{key}: was '{other}', now '{default}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"{flag} is not supported with --suite"):
        collect.check_args(args_for(tmp_path / "m", *argv, flag, other), fake.TASKS, tuple(fake.EYES),
                           suite=OTHER_SUITE)


def test_real_sim_stack_sizes_equal_reaches_the_task(tmp_path, monkeypatch):
    """collect --stack-sizes equal hands the sizes to stack_cube: the stored demo succeeds, and the cube it moves
    rests at the base's height before it is lifted."""
    from action_images.sim.tasks.stack_cube import BASE_HALF
    out = tmp_path / "equal"
    assert collect_real(monkeypatch, out, "--tasks", "stack_cube", "--episodes", "1", "--image-size", "16",
                        "--stack-sizes", "equal") == 0
    ds = LeRobotDataset(out)
    assert ds.episode_info(0)["extra/success"] is True
    grasp_z = ds.episode(0).actions[:, 2].min()      # the expert's target at the cube's centre while it grasps
    assert grasp_z == pytest.approx(BASE_HALF, abs=0.004)


def test_grasp_wait_is_checked_recorded_and_must_match_on_resume(tmp_path, capsys):
    """--grasp-wait: in 0..20, recorded in meta/collect.json (0 by default and for datasets from before the flag), a
    resume with another wait is refused, a collection without a grasping expert says it changes nothing, another
    suite refuses it."""
    argv = ("--tasks", "push_fake", "--episodes", "1")
    assert collect.run(args_for(tmp_path / "a", *argv)) == 0
    assert json.loads((tmp_path / "a" / "meta/collect.json").read_text())["config"]["grasp_wait"] == 0
    assert collect.run(args_for(tmp_path / "w", *argv, "--grasp-wait", "4")) == 0
    assert json.loads((tmp_path / "w" / "meta/collect.json").read_text())["config"]["grasp_wait"] == 4
    assert "--grasp-wait holds the jaw only where the expert grasps; push_fake: none" in capsys.readouterr().err
    assert collect.run(args_for(tmp_path / "w", *argv[:2], "--episodes", "2", "--resume")) == 2
    assert "grasp_wait: was 4, now 0" in capsys.readouterr().err
    record = tmp_path / "a" / "meta/collect.json"         # a dataset from before the flag: its wait was 0
    old = json.loads(record.read_text())
    del old["config"]["grasp_wait"]
    record.write_text(json.dumps(old))
    assert collect.run(args_for(tmp_path / "a", *argv[:2], "--episodes", "2", "--resume", "--grasp-wait", "1")) == 2
    assert "grasp_wait: was 0, now 1" in capsys.readouterr().err
    assert collect.run(args_for(tmp_path / "a", *argv[:2], "--episodes", "2", "--resume")) == 0
    assert collect.run(args_for(tmp_path / "x", *argv, "--grasp-wait", "21")) == 2
    assert "--grasp-wait must be in 0..20; got 21" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--grasp-wait is not supported with --suite"):
        collect.check_args(args_for(tmp_path / "m", *argv, "--grasp-wait", "2"), fake.TASKS, tuple(fake.EYES),
                           suite=OTHER_SUITE)


def test_real_sim_grasp_wait_holds_the_closed_jaw_on_the_cube(tmp_path, monkeypatch):
    """collect --grasp-wait 4 reaches stack_cube's expert: its demo holds the closed jaw still at the grasp for
    4 more steps before the lift (7 targets in a row, against 3 without), and still succeeds."""
    def still_closed_run(out, *extra):
        assert collect_real(monkeypatch, out, "--tasks", "stack_cube", "--episodes", "1", "--image-size", "16",
                            *extra) == 0
        ds = LeRobotDataset(out)
        assert ds.episode_info(0)["extra/success"] is True
        a = ds.episode(0).actions
        run = best = 0
        for t in range(1, len(a)):               # the longest run of equal closed-jaw targets
            same = a[t, 7] < 0.5 and np.allclose(a[t, :3], a[t - 1, :3], atol=1e-4)
            run = run + 1 if same else 0
            best = max(best, run)
        return best + 1

    plain, wait = still_closed_run(tmp_path / "plain"), still_closed_run(tmp_path / "wait", "--grasp-wait", "4")
    assert wait == plain + 4, (plain, wait)


def test_real_sim_push_style_palm_reaches_the_expert(tmp_path, monkeypatch):
    """collect --push-style palm hands the style to push_cube's expert: the stored demo pushes with the hand
    horizontal (tool +z, the approach axis, level with the table) and succeeds."""
    out = tmp_path / "palm"
    assert collect_real(monkeypatch, out, "--tasks", "push_cube", "--episodes", "1", "--image-size", "16",
                        "--push-style", "palm") == 0
    ds = LeRobotDataset(out)
    assert ds.episode_info(0)["extra/success"] is True
    from scipy.spatial.transform import Rotation
    approach_z = Rotation.from_quat(ds.episode(0).actions[:, 3:7]).as_matrix()[:, 2, 2]
    assert np.abs(approach_z).min() < 0.05          # level: the palm leads; the jaw style keeps it at -1 (down)


def test_cli_routes_collect(capsys):
    from action_images.cli import main
    with pytest.raises(SystemExit) as e:
        main(["collect", "--help"])
    assert e.value.code == 0 and "--perturb-cameras" in capsys.readouterr().out


def test_real_sim_start_jitter_is_checked_recorded_and_moves_the_first_pose(tmp_path, monkeypatch, capsys):
    """--start-jitter: the demos start away from the home pose (the first stored pose), the value is recorded in
    meta/collect.json (0 by default and for datasets from before the flag) and must match on resume; out of range or
    with another suite it is refused in one line."""
    from action_images.sim.robot import START_POS
    out = tmp_path / "jit"
    assert collect_real(monkeypatch, out, "--tasks", "reach_target", "--episodes", "2", "--image-size", "16",
                        "--start-jitter", "0.1") == 0
    ds = LeRobotDataset(out)
    starts = [ds.episode(i).states[0, :3] for i in range(2)]
    assert all(ds.episode_info(i)["extra/success"] for i in range(2))
    assert min(np.linalg.norm(s - START_POS) for s in starts) > 0.005 and not np.allclose(starts[0], starts[1])
    assert json.loads((out / "meta/collect.json").read_text())["config"]["start_jitter"] == 0.1
    assert collect_real(monkeypatch, out, "--tasks", "reach_target", "--episodes", "3", "--image-size", "16",
                        "--resume") == 2
    assert "start_jitter: was 0.1, now 0.0" in capsys.readouterr().err
    record = out / "meta/collect.json"                  # a dataset from before the flag started at the home pose
    old = json.loads(record.read_text())
    del old["config"]["start_jitter"]
    record.write_text(json.dumps(old))
    assert collect_real(monkeypatch, out, "--tasks", "reach_target", "--episodes", "3", "--image-size", "16",
                        "--resume") == 0
    assert collect_real(monkeypatch, tmp_path / "far", "--tasks", "reach_target", "--episodes", "1",
                        "--start-jitter", "0.2") == 2
    assert "--start-jitter must be in 0.0..0.12 (metres); got 0.2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--start-jitter is not supported with --suite"):
        collect.check_args(args_for(tmp_path / "m", "--tasks", "push_fake", "--start-jitter", "0.05"), fake.TASKS,
                           tuple(fake.EYES), suite=OTHER_SUITE)
