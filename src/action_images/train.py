"""``action-images train``: train the world action model (AdamW + warmup, EMA, clipping, accelerate DDP).

    action-images train --data data/pick_cube --out runs/pick --preset cpu-small --minutes 30 --seed 0
    action-images train --data data/pick_cube --out runs/pick --preset cpu-small --minutes 30 --seed 0 --resume
    accelerate launch --multi_gpu --num_processes 2 -m action_images.train --data synthetic --out runs/ddp --steps 20

(on a machine without CUDA ``--multi_gpu`` starts 2 CPU processes over gloo; ``accelerate launch --cpu`` alone
starts only one, and ``python -m torch.distributed.run --nproc_per_node 2 -m action_images.train ...`` works too.)

Reproducibility by construction: batch b of step s on rank r is made of dataset keys ``(s * world + r) * B + j``
and all noise/task/dropout draws come from a generator seeded by (seed, step, rank). A checkpoint therefore only
needs weights, EMA, optimizer state and the step; ``--resume`` continues bit-for-bit (global RNG states are saved
as well, for anything outside that scheme). ``--data synthetic[:N]`` trains on generated scenes (N distinct).

Run directory: ``config.json`` + ``model.safetensors`` (EMA weights; ``WorldActionModel.from_pretrained(RUN)``),
``checkpoints/step_XXXXXXXX/`` (raw + EMA weights, optimizer, trainer state; written to a temp dir, then renamed),
``log.jsonl`` (one line per logged step) and ``loss.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from action_images.data.windows import SyntheticWindows, WindowConfig, Windows, collate
from action_images.models import PRESETS
from action_images.wam import CONFIG_NAME, TASK_NAMES, WEIGHTS_NAME, WAMConfig, WorldActionModel

# arguments that must not change when resuming (they change the trajectory)
TRAJECTORY_ARGS = ("data", "seed", "batch_size", "lr", "warmup", "weight_decay", "ema", "grad_clip")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset dir(s), comma separated; or 'synthetic[:N]'")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps (total)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this many minutes (this invocation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    g = p.add_argument_group("model/data overrides (default: the preset's)")
    g.add_argument("--image-size", type=int)
    g.add_argument("--views", type=int, help="views per window (random subset of the cameras)")
    g.add_argument("--horizon", type=int, help="future keyframes H")
    g.add_argument("--stride", type=int, help="control steps between keyframes")
    g.add_argument("--task-mix", default=None, help="e.g. policy=0.85,world_model=0.05,labeler=0.05,video=0.05")
    g.add_argument("--p-drop-text", type=float, default=None, help="instruction dropout for CFG (default 0.1)")
    g.add_argument("--t-mean", type=float, default=None,
                   help="mean of the logit-normal training t (default 0; > 0 trains more at high noise)")
    g.add_argument("--act-peak-weight", type=float, default=None,
                   help="extra loss weight on the action images' blob pixels (default 10; 0 = uniform)")
    g.add_argument("--loss-target", default=None, choices=["x0", "velocity"],
                   help="x0 (default): clean-clip error, every noise level weighted alike; velocity: the flow-matching "
                        "velocity error (= x0 error / t^2, dominated by nearly clean inputs)")
    g.add_argument("--refine-channels", type=int, default=None,
                   help="DiT only: full-resolution conv refinement head with this many channels (0 = off)")
    g.add_argument("--camera-names", default=None, help="restrict to these cameras (comma separated)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=None, help="per process (default: the preset's)")
    o.add_argument("--lr", type=float, default=5e-4)
    o.add_argument("--warmup", type=int, default=200)
    o.add_argument("--weight-decay", type=float, default=0.01)
    o.add_argument("--ema", type=float, default=0.999)
    o.add_argument("--grad-clip", type=float, default=1.0)
    o.add_argument("--compile", action="store_true", help="torch.compile the model (~1.3x on CPU after ~1 min)")
    o.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="GPU only; fp32 on CPU")
    r = p.add_argument_group("running")
    r.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores/procs, 1 if the machine is busy)")
    r.add_argument("--workers", type=int, default=0, help="data loader processes")
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--checkpoint-every", type=int, default=500, help="steps")
    r.add_argument("--checkpoint-minutes", type=float, default=10.0)
    r.add_argument("--keep-checkpoints", type=int, default=2)
    r.add_argument("--no-progress", action="store_true")


# ----------------------------------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------------------------------

def build_config(args: argparse.Namespace) -> WAMConfig:
    mix = None
    if args.task_mix:
        mix = {k: float(v) for k, v in (kv.split("=") for kv in args.task_mix.split(","))}
        bad = set(mix) - set(TASK_NAMES)
        if bad:
            raise ValueError(f"--task-mix: unknown tasks {sorted(bad)}; known {TASK_NAMES}")
    cfg = WAMConfig.from_preset(args.preset, image_size=args.image_size, num_views=args.views,
                                 horizon=args.horizon, stride=args.stride, task_mix=mix,
                                 p_drop_text=args.p_drop_text, t_mean=getattr(args, "t_mean", None),
                                 act_peak_weight=getattr(args, "act_peak_weight", None),
                                 loss_target=getattr(args, "loss_target", None))
    if getattr(args, "refine_channels", None) is not None:
        if cfg.backbone_kind != "dit":
            raise ValueError("--refine-channels applies to DiT presets only")
        cfg.backbone = {**cfg.backbone, "refine_channels": int(args.refine_channels)}
    return cfg


def build_dataset(args: argparse.Namespace, cfg: WAMConfig):
    wcfg = WindowConfig(image_size=cfg.image_size, num_views=cfg.num_views, horizon=cfg.horizon, stride=cfg.stride,
                        views=tuple(args.camera_names.split(",")) if args.camera_names else None)
    if args.data.startswith("synthetic"):
        n = int(args.data.split(":")[1]) if ":" in args.data else 0
        return SyntheticWindows(wcfg, seed=args.seed, num_scenes=n)
    return Windows([d for d in args.data.split(",") if d], wcfg, seed=args.seed)


class StepBatches(torch.utils.data.Sampler):
    """Infinite batch sampler: step s, rank r -> keys [(s * world + r) * B + j for j < B]."""

    def __init__(self, start_step: int, batch_size: int, rank: int, world: int):
        self.start, self.B, self.rank, self.world = start_step, batch_size, rank, world

    def __iter__(self):
        s = self.start
        while True:
            base = (s * self.world + self.rank) * self.B
            yield list(range(base, base + self.B))
            s += 1


def default_threads(processes: int = 1) -> int:
    """Cores per process, but 1 when the machine is already busy: on a shared 2-core box two OpenMP threads that
    get descheduled wait on each other at every barrier (measured 4x *slower* than one thread at load 7)."""
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] > 0.5 * cores if hasattr(os, "getloadavg") else False
    return 1 if busy else max(1, cores // processes)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def lr_at(step: int, args: argparse.Namespace) -> float:
    return args.lr * min(1.0, (step + 1) / max(1, args.warmup))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    return sorted(p for p in d.glob("step_*") if (p / "trainer_state.json").exists()) if d.exists() else []


def save_checkpoint(out: Path, step: int, wam: WorldActionModel, ema: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer, args: argparse.Namespace, keep: int) -> Path:
    """Write checkpoints/step_N atomically (temp dir, then rename) and refresh the run's EMA export."""
    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = out / "checkpoints" / f".tmp-step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    wam.save_pretrained(tmp)                                             # config.json + model.safetensors (raw)
    save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    tensors, groups = _optimizer_tensors(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    np_state = np.random.get_state()
    state = {"step": step, "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and
                                    not callable(v)},
             "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "param_groups": groups, "time": time.time()}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    # the run-level export (EMA weights) for from_pretrained(RUN)
    save_file({k: v.contiguous() for k, v in ema.items()}, str(out / f".{WEIGHTS_NAME}.tmp"))
    os.replace(out / f".{WEIGHTS_NAME}.tmp", out / WEIGHTS_NAME)
    _atomic_write_text(out / CONFIG_NAME, (final / CONFIG_NAME).read_text())
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, wam: WorldActionModel, ema: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer) -> int:
    state = json.loads((path / "trainer_state.json").read_text())
    wam.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    for k, v in load_file(str(path / "ema.safetensors")).items():
        ema[k].copy_(v)
    _load_optimizer(opt, load_file(str(path / "optimizer.safetensors")), state["param_groups"])
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    s = state["numpy_rng"]
    np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    p = state["python_rng"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    return int(state["step"])


def plot_log(out: Path) -> None:
    rows = read_log(out / "log.jsonl")
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 1, figsize=(7, 4))
    for key in ("loss", "loss_rgb", "loss_act"):
        ax.plot(steps, [r[key] for r in rows], label=key, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (generated parts)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / ".loss.png.tmp.png", dpi=90)
    plt.close(fig)
    os.replace(out / ".loss.png.tmp.png", out / "loss.png")


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    rows = [r for r in read_log(path) if r["step"] <= step]
    _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator
    from tqdm import tqdm

    if args.steps is None and args.minutes is None:
        print("action-images train: give --steps N and/or --minutes M", file=sys.stderr)
        return 2
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=args.mixed_precision)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if accelerator.device.type == "cpu":
        torch.set_num_threads(args.threads or default_threads(world))
    out = Path(args.out)
    cfg = build_config(args)
    args.batch_size = args.batch_size or PRESETS[args.preset]["batch_size"]

    torch.manual_seed(args.seed)
    wam = WorldActionModel(cfg)
    ema = {k: v.detach().clone().float() for k, v in wam.state_dict().items()}
    decay_params = [p for n, p in wam.named_parameters() if p.ndim >= 2 and "emb" not in n]
    other_params = [p for n, p in wam.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": args.weight_decay},
                             {"params": other_params, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.99))

    start = 0
    ckpts = checkpoints(out)
    if args.resume and ckpts:
        saved = json.loads((ckpts[-1] / "trainer_state.json").read_text())
        saved_cfg = json.loads((ckpts[-1] / CONFIG_NAME).read_text())["config"]
        diff = [k for k in TRAJECTORY_ARGS if saved["args"].get(k) != getattr(args, k)]
        diff += [f"config.{k}" for k in saved_cfg if saved_cfg[k] != cfg.to_dict().get(k)]
        if diff:
            raise ValueError(f"--resume {out}: settings differ from the checkpoint ({diff}); use the same arguments")
        start = load_checkpoint(ckpts[-1], wam, ema, opt)
        if main:
            _truncate_log(out / "log.jsonl", start)
            print(f"resumed from {ckpts[-1]} (step {start})", file=sys.stderr)
    elif not args.resume and main and (ckpts or (out / "log.jsonl").exists()):
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        _atomic_write_text(out / "train_args.json", json.dumps({k: v for k, v in vars(args).items()
                                                                  if not k.startswith("_") and not callable(v)},
                                                                 indent=2))
    accelerator.wait_for_everyone()

    model = torch.compile(wam) if args.compile else wam
    model, opt = accelerator.prepare(model, opt)
    dataset = build_dataset(args, cfg)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepBatches(start, args.batch_size, rank, world),
                                         num_workers=args.workers, collate_fn=collate,
                                         persistent_workers=args.workers > 0)
    tokens_per_step = cfg.tokens_per_sample() * args.batch_size * world
    bar = tqdm(total=args.steps, initial=start, disable=not main or args.no_progress, dynamic_ncols=True,
               desc=f"train {cfg.preset}")
    t_begin = t_last = t_ckpt = time.perf_counter()
    step, last_logged, log_f = start, start, (open(out / "log.jsonl", "a") if main else None)
    sums: dict[str, float] = {}
    it = iter(loader)
    try:
        while args.steps is None or step < args.steps:
            batch = next(it)
            lr = lr_at(step, args)
            for gr in opt.param_groups:
                gr["lr"] = lr
            metrics = model(batch, generator=step_generator(args.seed, step, rank))
            accelerator.backward(metrics["loss"])
            grad_norm = accelerator.clip_grad_norm_(wam.parameters(), args.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            d = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in wam.state_dict().items():
                    ema[k].lerp_(v.detach().float(), 1.0 - d)
            vals = torch.stack([metrics[k].detach().float() for k in sorted(metrics)] + [grad_norm.float()])
            vals = accelerator.reduce(vals, reduction="mean") if world > 1 else vals
            for k, v in zip(sorted(metrics) + ["grad_norm"], vals.tolist()):
                sums[k] = sums.get(k, 0.0) + v
            now = time.perf_counter()
            flags = torch.tensor([args.minutes is not None and now - t_begin >= 60 * args.minutes,
                                  now - t_ckpt >= 60 * args.checkpoint_minutes], dtype=torch.float32,
                                 device=accelerator.device)
            if world > 1:  # every rank must agree on stopping/checkpointing
                flags = accelerator.reduce(flags, reduction="sum")
            stop, time_ckpt = bool(flags[0] > 0), bool(flags[1] > 0)
            if step % args.log_every == 0 or stop or step == args.steps:
                n, dt = step - last_logged, now - t_last
                row = {"step": step, **{k: v / n for k, v in sums.items()}, "lr": lr,
                       "samples_per_s": n * args.batch_size * world / dt, "tokens_per_s": n * tokens_per_step / dt,
                       "elapsed_s": now - t_begin, "world_size": world}
                if main:
                    log_f.write(json.dumps(row) + "\n")
                    log_f.flush()
                    bar.set_postfix(loss=f"{row['loss']:.4f}", act=f"{row['loss_act']:.4f}",
                                    tok_s=f"{row['tokens_per_s']:.0f}")
                sums, last_logged, t_last = {}, step, now
            bar.update(1)
            if step % args.checkpoint_every == 0 or time_ckpt or stop or step == args.steps:
                if main:
                    save_checkpoint(out, step, wam, ema, opt, args, args.keep_checkpoints)
                    plot_log(out)
                accelerator.wait_for_everyone()
                t_ckpt = time.perf_counter()
            if stop:
                break
    finally:
        bar.close()
        if log_f:
            log_f.close()
    if main:
        print(f"done: step {step}, run in {out} ({(time.perf_counter() - t_begin) / 60:.1f} min)", file=sys.stderr)
    accelerator.end_training() if hasattr(accelerator, "end_training") else None
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="action-images train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
