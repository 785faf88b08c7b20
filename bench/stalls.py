"""Do failed episodes get stuck? The hand's path in closed-loop episodes, and how many failures end in one place.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/stalls.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-9k --tasks push_cube,stack_cube --episodes 30 --seed 31337 \
        --policy-cameras all --sampler-steps 3 --json bench/results/stalls/stalls_9k_all_views_train_rigs.json

Plays the episodes exactly as ``action-images eval --rig-distribution RIGS`` with the same flags does (the same
episode seeds, rigs and policy; :class:`~action_images.rollout.EpisodeRunner`) and logs the measured hand position
after every control step. Over the last ``--tail`` steps of an episode the hand is *still* when every position lies
within ``--still-cm`` of their mean, and *stuck* when within ``--stuck-cm`` (standing still, or dithering in place:
the path length over those steps tells which). For every episode it also reports the longest
still stretch anywhere in the episode and the last step at which the hand moved 2 mm.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from action_images.cliflags import Parser
from action_images.runfiles import atomic_write_json, probe_command


def still_run(path: np.ndarray, radius: float) -> tuple[int, int]:
    """(longest run of steps whose positions all lie within ``radius`` of the run's first, its first step), the runs
    taken greedily from the start of the path."""
    best, best_at, i = 0, 0, 0
    while i < len(path):
        j = i
        while j + 1 < len(path) and np.linalg.norm(path[j + 1] - path[i]) <= radius:
            j += 1
        if j - i + 1 > best:
            best, best_at = j - i + 1, i
        i = j + 1
    return best, best_at


def tail_still(path: np.ndarray, radius: float, tail: int) -> bool:
    """The last ``tail`` positions lie within ``radius`` of their mean (and the path is that long)."""
    if len(path) < tail:
        return False
    end = path[-tail:]
    return bool((np.linalg.norm(end - end.mean(axis=0), axis=1) <= radius).all())


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/rig8-ctx-recover-noise-9k")
    p.add_argument("--tasks", default="push_cube,stack_cube")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--rig-distribution", default="train", choices=("train", "heldout"))
    p.add_argument("--policy-cameras", default="all")
    p.add_argument("--sampler-steps", type=int, default=3)
    p.add_argument("--still-cm", type=float, default=1.0, help="radius of 'standing still' (default 1 cm)")
    p.add_argument("--stuck-cm", type=float, default=4.0, help="radius of 'stuck in place' (default 4 cm)")
    p.add_argument("--tail", type=int, default=30, help="the episode's last N steps judged (default 30)")
    p.add_argument("--json", default="bench/results/stalls/stalls.json")
    a = p.parse_args(argv)
    import torch

    from action_images.eval_settings import EvalSettings
    from action_images.policy import PolicySettings
    from action_images.rollout import EpisodeRunner

    torch.set_num_threads(1)
    t_begin = time.perf_counter()
    tasks = tuple(t.strip() for t in a.tasks.split(","))
    settings = EvalSettings(tasks=tasks, episodes=a.episodes, seed=a.seed, rig_distribution=a.rig_distribution,
                            rig_views=4, videos=0, policy=PolicySettings(camera_names=a.policy_cameras,
                                                                       sampler_steps=a.sampler_steps))
    radius = a.still_cm / 100.0
    per_task, episodes = {}, []
    runner = EpisodeRunner.from_checkpoint(a.checkpoint, Path(a.json).parent, settings)   # videos=0: writes nothing
    for task in tasks:
        rows = []
        for k in range(a.episodes):
            path: list[np.ndarray] = []
            rec = runner.logged_episode(task, k, lambda env, out, _path=path: _path.append(
                np.asarray(out[0]["ee_pose"][:3], dtype=np.float64).copy()))
            P = np.asarray(path)
            run, run_at = still_run(P, radius)
            moved = np.linalg.norm(np.diff(P, axis=0), axis=1) if len(P) > 1 else np.zeros(0)
            last_move = int(np.nonzero(moved > 0.002)[0].max() + 1) if (moved > 0.002).any() else 0
            row = {"task": task, "episode": k, "seed": rec["seed"], "success": bool(rec["success"]),
                   "length": int(rec["length"]), "tail_still": tail_still(P, radius, a.tail),
                   "tail_stuck": tail_still(P, a.stuck_cm / 100.0, a.tail),
                   "longest_still_steps": int(run), "longest_still_from": int(run_at),
                   "last_step_moving_2mm": last_move,
                   "tail_spread_cm": round(100 * float(np.linalg.norm(P[-a.tail:] - P[-a.tail:].mean(axis=0),
                                                                      axis=1).max()), 2) if len(P) else None,
                   "tail_path_cm": round(100 * float(moved[-a.tail:].sum()), 2),
                   "final_hand": [round(float(x), 4) for x in P[-1]] if len(P) else None}
            rows.append(row)
            print(f"{task} ep {k}: {'OK ' if row['success'] else 'FAIL'} len {row['length']} "
                  f"stuck {row['tail_stuck']} (spread {row['tail_spread_cm']} cm, path {row['tail_path_cm']} cm)", file=sys.stderr)
        fails = [r for r in rows if not r["success"]]
        per_task[task] = {"episodes": len(rows), "successes": len(rows) - len(fails), "failures": len(fails),
                          "failures_still": int(sum(r["tail_still"] for r in fails)),
                          "failures_stuck": int(sum(r["tail_stuck"] for r in fails)),
                          "stuck_failures_tail_path_cm_median": (float(np.median([r["tail_path_cm"] for r in fails
                                                                                  if r["tail_stuck"]]))
                                                                 if any(r["tail_stuck"] for r in fails) else None),
                          "successes_with_a_still_stretch_ge_tail": int(sum(r["longest_still_steps"] >= a.tail
                                                                           for r in rows if r["success"]))}
        episodes += rows
    runner.close()
    out = {"command": probe_command(__file__, argv),
           "checkpoint": a.checkpoint, "seed": a.seed, "rig_distribution": a.rig_distribution,
           "policy_cameras": a.policy_cameras, "sampler_steps": a.sampler_steps, "still_cm": a.still_cm,
           "stuck_cm": a.stuck_cm,
           "tail": a.tail, "per_task": per_task, "episodes": episodes,
           "wall_s": round(time.perf_counter() - t_begin, 1)}
    atomic_write_json(a.json, out)
    print(json.dumps(per_task, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
