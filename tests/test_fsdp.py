"""FSDP through ``accelerate launch --config_file configs/accelerate/fsdp.yaml``: 2 CPU processes over gloo, on the
tiny DiT and tiny Wan presets. The FSDP run's losses equal the DDP run's, its checkpoints have the one-process layout
(full tensors, safetensors) and load in one process, and ``--resume`` moves between FSDP, DDP and one process. Rank 1
builds the model on the meta device, reads neither the ``--pretrained`` weights nor the checkpoint, and only ever
holds its shards plus one full tensor in transit."""

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


def _launch(config: str, preset: str, out: Path, *extra: str, script: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    target = [str(script)] if script else ["-m", "action_images.train"]
    cmd = [launcher, "launch", "--config_file", str(REPO / "configs" / "accelerate" / config), "--num_processes", "2",
           *target, *_args(preset, out, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


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


# Runs action_images.train in each process and writes what that rank did to $PROBE_OUT/rank<R>.json: the files it
# opened under $PROBE_WATCH (Python-level opens through an audit hook, and every safetensors open, which happens in
# Rust), the bytes of parameters with storage when sharding starts, the bytes of its shards at the end, and the
# largest tensor it received whole from rank 0.
PROBE = r"""
import json, os, sys

import safetensors, safetensors.torch, torch

from action_images import sharding, train

rank = int(os.environ["RANK"])
watch = [os.path.realpath(p) for p in os.environ["PROBE_WATCH"].split(os.pathsep)]
report = {"opened": [], "largest_received": 0}


def note(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except TypeError:                                   # a file descriptor
        return
    if any(p.startswith(w + os.sep) for w in watch):
        report["opened"].append(p)


sys.addaudithook(lambda event, args: note(args[0]) if event == "open" else None)
real_open = safetensors.safe_open


def safe_open(path, *a, **k):
    note(path)
    return real_open(path, *a, **k)


safetensors.safe_open = safetensors.torch.safe_open = safe_open

nbytes = lambda t: t.numel() * t.element_size()
local = lambda t: t.to_local() if sharding.is_sharded(t) else t
real_shard, real_broadcast, models = sharding.shard, sharding.broadcast_full, []


def shard(model, *a, **k):
    models.append(model)
    report["param_bytes"] = sum(nbytes(p) for p in model.parameters())
    report["materialised_before_shard"] = sum(nbytes(p) for p in model.parameters() if not p.is_meta)
    return real_shard(model, *a, **k)


def broadcast_full(full, shape, dtype, device):
    t = real_broadcast(full, shape, dtype, device)
    report["largest_received"] = max(report["largest_received"], nbytes(t))
    return t


sharding.shard, sharding.broadcast_full = shard, broadcast_full
rc = train.main(sys.argv[1:])
model = models[0]
report["shard_bytes"] = sum(nbytes(local(p)) for p in model.parameters())
world = int(os.environ["WORLD_SIZE"])


def own_rows(n):                                        # dim-0 chunks of torch.chunk, as fully_shard cuts them
    chunk = -(-n // world)
    return max(0, min(chunk, n - rank * chunk))


report["expected_shard_bytes"] = sum(nbytes(p) // p.shape[0] * own_rows(p.shape[0]) for p in model.parameters())
report["largest_param"] = max(nbytes(p) for p in model.parameters())
with open(os.path.join(os.environ["PROBE_OUT"], f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
sys.exit(rc)
"""


def _tiny_pipeline(folder: Path) -> Path:
    """A local diffusers folder with the wan-tiny-latent transformer (on 6 latent channels) and the tiny Wan VAE."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from action_images.models import PRESETS
    from action_images.models.latent import TINY_VAE

    bb, z = PRESETS["wan-tiny-latent"]["backbone"], TINY_VAE["z_dim"]
    torch.manual_seed(5)
    WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=bb.num_attention_heads,
                          attention_head_dim=bb.attention_head_dim, in_channels=z, out_channels=z,
                          text_dim=bb.text_dim, freq_dim=bb.freq_dim, ffn_dim=bb.ffn_dim,
                          num_layers=bb.num_layers).save_pretrained(str(folder / "transformer"))
    AutoencoderKLWan(**dict(TINY_VAE, latents_mean=[0.1 * i for i in range(z)],
                            latents_std=[1.0 + 0.1 * i for i in range(z)])).save_pretrained(str(folder / "vae"))
    return folder


def test_fsdp_rank_1_reads_no_weights_and_holds_only_its_shards(tmp_path):
    """--pretrained and --resume under FSDP: rank 0 reads the folder and the checkpoint and sends the tensors; rank 1
    builds on the meta device, opens none of those files, and holds its shards (and one full tensor in transit). The
    run equals the DDP run, through the resume."""
    pytest.importorskip("diffusers")
    pipe = _tiny_pipeline(tmp_path / "pipe")
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    proc = _launch("ddp.yaml", "wan-tiny-latent", ddp, "--steps", "3", "--pretrained", str(pipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    reports = []
    for steps in ("2", "3"):                                       # fresh from --pretrained, then --resume
        probe = tmp_path / f"probe{steps}"
        probe.mkdir()
        extra = ("--resume",) if steps == "3" else ()
        proc = _launch("fsdp.yaml", "wan-tiny-latent", fsdp, "--steps", steps, "--pretrained", str(pipe), *extra,
                       script=script, env={"PROBE_OUT": str(probe),
                                           "PROBE_WATCH": os.pathsep.join([str(pipe), str(fsdp / "checkpoints")])})
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports.append([json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)])
    assert "resumed from" in proc.stderr

    weights = str((pipe / "transformer" / "diffusion_pytorch_model.safetensors").resolve())
    ckpt = str((fsdp / STEP2 / "model.safetensors").resolve())
    (fresh0, fresh1), (resumed0, resumed1) = reports
    assert weights in fresh0["opened"] and weights in resumed0["opened"]          # the probe sees rank 0's reads
    assert ckpt in resumed0["opened"]
    for r0, r1 in reports:
        # rank 1: the folders' config.json files only; a meta skeleton; its dim-0 chunk of every parameter; one full
        # tensor at a time in transit, none bigger than the largest parameter
        assert all(p.endswith("config.json") and p.startswith(str(pipe.resolve())) for p in r1["opened"]), r1
        assert r1["materialised_before_shard"] == 0 < r1["param_bytes"]
        assert r1["shard_bytes"] == r1["expected_shard_bytes"] < r1["param_bytes"]
        assert r1["largest_received"] <= r1["largest_param"]
        assert r0["materialised_before_shard"] == r0["param_bytes"]           # rank 0 built the whole model
        assert r0["shard_bytes"] == r0["expected_shard_bytes"] == r0["param_bytes"] - r1["shard_bytes"]

    rows = {run: train.read_log(run / "log.jsonl") for run in (ddp, fsdp)}
    assert [r["step"] for r in rows[fsdp]] == [1, 2, 3]
    for a, b in zip(rows[ddp], rows[fsdp]):                         # the same weights from the folder, the same resume
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    have, want = load_file(str(fsdp / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert set(have) == set(want) and all(torch.allclose(have[k], want[k], atol=1e-6) for k in want)


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
