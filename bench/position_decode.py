"""Where should a decoded position come from: the rigid fit of all three points, or the position point alone?

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/position_decode.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-9k --data data/rig8_val_heldout --samples 4 \
        --sampler-steps 3 --views all --json bench/results/position_decode/openloop_9k_all_views.json

The codec draws three points of the gripper frame (the position p, the normal point 10 cm above it, the up point
10 cm along the tool's x) and by default takes the position from a weighted rigid fit of all three
(``decode(position="fit")``), so an error of either outer point moves the decoded position by about a third of it.
``decode(position="point")`` takes the triangulated position point instead. Each episode of ``--data`` gives
``--starts`` un-augmented policy windows (as ``action-images openloop`` picks them) seen through its first
``--views`` views; each window is sampled ``--samples`` times and every sample is decoded both ways. The JSON holds,
over all windows and per task (``by_task``): the position error of both decodes (cm; an undecodable keyframe counts
as "did not move", the same for both), each triangulated point's error against the demo's own point, and the
fit's error split into its component along the demo's motion from the window's start (the "lead") and across it,
its distance from the demo's own path (the polyline through the window's start and keyframes: a keyframe on the
path but early or late along it is near 0 there), and per task the position point's median error at each keyframe
and at each start frame of the episodes (``by_start``, 0 the first).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from action_images.cliflags import Parser
from action_images.openloop import probe_arguments
from action_images.runfiles import atomic_write_json, probe_command

POINTS = ("pos", "nrm", "up")


def lead_cm(pred: np.ndarray, start: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[H] cm: the error ``pred - true`` along the demo's motion ``true - start`` (positive: ahead of the demo);
    NaN where the demo has not moved 5 mm from the start (no direction to measure along)."""
    d = true - start
    n = np.linalg.norm(d, axis=-1, keepdims=True)
    u = np.where(n > 0.005, d / np.maximum(n, 1e-9), np.nan)
    return 100 * ((pred - true) * u).sum(-1)


