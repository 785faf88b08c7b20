"""How much aiming error does each push_cube expert style forgive? The expert run with its targets displaced.

    OMP_NUM_THREADS=1 .venv/bin/python bench/push_styles.py --seeds 40 --styles jaw,jaw_back,palm \
        --lateral=0,0.015,0.025,0.035,-0.035 --along=-0.02,0.02,0.04 --json bench/results/push_palm/push_styles.json

A policy's plans put the hand a few centimetres from where the expert would (docs/probes.md, palm-push). This probe
asks what the expert itself does when every target it commands is displaced the same way (``--lateral``:
across the push line, to the left of the push; ``--along``: along it, + toward the goal), from the task's own reset
of seeds 0..N-1 with no rendering, to the task's 80-step limit. A persistent offset is the kind of error the
policy's plans show: most of it is shared by every sample (the ensemble probe), not fresh noise at each step.
The styles (``collect --push-style``): ``jaw``, the half-open jaw's fingertips on the cube's back face, coming down
5.5 cm behind the cube's centre; ``jaw_back``, the same coming down 10 cm behind it; ``palm``, the hand turned
horizontal with its 13 cm palm leading.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command


def metres(text: str) -> list[float]:
    """A comma separated list of finite offsets in metres (argparse type)."""
    import argparse
    import math

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma separated metres; got {text!r}") from None
    if not values or not all(math.isfinite(v) and abs(v) <= 0.1 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite offsets within ±0.1 m; got {text!r}")
    return values


def push_env(style: str, lateral: float = 0.0, along: float = 0.0):
    """A push_cube env (nothing rendered) whose expert in ``style`` aims every target ``lateral`` metres to the left
    of the push line and ``along`` metres toward the goal (``PushCube.aim_offset``)."""
    from action_images.sim.env import SimEnv

    env = SimEnv(task="push_cube", render=False)
    env.task.style, env.task.aim_offset = style, (float(lateral), float(along))
    return env


def run(env, seed: int) -> tuple[bool, int]:
    """(success, control steps) of one expert episode from ``reset(seed)``."""
    env.reset(seed=seed)
    for k in range(env.max_steps):
        _, _, terminated, truncated, info = env.step(env.expert_action())
        if terminated or truncated:
            break
    return bool(info["success"]), k + 1


def main(argv=None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=40, help="episodes per style and offset: seeds 0..N-1 (default 40)")
    p.add_argument("--lateral", type=metres, default=[0.0, 0.015, 0.025, 0.035],
                   help="offsets across the push line, metres (default 0,0.015,0.025,0.035)")
    p.add_argument("--along", type=metres, default=[-0.02, 0.02],
                   help="offsets along the push line, metres (default -0.02,0.02)")
    p.add_argument("--styles", default="jaw,jaw_back,palm", help="expert styles (default jaw,jaw_back,palm)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error("--seeds must be >= 1")
    styles = [s.strip() for s in a.styles.split(",") if s.strip()]
    from action_images.sim.tasks.push_cube import STYLES
    if not styles or any(s not in STYLES for s in styles):
        p.error(f"--styles: choose from {','.join(STYLES)}")
    offsets = [(x, 0.0) for x in a.lateral] + [(0.0, y) for y in a.along if y != 0.0]
    if "grip" in styles and any(o != (0.0, 0.0) for o in offsets):
        p.error("--styles grip: the grip is a grasp, not a push, and takes no aiming offset; "
                "give it --lateral=0 --along=0")
    t0 = time.time()
    rows = []
    for lateral, along in offsets:
        row = {"lateral_m": lateral, "along_m": along}
        for style in styles:
            env = push_env(style, lateral, along)
            runs = [run(env, s) for s in range(a.seeds)]
            env.close()
            ok = [n for s, n in runs if s]
            row[style] = {"success": len(ok), "episodes": a.seeds,
                          "mean_steps_of_successes": float(np.mean(ok)) if ok else None}
        rows.append(row)
        print(f"lateral {lateral * 100:+.1f} cm, along {along * 100:+.1f} cm: "
              + ", ".join(f"{s} {row[s]['success']}/{a.seeds}" for s in styles), flush=True)
    out = {"command": probe_command(__file__, argv),
           "seeds": a.seeds, "rows": rows, "wall_s": round(time.time() - t0, 1)}
    if a.json:
        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
