"""How much do the policy's samples vary, and how much does averaging them buy, open loop?

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/ensemble_openloop.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-long --data data/rig8_val_heldout --samples 8 \
        --sampler-steps 3 --json bench/results/ensemble/openloop_e8_steps3.json
    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/ensemble_openloop.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-9k --data data/rig8_val_heldout --samples 8 \
        --sampler-steps 3 --views all --json bench/results/res64/ensemble_9k_all_views_e8_steps3.json

Each episode of ``--data`` gives ``--starts`` un-augmented policy windows (as ``action-images openloop`` picks
them), seen through the episode's first ``--views`` views (default 2, the views ``eval`` gives the policy on a random
rig; ``all`` for every view, as ``eval --policy-cameras all``). Each window
is sampled ``--samples`` times with independent noise in one model call and every sample is decoded by the codec's
triangulation. It scores the position error against the demo's pose of: every single sample's keyframes (each
sample a row of its own), the average of the first k samples' action images decoded once (what ``eval --ensemble k``
does), the per-coordinate median of the first k samples' decoded positions, and per keyframe the best of the
samples (an oracle: how far the samples spread); and two rules a policy could use, picking per window the one sample
whose decode its own views agree on best (lowest mean reprojection error, :func:`select_sample`) or whose blobs are
strongest (highest mean confidence). A keyframe that does not decode counts as "did not move". The
JSON holds the scores over all windows and, under ``by_task``, over each task's windows (the episodes'
``extra/task_name``, where the dataset records it).
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


def position_error_cm(pred: np.ndarray, valid: np.ndarray, start: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[H] cm; an undecodable keyframe scores as the start position (nothing moves)."""
    return 100 * np.linalg.norm(np.where(valid[:, None], pred, start) - true, axis=-1)


def select_sample(scores: np.ndarray, valid: np.ndarray, lowest: bool) -> int:
    """The sample whose valid keyframes score best on average (``scores`` [K, H], ``valid`` [K, H]): the lowest or the
    highest mean; a sample with no valid keyframe is chosen only if no sample has one."""
    ok = valid & np.isfinite(scores)
    counts = ok.sum(axis=1)
    mean = np.where(ok, scores, 0.0).sum(axis=1) / np.maximum(counts, 1)
    mean = np.where(counts > 0, mean, np.inf if lowest else -np.inf)
    return int(np.argmin(mean) if lowest else np.argmax(mean))


def summarise(errors: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    return {k: {"keyframes": int(sum(len(e) for e in v)),
                "err_cm_median": round(float(np.median(np.concatenate(v))), 2),
                "err_cm_mean": round(float(np.mean(np.concatenate(v))), 2)} for k, v in errors.items()}


def summarise_by_task(errors: dict[str, list[np.ndarray]], window_tasks: list[str]) -> dict[str, dict]:
    """``summarise`` over each task's windows; ``window_tasks[i]`` names the task of every ``errors[k][i]``."""
    return {t: summarise({k: [e for e, wt in zip(v, window_tasks) if wt == t] for k, v in errors.items()})
            for t in dict.fromkeys(window_tasks)}


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    probe_arguments(p, checkpoint="checkpoints/rig8-ctx-recover-noise-long", samples=8, min_samples=2, views="2",
                    json="bench/results/ensemble/openloop_e8_steps3.json")
    a = p.parse_args(argv)
    if a.samples < 2:
        raise SystemExit(f"--samples must be >= 2; got {a.samples}")
    torch.set_num_threads(1)
    from action_images.openloop import held_out_windows, open_probe, sample_window, unit_images, window_cameras

    t0 = time.perf_counter()
    try:
        model, data, views = open_probe(a.checkpoint, a.data, a.seed, a.views)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    R, K = model.config.image_size, a.samples
    ds, codec = data.datasets[0], data.codec
    ks = [k for k in (2, 4, 8, 16) if k <= K]
    errors: dict[str, list[np.ndarray]] = {"one sample": [], "best sample per keyframe (oracle)": [],
                                           f"lowest reprojection error of {K} samples": [],
                                           f"highest confidence of {K} samples": []}
    for k in ks:
        errors[f"average of {k} samples' action images"] = []
        errors[f"median of {k} samples' positions"] = []
    window_tasks: list[str] = []                       # one per window, in the order every errors[...] list grows
    for ep in range(ds.num_episodes):
        task = str(ds.episode_info(ep).get("extra/task_name") or "unknown")
        for wi, w in enumerate(held_out_windows(data, [ep], a.starts, views, a.seed)):
            poses = w["poses"].numpy()
            cams = window_cameras(w, R)
            out = sample_window(model, w, K, a.sampler_steps, a.seed, ep * a.starts + wi)
            acts = np.stack([unit_images(out.act[i])[:, 1:] for i in range(K)])     # [K, V, H, R, R, 3]
            true, start = poses[1:, :3], poses[0, :3]
            decs = [codec.decode(x, cams) for x in acts]
            pos = np.stack([np.where(d.valid[:, None], d.poses[:, :3], start) for d in decs])    # [K, H, 3]
            each = np.stack([position_error_cm(d.poses[:, :3], d.valid, start, true) for d in decs])
            window_tasks.append(task)
            errors["one sample"].append(each.reshape(-1))
            errors["best sample per keyframe (oracle)"].append(each.min(axis=0))
            valid = np.stack([d.valid for d in decs])                                           # [K, H]
            reproj = np.stack([d.reproj_error.mean(axis=1) for d in decs])                     # NaN: unseen
            conf = np.stack([d.confidence.mean(axis=1) for d in decs])
            errors[f"lowest reprojection error of {K} samples"].append(each[select_sample(reproj, valid, True)])
            errors[f"highest confidence of {K} samples"].append(each[select_sample(conf, valid, False)])
            for k in ks:
                d = codec.decode(acts[:k].mean(axis=0), cams)
                errors[f"average of {k} samples' action images"].append(
                    position_error_cm(d.poses[:, :3], d.valid, start, true))
                errors[f"median of {k} samples' positions"].append(
                    100 * np.linalg.norm(np.median(pos[:k], axis=0) - true, axis=-1))
        print(f"episode {ep + 1}/{ds.num_episodes}", file=sys.stderr)
    summary = summarise(errors)
    by_task = summarise_by_task(errors, window_tasks)
    out = {"command": probe_command(__file__, argv),
           "checkpoint": a.checkpoint, "data": a.data, "starts": a.starts, "samples": K,
           "sampler_steps": a.sampler_steps, "seed": a.seed, "views": views, "summary": summary, "by_task": by_task,
           "wall_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(a.json, out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
