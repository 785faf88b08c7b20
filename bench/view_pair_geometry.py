"""Does the pair of views decide how well the policy's keyframes triangulate? The same held-out windows seen through
every pair of their rig's four views.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl .venv/bin/python bench/view_pair_geometry.py \
        --checkpoint checkpoints/rig8-ctx-recover-noise-long --data data/rig8_val_heldout --starts 2 \
        --json bench/results/view_pairs/openloop_pairs.json

Each episode of ``--data`` (a rig of four calibrated views per episode) gives ``--starts`` un-augmented policy
windows (as ``action-images openloop`` picks them); each window is sampled once per pair of its views (6 pairs, the
same starting noise for every pair) and once with all four views, with ``--sampler-steps`` Euler steps, and decoded
by the codec's triangulation. Per keyframe it records the 3D position error against the demo, the 2D error of the
generated peaks against the true projections (mean over the views), the component of the 3D error along the pair's
mean viewing direction ("depth", the direction two close views constrain least) and the angle between the two views
as seen from the true keyframe. The summary bins the pairs by that angle: if the 2D error stays flat while the 3D
error grows as the angle closes, the pixels are as good as ever and the geometry amplifies them.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from action_images.cliflags import Parser
from action_images.geometry import ray_angle_deg
from action_images.runfiles import probe_command

PER_VIEW = ("rgb", "act", "plucker", "K", "T_cam_world")          # window entries with one row per view
BINS = ((0, 10), (10, 20), (20, 30), (30, 45), (45, 60), (60, 90), (90, 180))


def depth_component(err: np.ndarray, centres: np.ndarray, x: np.ndarray) -> float:
    """|err| along the mean unit direction from ``x`` to the cameras ``centres`` [V, 3]."""
    d = sum((c - x) / np.linalg.norm(c - x) for c in centres)
    return float(abs(err @ (d / np.linalg.norm(d))))


def _median(xs: list, digits: int) -> float | None:
    """Median of the values that are not None (a keyframe no view sees has no 2D error)."""
    xs = [x for x in xs if x is not None]
    return round(float(np.median(xs)), digits) if xs else None


def summarise(rows: list[dict]) -> dict:
    out = {}
    for lo, hi in BINS:
        sel = [r for r in rows if r["pair"] != "all" and lo <= r["angle_deg"] < hi]
        if not sel:
            continue
        e3 = np.array([r["err_cm"] for r in sel])
        out[f"{lo}-{hi}"] = {"keyframes": len(sel),
                             "err_cm_median": round(float(np.nanmedian(e3)), 2),
                             "err_cm_mean": round(float(np.nanmean(e3)), 2),
                             "depth_err_cm_median": round(float(np.nanmedian([r["depth_err_cm"] for r in sel])), 2),
                             "px_err_median": _median([r["px_err"] for r in sel], 3),
                             "undecodable": int(sum(not r["valid"] for r in sel))}
    allv = [r for r in rows if r["pair"] == "all"]
    if allv:
        out["all four views"] = {"keyframes": len(allv),
                                 "err_cm_median": round(float(np.nanmedian([r["err_cm"] for r in allv])), 2),
                                 "err_cm_mean": round(float(np.nanmean([r["err_cm"] for r in allv])), 2),
                                 "px_err_median": _median([r["px_err"] for r in allv], 3)}
    return out


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/rig8-ctx-recover-noise-long")
    p.add_argument("--data", default="data/rig8_val_heldout")
    p.add_argument("--starts", type=int, default=2, help="windows per episode (as openloop --starts)")
    p.add_argument("--sampler-steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="bench/results/view_pairs/openloop_pairs.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from action_images.baselines import load_model
    from action_images.data.windows import collate
    from action_images.metrics import true_projections
    from action_images.openloop import (held_out_windows, noise_shape, open_windows, unit_images, window_cameras,
                                        window_seed)

    t0 = time.perf_counter()
    model = load_model(a.checkpoint)
    cfg = model.config
    data = open_windows(a.data, cfg, a.seed)
    ds = data.datasets[0]
    codec = data.codec
    names = list(ds.camera_names)
    if len(names) < 3:
        raise SystemExit(f"--data {a.data}: needs >= 3 cameras per episode to form pairs; has {names}")
    pairs = [list(q) for q in itertools.combinations(names, 2)] + [names]
    rows: list[dict] = []
    R = cfg.image_size
    for ep in range(ds.num_episodes):
        base = held_out_windows(data, [ep], a.starts, names, a.seed)
        for wi, w_all in enumerate(base):
            poses = w_all["poses"].numpy()                                      # [F, 8]
            cams_all = window_cameras(w_all, R)
            centres_all = {n: c.position for n, c in zip(names, cams_all)}
            gen = torch.Generator().manual_seed(window_seed(a.seed, ep * a.starts + wi))
            noise4 = torch.randn(noise_shape(cfg, len(names), poses.shape[0], R, R), generator=gen)
            for pair in pairs:
                idx = [names.index(n) for n in pair]
                w = {k: (v[idx] if k in PER_VIEW else v) for k, v in w_all.items()}
                out = model.sample(collate([w]), task="policy", steps=a.sampler_steps, noise=noise4[idx][None])
                act = unit_images(out.act[0])                                   # [V, F, R, R, 3] in [0, 1]
                cams = [cams_all[i] for i in idx]
                dec = codec.decode(act[:, 1:], cams)
                true_uv, vis = true_projections(poses[1:], cams, codec)
                px = np.linalg.norm(dec.uv[..., 0, :] - true_uv[..., 0, :], axis=-1)    # [V, H] the position point
                px = np.where(vis[..., 0], px, np.nan)
                for k in range(poses.shape[0] - 1):
                    x_true = poses[1 + k, :3]
                    valid = bool(dec.valid[k])
                    err = (dec.poses[k, :3] - x_true) if valid else (poses[0, :3] - x_true)
                    centres = np.array([centres_all[n] for n in pair])
                    rows.append({"episode": ep, "window": wi, "pair": "all" if len(pair) > 2 else ",".join(pair),
                                 "keyframe": k, "valid": valid,
                                 "angle_deg": round(ray_angle_deg(centres[0], centres[1], x_true), 2)
                                 if len(pair) == 2 else None,
                                 "err_cm": round(100 * float(np.linalg.norm(err)), 3),
                                 "depth_err_cm": round(100 * depth_component(err, centres, x_true), 3),
                                 "px_err": round(float(np.nanmean(px[:, k])), 4) if np.isfinite(px[:, k]).any()
                                 else None})
        print(f"episode {ep + 1}/{ds.num_episodes}", file=sys.stderr)
    summary = summarise(rows)
    out = {"command": probe_command(__file__, argv),
           "checkpoint": a.checkpoint, "data": a.data, "starts": a.starts, "sampler_steps": a.sampler_steps,
           "seed": a.seed, "summary": summary, "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
