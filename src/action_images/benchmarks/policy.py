"""Policy latency per replanning step: observe -> generate -> decode -> chunk, in the real sim.

    action-images bench policy --preset cpu-small --json bench/results/policy.json       # fresh (untrained) weights
    action-images bench policy --checkpoint checkpoints/cpu-small --sampler-steps 10 --json /tmp/p.json
    action-images bench policy --checkpoint checkpoints/rig8-ctx-recover-noise-9k --rig-views 6 --sampler-steps 3

A fresh model costs the same per step as a trained one of the same preset (same tokens, same network), so latency can
be measured before a checkpoint exists. The env is stepped with the policy's actions between replans (so observations
change), but env time is reported separately and is not part of the latency.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from action_images.benchmarks import write_json
from action_images.cliflags import add_sampler_steps
from action_images.models import PRESETS
from action_images.runfiles import args_dict, environment, split_list

os.environ.setdefault("MUJOCO_GL", "egl")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="run directory; default: a fresh model of --preset")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--task", default="pick_cube")
    p.add_argument("--cameras", default=None,
                   help="cameras rendered, comma separated (default: the policy cameras, else front,left,right)")
    p.add_argument("--policy-cameras", default=None,
                   help="cameras the model sees (default: the model's camera_names, else the first num_views)")
    p.add_argument("--rig-views", type=int, default=None,
                   help="time a random rig of this many cameras (2..8) from the training distribution instead of "
                        "the named cameras, a new rig at every reset; the model sees all of them unless "
                        "--policy-cameras names some")
    p.add_argument("--image-size", type=int, default=64, help="render size")
    add_sampler_steps(p, "10", "ODE sampler steps per chunk, comma separated (e.g. 4,10)", type=str)
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--replans", type=int, default=20, help="timed replanning steps per setting (after 2 warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write results here")


def _stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}


def run(args: argparse.Namespace) -> int:
    import sys

    from action_images.evaluate import EvalSettings, resolve_settings
    from action_images.policy import ALL_VIEWS, ActionImagesPolicy, PolicySettings
    from action_images.sim import make_env
    from action_images.wam import WAMConfig, WorldActionModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:                                           # every setting checked before the model is built
        steps_list = [int(s) for s in split_list(args.sampler_steps, "--sampler-steps")]
        on_rig = args.rig_views is not None
        cams = args.policy_cameras or (ALL_VIEWS if on_rig else None)
        settings = [PolicySettings(camera_names=cams, sampler_steps=n, cfg_scale=args.cfg_scale,
                                   max_resamples=0) for n in steps_list]
        if not settings:
            raise ValueError("--sampler-steps: give one or more step counts, e.g. 4,10")
        model = (WorldActionModel.from_pretrained(args.checkpoint) if args.checkpoint
                 else WorldActionModel(WAMConfig.from_preset(args.preset)))
        rig = resolve_settings(EvalSettings(tasks=args.task, episodes=1, cameras=args.cameras,
                                            image_size=args.image_size, policy=settings[0],
                                            rig_distribution="train" if on_rig else None,
                                            rig_views=args.rig_views if on_rig else 4), model.config)
    except (ValueError, FileNotFoundError) as e:
        print(f"action-images bench policy: {e}", file=sys.stderr)
        return 2
    cfg = model.config
    env = make_env(args.task, cameras=rig.cameras, image_size=args.image_size,
                   rig_distribution=rig.rig_distribution, rig_views=rig.rig_views)
    results = []
    try:
        for ps in settings:
            steps = ps.sampler_steps
            policy = ActionImagesPolicy(model, PolicySettings(**{**ps.to_dict(), "camera_names":
                                                                 rig.policy.camera_names}), seed=args.seed)
            obs, _ = env.reset(seed=args.seed)
            parts: dict[str, list[float]] = {k: [] for k in ("observe", "generate", "decode", "chunk", "total")}
            env_s: list[float] = []
            for i in range(args.replans + 2):
                chunk = policy.plan(obs, env.cameras)
                if i >= 2:
                    for k in parts:
                        parts[k].append(chunk.timings[k])
                t0 = time.perf_counter()
                for a in chunk.actions:
                    obs, _, term, trunc, _ = env.step(a)
                    if term or trunc:
                        obs, _ = env.reset(seed=args.seed + i + 1)
                        policy.reset(args.seed + i + 1)               # a new episode: nothing carried over
                        break
                    policy.observe(obs)                 # every step, as act() records it (for past frames)
                env_s.append((time.perf_counter() - t0) / max(1, len(chunk.actions)))
            row = {"sampler_steps": steps, "views": list(rig.policy.camera_names), "cfg_scale": args.cfg_scale,
                   "replans": args.replans,
                   "latency": _stats(parts["total"]), **{f"{k}_ms_mean": 1000 * float(np.mean(v))
                                                          for k, v in parts.items() if k != "total"},
                   "env_step_ms_mean": 1000 * float(np.mean(env_s)), "execute_k": policy.execute_k,
                   "control_s_per_chunk": policy.execute_k / env.fps}
            row["real_time_factor"] = row["control_s_per_chunk"] / (row["latency"]["mean_ms"] / 1000.0)
            results.append(row)
            print(f"sampler steps {steps:>3}: {row['latency']['mean_ms']:.1f} ms mean, "
                  f"{row['latency']['p95_ms']:.1f} ms p95 "
                  f"per replanning step (generate {row['generate_ms_mean']:.1f}, decode {row['decode_ms_mean']:.1f},"
                  f" observe {row['observe_ms_mean']:.1f}); real-time factor {row['real_time_factor']:.1f}x")
    finally:
        env.close()
    payload = {"benchmark": "policy", "arguments": args_dict(args), "seed": args.seed, "environment": environment(),
               "model": {"checkpoint": args.checkpoint, "preset": cfg.preset, "parameters": model.num_parameters(),
                         "image_size": cfg.image_size, "views": cfg.num_views, "horizon": cfg.horizon,
                         "stride": cfg.stride, "tokens_per_sample": cfg.tokens_per_sample()},
               "results": results}
    write_json(args.json, payload)
    return 0
