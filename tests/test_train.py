"""Training: windows, resume bit-for-bit, run-dir safety, 2-process DDP via accelerate, benchmark smoke test."""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from action_images import train
from action_images.codec import ActionImageCodec
from action_images.data.windows import SyntheticWindows, WindowConfig, collate, keyframe_times, window_poses
from action_images.geometry import Camera
from action_images.wam import WorldActionModel

TINY = ["--preset", "cpu-tiny", "--data", "synthetic:4", "--batch-size", "2", "--log-every", "1", "--no-progress",
        "--threads", "1", "--warmup", "2"]


def train_main(*argv: str) -> int:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return train.run(p.parse_args(list(argv)))


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in train.read_log(run / "log.jsonl")]


def test_windows_shapes_alignment_and_determinism():
    cfg = WindowConfig(image_size=32, num_views=2, horizon=3, stride=2)
    ds = SyntheticWindows(cfg, seed=0, num_scenes=3)
    w = ds[5]
    assert w["rgb"].shape == (2, 4, 3, 32, 32) and w["act"].shape == (2, 4, 3, 32, 32)
    assert w["plucker"].shape == (2, 6, 32, 32) and w["poses"].shape == (4, 8)
    assert -1 <= float(w["rgb"].min()) and float(w["rgb"].max()) <= 1 and float(w["act"].min()) >= -1
    assert torch.equal(ds[5]["rgb"], w["rgb"]) and not torch.equal(ds[6]["rgb"], w["rgb"])
    # the action images were drawn with the augmented (cropped + resized) cameras: decoding them recovers the poses
    cams = [Camera(K=w["K"][v].numpy(), T_cam_world=w["T_cam_world"][v].numpy(), width=32, height=32)
            for v in range(2)]
    imgs = ((w["act"].permute(0, 1, 3, 4, 2).numpy() + 1) / 2).astype(np.float32)
    res = ActionImageCodec().decode(imgs, cams)
    ok = res.valid
    assert ok.sum() >= 2
    err = np.linalg.norm(res.poses[ok, :3] - w["poses"][ok, :3].numpy(), axis=-1)
    assert np.median(err) < 0.01, err
    # frame alignment: current frame from the state, keyframes from the targets that led there
    times = keyframe_times(38, 40, 3, 2)
    assert times.tolist() == [38, 39, 39, 39]
    states, actions = np.arange(40)[:, None] * np.ones(8), 100 + np.arange(40)[:, None] * np.ones(8)
    assert window_poses(states, actions, times)[:, 0].tolist() == [38, 138, 138, 138]
    b = collate([ds[0], ds[1]])
    assert b["rgb"].shape[0] == 2 and isinstance(b["instruction"], list)