def path_cm(pred: np.ndarray, path: np.ndarray) -> np.ndarray:
    """[H] cm: each predicted position's distance to the polyline ``path`` [N, 3] (the demo's own positions from the
    window's start through its last keyframe): how far off the demo's path a keyframe lies, whenever along it."""
    a, b = path[:-1], path[1:]                                                  # [S, 3] segments
    ab = b - a
    t = np.clip(((pred[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)   # [H, S]
    nearest = a + t[..., None] * ab
    return 100 * np.linalg.norm(pred[:, None] - nearest, axis=-1).min(-1)


def summarise(rows: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    out = {}
    for k, v in rows.items():
        x = np.concatenate(v)
        x = x[np.isfinite(x)]
        out[k] = {"n": int(x.size), "median": round(float(np.median(x)), 2) if x.size else None,
                  "mean": round(float(np.mean(x)), 2) if x.size else None}
    return out


def select_episodes(tasks: list[str], only: str, per_task: int) -> list[tuple[int, str]]:
    """(episode index, task) of the episodes a probe reads: those of the comma-separated tasks ``only`` (every task
    if empty), the first ``per_task`` of each (every one if 0), in the dataset's order."""
    keep = {t.strip() for t in only.split(",") if t.strip()}
    seen: dict[str, int] = {}
    chosen = []
    for ep, t in enumerate(tasks):
        if keep and t not in keep:
            continue
        seen[t] = seen.get(t, 0) + 1
        if per_task and seen[t] > per_task:
            continue
        chosen.append((ep, t))
    return chosen


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    probe_arguments(p, checkpoint="checkpoints/rig8-ctx-recover-noise-9k", samples=4, min_samples=1, views="all",
                    json="bench/results/position_decode/openloop.json")
    p.add_argument("--tasks", default="", help="only the episodes of these tasks (comma-separated; default: all)")
    p.add_argument("--episodes", type=int, default=0, help="only the first N episodes of each task (0: all)")
    a = p.parse_args(argv)
    if a.episodes < 0:
        raise SystemExit(f"--episodes must be >= 0; got {a.episodes}")
    if a.samples < 1:
        raise SystemExit(f"--samples must be >= 1; got {a.samples}")
    torch.set_num_threads(1)
    from action_images.openloop import held_out_windows, open_probe, sample_window, unit_images, window_cameras

    t0 = time.perf_counter()
    try:
        model, data, views = open_probe(a.checkpoint, a.data, a.seed, a.views)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    R, K = model.config.image_size, a.samples
    ds, codec = data.datasets[0], data.codec
    keys = ["fit_cm", "point_cm", "fit_lead_cm", "fit_across_cm", "point_lead_cm", "point_off_path_cm",
            *[f"{n}_point_err_cm" for n in POINTS]]
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    tasks: list[str] = []
    starts: list[int] = []                             # each window's rank among its episode's starts (0: the first)
    chosen = select_episodes([str(ds.episode_info(ep).get("extra/task_name") or "unknown")
                              for ep in range(ds.num_episodes)], a.tasks, a.episodes)
    if not chosen:
        raise SystemExit(f"--tasks {a.tasks}: {a.data} has no episodes of these tasks")
    for done, (ep, task) in enumerate(chosen, 1):
        for wi, w in enumerate(held_out_windows(data, [ep], a.starts, views, a.seed)):
            poses = w["poses"].numpy()
            cams = window_cameras(w, R)
            out = sample_window(model, w, K, a.sampler_steps, a.seed, ep * a.starts + wi)
            true, start = poses[1:, :3], poses[0, :3]
            true_pts = codec.points(poses[1:])                                       # [H, 3, 3]
            r: dict[str, list[np.ndarray]] = {k: [] for k in keys}
            for i in range(K):
                act = unit_images(out.act[i])[:, 1:]
                fit = codec.decode(act, cams, position="fit")
                pt = codec.decode(act, cams, position="point")
                pf = np.where(fit.valid[:, None], fit.poses[:, :3], start)
                pp = np.where(pt.valid[:, None], pt.poses[:, :3], start)
                r["fit_cm"].append(100 * np.linalg.norm(pf - true, axis=-1))
                r["point_cm"].append(100 * np.linalg.norm(pp - true, axis=-1))
                lead = lead_cm(pf, start, true)
                r["fit_lead_cm"].append(lead)
                err = 100 * np.linalg.norm(pf - true, axis=-1)
                r["fit_across_cm"].append(np.sqrt(np.maximum(err ** 2 - lead ** 2, 0.0)))
                r["point_lead_cm"].append(lead_cm(pp, start, true))
                r["point_off_path_cm"].append(path_cm(pp, poses[:, :3]))
                for j, n in enumerate(POINTS):
                    r[f"{n}_point_err_cm"].append(100 * np.linalg.norm(fit.points[:, j] - true_pts[:, j], axis=-1))
            for k in keys:
                rows[k].append(np.concatenate(r[k]))
            tasks.append(task)
            starts.append(wi)
        print(f"episode {done}/{len(chosen)}", file=sys.stderr)
    by_task = {t: summarise({k: [x for x, wt in zip(v, tasks) if wt == t] for k, v in rows.items()})
               for t in dict.fromkeys(tasks)}
    for t, d in by_task.items():         # the position point's error at each keyframe (1 = the nearest in time)
        errs = np.stack([x.reshape(K, -1) for x, wt in zip(rows["point_cm"], tasks) if wt == t])   # [W, K, H]
        d["point_cm_median_by_keyframe"] = [round(float(np.median(errs[..., h])), 2) for h in range(errs.shape[-1])]
        d["by_start"] = {str(i): summarise({k: [x for x, wt, st in zip(rows[k], tasks, starts) if wt == t and st == i]
                                            for k in ("point_cm", "point_off_path_cm", "point_lead_cm")})
                         for i in sorted(set(starts))}
    out = {"command": probe_command(__file__, argv), "checkpoint": a.checkpoint, "data": a.data,
           "episodes": [ep for ep, _ in chosen], "starts": a.starts,
           "samples": K, "sampler_steps": a.sampler_steps, "seed": a.seed, "views": views,
           "summary": summarise(rows), "by_task": by_task, "wall_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(a.json, out)
    print(json.dumps({"summary": out["summary"],
                      "by_task": {t: {k: (v["median"] if "median" in v else v) if isinstance(v, dict) else v
                                      for k, v in d.items() if k != "by_start"} for t, d in by_task.items()}},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
