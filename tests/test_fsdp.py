"""FSDP through ``accelerate launch --config_file configs/accelerate/fsdp.yaml``: 2 CPU processes over gloo, on the
tiny DiT and tiny Wan presets. The FSDP run's losses equal the DDP run's, its checkpoints have the one-process layout
(full tensors, safetensors) and load in one process, and ``--resume`` moves between FSDP, DDP and one process. Rank 1
builds the model on the meta device, reads neither the ``--pretrained`` weights nor the checkpoint, and only ever
holds its shards plus one full tensor in transit; rank 0 reads the ``--pretrained`` and checkpoint tensors one at a time
as it sends them, and alone loads the UMT5 text encoder."""

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

from action_images import checkpointing, recorded_init, sharding, train
from action_images.data.windows import SyntheticWindows, WindowConfig, collate
from action_images.wam import WorldActionModel

REPO = Path(__file__).resolve().parents[1]
STEP2 = Path("checkpoints") / "step_00000002"
RNG_BYTES = torch.get_rng_state().numel()                 # a checkpoint's torch RNG state (uint8)
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
    assert "builds the whole model" not in proc.stderr               # rank 0 recorded the build on meta
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
# Rust), the bytes of parameters with storage when sharding starts, the bytes of its shards at the end, the largest
# tensor it received whole from rank 0, the most bytes of tensors read from watched files it held at once, its calls
# of safetensors.torch.load_file and its UMT5 loads; rank 0 also writes the state right after loading, gathered
# (loaded_<part>.safetensors).
PROBE = r"""
import json, os, sys, weakref

import safetensors, safetensors.torch, torch

rank = int(os.environ["RANK"])
out = os.environ["PROBE_OUT"]
watch = [os.path.realpath(p) for p in os.environ["PROBE_WATCH"].split(os.pathsep)]
report = {"opened": [], "largest_received": 0, "load_file_calls": 0, "umt5_loads": 0, "held_from_files": 0,
          "most_held_from_files": 0, "largest_file_tensor": 0}
nbytes = lambda t: t.numel() * t.element_size()


def watched(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except TypeError:                                   # a file descriptor
        return None
    return p if any(p.startswith(w + os.sep) for w in watch) else None


def note(path):
    p = watched(path)
    if p:
        report["opened"].append(p)


def released(n):
    report["held_from_files"] -= n


class Handle:                                           # counts the bytes of tensors read from watched files, alive
    def __init__(self, inner, path):
        self.inner, self.path = inner, path

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *a):
        return self.inner.__exit__(*a)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_tensor(self, name):
        t = self.inner.get_tensor(name)
        if self.path:
            n = nbytes(t)
            report["held_from_files"] += n
            report["most_held_from_files"] = max(report["most_held_from_files"], report["held_from_files"])
            report["largest_file_tensor"] = max(report["largest_file_tensor"], n)
            weakref.finalize(t, released, n)
        return t


sys.addaudithook(lambda event, args: note(args[0]) if event == "open" else None)
real_open, real_load_file = safetensors.safe_open, safetensors.torch.load_file


def safe_open(path, *a, **k):
    note(path)
    return Handle(real_open(path, *a, **k), watched(path))


def load_file(*a, **k):
    report["load_file_calls"] += 1
    return real_load_file(*a, **k)


safetensors.safe_open = safetensors.torch.safe_open = safe_open
safetensors.torch.load_file = load_file                 # before train imports it

from action_images import sharding, train  # noqa: E402

try:
    import transformers
    real_umt5 = transformers.UMT5EncoderModel.from_pretrained.__func__

    def umt5(cls, *a, **k):
        report["umt5_loads"] += 1
        return real_umt5(cls, *a, **k)

    transformers.UMT5EncoderModel.from_pretrained = classmethod(umt5)
except ImportError:
    pass

local = lambda t: t.to_local() if sharding.is_sharded(t) else t
real = {k: getattr(sharding, k) for k in ("shard", "broadcast_full", "load_full_state", "load_sharded_checkpoint",
                                          "defer_to_files")}
models, held = [], []


def save(part, tensors):                                # every rank gathers, rank 0 writes
    sharding.write_gathered(os.path.join(out, f"loaded_{part}.safetensors") if rank == 0 else None, tensors)


def shard(model, *a, **k):
    models.append(model)
    report["param_bytes"] = sum(nbytes(p) for p in model.parameters())
    report["materialised_before_shard"] = sum(nbytes(p) for p in model.parameters() if not p.is_meta)
    return real["shard"](model, *a, **k)


def broadcast_full(full, shape, dtype, device):
    t = real["broadcast_full"](full, shape, dtype, device)
    report["largest_received"] = max(report["largest_received"], nbytes(t))
    return t


def load_full_state(model, full, device):
    real["load_full_state"](model, full, device)
    save("weights", model.state_dict())


def load_sharded_checkpoint(ck, head, ema, opt, sd, device):
    real["load_sharded_checkpoint"](ck, head, ema, opt, sd, device)
    save("ema", ema)
    save("optimizer", sharding.optimizer_tensors(opt)[0])
    held.extend([*ema.values(), *(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v))])


def defer_to_files(model, placeholders):
    streamed = real["defer_to_files"](model, placeholders)
    report["streamed_bytes"] = sum(nbytes(p) for n, p in model.named_parameters() if n in streamed)
    return streamed


saving = []                                             # the full tensors gathered while a checkpoint is written
report.update(saves=0, gathered_while_saving=0, full_alive=0, most_full_alive=0)


def write_checkpoint_tensors(folder, *a, **k):
    report["saves"] += 1
    saving.append(True)
    try:
        return real["write_checkpoint_tensors"](folder, *a, **k)
    finally:
        saving.pop()


def gone():
    report["full_alive"] -= 1


def full_tensor(x):
    t = real["full_tensor"](x)
    if saving and sharding.is_sharded(x):
        report["gathered_while_saving"] += 1
        report["full_alive"] += 1
        report["most_full_alive"] = max(report["most_full_alive"], report["full_alive"])
        weakref.finalize(t, gone)
    return t


real.update(write_checkpoint_tensors=sharding.write_checkpoint_tensors, full_tensor=sharding.full_tensor)
for k, v in (("shard", shard), ("broadcast_full", broadcast_full), ("load_full_state", load_full_state),
             ("load_sharded_checkpoint", load_sharded_checkpoint), ("defer_to_files", defer_to_files),
             ("write_checkpoint_tensors", write_checkpoint_tensors), ("full_tensor", full_tensor)):
    setattr(sharding, k, v)
rc = train.main(sys.argv[1:])
model = models[0]
report["shard_bytes"] = sum(nbytes(local(p)) for p in model.parameters())
world = int(os.environ["WORLD_SIZE"])


def own_rows(n):                                        # dim-0 chunks of torch.chunk, as fully_shard cuts them
    chunk = -(-n // world)
    return max(0, min(chunk, n - rank * chunk))


report["expected_shard_bytes"] = sum(nbytes(p) // p.shape[0] * own_rows(p.shape[0]) for p in model.parameters())
report["largest_tensor"] = max(nbytes(t) for t in (*model.parameters(), *model.buffers()))
# the resumed EMA and AdamW state: the bytes of their storage, against the bytes of their local parts (a shard that
# is a view of the full tensor it was cut from would keep that tensor alive)
report["held_storage_bytes"] = sum({local(t).untyped_storage().data_ptr(): local(t).untyped_storage().nbytes()
                                    for t in held}.values())
report["held_local_bytes"] = sum(nbytes(local(t)) for t in held)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
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


def _config_and_seed(argv: list[str]) -> tuple:
    """The model config and seed of a ``train`` with ``argv`` (same recipe, dataset)."""
    import argparse
    from action_images import recipe as recipes

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    recipe = recipes.from_args(parser.parse_args(argv), warn=lambda m: None)
    dataset = train.build_dataset(recipe, train.build_config(recipe))
    return train.build_config(recipe, camera_names=recipe.data.cameras or dataset.camera_names), recipe.optim.seed


def _one_process_model(argv: list[str]) -> torch.nn.Module:
    """The model a one-process ``train`` with ``argv`` builds before its first step (same recipe, dataset, seed)."""
    cfg, seed = _config_and_seed(argv)
    torch.manual_seed(seed)
    return train.build_model(cfg)


def _assert_equal_tensors(have: dict, want: dict, what: str) -> None:
    assert set(have) == set(want), what
    for k in want:
        assert have[k].dtype == want[k].dtype and torch.equal(have[k], want[k]), (what, k)


def test_fsdp_rank_0_streams_pretrained_and_resumed_tensors_rank_1_reads_none(tmp_path):
    """--pretrained, --resume and --text-encoder under FSDP on 2 processes. Rank 0 reads the folder's and the
    checkpoint's tensors one at a time as it sends them (never load_file, never more than one file tensor held at once;
    on resume it does not open the --pretrained weights) and alone loads UMT5; rank 1 builds on the meta device, opens
    no weights file, loads no UMT5 and holds its shards (and one full tensor in transit). The loaded state equals the
    one-process build and the checkpoint's files bit for bit, and the run equals the DDP run through the resume."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from test_scale import make_umt5

    pipe = _tiny_pipeline(tmp_path / "pipe")
    umt5 = make_umt5(tmp_path / "umt5")
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    scale = ("--pretrained", str(pipe), "--text-encoder", str(umt5))
    proc = _launch("ddp.yaml", "wan-tiny-latent", ddp, "--steps", "3", *scale)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    reports, probes = [], []
    for steps in ("2", "3"):                                       # fresh from --pretrained, then --resume
        probe = tmp_path / f"probe{steps}"
        probe.mkdir()
        extra = ("--resume",) if steps == "3" else ()
        proc = _launch("fsdp.yaml", "wan-tiny-latent", fsdp, "--steps", steps, *scale, *extra,
                       script=script, env={"PROBE_OUT": str(probe),
                                           "PROBE_WATCH": os.pathsep.join([str(pipe), str(fsdp / "checkpoints")])})
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports.append([json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)])
        probes.append(probe)
    assert "resumed from" in proc.stderr

    weights = str((pipe / "transformer" / "diffusion_pytorch_model.safetensors").resolve())
    vae = str((pipe / "vae" / "diffusion_pytorch_model.safetensors").resolve())
    ckpt = str((fsdp / STEP2 / "model.safetensors").resolve())
    (fresh0, fresh1), (resumed0, resumed1) = reports
    assert weights in fresh0["opened"] and vae in fresh0["opened"]              # the probe sees rank 0's reads
    assert ckpt in resumed0["opened"] and weights not in resumed0["opened"]     # resumed: the checkpoint only
    assert fresh0["umt5_loads"] == 1 and resumed0["umt5_loads"] == 0            # then the per-dataset cache
    for r0, r1 in reports:
        # rank 1: the folders' config.json files only; a meta skeleton; its dim-0 chunk of every parameter; one full
        # tensor at a time in transit, none bigger than the model's largest; no UMT5
        assert all(p.endswith("config.json") and p.startswith(str(pipe.resolve())) for p in r1["opened"]), r1
        assert r1["materialised_before_shard"] == 0 < r1["param_bytes"]
        assert r1["shard_bytes"] == r1["expected_shard_bytes"] < r1["param_bytes"]
        assert r1["largest_received"] <= r1["largest_tensor"]
        assert r1["umt5_loads"] == 0
        assert r0["shard_bytes"] == r0["expected_shard_bytes"] == r0["param_bytes"] - r1["shard_bytes"]
        # no whole-file reads; rank 0 holds at most one tensor read from a file at a time (resuming, plus the
        # checkpoint's torch RNG state, read first); the resumed EMA and AdamW shards own their storage
        assert r0["load_file_calls"] == r1["load_file_calls"] == 0
        assert 0 < r0["most_held_from_files"] <= r0["largest_file_tensor"] + RNG_BYTES
        assert r1["most_held_from_files"] == 0
        assert r0["held_storage_bytes"] == r0["held_local_bytes"] and r1["held_storage_bytes"] == r1["held_local_bytes"]
        # checkpoints: each rank gathers one full tensor at a time, which rank 0 streams into its file
        for r in (r0, r1):
            assert r["saves"] >= 1 and r["gathered_while_saving"] > 0 and r["most_full_alive"] == 1, r
    # rank 0 built only what the folder does not hold (the seeded init, the re-shaped input and output layers); the
    # folder's other weights were read as they were sent. Resuming, it built nothing with storage
    assert fresh0["materialised_before_shard"] + fresh0["streamed_bytes"] == fresh0["param_bytes"]
    assert fresh0["streamed_bytes"] > 0.75 * fresh0["param_bytes"]
    assert resumed0["materialised_before_shard"] == 0 and resumed1["held_local_bytes"] > 0

    # exact: the sharded fresh load is the one-process build, the resumed one the checkpoint's files
    fresh = load_file(str(probes[0] / "loaded_weights.safetensors"))
    want = _one_process_model(_args("wan-tiny-latent", fsdp, "--steps", "2", *scale)).state_dict()
    _assert_equal_tensors(fresh, {k: v.contiguous() for k, v in want.items()}, "fresh weights")
    for part, name in (("weights", "model"), ("ema", "ema"), ("optimizer", "optimizer")):
        _assert_equal_tensors(load_file(str(probes[1] / f"loaded_{part}.safetensors")),
                              load_file(str(fsdp / STEP2 / f"{name}.safetensors")), part)

    rows = {run: train.read_log(run / "log.jsonl") for run in (ddp, fsdp)}
    assert [r["step"] for r in rows[fsdp]] == [1, 2, 3]
    for a, b in zip(rows[ddp], rows[fsdp]):                         # the same weights from the folder, the same resume
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    have, want = load_file(str(fsdp / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert set(have) == set(want) and all(torch.allclose(have[k], want[k], atol=1e-6) for k in want)
    assert len(list((fsdp / "cache" / "text").glob("umt5-*/*.safetensors"))) == 4    # 3 synthetic instructions + ""


def test_fsdp_fresh_build_no_rank_holds_the_whole_model(tmp_path):
    """A fresh run without --pretrained under FSDP on 2 processes: rank 0 records the seeded build on the meta device
    and computes each tensor as it sends it, so neither rank materialises the model before sharding; the loaded state
    equals the one-process build bit for bit."""
    pytest.importorskip("diffusers")
    out, probe = tmp_path / "fsdp", tmp_path / "probe"
    probe.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = _launch("fsdp.yaml", "wan-tiny-latent", out, "--steps", "1", script=script,
                   env={"PROBE_OUT": str(probe), "PROBE_WATCH": str(out / "checkpoints")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "builds the whole model" not in proc.stderr
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["materialised_before_shard"] == 0 < r["param_bytes"]
        assert r["shard_bytes"] == r["expected_shard_bytes"] < r["param_bytes"]
        assert r["most_full_alive"] == 1 and r["load_file_calls"] == 0
    want = _one_process_model(_args("wan-tiny-latent", out, "--steps", "1")).state_dict()
    _assert_equal_tensors(load_file(str(probe / "loaded_weights.safetensors")),
                          {k: v.contiguous() for k, v in want.items()}, "fresh weights")


@pytest.mark.parametrize("argv", [("cpu-tiny",), ("cpu-tiny", "--method", "dp"), ("cpu-tiny", "--method", "tokens"),
                                  ("cpu-tiny", "--context-channels", "8"), ("wan-tiny",),
                                  ("wan-tiny-latent", "--finetune", "lora", "--lora-rank", "2")])
def test_recorded_build_computes_every_tensor_of_the_real_build(argv, tmp_path):
    """What rank 0 of a fresh FSDP run builds: the model on meta, and each parameter and buffer computed on demand
    equal bit for bit to a real build with the same seed; the generator is left where a real build leaves it."""
    if argv[0].startswith("wan"):
        pytest.importorskip("diffusers")
    if "lora" in argv:
        pytest.importorskip("peft")
    cfg, seed = _config_and_seed(_args(argv[0], tmp_path / "r", "--steps", "1", *argv[1:]))
    torch.manual_seed(seed)
    want = train.build_model(cfg)
    after = torch.get_rng_state()
    real = {n: t for n, t in (*want.named_parameters(), *want.named_buffers())}
    torch.manual_seed(seed)
    model, sources = recorded_init.build_recorded(lambda: train.build_model(cfg), warn=pytest.fail)
    assert torch.equal(torch.get_rng_state(), after)
    assert all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert set(sources) == set(real)
    for name, (source, key) in sources.items():
        _assert_equal_tensors({name: source[key]}, {name: real[name]}, "recorded")
    assert torch.equal(torch.get_rng_state(), after)       # computing a tensor leaves the generator alone


def test_a_build_the_recorder_cannot_replay_runs_for_real():
    """A build that reads data (here ``.item()``) is not recordable: it runs again for real, with the same result."""
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.scale = torch.nn.Parameter(torch.ones(1) * float(self.lin.weight.abs().max().item()))

    torch.manual_seed(0)
    want = Odd()
    after = torch.get_rng_state()
    torch.manual_seed(0)
    said: list[str] = []
    model, sources = recorded_init.build_recorded(Odd, warn=said.append)
    assert sources == {} and "rank 0 builds the whole model" in said[0]
    assert torch.equal(torch.get_rng_state(), after)
    _assert_equal_tensors(model.state_dict(), want.state_dict(), "fallback")


def test_open_checkpoint_reads_headers_then_one_tensor_at_a_time_and_skips_a_damaged_one(tmp_path):
    """What FSDP's rank 0 opens to resume: the same checkpoint and values as read_checkpoint, the tensors read one at
    a time on demand; a truncated file fails its header check, so the previous checkpoint is taken."""
    out = tmp_path / "r"
    with contextlib.redirect_stderr(io.StringIO()):
        assert train.main(_args("cpu-tiny", out, "--steps", "4", "--checkpoint-every", "2")) == 0
    f = out / "checkpoints" / "step_00000004" / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    warnings: list[str] = []
    path, ck = checkpointing.latest_intact_checkpoint(out, warnings.append, read=checkpointing.open_checkpoint)
    assert path.name == "step_00000002" and "skipping damaged checkpoint" in warnings[0]
    full = checkpointing.read_checkpoint(path)
    assert ck["state"] == full["state"] and ck["config"] == full["config"] and torch.equal(ck["rng"], full["rng"])
    for part in ("weights", "ema", "optimizer"):
        assert isinstance(ck[part], sharding.SafetensorsFile) and ck[part].specs == sharding.specs(full[part])
        _assert_equal_tensors({k: ck[part][k] for k in ck[part]}, full[part], part)


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


def test_a_weights_index_cannot_name_files_outside_its_folder(tmp_path):
    """The shards a diffusers weights index names are read only from inside the model folder."""
    from safetensors.torch import save_file

    from action_images.sharding import WEIGHTS_INDEX, weight_files

    outside = tmp_path / "secret.safetensors"
    save_file({"w": torch.zeros(2)}, str(outside))
    folder = tmp_path / "transformer"
    folder.mkdir()
    save_file({"a": torch.ones(2)}, str(folder / "part-1.safetensors"))
    (folder / WEIGHTS_INDEX).write_text(json.dumps({"weight_map": {"a": "part-1.safetensors"}}))
    assert set(weight_files(folder)) == {"a"}
    for bad in ("../secret.safetensors", str(outside)):
        (folder / WEIGHTS_INDEX).write_text(json.dumps({"weight_map": {"a": "part-1.safetensors", "w": bad}}))
        with pytest.raises(ValueError, match="weight_map"):
            weight_files(folder)
    (folder / WEIGHTS_INDEX).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a safetensors index"):
        weight_files(folder)


def test_streamed_safetensors_read_back_like_save_file(tmp_path):
    """What a sharded checkpoint is written with: the header first, then one tensor at a time (any dtype, 0-d and
    empty tensors, non-contiguous sources); the file loads as save_file's does, and merging two files copies them
    tensor by tensor with the later file's tensor winning."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ts = {"w": torch.randn(3, 4).to(torch.bfloat16), "flag": torch.tensor(True), "empty": torch.empty(0, 5),
          "step": torch.tensor(3.0), "idx": torch.arange(7), "view": torch.rand(2, 3, 5)[..., 1]}
    asked: list[str] = []

    def get(k):
        asked.append(k)
        return ts[k]

    sharding.write_safetensors(tmp_path / "a.safetensors", sharding.specs(ts), get, {"format": "pt"})
    assert asked == sharding.write_order(sharding.specs(ts)) and asked[0] == "idx"      # int64 first: aligned
    _assert_equal_tensors(load_file(str(tmp_path / "a.safetensors")), {k: v.contiguous() for k, v in ts.items()}, "a")
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    save_file({"w": torch.zeros(3, 4), "extra": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    sharding.merge_safetensors(tmp_path / "m.safetensors", [tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    merged = load_file(str(tmp_path / "m.safetensors"))
    assert set(merged) == set(ts) | {"extra"} and torch.equal(merged["w"], torch.zeros(3, 4))
    assert torch.equal(merged["idx"], ts["idx"])
    with pytest.raises(ValueError, match="announced"):
        sharding.write_safetensors(tmp_path / "c.safetensors", {"w": [[2], "float32"]}, lambda k: torch.zeros(3))
    assert sharding.nonfinite({"a": torch.tensor([1.0, float("nan")]), "b": torch.ones(2),
                               "i": torch.arange(2)}, torch.device("cpu")) == ["a"]
