"""Closed-loop success against the angle between the two views the policy saw, from evaluation JSONs.

    python bench/success_by_view_angle.py bench/results/recover_noise_long/heldout_rigs_100.json \
        --all-views bench/results/recover_noise_long/heldout_rigs_all_views_steps3_100.json

For every episode of a 2-view evaluation (``action-images eval``'s ``metrics.json``, whose episodes record where each
camera stood), the angle between the two cameras the policy saw (its settings' ``policy.camera_names``) as seen from
the point random rigs aim at (``sim.rig.WORKSPACE_CENTRE``), binned;
per bin the episodes and the success rate, overall and per task. With ``--all-views``, an evaluation of the same
episodes (same seed and rigs) seeing every view of the rig: the same bins' success there, so the two can be read side
by side. Reads JSON only; runs nothing.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from action_images.cliflags import Parser
from action_images.geometry import ray_angle_deg
from action_images.sim.rig import WORKSPACE_CENTRE as CENTRE

BINS = ((0, 20), (20, 40), (40, 60), (60, 90), (90, 180))


def pair_angle_deg(positions: dict[str, list[float]], names: list[str]) -> float:
    """Angle at ``CENTRE`` between the cameras ``names`` (two) of an episode's ``camera_positions``."""
    return ray_angle_deg(positions[names[0]], positions[names[1]], CENTRE)


def table(two: list[dict], names: list[str], every: dict[tuple[str, int], dict] | None) -> dict:
    angle = np.array([pair_angle_deg(e["camera_positions"], names) for e in two])
    ok2 = np.array([bool(e["success"]) for e in two])
    key = [(e["task"], int(e["episode"])) for e in two]
    okN = np.array([bool(every[k]["success"]) for k in key]) if every is not None else None
    tasks = sorted({e["task"] for e in two})
    task = np.array([e["task"] for e in two])
    out = {}
    for lo, hi in BINS:
        m = (angle >= lo) & (angle < hi)
        if not m.any():
            continue
        row = {"episodes": int(m.sum()), "success_2_views": round(float(ok2[m].mean()), 3),
               "per_task_2_views": {t: round(float(ok2[m & (task == t)].mean()), 2) for t in tasks
                                    if (m & (task == t)).any()}}
        if okN is not None:
            row["success_all_views"] = round(float(okN[m].mean()), 3)
        out[f"{lo}-{hi}"] = row
    return out


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("two_views", help="metrics.json of a 2-view evaluation")
    p.add_argument("--all-views", help="metrics.json of the same episodes seeing every rig view")
    a = p.parse_args(argv)
    run = json.load(open(a.two_views))
    two = run["episodes"]
    names = list(run["settings"]["policy"]["camera_names"] or [])
    if len(names) != 2:
        sys.exit(f"{a.two_views}: the policy saw {names or 'no recorded cameras'}; this probe reads 2-view runs")
    every = None
    if a.all_views:
        every = {(e["task"], int(e["episode"])): e for e in json.load(open(a.all_views))["episodes"]}
        missing = [(e["task"], e["episode"]) for e in two if (e["task"], int(e["episode"])) not in every]
        if missing:
            sys.exit(f"--all-views {a.all_views}: lacks {len(missing)} episodes of {a.two_views}, e.g. {missing[0]}")
    print(json.dumps(table(two, names, every), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
