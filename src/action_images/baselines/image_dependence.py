"""Does a pose-regression baseline look at its images? How far its predictions move when the images change.

    python -m action_images.baselines.image_dependence --checkpoint runs/rig8-bc --data data/rig8_val_heldout

On ``--windows`` held-out windows (un-augmented, one per episode spread over the dataset): the mean distance (cm)
between the predicted keyframe positions with the real images and with the images zeroed, and with each window's
images swapped for another window's; the spread of the CNN's output across the inputs (a collapsed encoder gives
~0); and the prediction's position error against the demonstration. A policy whose predictions do not move with
its images can only act on the current pose and the instruction.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from action_images.cliflags import Parser


@torch.no_grad()
def image_dependence(model: Any, data: str, windows: int = 8, start: int = 3, seed: int = 0) -> dict[str, float]:
    from action_images.data.windows import WindowConfig, Windows, collate

    w = Windows([data], WindowConfig.from_model(model.config), seed=seed)
    n = w.datasets[0].num_episodes
    episodes = sorted({int(i) for i in np.linspace(0, n - 1, min(windows, n)).round()})
    b = collate([w.window(0, i, start, np.random.default_rng([seed, i]), augment=False) for i in episodes])
    if len(episodes) < 2:
        raise ValueError(f"{data}: need at least 2 episodes to swap images")

    def moved(other: dict[str, Any]) -> float:
        return float((100 * (model.predict(b)[..., :3] - model.predict(other)[..., :3]).norm(dim=-1)).mean())

    x = b["rgb"][:, :, 0].float()
    if model.config.plucker:
        x = torch.cat([x, b["plucker"].float()], dim=2)
    features = model.encoder.cnn(x.flatten(0, 1))
    pred = model.predict(b)
    return {"windows": len(episodes),
            "moved_cm_images_zeroed": moved({**b, "rgb": torch.zeros_like(b["rgb"])}),
            "moved_cm_images_swapped": moved({**b, "rgb": b["rgb"].roll(1, dims=0)}),
            "cnn_output_std": float(features.std(0).mean()),
            "position_error_cm": float((100 * (pred[..., :3] - b["poses"][:, 1:, :3].float()).norm(dim=-1)).mean())}


def main(argv: list[str] | None = None) -> int:
    from action_images.baselines import load_model
    from action_images.runfiles import atomic_write_json, dumps

    p = Parser(prog="python -m action_images.baselines.image_dependence",
               description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a bc or dp run directory")
    p.add_argument("--data", required=True, help="held-out LeRobot dataset")
    p.add_argument("--windows", type=int, default=8, help="windows, one per episode (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.windows < 2:
            raise ValueError(f"--windows must be >= 2; got {args.windows}")
        model = load_model(args.checkpoint).eval()
        if not hasattr(model, "encoder"):
            raise ValueError(f"--checkpoint: {args.checkpoint} is not a pose-regression baseline (bc or dp)")
        res = image_dependence(model, args.data, args.windows, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"image_dependence: {e}", file=sys.stderr)
        return 2
    out = {"checkpoint": args.checkpoint, "data": args.data, "seed": args.seed, **res}
    if args.json:
        atomic_write_json(args.json, out)
    print(dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
