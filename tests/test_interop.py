"""Interoperability: the closed-loop evaluation through a policy server equals the in-process one, the serve
benchmark survives its faults, and datasets written by LeRobot train and label with an external calibration.

    OMP_NUM_THREADS=1 .venv/bin/pytest -q -p no:xdist tests/test_interop.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from action_images.baselines import load_model
from action_images.evaluate import EvalSettings, Evaluation, resolve_settings
from action_images.policy import PolicySettings
from action_images.rollout import EpisodeRunner
from action_images.serve.server import PolicyServer

torch.set_num_threads(1)
SETTINGS = PolicySettings(sampler_steps=2, execute_k=3, max_resamples=0)
TOKEN = "interop-token-0123456789"
# what a record holds that depends on the clock, not on the policy
CLOCK_KEYS = ("wall_s", "latency_s", "latency_parts_s")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def server(model, checkpoint):
    srv = PolicyServer(model, SETTINGS, port=0, token=TOKEN, checkpoint=str(checkpoint))
    srv.start_in_thread()
    yield srv
    srv.stop()


def eval_settings(**kw):
    base = dict(tasks="reach_target", episodes=2, seed=3, image_size=32, max_steps=8, videos=0)
    return EvalSettings(**{**base, **kw})


def stripped(rec):
    return {k: v for k, v in rec.items() if k not in CLOCK_KEYS}


# ---- 1. eval --server ------------------------------------------------------------------------------------------------
def test_remote_episodes_equal_in_process_ones(model, server, tmp_path):
    from action_images.serve.remote import RemotePolicy

    settings = resolve_settings(eval_settings(policy=SETTINGS), model.config, warn=False)
    local = EpisodeRunner(model, tmp_path / "local", settings)
    remote_policy = RemotePolicy(f"ws://127.0.0.1:{server.port}", TOKEN, settings.policy.camera_names)
    remote = EpisodeRunner(None, tmp_path / "remote", settings, policy=remote_policy)
    try:
        for task, k in (("reach_target", 0), ("reach_target", 1), ("press_button", 0)):
            a, b = local.episode(task, k), remote.episode(task, k)
            assert stripped(a) == stripped(b), (task, k)
            assert a["plans"] >= 2 and len(local.policy.chunks) == len(remote.policy.chunks) == a["plans"]
            for ca, cb in zip(local.policy.chunks, remote.policy.chunks):
                np.testing.assert_array_equal(ca.actions, cb.actions)
                np.testing.assert_array_equal(ca.current, cb.current)
                assert ca.decision == cb.decision
            assert all(c.timings["total"] >= c.timings["server"] > 0 for c in remote.policy.chunks)
        # a seed the server was not told would give other noise: the equality above is not an accident
        remote_policy.reset(12345)
        local.policy.reset(3)
        env = local.env
        obs, _ = env.reset(seed=3)
        assert not np.array_equal(local.policy.plan(obs, env.cameras).actions,
                                  remote_policy.plan(obs, env.cameras).actions)
    finally:
        local.close()
        remote.close()
        remote_policy.close()


def test_eval_command_through_the_server_writes_the_same_records(checkpoint, server, tmp_path, capsys):
    from action_images.cli import main
    from action_images.runfiles import read_jsonl

    common = ["--tasks", "reach_target", "--episodes", "2", "--seed", "3", "--image-size", "32", "--max-steps", "8",
              "--videos", "1", "--no-progress"]
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "local"), *common,
                 "--sampler-steps", "2", "--execute-k", "3", "--max-resamples", "0"]) == 0
    url = f"ws://127.0.0.1:{server.port}"
    assert main(["eval", "--server", url, "--token", TOKEN, "--out", str(tmp_path / "remote"), *common]) == 0
    capsys.readouterr()
    local, remote = (read_jsonl(tmp_path / d / "episodes.jsonl") for d in ("local", "remote"))
    assert local[0]["settings"] == remote[0]["settings"]                 # the server's settings are recorded
    assert remote[0]["model_sha256"] is None and remote[0]["server"] == {"model": "wam",
                                                                         "checkpoint": str(checkpoint)}
    assert [stripped(r) for r in local[1:]] == [stripped(r) for r in remote[1:]] and len(local) == 3
    metrics = json.loads((tmp_path / "remote" / "metrics.json").read_text())
    assert metrics["policy"]["server"]["url"] == url and TOKEN not in (tmp_path / "remote" / "metrics.json").read_text()
    assert (tmp_path / "remote" / metrics["videos"]["reach_target"][0]).is_file()

    # refused before any episode: one line naming the flag, exit 2
    for argv, expect in ((["--server", url, "--token", TOKEN, "--sampler-steps", "5"], "--sampler-steps"),
                         (["--server", url, "--token", "wrong-token-0123456789"], "HTTP 401"),
                         (["--server", url, "--checkpoint", str(checkpoint)], "exactly one"),
                         ([], "exactly one"),
                         (["--server", url, "--token", TOKEN, "--policy-cameras", "front,left"],
                          "--policy-cameras: the server")):
        assert main(["eval", "--out", str(tmp_path / "bad"), *common, *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("action-images eval: ") and expect in err[0], (argv, err)


def test_a_server_with_settings_this_client_does_not_know_is_still_served(server, capsys):
    """A newer server may report settings this version lacks: they apply on the server; the client says so once."""
    from action_images.serve.remote import RemotePolicy

    server.metadata["settings"]["from_a_newer_version"] = 3
    try:
        policy = RemotePolicy(f"ws://127.0.0.1:{server.port}", TOKEN, SETTINGS.camera_names)
        policy.close()
    finally:
        del server.metadata["settings"]["from_a_newer_version"]
    assert policy.settings == SETTINGS
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "from_a_newer_version" in err[0]


def test_settings_at_their_defaults_that_older_clients_lack_are_left_out(server):
    """The metadata leaves out settings newer than the first protocol while they are at their defaults (a client
    that predates them refuses names it does not know); a client fills them in, and a server that uses one says so."""
    from action_images.policy import LATER_SETTINGS
    from action_images.serve.remote import RemotePolicy

    sent = server.metadata["settings"]
    assert not set(LATER_SETTINGS) & set(sent)
    assert {**sent, **LATER_SETTINGS} == SETTINGS.to_dict()
    policy = RemotePolicy(f"ws://127.0.0.1:{server.port}", TOKEN, SETTINGS.camera_names)
    policy.close()
    assert policy.settings == SETTINGS
    top = PolicySettings(sampler_steps=2, orientation="topdown", ensemble=2)
    assert top.to_metadata()["orientation"] == "topdown" and top.to_metadata()["ensemble"] == 2


def test_eval_through_the_server_with_workers_and_resume(checkpoint, server, tmp_path, capsys):
    """--jobs: each spawned worker opens its own connection; --resume: an interrupted run through the server finishes
    the missing episodes only. Both give the records of one uninterrupted in-process run."""
    from action_images.cli import main
    from action_images.runfiles import read_jsonl

    common = ["--tasks", "reach_target,press_button", "--episodes", "2", "--seed", "5", "--image-size", "32",
              "--max-steps", "8", "--videos", "0", "--no-progress"]
    url = f"ws://127.0.0.1:{server.port}"
    remote = ["--server", url, "--token", TOKEN]
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "local"), *common,
                 "--sampler-steps", "2", "--execute-k", "3", "--max-resamples", "0"]) == 0
    assert main(["eval", *remote, "--jobs", "2", "--out", str(tmp_path / "jobs"), *common]) == 0

    def by_episode(d):
        return sorted((stripped(r) for r in read_jsonl(tmp_path / d / "episodes.jsonl")[1:]),
                      key=lambda r: (r["task"], r["episode"]))

    local = by_episode("local")
    assert len(local) == 4 and by_episode("jobs") == local

    # an interrupted run: the header and one finished episode, then a torn line
    path = tmp_path / "jobs" / "episodes.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:10])
    assert main(["eval", *remote, "--out", str(tmp_path / "jobs"), *common]) == 2          # refuses to overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(["eval", *remote, "--resume", "--out", str(tmp_path / "jobs"), *common]) == 0
    assert by_episode("jobs") == local and len(read_jsonl(path)) == 5
    metrics = json.loads((tmp_path / "jobs" / "metrics.json").read_text())
    assert metrics["policy"]["server"]["url"] == url


def test_evaluation_needs_a_model_or_a_server(model, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        Evaluation(None, eval_settings(), tmp_path)


# ---- 2. bench serve --------------------------------------------------------------------------------------------------
def test_bench_serve_survives_its_faults(tmp_path, capsys):
    import argparse

    from action_images.benchmarks import serve as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "serve.json"
    assert bench.run(p.parse_args(["--clients", "5", "--seconds", "3", "--sampler-steps", "1",
                                   "--json", str(out)])) == 0, capsys.readouterr()
    r = json.loads(out.read_text())
    assert r["ok"] and r["clients"] == 5 and r["requests"] > 5 and r["throughput_per_s"] > 0
    assert r["robot_errors"] == 0 and r["fault_failures"] == []
    assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p95_ms"] <= r["latency"]["max_ms"]
    for kind in bench.FAULTS:
        assert r["faults"][kind]["counted"] >= 1 and r["faults"][kind]["survived"] == r["faults"][kind]["counted"]
    s = r["server"]
    assert s["alive_at_end"] and s["healthz_at_end"] and s["fresh_client_served"] and s["hung_threads"] == 0
    assert s["memory"]["start"]["rss_mb"] > 0 and s["memory"]["end"]["rss_mb"] > 0
    assert r["arguments"]["clients"] == 5 and "token" not in json.dumps(r["arguments"])
    # bad settings: one line naming the flag, exit 2, nothing started
    for argv, flag in ((["--clients", "0"], "--clients"), (["--seconds", "1e6"], "--seconds")):
        assert bench.run(p.parse_args(argv)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err


def test_the_server_keeps_no_chunk_history(model):
    from action_images.serve.protocol import observation, parse_request
    from action_images.sim import make_env

    srv = PolicyServer(model, SETTINGS, port=0)
    env = make_env("reach_target", cameras=("left", "right"), image_size=32)
    obs, _ = env.reset(seed=0)
    req = parse_request(observation(obs, env.cameras), srv.camera_names)
    env.close()
    policy = srv._make_policy(model, SETTINGS, seed=0)
    for _ in range(3):
        assert "actions" in srv._answer(policy, req)
    assert policy.chunks == [] and policy.last_chunk is not None


# ---- 3. datasets written by LeRobot, with --calibration --------------------------------------------------------------
FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
NATIVE = FIXTURES / "lerobot_v3_native"
CALIB = FIXTURES / "lerobot_v3_native.cameras.json"


def parquet_rows(key):
    import pyarrow.parquet as pq

    table = pq.read_table(NATIVE / "data/chunk-000/file-000.parquet")
    return (table.column(key).combine_chunks().flatten().to_numpy().reshape(-1, 8).astype(np.float64),
            table.column("episode_index").to_numpy())


def test_windows_read_every_frame_of_a_lerobot_dataset_through_its_calibration():
    from action_images.data.lerobot_format import IMAGE_PREFIX
    from action_images.data.windows import Windows, WindowConfig

    wcfg = WindowConfig(image_size=32, horizon=2, stride=4, num_views=2)
    with pytest.raises(FileNotFoundError, match="--calibration FILE"):
        Windows([str(NATIVE)], wcfg)
    w = Windows([str(NATIVE)], wcfg, cameras=CALIB)
    ds = w.datasets[0]
    assert w.camera_names == ["left", "right"] and [IMAGE_PREFIX + c for c in ds.camera_names] == ds.video_keys
    actions, episode_index = parquet_rows("action")
    states, _ = parquet_rows("observation.state")
    frames = 0
    for i in range(ds.num_episodes):
        ep = ds.episode(i)
        T = len(ep)
        np.testing.assert_array_equal(ep.actions, actions[episode_index == i])
        np.testing.assert_array_equal(ep.states, states[episode_index == i])
        for c in ds.camera_names:
            img = ep.images[c]
            assert img.shape == (T, 64, 64, 3) and img.dtype == np.uint8 and img.std() > 1   # decoded, not blank
        frames += T
        win = w.window(0, i, T - 1, np.random.default_rng(i), augment=False)                # the last frame too
        assert win["rgb"].shape == (2, 3, 3, 32, 32) and torch.isfinite(win["poses"]).all()
    assert frames == ds.num_frames == len(actions) == 57


def test_poses_of_a_lerobot_dataset_round_trip_through_its_calibration():
    from action_images.codec import ActionImageCodec
    from action_images.data import LeRobotDataset

    ds = LeRobotDataset(NATIVE, cameras=CALIB)
    cams = [ds.cameras[c] for c in ds.camera_names]
    states = np.concatenate([ds.episode(i).states for i in range(ds.num_episodes)])
    states[:, 3:7] /= np.linalg.norm(states[:, 3:7], axis=1, keepdims=True)   # float32 on disk: renormalise
    codec = ActionImageCodec()
    dec = codec.decode(codec.encode(states, cams), cams)
    assert dec.valid.mean() > 0.9
    err_mm = 1000 * np.linalg.norm(dec.poses[dec.valid, :3] - states[dec.valid, :3], axis=1)
    assert np.median(err_mm) < 1.0 and err_mm.max() < 5.0, err_mm.max()
    np.testing.assert_array_equal(dec.poses[dec.valid, 7] > 0.5, states[dec.valid, 7] > 0.5)
    # the same poses through a calibration that is off by 5 cm: the decode lands elsewhere (the test can fail)
    from action_images.geometry import Camera

    shifted = [Camera(K=c.K, T_cam_world=c.T_cam_world @ np.array([[1, 0, 0, 0.05], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                   [0, 0, 0, 1.0]]), width=c.width,
                      height=c.height, name=c.name) for c in cams]
    off = codec.decode(codec.encode(states, cams), shifted)
    assert np.median(1000 * np.linalg.norm(off.poses[off.valid, :3] - states[off.valid, :3], axis=1)) > 20


def test_train_and_label_a_lerobot_dataset_with_calibration(tmp_path, capsys):
    from action_images.cli import main
    from action_images.data import LeRobotDataset

    run = tmp_path / "run"
    assert main(["train", "--data", str(NATIVE), "--calibration", str(CALIB), "--out", str(run), "--preset",
                 "cpu-tiny", "--steps", "2", "--batch-size", "2", "--threads", "1", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["camera_names"] == ["left", "right"] and (run / "model.safetensors").is_file()
    assert json.loads((run / "train_config.json").read_text())["data"]["calibration"] == str(CALIB)
    assert not (NATIVE / "meta" / "cameras.json").exists() and not (NATIVE / "cache").exists()

    out = tmp_path / "labeled"
    assert main(["label", "--checkpoint", str(run), "--data", str(NATIVE), "--calibration", str(CALIB),
                 "--out", str(out), "--episodes", "0", "--sampler-steps", "1", "--window-step", "4"]) == 0
    labeled = LeRobotDataset(out)                                   # the calibration travels with the labels
    src = LeRobotDataset(NATIVE, cameras=CALIB)
    for c in src.camera_names:
        np.testing.assert_allclose(labeled.cameras[c].K, src.cameras[c].K)
        np.testing.assert_allclose(labeled.cameras[c].T_cam_world, src.cameras[c].T_cam_world)
    assert labeled.num_episodes == 1 and len(labeled.episode(0)) == len(src.episode(0))
    capsys.readouterr()

    # a calibration whose names are not the video keys, a missing file, none at all: one line naming it, exit 2
    doc = json.loads(CALIB.read_text())
    doc["cameras"][1]["name"] = "wrist"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(doc))
    common = ["--data", str(NATIVE), "--preset", "cpu-tiny", "--steps", "1", "--no-progress"]
    cases = [(["train", *common, "--calibration", str(wrong), "--out", str(tmp_path / "a")],
              "no calibration for ['right'], no video for ['wrist']"),
             (["train", *common, "--calibration", str(tmp_path / "nope.json"), "--out", str(tmp_path / "b")],
              "--calibration: no such file"),
             (["train", *common, "--out", str(tmp_path / "c")], "--calibration FILE"),
             (["label", "--checkpoint", str(run), "--data", str(NATIVE), "--calibration", str(wrong),
               "--out", str(tmp_path / "d")], "no video for ['wrist']"),
             (["label", "--checkpoint", str(run), "--data", str(NATIVE), "--out", str(tmp_path / "e")],
              "--calibration FILE")]
    for argv, expect in cases:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
        assert len(err) == 1 and expect in err[0], (argv, err)


def test_logged_episode_reads_every_step_and_changes_nothing(model, tmp_path):
    """EpisodeRunner.logged_episode (the probes' way to read the scene as the policy acts) calls its hook after every
    control step, returns the episode ``episode`` returns for the same pair, and leaves the env's own step in place."""
    settings = resolve_settings(eval_settings(policy=SETTINGS), model.config, warn=False)
    runner = EpisodeRunner(model, tmp_path, settings)
    try:
        seen: list[int] = []
        logged = runner.logged_episode("reach_target", 1, lambda env, out: seen.append(env.step_count))
        env = runner.env
        assert seen == list(range(1, logged["length"] + 1)) and "step" not in vars(env)
        assert stripped(runner.episode("reach_target", 1)) == stripped(logged)
        assert runner.open("reach_target") is env                   # the same task: the same env, kept
    finally:
        runner.close()
