"""Contact sheets for the docs: per task, the four static views (columns) at the start, middle and end of an expert
episode (rows).

    .venv/bin/python -m action_images.sim.contact_sheet --out docs/img --size 96 --seed 0
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from action_images.cliflags import Parser
from action_images.sim.scene import CAMERA_SETS

VIEWS = CAMERA_SETS["all_static"]


def contact_sheet(task: str, size: int = 96, seed: int = 0) -> tuple[np.ndarray, str, bool]:
    """``[3*size, 4*size, 3]`` uint8 sheet, the episode's instruction and whether the expert succeeded."""
    from action_images.sim import make_env

    env = make_env(task, cameras=VIEWS, image_size=size)
    obs, info = env.reset(seed=seed)
    frames = [obs["images"]]
    for _ in range(env.max_steps):
        obs, _, term, trunc, info = env.step(env.expert_action())
        frames.append(obs["images"])
        if term or trunc:
            break
    env.close()
    rows = [frames[0], frames[len(frames) // 2], frames[-1]]
    sheet = np.concatenate([np.concatenate([r[v] for v in VIEWS], axis=1) for r in rows], axis=0)
    sheet[:, size - 1::size][:, :-1] = 255      # thin white separators between views
    sheet[size - 1::size][:-1] = 255
    return sheet, env.instruction, bool(info["success"])


def main(argv: list[str] | None = None) -> int:
    import imageio.v3 as iio

    from action_images.sim import TASKS

    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/img")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default="all")
    args = p.parse_args(argv)
    tasks = TASKS if args.tasks == "all" else args.tasks.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        sheet, text, ok = contact_sheet(task, args.size, args.seed)
        path = out / f"sim_{task}.png"
        iio.imwrite(path, sheet, optimize=True)
        print(f"{path}: {text!r} success={ok} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
