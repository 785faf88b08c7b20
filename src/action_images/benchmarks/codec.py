"""Codec benchmark: round-trip accuracy of both decoders (clean, noisy, near the image border) and throughput.

    action-images bench codec --json bench/results/codec.json            # defaults below
    action-images bench codec --poses 200 --sizes 64 --json /tmp/c.json  # quick

The rig is the simulator's: its calibrated front, left, right and top cameras (``sim.make_env(...).cameras``, the
first ``n`` of them for ``n`` views). Poses: positions uniform in a box around the task area, uniformly random
rotations, gripper open/closed at random, kept only if all three points lie at least one blob σ inside every view.
Conditions: ``clean``; ``noise_S`` (i.i.d. Gaussian pixel noise of std S in [0, 1] image units, clipped, added before
decoding); ``border`` (clean images of poses with one point 0.5–1.6 σ outside one view and the rest well inside).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import lru_cache

import numpy as np
from scipy.spatial.transform import Rotation

from action_images.cliflags import Parser
from action_images.codec import ActionImageCodec
from action_images.geometry import Camera, pose_to_matrix, project_points, rotation_angle_deg, stack_cameras
from action_images.runfiles import args_dict, atomic_write_json, environment
from action_images.sim.scene import CAMERA_SETS

CAMERA_NAMES = CAMERA_SETS["all_static"]
# positions are drawn from this box (metres, the simulator's world frame; the table top is z = 0)
POSE_LO = (-0.25, -0.25, 0.03)
POSE_HI = (0.25, 0.25, 0.35)
METHODS = ("triangulate", "depth_sweep")
LIMITS = {"--poses": (1, 100_000), "--throughput-frames": (1, 100_000), "--repeats": (1, 1000),
          "--seed": (0, 2**31 - 1)}


@lru_cache(maxsize=None)
def _sim_cameras(size: int) -> tuple[Camera, ...]:
    from action_images.sim import make_env

    env = make_env("reach_target", cameras=CAMERA_NAMES, image_size=size, render=False)
    try:
        return tuple(env.cameras)
    finally:
        env.close()


def sim_cameras(n_views: int, size: int) -> list[Camera]:
    """The simulator's calibrated cameras (front, left, right, top; the first ``n_views``) at ``size`` px square."""
    if not 1 <= n_views <= len(CAMERA_NAMES):
        raise ValueError(f"n_views must be in 1..{len(CAMERA_NAMES)}; got {n_views}")
    return list(_sim_cameras(int(size))[:n_views])


def jittered_cameras(cameras: list[Camera], rng: np.random.Generator, pos: float = 0.03,
                     rot: float = 0.05) -> list[Camera]:
    """A random rig near ``cameras``: each camera moved by up to ``pos`` m per axis and turned about its centre by a
    rotation vector with components up to ``rot`` rad (the simulator's ``perturb_cameras`` ranges)."""
    out = []
    for c in cameras:
        T_wc = c.T_world_cam.copy()
        T_wc[:3, :3] = Rotation.from_rotvec(rng.uniform(-rot, rot, 3)).as_matrix() @ T_wc[:3, :3]
        T_wc[:3, 3] += rng.uniform(-pos, pos, 3)
        out.append(Camera(K=c.K.copy(), T_cam_world=np.linalg.inv(T_wc), width=c.width, height=c.height,
                          name=c.name))
    return out


def _inside(cameras: list[Camera], points: np.ndarray, margin_sigma: float, codec: ActionImageCodec) -> np.ndarray:
    """``[V, N, 3]``: each point projects in front of each camera and at least ``margin_sigma`` σ inside its image."""
    H, W = cameras[0].height, cameras[0].width
    m = margin_sigma * codec.sigma(H, W)
    uv, depth = project_points(points, *stack_cameras(cameras))
    with np.errstate(invalid="ignore"):
        return ((depth > 0.05) & (uv[..., 0] >= m) & (uv[..., 0] <= W - 1 - m)
                & (uv[..., 1] >= m) & (uv[..., 1] <= H - 1 - m))