def test_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main(*TINY, "--out", str(a), "--steps", "6", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "3", "--seed", "3") == 0
    assert train_main(*TINY, "--out", str(b), "--steps", "6", "--seed", "3", "--resume") == 0
    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == list(range(1, 7)) and la == lb  # bit-for-bit, every step
    wa = load_file(str(a / "checkpoints" / "step_00000006" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ea, eb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert (a / "loss.png").exists() and (a / "config.json").exists()
    m = WorldActionModel.from_pretrained(a)  # the run dir loads as a model (EMA weights)
    assert m.config.preset == "cpu-tiny"
    assert not any(p.name.startswith(".tmp") for p in (a / "checkpoints").iterdir())


def test_run_dir_is_protected_and_resume_checks_settings(tmp_path):
    run = tmp_path / "r"
    assert train_main(*TINY, "--out", str(run), "--steps", "1") == 0
    with pytest.raises(FileExistsError):
        train_main(*TINY, "--out", str(run), "--steps", "2")
    with pytest.raises(ValueError, match="seed"):
        train_main(*TINY, "--out", str(run), "--steps", "2", "--seed", "9", "--resume")


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate launcher not installed")
def test_two_process_ddp_with_accelerate(tmp_path):
    run = tmp_path / "ddp"
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "action_images.train", *TINY, "--out", str(run), "--steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = train.read_log(run / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["world_size"] == 2 for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert (run / "checkpoints" / "step_00000003" / "model.safetensors").exists()


def test_benchmark_smoke(tmp_path):
    from action_images.benchmarks import train as bench
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "b.json"
    args = p.parse_args(["--presets", "cpu-tiny", "--steps", "2", "--warmup-steps", "1", "--sample-repeats", "1",
                         "--json", str(out), "--in-process"])
    assert bench.run(args) == 0
    res = json.loads(out.read_text())
    r = res["results"][0]
    assert r["preset"] == "cpu-tiny" and r["train_tokens_per_s"] > 0 and r["sample_latency_s"] > 0


@pytest.fixture(scope="module")
def lerobot_root(tmp_path_factory):
    """A 4-episode LeRobot v3 dataset written from synthetic scenes (3 cameras, 40 px)."""
    from action_images.data import DatasetWriter
    root = tmp_path_factory.mktemp("ds") / "pick"
    syn = SyntheticWindows(WindowConfig(), seed=1, num_cameras=3, episode_len=12, native_size=40)
    with DatasetWriter(root, fps=10, cameras=syn.cameras, image_size=(40, 40)) as w:
        for scene in range(4):
            ep = syn.episode(scene)
            images = {c.name: np.stack([syn.render(c, s, ep["cube"], ep["color"], 0.0) for s in ep["states"]])
                      for c in syn.cameras}
            w.add_episode(instruction=ep["instruction"], actions=ep["actions"], states=ep["states"], images=images)
    return root


def test_real_dataset_windows_train_and_openloop(lerobot_root, tmp_path):
    from action_images.data.windows import Windows
    from action_images.metrics import evaluate_open_loop
    ds = Windows([str(lerobot_root)], WindowConfig(image_size=32, num_views=2, horizon=2, stride=2), seed=0)
    w = ds[3]
    assert w["rgb"].shape == (2, 3, 3, 32, 32) and w["plucker"].shape == (2, 6, 32, 32)
    cams = [Camera(K=w["K"][v].numpy(), T_cam_world=w["T_cam_world"][v].numpy(), width=32, height=32)
            for v in range(2)]
    res = ActionImageCodec().decode(((w["act"].permute(0, 1, 3, 4, 2).numpy() + 1) / 2).astype(np.float32), cams)
    assert np.median(np.linalg.norm(res.poses[res.valid, :3] - w["poses"][res.valid, :3].numpy(), axis=-1)) < 0.01
    run = tmp_path / "run"
    assert train_main("--preset", "cpu-tiny", "--data", str(lerobot_root), "--out", str(run), "--steps", "2",
                      "--batch-size", "2", "--no-progress", "--threads", "1") == 0
    model = WorldActionModel.from_pretrained(run).eval()
    c = model.config
    with torch.no_grad():  # a fresh output layer = "nothing moves": the check must then equal its baseline
        model.backbone.out.weight.zero_()
        model.backbone.out.bias.zero_()
    fig = tmp_path / "streams.png"
    r = evaluate_open_loop(model, str(lerobot_root), episodes=[0, 1], windows_per_episode=2, steps=2,
                           tasks=("policy",), figure=str(fig))["learning_check"]
    assert r["decode_valid_rate"] == 1.0 and r["keyframes"] == 2 * 2 * c.horizon
    import imageio.v3 as iio
    grid = iio.imread(fig)                      # views x 4 rows (real/generated RGB, real/generated action) x F frames
    assert grid.shape == (c.num_views * 4 * c.image_size * 3, c.frames * c.image_size * 3, 3)
    assert abs(r["pos_err_cm_median"] - r["still_baseline_cm_median"]) < 1e-3
    assert abs(r["rgb_psnr_db"] - r["copy_frame_psnr_db"]) < 1e-3


def test_windows_start_before_the_hold(tmp_path):
    """Frames recorded after success (``extra/hold_steps``) are only ever future keyframes, never start frames."""
    from action_images.data import DatasetWriter
    from action_images.data.windows import Windows
    syn = SyntheticWindows(WindowConfig(), seed=1, num_cameras=2, episode_len=10, native_size=32)
    ep = syn.episode(0)
    images = {c.name: np.stack([syn.render(c, s, ep["cube"], ep["color"], 0.0) for s in ep["states"]])
              for c in syn.cameras}
    with DatasetWriter(tmp_path / "d", fps=10, cameras=syn.cameras, image_size=(32, 32)) as w:
        w.add_episode(instruction=ep["instruction"], actions=ep["actions"], states=ep["states"], images=images,
                      extra={"hold_steps": 6})
    ds = Windows([str(tmp_path / "d")], WindowConfig(image_size=32, num_views=2, horizon=2, stride=2), seed=0)
    assert ds.num_starts(0, 0) == 4
    starts = {int(ds[k]["t0"]) for k in range(60)}
    assert starts == {0, 1, 2, 3}
    w = ds.window(0, 0, 3, np.random.default_rng(0), augment=False)       # keyframes 5 and 7 lie in the hold
    np.testing.assert_allclose(w["poses"][1:].numpy(), ep["actions"][[4, 6]])


def test_openloop_cli_writes_the_learning_check(lerobot_root, tmp_path):
    from action_images import openloop
    run = tmp_path / "run"
    assert train_main("--preset", "cpu-tiny", "--data", str(lerobot_root), "--out", str(run), "--steps", "1",
                      "--batch-size", "2", "--no-progress", "--threads", "1") == 0
    out = tmp_path / "ol.json"
    assert openloop.main(["--checkpoint", str(run), "--data", str(lerobot_root), "--episodes", "2", "--starts", "1",
                          "--steps", "1", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["windows"] == 2 and res["seed"] == 0 and res["keyframes"] == 2 * 2
    for k in ("pos_err_cm_median", "still_baseline_cm_median", "gripper_accuracy", "rgb_psnr_db",
              "copy_frame_psnr_db"):
        assert isinstance(res[k], float), k
    one = res["one_step_mse"]["1"]
    assert set(one) == {"rgb_model", "rgb_copy", "act_model", "act_copy"} and one["act_copy"] > 0
