"""``action-images demo``: closed-loop episodes of the shipped checkpoint on every task, a summary and a report.

    action-images demo                       # checkpoints/rig8-ctx-recover-noise-9k, all 8 tasks x 1 episode, each
                                             # from a camera rig no training episode had (under a minute)
    action-images demo --quick               # CI smoke: 1 task, 1 episode, a few control steps
    action-images demo --checkpoint runs/pick --tasks pick_cube --episodes 10 --out runs/demo
    action-images demo --checkpoint checkpoints/cpu-small --tasks reach_target,press_button,open_drawer,close_drawer
                                             # the earlier 4-task checkpoint, from its two named cameras

It is ``action-images eval`` with fixed, fast settings; the shipped checkpoint is looked up in the current directory
and in the repository that holds this package. Without it the demo says how to make one and exits with status 1.
The policy sees the cameras the checkpoint was trained on (``config.camera_names``), and those are rendered. A
checkpoint trained on random camera rigs (cameras ``rig0``, ``rig1``, ...) is shown, unless ``--rig-distribution``
says otherwise, from a new held-out rig per episode: viewpoints it never saw; it looks through all 4 views of each
rig (``--policy-cameras all``; name two, e.g. ``rig0,rig1``, to see it with two).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from action_images.cliflags import Parser, add_sampler_steps, whole_number
from action_images.eval_settings import RIG_SPLITS
from action_images.evaluate import EvalSettings, Evaluation, write_outputs
from action_images.policy import ALL_VIEWS, PolicySettings
from action_images.runfiles import args_dict, check_out_dir, environment
from action_images.sim.tasks import parse_tasks

SHIPPED = Path("checkpoints") / "rig8-ctx-recover-noise-9k"
HOW_TO = """no checkpoint at {where}.
Recreate the shipped CPU checkpoint (about two hours and fifty minutes on 2 cores) with `make checkpoint`, which runs:
    action-images train --config recipes/rig8-ctx-3h.json --out runs/rig8-ctx-3h --collect-missing
copies runs/rig8-ctx-3h/ (config.json, model.safetensors, train_config.json, logs) to checkpoints/rig8-ctx-3h/, then
    action-images train --config recipes/rig8-ctx-recover-noise-9k.json --out runs/rig8-ctx-recover-noise-9k \\
        --collect-missing
and copies runs/rig8-ctx-recover-noise-9k/ to checkpoints/rig8-ctx-recover-noise-9k/ (the recipe files hold the
whole recipe, data collection included). `make checkpoint-quick` trains the under-an-hour version
(recipes/rig8-ctx.json) into checkpoints/rig8-ctx.
Or point the demo at any run directory: action-images demo --checkpoint runs/NAME"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help=f"run directory (default: {SHIPPED} in the repository)")
    p.add_argument("--tasks", default="all", help="task names, comma separated, or 'all' (default)")
    p.add_argument("--episodes", type=whole_number, default=1, help="episodes per task, >= 1 (default 1)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--seed", type=whole_number, default=0, help="base seed, >= 0 (default 0)")
    p.add_argument("--policy-cameras", default=None,
                   help="cameras the model sees, comma separated, or 'all' (default: the checkpoint's camera_names; "
                        "every view of the rig for a checkpoint trained on random rigs)")
    add_sampler_steps(p, None, "ODE sampler steps per chunk, 1..1000 (default: 3 when the model sees every view of "
                               "a rig, whose extra views cost time and 3 steps succeed as often as 6; else 6)")
    p.add_argument("--rig-distribution", default=None, choices=RIG_SPLITS,
                   help="render a new random camera rig per episode from this split instead of the scene's cameras "
                        "(heldout: rigs no training episode had). Default: heldout for checkpoints trained on random "
                        "rigs (cameras rig0, rig1, ...), the scene's cameras otherwise")
    p.add_argument("--quick", action="store_true", help="CI mode: 1 task, 1 episode, 12 control steps, 2 sampler steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see action-images eval)")
    p.add_argument("--no-progress", action="store_true")


def find_checkpoint(given: str | None) -> Path | None:
    """The checkpoint to use: ``given``, else ./SHIPPED, else SHIPPED in the repository that holds this package."""
    if given:
        return Path(given)
    repo = Path(__file__).resolve().parents[2]
    for cand in (Path.cwd() / SHIPPED, repo / SHIPPED):
        if (cand / "config.json").exists():
            return cand
    return None