def _candidates(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.uniform(POSE_LO, POSE_HI, size=(n, 3))
    q = Rotation.random(n, random_state=rng).as_quat()
    g = rng.integers(0, 2, n).astype(np.float64)
    return np.concatenate([p, q, g[:, None]], axis=1)


def random_poses(n: int, seed: int, cameras: list[Camera] | None = None, margin_sigma: float = 1.0,
                 codec: ActionImageCodec | None = None) -> np.ndarray:
    """``[n, 8]`` random poses; with ``cameras``, only poses whose three points are all ``margin_sigma`` σ inside
    every view (the simulator's 4-camera rig at any size when None)."""
    codec = codec or ActionImageCodec()
    cameras = cameras if cameras is not None else sim_cameras(len(CAMERA_NAMES), 64)
    rng = np.random.default_rng(seed)
    out, have = [], 0
    for _ in range(1000):
        cand = _candidates(max(64, 4 * (n - have)), rng)
        keep = cand[_inside(cameras, codec.points(cand), margin_sigma, codec).all(axis=(0, 2))]
        out.append(keep[: n - have])
        have += len(out[-1])
        if have >= n:
            break
    else:
        raise RuntimeError("random_poses: the cameras share almost no view of the pose box")
    return np.concatenate(out)[:n]


def border_poses(n: int, seed: int, cameras: list[Camera], lo: float = 0.5, hi: float = 1.6,
                 codec: ActionImageCodec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 8]`` poses with one point (random) ``lo``–``hi`` σ outside one view (random, past a random edge), every
    other point/view pair at least one σ inside. Also returns ``[n, 3]`` (view, point, distance in σ)."""
    codec = codec or ActionImageCodec()
    rng = np.random.default_rng(seed)
    V = len(cameras)
    H, W = cameras[0].height, cameras[0].width
    sigma = codec.sigma(H, W)
    local = codec._local_points()
    poses, info = [], []
    for _ in range(200 * n):
        v, c = int(rng.integers(V)), int(rng.integers(3))
        dist = rng.uniform(lo, hi)
        along = rng.uniform(0.15, 0.85)
        edge = int(rng.integers(4))
        u, w_ = (along * (W - 1), along * (H - 1))
        uv = {0: (-dist * sigma, w_), 1: (W - 1 + dist * sigma, w_), 2: (u, -dist * sigma),
              3: (u, H - 1 + dist * sigma)}[edge]
        cam = cameras[v]
        centre_depth = (cam.T_cam_world[:3, :3] @ np.mean([POSE_LO, POSE_HI], 0) + cam.T_cam_world[:3, 3])[2]
        q_world = cam.unproject(np.array([uv]), np.array([centre_depth * rng.uniform(0.8, 1.2)]))[0]
        rot = Rotation.random(random_state=rng)
        p = q_world - rot.apply(local[c])
        pose = np.r_[p, rot.as_quat(), float(rng.integers(0, 2))]
        ins = _inside(cameras, codec.points(pose[None]), 1.0, codec)[:, 0]     # [V, 3]
        ins[v, c] = True
        if ins.all():
            poses.append(pose)
            info.append((v, c, dist))
            if len(poses) == n:
                break
    if len(poses) < n:
        raise RuntimeError("border_poses: could not place enough poses near the border")
    return np.array(poses), np.array(info)


def pose_errors(truth: np.ndarray, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position error (mm) and rotation error (°) per frame; NaN where ``decoded`` is NaN."""
    p0, R0, _ = pose_to_matrix(truth)
    ok = np.isfinite(decoded).all(-1)
    pos = np.full(len(truth), np.nan)
    rot = np.full(len(truth), np.nan)
    if ok.any():
        p1, R1, _ = pose_to_matrix(decoded[ok])
        pos[ok] = np.linalg.norm(p1 - p0[ok], axis=-1) * 1000.0
        rot[ok] = rotation_angle_deg(R0[ok], R1)
    return pos, rot


def _stats(x: np.ndarray, prefix: str) -> dict[str, float | None]:
    if len(x) == 0:
        return {f"{prefix}_median": None, f"{prefix}_p95": None, f"{prefix}_max": None}
    return {f"{prefix}_median": float(np.median(x)), f"{prefix}_p95": float(np.percentile(x, 95)),
            f"{prefix}_max": float(np.max(x))}


def accuracy_row(truth: np.ndarray, res, uv_true: np.ndarray, sigma: float) -> dict:
    """Errors of one decode: over all valid frames, over the trusted ones (valid and not ``disagree``), and how many
    trusted frames are silently wrong (> 2 mm or > 1°)."""
    pos, rot = pose_errors(truth, res.poses)
    trusted = res.valid & ~res.disagree
    row = {"frames": int(len(truth)), "valid_fraction": float(res.valid.mean()),
           "flagged_fraction": float((res.valid & res.disagree).mean()),
           "trusted_fraction": float(trusted.mean())}
    row.update(_stats(pos[res.valid], "position_mm"))
    row.update(_stats(rot[res.valid], "rotation_deg"))
    row.update(_stats(pos[trusted], "trusted_position_mm"))
    row.update(_stats(rot[trusted], "trusted_rotation_deg"))
    row["trusted_wrong_fraction"] = float((trusted & ((pos > 2.0) | (rot > 1.0))).mean())
    g_ok = (res.poses[res.valid, 7] > 0.5) == (truth[res.valid, 7] > 0.5)
    row["gripper_accuracy"] = float(g_ok.mean()) if g_ok.size else None
    # peaks more than 3 σ from where the point truly projects (points truly in the image only)
    with np.errstate(invalid="ignore"):
        d = np.linalg.norm(res.uv - uv_true, axis=-1)
    H_in = np.isfinite(uv_true).all(-1)
    row["peak_far_fraction"] = float((d[H_in] > 3 * sigma).mean()) if H_in.any() else None
    return row


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
    # integers are parsed in run() so that "0" or "1e9" give one error line naming the flag
    p.add_argument("--poses", default="500", help="random poses per configuration and condition (1..100000)")
    p.add_argument("--num-views", dest="num_views", default="2,3,4",
                   help="numbers of views (2..4; the first n of front, left, right, top)")
    p.add_argument("--views", dest="num_views", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    p.add_argument("--sizes", default="32,64,128", help="image sizes in px (16..512)")
    p.add_argument("--noise", default="0.05,0.2", help="pixel noise std values (image units, (0, 1])")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--throughput-frames", default="256", help="batch of frames per timed call")
    p.add_argument("--repeats", default="5", help="timed calls per throughput number (median)")
    p.add_argument("--seed", default="0")
    p.add_argument("--json", default=None, help="write results here (strict JSON)")


def _fail(msg: str) -> int:
    print(f"action-images bench codec: {msg}", file=sys.stderr)
    return 2


def _int(flag: str, text) -> int:
    lo, hi = LIMITS[flag]
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} must be an integer in {lo}..{hi}; got {text!r}") from None
    if not np.isfinite(x) or x != int(x) or not lo <= x <= hi:
        raise ValueError(f"{flag} must be an integer in {lo}..{hi}; got {text!r}")
    return int(x)


def _list(flag: str, text: str, cast, ok) -> list:
    try:
        items = [cast(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        items = []
    if not items or not all(ok(x) for x in items):
        raise ValueError(f"{flag}: bad value {text!r}")
    return items


def parse(args: argparse.Namespace) -> dict:
    """Validated settings from the command line (ValueError naming the flag)."""
    return {
        "poses": _int("--poses", args.poses),
        "throughput_frames": _int("--throughput-frames", args.throughput_frames),
        "repeats": _int("--repeats", args.repeats),
        "seed": _int("--seed", args.seed),
        "views": _list("--num-views", args.num_views, int, lambda v: 2 <= v <= len(CAMERA_NAMES)),
        "sizes": _list("--sizes", args.sizes, int, lambda s: 16 <= s <= 512),
        "noise": _list("--noise", args.noise, float, lambda x: np.isfinite(x) and 0 < x <= 1),
        "methods": _list("--methods", args.methods, str.strip, lambda m: m in METHODS),
    }


def run(args: argparse.Namespace) -> int:
    try:
        cfg = parse(args)
    except ValueError as e:
        return _fail(str(e))
    codec = ActionImageCodec()
    rng = np.random.default_rng(cfg["seed"] + 1)
    accuracy, throughput = [], []
    chunk = 250
    for size in cfg["sizes"]:
        for n_views in cfg["views"]:
            cams = sim_cameras(n_views, size)
            sigma = codec.sigma(size, size)
            clean = random_poses(cfg["poses"], cfg["seed"], cams, codec=codec)
            border, _ = border_poses(cfg["poses"], cfg["seed"], cams, codec=codec)
            conditions = [("clean", clean, 0.0)] + [(f"noise_{s:g}", clean, s) for s in cfg["noise"]]
            conditions.append(("border", border, 0.0))
            for name, poses, noise in conditions:
                uv_true, depth = project_points(codec.points(poses), *stack_cameras(cams))
                for method in cfg["methods"]:
                    results = []
                    for i in range(0, len(poses), chunk):
                        img = codec.encode(poses[i:i + chunk], cams)
                        if noise > 0:
                            img = np.clip(img + rng.normal(0, noise, img.shape).astype(np.float32), 0, 1)
                        results.append(codec.decode(img, cams, method=method))
                    res = _concat(results)
                    inside = _inside(cams, codec.points(poses), 0.0, codec)[..., None]
                    row = {"views": n_views, "size": size, "condition": name, "noise_std": noise, "method": method}
                    row.update(accuracy_row(poses, res, np.where(inside, uv_true, np.nan), sigma))
                    accuracy.append(row)
                    _print_row(row)
            batch = clean[: cfg["throughput_frames"]]
            imgs = codec.encode(batch, cams)
            row = {"views": n_views, "size": size, "batch_frames": len(batch),
                   "encode_view_frames_per_s": n_views * len(batch) / timed(lambda: codec.encode(batch, cams),
                                                                            cfg["repeats"])}
            for method in cfg["methods"]:
                t = timed(lambda: codec.decode(imgs, cams, method=method), cfg["repeats"])
                row[f"decode_{method}_frames_per_s"] = len(batch) / t
            throughput.append(row)
            print(f"{n_views}v {size:>3}px " + "  ".join(f"{k} {v:,.0f}" for k, v in row.items()
                                                          if k.endswith("per_s")))
    payload = {"benchmark": "codec", "arguments": args_dict(args), "settings": cfg, "seed": cfg["seed"],
               "environment": environment(),
               "rig": {"cameras": list(CAMERA_NAMES), "source": "action_images.sim.make_env(...).cameras",
                       "pose_box_lo": POSE_LO, "pose_box_hi": POSE_HI, "border_sigma": [0.5, 1.6]},
               "accuracy": accuracy, "throughput": throughput}
    if args.json:
        atomic_write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0


def _concat(results: list):
    """One DecodeResult from chunks (frame axis 0, except ``uv`` [V, T, ...])."""
    first = results[0]
    fields = {}
    for k in first.__dataclass_fields__:
        axis = 1 if k == "uv" else 0
        fields[k] = np.concatenate([getattr(r, k) for r in results], axis=axis)
    return type(first)(**fields)


def _print_row(r: dict) -> None:
    def f(x):
        return "-" if x is None else f"{x:.2f}"
    print(f"{r['views']}v {r['size']:>3}px {r['condition']:<10} {r['method']:<11} "
          f"pos {f(r['position_mm_median'])}/{f(r['position_mm_p95'])} mm  "
          f"rot {f(r['rotation_deg_median'])}/{f(r['rotation_deg_p95'])} deg  valid {r['valid_fraction']:.3f}  "
          f"flagged {r['flagged_fraction']:.3f}  trusted-wrong {r['trusted_wrong_fraction']:.3f}  "
          f"peak>3σ {f(r['peak_far_fraction'])}")


if __name__ == "__main__":
    parser = Parser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
