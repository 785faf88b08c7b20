"""Open-loop learning check: does the model predict the expert's future, better than "nothing moves"?

    python -m action_images.openloop --checkpoint runs/pick --data data/pick_cube_val --json runs/pick/openloop.json

For held-out episodes and start frames (no augmentation, fixed view pairs), sample a policy chunk, decode the
generated action images of the H keyframes with the codec (the window's cameras) and compare with the expert's
keyframe targets: median position error (cm) against the no-motion baseline (the current pose), gripper accuracy,
and PSNR of the generated RGB keyframes against copying the current frame. This is the measurement design §5 asks
for before any closed-loop run. It is :func:`action_images.metrics.evaluate_open_loop` (the evaluator ``eval
--open-loop-data`` uses) with the policy task only, on episodes spread over the whole dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from action_images.metrics import evaluate_open_loop, held_out_windows, json_safe
from action_images.wam import WorldActionModel


@torch.no_grad()
def one_step_mse(model: WorldActionModel, data: str, episodes: list[int], starts: int, views: list[str],
                 levels: list[float], seed: int = 0) -> dict[str, dict[str, float]]:
    """Per noise level t: MSE of the clean-clip prediction x0_hat of the future frames (policy task, one network
    call from x_t) and of copying the current frame, per stream. At t = 1 the future is pure noise, so this asks
    whether the model predicts from the current frame and the instruction at all (a denoiser that ignores the
    context is no better than copying there, however low its training loss)."""
    from action_images.data.windows import WindowConfig, Windows, collate
    from action_images.wam import GIVEN, _channel_state, task_state

    c = model.config
    w = Windows([data], WindowConfig(image_size=c.image_size, num_views=len(views), horizon=c.horizon,
                                     stride=c.stride), seed=seed)
    b = collate(held_out_windows(w, episodes, starts, views, seed))
    x0 = torch.cat([b["rgb"], b["act"]], dim=3)                               # [B, V, F, 6, H, W]
    B, V, Fr = x0.shape[:3]
    state = task_state(["policy"] * B, V, Fr)
    given = _channel_state(state) == GIVEN
    text, mask = model.encode_text(b["instruction"])
    copy = (x0[:, :, :1] - x0[:, :, 1:]).square()                             # [B, V, H, 6, R, R]
    out = {}
    for t in levels:
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        x_in = torch.where(given, x0, (1 - t) * x0 + t * eps)
        err = (model.predict_x0(x_in, torch.full((B,), t), state, b["plucker"], text, mask)[:, :, 1:]
               - x0[:, :, 1:]).square()
        out[f"{t:g}"] = {"rgb_model": float(err[:, :, :, :3].mean()), "rgb_copy": float(copy[:, :, :, :3].mean()),
                         "act_model": float(err[:, :, :, 3:].mean()), "act_copy": float(copy[:, :, :, 3:].mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m action_images.openloop", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run dir or save_pretrained dir")
    p.add_argument("--data", required=True, help="held-out dataset dir")
    p.add_argument("--episodes", type=int, default=20, help="episodes, spread evenly over the dataset")
    p.add_argument("--starts", type=int, default=3, help="start frames per episode")
    p.add_argument("--views", default=None, help="comma separated camera names (default: the first num_views)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None, help="PNG of real vs generated streams of the first window")
    p.add_argument("--noise-levels", default="1.0",
                   help="comma separated t: also report the one-step clean-clip MSE of the future frames at these "
                        "noise levels against copying the current frame (t = 1: prediction from context alone)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = WorldActionModel.from_pretrained(args.checkpoint).eval()
    from action_images.data import LeRobotDataset
    total = LeRobotDataset(args.data).num_episodes
    n = min(args.episodes, total)
    episodes = sorted({int(i) for i in np.linspace(0, total - 1, n).round()})   # spread over tasks and seeds
    t0 = time.perf_counter()
    full = evaluate_open_loop(model, args.data, episodes=episodes, windows_per_episode=args.starts, steps=args.steps,
                              cfg_scale=args.cfg_scale, seed=args.seed,
                              views=args.views.split(",") if args.views else None, tasks=("policy",),
                              figure=args.figure)
    levels = [float(x) for x in args.noise_levels.split(",") if x.strip()]
    res = {"command": "python -m action_images.openloop " + " ".join(argv or sys.argv[1:]), "args": vars(args),
           "seed": args.seed, "windows": full["windows"], "views": full["views"], "steps": args.steps,
           **full["learning_check"],
           "one_step_mse": one_step_mse(model, args.data, episodes, args.starts, full["views"], levels, args.seed),
           "seconds": time.perf_counter() - t0, "open_loop": full}
    res = json_safe(res)
    print(json.dumps({k: v for k, v in res.items() if k != "open_loop"}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
