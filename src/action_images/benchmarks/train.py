"""``action-images bench train``: training throughput, peak memory and sampling latency of each CPU preset.

    action-images bench train --json bench/results/train.json

Per preset (each in a fresh process so peak memory is its own): training tokens/s and samples/s (fp32, AdamW, the
preset's batch size, data preparation excluded and reported separately), peak resident memory, and the latency of
sampling one policy chunk (batch 1, ``--sample-steps`` Euler steps, with and without CFG). Targets: the
default CPU preset trains at >= 5,000 tokens/s and samples a policy chunk in <= 0.3 s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from typing import Any

from action_images.cliflags import Parser
from action_images.runfiles import args_dict, atomic_write_json, environment

DEFAULT_PRESET = "cpu-small"
TARGET_TOKENS_PER_S = 5000.0
TARGET_SAMPLE_S = 0.3


def add_arguments(p: argparse.ArgumentParser) -> None:
    from action_images.models import CPU_PRESETS
    p.add_argument("--presets", default=",".join(CPU_PRESETS), help="comma separated")
    p.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--sample-steps", type=int, default=10, help="Euler steps per sampled chunk")
    p.add_argument("--sample-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="default: 2, or 1 when the machine is busy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--in-process", action="store_true", help="measure in this process (peak memory is shared)")


def measure(preset: str, batch_size: int | None, steps: int, warmup_steps: int, sample_steps: int,
            sample_repeats: int, threads: int, seed: int) -> dict[str, Any]:
    import torch

    from action_images.data.windows import SyntheticWindows, WindowConfig, collate
    from action_images.models import PRESETS
    from action_images.wam import WAMConfig, WorldActionModel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = WAMConfig.from_preset(preset)
    B = batch_size or PRESETS[preset]["batch_size"]
    ds = SyntheticWindows(WindowConfig.from_model(cfg), seed=seed)
    t0 = time.perf_counter()
    batch = collate([ds[i] for i in range(B)])
    data_s = time.perf_counter() - t0
    model = WorldActionModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup_steps + steps):
        t0 = time.perf_counter()
        out = model(batch, generator=torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup_steps:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    model.eval()
    one = {k: (v[:1] if torch.is_tensor(v) else v[:1]) for k, v in batch.items()}
    lat: dict[float, float] = {}
    for cfg_scale in (1.0, 2.0):
        model.sample(one, "policy", steps=sample_steps, cfg_scale=cfg_scale)
        ts = []
        for r in range(sample_repeats):
            t0 = time.perf_counter()
            model.sample(one, "policy", steps=sample_steps, cfg_scale=cfg_scale,
                         generator=torch.Generator().manual_seed(r))
            ts.append(time.perf_counter() - t0)
        lat[cfg_scale] = statistics.median(ts)
    tokens = cfg.tokens_per_sample()
    return {"preset": preset, "parameters": model.num_parameters(), "image_size": cfg.image_size,
            "views": cfg.num_views, "frames": cfg.frames, "tokens_per_sample": tokens, "batch_size": B,
            "threads": threads, "train_step_s": step_s, "train_step_s_min": min(times),
            "train_samples_per_s": B / step_s, "train_tokens_per_s": B * tokens / step_s,
            "data_windows_per_s": B / data_s, "sample_steps": sample_steps, "sample_latency_s": lat[1.0],
            "sample_latency_cfg_s": lat[2.0],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def _child(q, kwargs):  # runs in a spawned process
    try:
        q.put(measure(**kwargs))
    except Exception as e:  # noqa: BLE001 - report, don't hang the parent
        q.put({"preset": kwargs["preset"], "error": repr(e)})


def run(args: argparse.Namespace) -> int:
    from action_images.train import default_threads
    args.threads = args.threads or default_threads()
    results = []
    for preset in [p for p in args.presets.split(",") if p]:
        kw = dict(preset=preset, batch_size=args.batch_size, steps=args.steps, warmup_steps=args.warmup_steps,
                  sample_steps=args.sample_steps, sample_repeats=args.sample_repeats, threads=args.threads,
                  seed=args.seed)
        if args.in_process:
            r = measure(**kw)
        else:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            proc = ctx.Process(target=_child, args=(q, kw))
            proc.start()
            r = q.get()
            proc.join()
        results.append(r)
        if "error" in r:
            print(f"{preset}: ERROR {r['error']}", file=sys.stderr)
            continue
        print(f"{preset:10s} {r['parameters'] / 1e6:5.2f}M params {r['tokens_per_sample']:4d} tok/sample  "
              f"train {r['train_tokens_per_s']:7.0f} tok/s {r['train_samples_per_s']:5.1f} samples/s  "
              f"sample {r['sample_latency_s']:.3f}s (cfg {r['sample_latency_cfg_s']:.3f}s)  "
              f"peak {r['peak_rss_mb']:.0f} MB")
    default = next((r for r in results if r.get("preset") == DEFAULT_PRESET and "error" not in r), None)
    targets = {"preset": DEFAULT_PRESET, "train_tokens_per_s_min": TARGET_TOKENS_PER_S,
               "sample_latency_s_max": TARGET_SAMPLE_S}
    if default:
        targets["train_tokens_per_s_met"] = default["train_tokens_per_s"] >= TARGET_TOKENS_PER_S
        targets["sample_latency_met"] = default["sample_latency_s"] <= TARGET_SAMPLE_S
    doc = {"command": "action-images bench train", "args": args_dict(args), "seed": args.seed,
           "environment": environment(), "targets": targets, "results": results}
    if args.json:
        atomic_write_json(args.json, doc)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    parser = Parser(prog="action-images bench train")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
