"""FSDP through ``accelerate launch --config_file configs/accelerate/fsdp.yaml``: 2 CPU processes over gloo, on the
tiny DiT and tiny Wan presets. The FSDP run's losses equal the DDP run's, its checkpoints have the one-process layout
(full tensors, safetensors) and load in one process, and ``--resume`` moves between FSDP, DDP and one process."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from action_images import train
from action_images.data.windows import SyntheticWindows, WindowConfig, collate
from action_images.wam import WorldActionModel

REPO = Path(__file__).resolve().parents[1]
STEP2 = Path("checkpoints") / "step_00000002"
FILES = ("model.safetensors", STEP2 / "model.safetensors", STEP2 / "ema.safetensors",
         STEP2 / "optimizer.safetensors")


def _args(preset: str, out: Path, *extra: str) -> list[str]:
    return ["--preset", preset, "--data", "synthetic:4", "--batch-size", "1", "--no-progress", "--threads", "1",
            "--log-every", "1", "--out", str(out), *extra]


def _launch(config: str, preset: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--config_file", str(REPO / "configs" / "accelerate" / config), "--num_processes", "2",
           "-m", "action_images.train", *_args(preset, out, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _train(tmp: Path, *extra: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train.main(_args("cpu-tiny", tmp / "r", "--steps", "1", *extra))
    return rc, err.getvalue()


@pytest.mark.parametrize("preset", ["cpu-tiny", "wan-tiny"])
def test_two_process_fsdp_equals_ddp_saves_full_weights_and_resumes_on_one(preset, tmp_path):
    if preset.startswith("wan"):
        pytest.importorskip("diffusers")
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    for config, out in (("ddp.yaml", ddp), ("fsdp.yaml", fsdp)):
        proc = _launch(config, preset, out, "--steps", "2")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fully_shard units over 2 process(es)" in proc.stderr
    rows = {run: train.read_log(run / "log.jsonl") for run in (ddp, fsdp)}
    assert [r["step"] for r in rows[fsdp]] == [1, 2] and rows[fsdp][-1]["world_size"] == 2
    for a, b in zip(rows[ddp], rows[fsdp]):                       # the same steps, sharded or not
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for name in FILES:                                             # full tensors, the one-process layout
        have, want = load_file(str(fsdp / name)), load_file(str(ddp / name))
        assert set(have) == set(want)
        for k in want:
            assert have[k].shape == want[k].shape and have[k].dtype == want[k].dtype, (name, k)
            assert torch.allclose(have[k], want[k], atol=1e-6), (name, k)
    assert json.loads((fsdp / STEP2 / "trainer_state.json").read_text())["world_size"] == 2
    m = WorldActionModel.from_pretrained(fsdp).eval()                       # one process, no FSDP
    ds = SyntheticWindows(WindowConfig.from_model(m.config), seed=0, num_scenes=1)
    s = m.sample(collate([ds[0]]), task="policy", steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(s.act).all()
    if preset == "wan-tiny":                       # FSDP on 2 -> one plain process, as DDP checkpoints do
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = train.main(_args(preset, fsdp, "--steps", "3", "--resume"))
        assert rc == 2 and "--allow-world-size-change" in err.getvalue()
        with contextlib.redirect_stderr(err):
            rc = train.main(_args(preset, fsdp, "--steps", "3", "--resume", "--allow-world-size-change"))
        assert rc == 0, err.getvalue()[-2000:]
        assert [r["world_size"] for r in train.read_log(fsdp / "log.jsonl")] == [2, 2, 1]


@pytest.mark.slow
def test_fsdp_resumes_a_ddp_checkpoint_like_ddp(tmp_path):
    """A DDP checkpoint resumed under FSDP on the same 2 processes continues like the DDP run itself."""
    pytest.importorskip("diffusers")
    ddp, other = tmp_path / "ddp", tmp_path / "other"
    proc = _launch("ddp.yaml", "wan-tiny", ddp, "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import shutil
    shutil.copytree(ddp, other)
    for config, out in (("ddp.yaml", ddp), ("fsdp.yaml", other)):
        proc = _launch(config, "wan-tiny", out, "--steps", "3", "--resume")
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (train.read_log(r / "log.jsonl")[-1] for r in (ddp, other))
    assert a["step"] == b["step"] == 3 and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    have, want = load_file(str(other / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert all(torch.allclose(have[k], want[k], atol=1e-6) for k in want)


def test_fsdp_settings_the_trainer_cannot_honour_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    rc, err = _train(tmp_path)
    assert rc == 2 and "FSDP version 1 is not supported" in err and "fsdp_version: 2" in err
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    rc, err = _train(tmp_path)
    assert rc == 2 and "fsdp_offload_params" in err
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "false")
    rc, err = _train(tmp_path)                       # one process, no process group: not silently unsharded
    assert rc == 2 and "no process group" in err
    assert not (tmp_path / "r" / "log.jsonl").exists()


def test_deepspeed_is_refused_with_the_measured_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    rc, err = _train(tmp_path)
    assert rc == 2 and "DeepSpeed is not supported" in err and "fsdp.yaml" in err
    assert not (tmp_path / "r" / "log.jsonl").exists()
