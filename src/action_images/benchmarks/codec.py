"""Codec benchmark: round-trip accuracy of both decoders and throughput.

    action-images bench codec --json bench/results/codec.json            # full: 1000 poses, 2/3/4 views, 32..256 px
    action-images bench codec --poses 200 --sizes 64 --json /tmp/c.json  # quick

Poses are uniform in a tabletop workspace (x 0.3..0.7 m, y ±0.25 m, z 0.02..0.4 m), uniformly random rotations,
gripper open/closed at random; cameras look at the workspace from the front, left, right and top (design §5).
Noise: i.i.d. Gaussian pixel noise (std given in [0, 1] image units) added to the action images before decoding.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from action_images.benchmarks import args_dict, environment, write_json
from action_images.codec import ActionImageCodec
from action_images.geometry import Camera, pose_to_matrix, rotation_angle_deg

WORKSPACE_LO = (0.3, -0.25, 0.02)
WORKSPACE_HI = (0.7, 0.25, 0.40)
CAMERA_EYES = {"front": (1.35, 0.0, 0.75), "left": (0.5, 0.95, 0.75), "right": (0.5, -0.95, 0.75),
               "top": (0.5, 0.0, 1.55)}
TARGET = (0.5, 0.0, 0.15)


def tabletop_cameras(n_views: int, size: int, fovy: float = 55.0) -> list[Camera]:
    """Front, left, right, top cameras (the first ``n_views``) looking at the tabletop workspace."""
    names = list(CAMERA_EYES)[:n_views]
    return [Camera.look_at(CAMERA_EYES[n], TARGET, fovy, size, size, up=(1, 0, 0) if n == "top" else (0, 0, 1),
                           name=n) for n in names]


def random_poses(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.uniform(WORKSPACE_LO, WORKSPACE_HI, size=(n, 3))
    q = Rotation.random(n, random_state=seed).as_quat()
    g = rng.integers(0, 2, n).astype(np.float64)
    return np.concatenate([p, q, g[:, None]], axis=1)


def errors(truth: np.ndarray, decoded: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    p0, R0, g0 = pose_to_matrix(truth[valid])
    p1, R1, g1 = pose_to_matrix(decoded[valid]) if valid.any() else (p0, R0, g0)
    pos_mm = np.linalg.norm(p1 - p0, axis=-1) * 1000.0
    rot_deg = rotation_angle_deg(R0, R1)
    return {"valid_fraction": float(valid.mean()),
            "position_mm_median": float(np.median(pos_mm)), "position_mm_p95": float(np.percentile(pos_mm, 95)),
            "rotation_deg_median": float(np.median(rot_deg)), "rotation_deg_p95": float(np.percentile(rot_deg, 95)),
            "gripper_accuracy": float(((g1 > 0.5) == (g0 > 0.5)).mean())}


def timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up (the machine is shared: medians, not means)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--poses", type=int, default=1000, help="random poses per configuration")
    p.add_argument("--views", default="2,3,4")
    p.add_argument("--sizes", default="32,64,128,256")
    p.add_argument("--noise", default="0,0.05", help="pixel noise std values (image units, [0,1])")
    p.add_argument("--methods", default="triangulate,depth_sweep")
    p.add_argument("--throughput-frames", type=int, default=256, help="batch of frames per timed call")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown (for docs/codec.md)")


def run(args: argparse.Namespace) -> int:
    codec = ActionImageCodec()
    views = [int(v) for v in args.views.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    noises = [float(x) for x in args.noise.split(",")]
    methods = args.methods.split(",")
    poses = random_poses(args.poses, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    accuracy, throughput = [], []
    configs = [(v, s) for s in sizes for v in views]
    for n_views, size in tqdm(configs, desc="codec bench", unit="config"):
        cams = tabletop_cameras(n_views, size)
        chunks = [codec.encode(poses[i:i + 250], cams) for i in range(0, len(poses), 250)]
        for noise in noises:
            noisy = [np.clip(c + rng.normal(0, noise, c.shape).astype(np.float32), 0, 1) if noise > 0 else c
                     for c in chunks]
            for method in methods:
                res = [codec.decode(c, cams, method=method) for c in noisy]
                decoded = np.concatenate([r.poses for r in res])
                valid = np.concatenate([r.valid for r in res])
                row = {"views": n_views, "size": size, "noise_std": noise, "method": method}
                row.update(errors(poses, decoded, valid))
                row["disagree_fraction"] = float(np.concatenate([r.disagree for r in res]).mean())
                accuracy.append(row)
        batch = poses[: args.throughput_frames]
        imgs = codec.encode(batch, cams)
        t_enc = timed(lambda: codec.encode(batch, cams), args.repeats)
        t_dec = timed(lambda: codec.decode(imgs, cams), args.repeats)
        throughput.append({"views": n_views, "size": size, "batch_frames": len(batch),
                           "encode_view_frames_per_s": n_views * len(batch) / t_enc,
                           "decode_frames_per_s": len(batch) / t_dec})
    payload = {"benchmark": "codec", "arguments": args_dict(args), "seed": args.seed, "environment": environment(),
               "workspace": {"lo": WORKSPACE_LO, "hi": WORKSPACE_HI, "cameras": CAMERA_EYES, "target": TARGET},
               "accuracy": accuracy, "throughput": throughput}
    for r in accuracy:
        print(f"{r['views']}v {r['size']:>3}px noise {r['noise_std']:.2f} {r['method']:<11} "
              f"pos {r['position_mm_median']:.2f}/{r['position_mm_p95']:.2f} mm  "
              f"rot {r['rotation_deg_median']:.2f}/{r['rotation_deg_p95']:.2f} deg  grip {r['gripper_accuracy']:.3f}")
    for r in throughput:
        print(f"{r['views']}v {r['size']:>3}px encode {r['encode_view_frames_per_s']:.0f} view-frames/s  "
              f"decode {r['decode_frames_per_s']:.0f} frames/s")
    write_json(args.json, payload)
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(payload))
        print(f"wrote {args.markdown}")
    return 0


def to_markdown(payload: dict) -> str:
    """Accuracy and throughput tables as markdown (median / 95th percentile)."""
    lines = ["| views | px | noise | decoder | position mm (med / p95) | rotation ° (med / p95) | gripper acc. | valid |",
             "|---|---|---|---|---|---|---|---|"]
    for r in payload["accuracy"]:
        lines.append(f"| {r['views']} | {r['size']} | {r['noise_std']:.2f} | {r['method']} | "
                     f"{r['position_mm_median']:.2f} / {r['position_mm_p95']:.2f} | "
                     f"{r['rotation_deg_median']:.2f} / {r['rotation_deg_p95']:.2f} | "
                     f"{100 * r['gripper_accuracy']:.1f} % | {100 * r['valid_fraction']:.1f} % |")
    lines += ["", "| views | px | encode view-frames/s | decode frames/s |", "|---|---|---|---|"]
    for r in payload["throughput"]:
        lines.append(f"| {r['views']} | {r['size']} | {r['encode_view_frames_per_s']:,.0f} | "
                     f"{r['decode_frames_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