def summary_table(metrics: dict) -> str:
    lines = [f"{'task':<16}{'success':>10}{'95% CI':>14}{'length':>9}{'latency ms':>12}",
             "-" * 61]
    for t, m in metrics["tasks"].items():
        lo, hi = m["success_ci95"]
        lines.append(f"{t:<16}{m['successes']:>4}/{m['episodes']:<5}{f'{lo:.0%}-{hi:.0%}':>14}"
                     f"{m['mean_episode_length']:>9.1f}{(m['latency']['mean_ms'] or 0):>12.0f}")
    ov = metrics["overall"]
    lo, hi = ov["success_ci95"]
    lines.append("-" * 61)
    lines.append(f"{'all':<16}{ov['successes']:>4}/{ov['episodes']:<5}{f'{lo:.0%}-{hi:.0%}':>14}"
                 f"{ov['mean_episode_length']:>9.1f}{(ov['latency']['mean_ms'] or 0):>12.0f}")
    return "\n".join(lines)


def trained_on_rigs(camera_names: list[str] | None) -> bool:
    """A checkpoint whose cameras are all random-rig views (``rig0``, ``rig1``, ...)."""
    return bool(camera_names) and all(re.fullmatch(r"rig\d+", c) for c in camera_names)


def settings_from_args(args: argparse.Namespace, camera_names: list[str] | None = None) -> EvalSettings:
    """The demo's fixed, fast evaluation settings (``--quick``: 1 task, 1 episode, 12 control steps, 2 sampler
    steps) for a checkpoint trained on ``camera_names``; ValueError names the bad flag."""
    tasks = parse_tasks(args.tasks)[:1] if args.quick else args.tasks
    on_rigs = trained_on_rigs(camera_names)
    cams = args.policy_cameras or (ALL_VIEWS if on_rigs else None)    # a rig checkpoint looks through every view
    steps = args.sampler_steps if args.sampler_steps is not None else 3 if cams == ALL_VIEWS else 6   # rig: 3
    policy = PolicySettings(camera_names=cams, sampler_steps=2 if args.quick else steps)
    rigs = args.rig_distribution or ("heldout" if on_rigs else None)
    return EvalSettings(tasks=tasks, episodes=1 if args.quick else args.episodes, seed=args.seed,
                        max_steps=12 if args.quick else None, videos=1 if args.quick else 2, policy=policy,
                        rig_distribution=rigs)


DEMO_MARK = ".action-images-demo"


def check_demo_out(out: Path) -> None:
    """The demo writes over its own folder (``DEMO_MARK``, or a finished demo's metrics.json) and nobody else's."""
    check_out_dir(out)
    if not out.is_dir() or not any(out.iterdir()) or (out / DEMO_MARK).exists():
        return
    try:
        if json.loads((out / "metrics.json").read_text()).get("command") == "demo":
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise ValueError(f"--out {out} holds files that are not a demo's (the demo writes over its folder); choose "
                     "another folder")


def run(args: argparse.Namespace) -> int:
    from action_images.baselines import load_model

    try:                                           # bad flags exit 2 before the checkpoint is even looked up
        if not 1 <= args.threads <= 1024:
            raise ValueError(f"--threads must be in 1..1024; got {args.threads}")
        torch.set_num_threads(args.threads)
        settings = settings_from_args(args)
    except (ValueError, TypeError) as e:
        print(f"action-images demo: {e}", file=sys.stderr)
        return 2
    ckpt = find_checkpoint(args.checkpoint)
    if ckpt is None or not (ckpt / "config.json").exists():
        print("action-images demo: " + HOW_TO.format(where=ckpt or SHIPPED),
              file=sys.stderr)
        return 1
    try:
        check_demo_out(Path(args.out))
        model = load_model(ckpt)
        settings = settings_from_args(args, getattr(model.config, "camera_names", None))
        ev = Evaluation(model, settings, args.out, checkpoint=ckpt, overwrite=True)   # the demo's folder is scratch
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / DEMO_MARK).write_text("written by action-images demo; the next demo overwrites this folder\n")
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"action-images demo: {e}", file=sys.stderr)
        return 2
    s = ev.settings
    t0 = time.perf_counter()
    print(f"demo: {ckpt} ({model.config.preset}, {model.num_parameters() / 1e6:.2f} M parameters), tasks "
          f"{', '.join(s.tasks)}, {s.episodes} episode(s) each, policy cameras {','.join(s.policy.camera_names)}"
          f"{f' of a new {s.rig_distribution} rig per episode' if s.rig_distribution else ''}, "
          f"{s.policy.sampler_steps} sampler steps{' (quick mode)' if args.quick else ''}")
    metrics = {"command": "demo", "arguments": args_dict(args), "seed": args.seed, "checkpoint": str(ckpt),
               "perturb_cameras": False, "rig_distribution": s.rig_distribution}
    metrics.update(ev.run(progress=not args.no_progress))
    metrics["open_loop"] = None
    metrics["wall_s"] = time.perf_counter() - t0
    metrics["environment"] = environment()
    report = write_outputs(Path(args.out), metrics)
    print(summary_table(metrics))
    print(f"took {metrics['wall_s']:.0f} s; report: {report.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="action-images demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
