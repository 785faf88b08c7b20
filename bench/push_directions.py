"""Does push_cube's success depend on the direction of the push? Success by the cube-to-goal direction, and by the
side of the cube the hand starts on.

    MUJOCO_GL=egl .venv/bin/python bench/push_directions.py bench/results/recover_noise_9k/train_rigs_100.json \
        bench/results/recover_noise_9k/heldout_rigs_100.json \
        bench/results/recover_noise_9k/train_rigs_all_views_steps3_100.json \
        bench/results/recover_noise_9k/heldout_rigs_all_views_steps3_100.json \
        --json bench/results/push_directions/push_directions_9k.json

Reads evaluations written by ``action-images eval`` and rebuilds each push_cube episode's scene from its seed (the
reset only, nothing rendered or simulated) to get the push direction, the angle of goal - cube in the world xy
plane. The expert pushes with the jaw across that direction and takes the jaw's yaw within ±90° (the jaw is
symmetric under a half turn), so pushes near ±90° (along world ±y) are where its demos jump between two
orientations half a turn apart for nearly the same scene: the *wrap band* (``--band`` degrees either side). It
reports success in 45° bins, by push distance, inside and outside the band, and Fisher's exact test of the two
(over all the files' episodes pooled; the files usually replay the same scenes, so the p-value is a pointer, not
a proof). It also reports success by where the hand starts (from the home pose, so the side depends on the scene
alone, unless the evaluation ran with ``--start-jitter``, whose starts are rebuilt too): the angle at the cube
between the hand's start and the point behind it on the push line, 0° where the expert comes down (the hand goes straight on to its landing) and 180° on the mark's side (it
must pass the cube), in 60° bins, and Fisher's exact test of the starts under 90° against the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import fisher_exact

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command


def push_env(rig_distribution: str | None = None, start_jitter: float = 0.0):
    """A push_cube env that renders nothing (the scenes of an evaluation, and where its hand starts under
    ``--start-jitter``, are rebuilt by reset(seed) alone)."""
    from action_images.sim.env import SimEnv

    return SimEnv(task="push_cube", render=False, rig_distribution=rig_distribution, start_jitter=start_jitter)


def push_geometry(env, seed: int) -> tuple[float, float]:
    """(push direction in degrees in [-180, 180], push distance in metres) of the push_cube episode of this seed."""
    env.reset(seed=int(seed))
    d = env.task.goal_xy() - env.task.body_pos("cube")[:2]
    return float(np.degrees(np.arctan2(d[1], d[0]))), float(np.linalg.norm(d))


def start_side(env) -> float:
    """Degrees in [0, 180] at the cube between the hand and the push line's back (the side away from the mark, where
    the expert comes down) in the table plane, in the scene ``env`` holds now (an episode's start after
    :func:`push_geometry`'s reset): 0 straight behind the cube, 180 straight on the mark's side."""
    cube = env.task.body_pos("cube")[:2]
    d = env.task.goal_xy() - cube
    s = env.arm.tcp_pos()[:2] - cube
    along, across = float(s @ d), float(s[1] * d[0] - s[0] * d[1])
    return float(np.degrees(np.arctan2(abs(across), -along)))


def in_wrap_band(direction_deg: np.ndarray, band: float) -> np.ndarray:
    """Whether each push direction lies within ``band`` degrees of ±90°, where the expert's jaw yaw wraps."""
    return np.abs(np.abs(np.asarray(direction_deg, dtype=float)) - 90.0) < band


def summarise(direction: np.ndarray, distance: np.ndarray, success: np.ndarray, band: float,
              side: np.ndarray | None = None) -> dict:
    """Success rates by 45° bin of direction, by distance, inside / outside the wrap band and, given ``side``
    (:func:`start_side` per episode), by 60° bin of the hand's start side."""
    direction, distance, success = (np.asarray(a, dtype=float) for a in (direction, distance, success))
    rate = lambda m: {"episodes": int(m.sum()), "success": float(success[m].mean()) if m.any() else None}  # noqa: E731
    edges = np.arange(-180, 181, 45)
    near = in_wrap_band(direction, band)
    table = [[int(success[near].sum()), int((1 - success[near]).sum())],
             [int(success[~near].sum()), int((1 - success[~near]).sum())]]
    out = {"by_direction_deg": {f"{lo}..{hi}": rate((direction >= lo) & ((direction < hi) | (hi == 180)))
                                for lo, hi in zip(edges[:-1], edges[1:])},
           "by_distance_cm": {f"{lo}..{hi}": rate((distance * 100 >= lo) & (distance * 100 < hi))
                              for lo, hi in ((10, 13), (13, 16), (16, 19))},
           "wrap_band": rate(near), "outside_band": rate(~near),
           "fisher_p": float(fisher_exact(table)[1]) if near.any() and (~near).any() else None}
    if side is not None:
        side = np.asarray(side, dtype=float)
        behind = side < 90
        sides = [[int(success[behind].sum()), int((1 - success[behind]).sum())],
                 [int(success[~behind].sum()), int((1 - success[~behind]).sum())]]
        out["by_start_side_deg"] = {f"{lo}..{hi}": rate((side >= lo) & ((side < hi) | (hi == 180)))
                                    for lo, hi in ((0, 60), (60, 120), (120, 180))}
        out["start_side_fisher_p"] = (float(fisher_exact(sides)[1]) if behind.any() and (~behind).any() else None)
    return out


def main(argv=None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("evals", nargs="+", help="JSON of action-images eval (metrics.json or a committed copy)")
    p.add_argument("--band", type=float, default=25.0, help="degrees either side of ±90° (default 25)")
    p.add_argument("--json", default=None, help="write the summary here")
    a = p.parse_args(argv)
    rows, per_file = [], {}
    for path in a.evals:
        d = json.loads(Path(path).read_text())
        eps = [e for e in d["episodes"] if e["task"] == "push_cube"]
        if not eps:
            sys.exit(f"{path}: no push_cube episodes")
        settings = d.get("settings") or {}
        env = push_env(settings.get("rig_distribution"), settings.get("start_jitter") or 0.0)
        mine = []
        for e in eps:
            mine.append((*push_geometry(env, e["seed"]), float(e["success"]), start_side(env)))   # one reset
            if "start_position" in e and not np.allclose(env.arm.tcp_pos(), e["start_position"], atol=1e-4):
                sys.exit(f"{path}: episode {e['episode']}'s hand starts at {e['start_position']}, the rebuilt scene's "
                         f"at {env.arm.tcp_pos().round(4).tolist()}")
        env.close()
        cols = np.array(mine).T
        per_file[path] = summarise(*cols[:3], band=a.band, side=cols[3])
        rows += mine
    cols = np.array(rows).T
    out = {"command": probe_command(__file__, argv),
           "band_deg": a.band, "files": per_file, "pooled": summarise(*cols[:3], band=a.band, side=cols[3])}
    print(json.dumps(out["pooled"], indent=1))
    if a.json:
        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
