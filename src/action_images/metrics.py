"""Open-loop metrics (the paper's Tables 4-6 in small): video quality, action accuracy, action labeling.

Definitions (ours, so numbers are comparable across runs):

* **PSNR** per clip from the MSE over all its pixels (uint8 range 255), averaged over clips; identical -> ``inf``
  (written to JSON as ``null`` with ``"psnr_identical": true`` by :func:`json_safe`'s caller).
* **SSIM** (Wang et al. 2004): Gaussian window σ = 1.5 (11 x 11), K1 = 0.01, K2 = 0.03, no sample-covariance
  correction, per channel, mean over the interior (5 px border cropped, as scikit-image does), averaged over frames.
* **Action 2D error** (px, model resolution): sub-pixel peak of each channel of a generated action image
  (``ActionImageCodec.peaks``) vs the true projection of that point (pos / nrm / up), over points whose true projection
  is inside the image. **3D error**: decoded position vs truth (m), rotation (deg), gripper |Δg|, over decodable
  frames.
* **Labeling** (video -> action): trajectory error = mean 3D position error over the clip's frames; 2D tracks are the
  (view, point) peak sequences. **Jaccard at δ px** follows TAP-Vid: a point is *predicted visible* if its peak height
  is >= the codec's ``min_confidence`` and *truly visible* if its projection is inside the image;
  TP = both visible and error < δ, FP = predicted visible and (not truly visible or error >= δ),
  FN = truly visible and (not predicted visible or error >= δ); J = TP / (TP + FP + FN). Thresholds 1, 2, 4, 8 px at
  the model resolution (TAP-Vid uses 1..16 px at 256 px); **average Jaccard** is their mean; ``pck`` (TAP-Vid's
  δ_avg position accuracy) is the fraction of truly visible points within δ.
* **LPIPS / FVD** need local weights (see ``action_images.perceptual``); without them they are ``null`` with a note.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from action_images.codec import ActionImageCodec
from action_images.geometry import Camera, pose_to_matrix, project_points, rotation_angle_deg, stack_cameras

JACCARD_THRESHOLDS = (1.0, 2.0, 4.0, 8.0)
OPEN_LOOP_TASKS = ("policy", "world_model", "labeler", "video")
NOTE_LPIPS = "LPIPS not computed: pass --lpips-weights PATH (local AlexNet+LPIPS weights; nothing is downloaded)"
NOTE_FVD = "FVD not computed: pass --i3d-weights PATH (local TorchScript I3D; nothing is downloaded)"


# ---- video quality -------------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR (dB) of two equal-shape arrays; ``inf`` when identical."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, sigma: float = 1.5) -> float:
    """Mean SSIM of images ``[..., H, W, C]`` (Gaussian window; see the module docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"need equal shapes [..., H, W, C]; got {a.shape} vs {b.shape}")
    sig = [0.0] * (a.ndim - 3) + [sigma, sigma, 0.0]
    f = lambda x: gaussian_filter(x, sig, truncate=3.5, mode="reflect")  # noqa: E731
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a ** 2
    var_b = f(b * b) - mu_b ** 2
    cov = f(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    pad = int(3.5 * sigma + 0.5)
    H, W = a.shape[-3:-1]
    if H > 2 * pad and W > 2 * pad:
        s = s[..., pad:H - pad, pad:W - pad, :]
    return float(s.mean())


# ---- action accuracy -----------------------------------------------------------------------------------------------
def true_projections(poses: np.ndarray, cameras: Sequence[Camera], codec: ActionImageCodec
                     ) -> tuple[np.ndarray, np.ndarray]:
    """poses [T, 8] -> uv [V, T, 3, 2] of the three points and visibility [V, T, 3] (in front, inside the image)."""
    K, T_cw = stack_cameras(cameras)
    uv, depth = project_points(codec.points(poses), K, T_cw)
    W, H = cameras[0].width, cameras[0].height
    with np.errstate(invalid="ignore"):
        vis = ((depth > 1e-6) & (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5)
               & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5))
    return uv, vis


def pixel_error(pred_uv: np.ndarray, true_uv: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Euclidean 2D error over ``mask``: mean, median and per point (pos, nrm, up). uv [..., 3, 2], mask [..., 3]."""
    err = np.linalg.norm(pred_uv - true_uv, axis=-1)
    ok = mask & np.isfinite(err)
    per = {name: (float(err[..., c][ok[..., c]].mean()) if ok[..., c].any() else None)
           for c, name in enumerate(("pos", "nrm", "up"))}
    return {"mean_px": float(err[ok].mean()) if ok.any() else None,
            "median_px": float(np.median(err[ok])) if ok.any() else None, "per_point_px": per, "count": int(ok.sum())}


def pose_error(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """3D errors of decoded poses ``[T, 8]`` (NaN rows = undecodable) against ``truth [T, 8]``."""
    valid = np.isfinite(pred).all(-1)
    out: dict[str, Any] = {"valid_fraction": float(valid.mean()) if len(valid) else 0.0}
    if not valid.any():
        return {**out, "position_m_mean": None, "position_m_median": None, "rotation_deg_mean": None,
                "gripper_abs_error_mean": None}
    p0, R0, g0 = pose_to_matrix(truth[valid])
    p1, R1, g1 = pose_to_matrix(pred[valid])
    d = np.linalg.norm(p1 - p0, axis=-1)
    return {**out, "position_m_mean": float(d.mean()), "position_m_median": float(np.median(d)),
            "rotation_deg_mean": float(rotation_angle_deg(R0, R1).mean()),
            "gripper_abs_error_mean": float(np.abs(g1 - g0).mean())}


def jaccard(pred_uv: np.ndarray, pred_visible: np.ndarray, true_uv: np.ndarray, true_visible: np.ndarray,
            thresholds: Sequence[float] = JACCARD_THRESHOLDS) -> dict[str, Any]:
    """TAP-Vid-style Jaccard and position accuracy per threshold (px) and their averages. uv [N..., 2]."""
    err = np.linalg.norm(np.asarray(pred_uv, float) - np.asarray(true_uv, float), axis=-1)
    err = np.where(np.isfinite(err), err, np.inf)
    pv, tv = np.asarray(pred_visible, bool), np.asarray(true_visible, bool)
    jac, pck = {}, {}
    for thr in thresholds:
        close = err < thr
        tp = (pv & tv & close).sum()
        fp = (pv & ~(tv & close)).sum()
        fn = (tv & ~(pv & close)).sum()
        key = f"{thr:g}"
        jac[key] = float(tp / (tp + fp + fn)) if tp + fp + fn else None
        pck[key] = float((tv & close).sum() / tv.sum()) if tv.any() else None
    js = [v for v in jac.values() if v is not None]
    ps = [v for v in pck.values() if v is not None]
    return {"jaccard": jac, "average_jaccard": float(np.mean(js)) if js else None,
            "pck": pck, "average_pck": float(np.mean(ps)) if ps else None,
            "occlusion_accuracy": float((pv == tv).mean()) if pv.size else None}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (well-behaved at 0 / n and for small n)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else max(0.0, centre - half)        # exact ends (no float dust below 0 / above 1)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def json_safe(x: Any) -> Any:
    """Replace NaN/inf floats by None and numpy scalars/arrays by Python ones (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


# ---- open-loop evaluation on held-out episodes ---------------------------------------------------------------------
def to_u8(x: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def _unit(x: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> float32 [..., H, W, 3] in [0, 1]."""
    return ((x.clamp(-1, 1) + 1) * 0.5).float().movedim(-3, -1).cpu().numpy()


def _video_scores(gen: np.ndarray, real: np.ndarray, lpips_net: Any) -> dict[str, Any]:
    from action_images.perceptual import lpips_uint8
    p = psnr(gen, real)
    return {"psnr": p, "ssim": ssim(gen, real), "lpips": lpips_uint8(lpips_net, gen, real) if lpips_net else None}


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each numeric leaf over windows (counts summed; PSNR over finite values, inf counted separately)."""
    out: dict[str, Any] = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        if isinstance(vals[0], dict):
            out[k] = _summarise(vals)
        elif k == "count":
            out[k] = int(sum(v for v in vals if v is not None))
        elif k == "psnr":
            fin = [v for v in vals if v is not None and math.isfinite(v)]
            out[k] = float(np.mean(fin)) if fin else (math.inf if vals else None)
            out["psnr_identical_windows"] = int(sum(1 for v in vals if v is not None and math.isinf(v)))
        elif all(isinstance(v, (int, float)) or v is None for v in vals):
            out[k] = _mean(vals)
    return out


def held_out_windows(data: Any, episodes: Sequence[int], per_episode: int, views: Sequence[str],
                     seed: int = 0) -> list[dict[str, Any]]:
    """Un-augmented windows (``data``: a ``Windows`` over one dataset) at ``per_episode`` evenly spaced start frames
    before each episode's success: the open-loop evaluation set."""
    rng = np.random.default_rng(seed)
    out = []
    for i in episodes:
        last = max(0, data.num_starts(0, int(i)) - 1)
        for t0 in np.unique(np.linspace(0, last, per_episode).round().astype(int)):
            out.append(data.window(0, int(i), int(t0), rng, views=list(views), augment=False))
    return out


def evaluate_open_loop(model: Any, data_root: str, episodes: Sequence[int] | None = None, held_out: int = 4,
                       windows_per_episode: int = 4, steps: int = 10, cfg_scale: float = 1.0, seed: int = 0,
                       views: Sequence[str] | None = None, tasks: Sequence[str] = OPEN_LOOP_TASKS,
                       lpips_weights: str | None = None, i3d_weights: str | None = None,
                       thresholds: Sequence[float] = JACCARD_THRESHOLDS, batch_size: int = 8,
                       figure: str | None = None) -> dict[str, Any]:
    """Open-loop scores of ``model`` on held-out episodes (default: the last ``held_out`` of the dataset).

    Windows are built by ``data.windows.Windows.window(augment=False)`` (the training code path), starting at
    ``windows_per_episode`` evenly spaced frames before the episode's success (``Windows.num_starts``); every task
    samples with the same seed. Also reports the trivial baselines (copy the current frame; hold the current pose) so
    a number can be read against "nothing moves". With the ``policy`` task, ``learning_check`` holds the issue's
    learning-check numbers: keyframe position error (cm; an undecodable keyframe counts as "did not move") against
    the hold-pose baseline, per keyframe, gripper accuracy and the decodable fraction. ``figure``: a PNG of real vs
    generated streams of the first window.
    """
    from action_images.data.windows import WindowConfig, Windows, collate

    cfg = model.config
    for t in tasks:
        if t not in OPEN_LOOP_TASKS:
            raise ValueError(f"unknown open-loop task {t!r}; choose from {OPEN_LOOP_TASKS}")
    wcfg = WindowConfig(image_size=cfg.image_size, num_views=cfg.num_views, horizon=cfg.horizon, stride=cfg.stride)
    data = Windows([data_root], wcfg, seed=seed)
    ds = data.datasets[0]
    names = list(views) if views else ds.camera_names[:max(2, cfg.num_views)]
    if episodes is None:
        episodes = list(range(max(0, ds.num_episodes - held_out), ds.num_episodes))
    windows = held_out_windows(data, episodes, windows_per_episode, names, seed)
    codec = data.codec
    lpips_net = i3d = None
    notes = []
    if lpips_weights:
        from action_images.perceptual import LPIPS
        lpips_net = LPIPS.from_file(lpips_weights)
    else:
        notes.append(NOTE_LPIPS)
    if i3d_weights:
        from action_images.perceptual import I3DFeatures
        i3d = I3DFeatures(i3d_weights)
    else:
        notes.append(NOTE_FVD)

    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}
    base_rows: list[dict[str, Any]] = []
    clips: dict[str, list[np.ndarray]] = {"real": [], **{t: [] for t in tasks if t != "labeler"}}
    check: dict[str, list[np.ndarray]] = {"model_m": [], "still_m": [], "gripper_ok": [], "valid": []}
    for s in range(0, len(windows), batch_size):
        items = windows[s:s + batch_size]
        batch = collate(items)
        outs = {t: model.sample(batch, task=t, steps=steps, cfg_scale=cfg_scale,
                                generator=torch.Generator().manual_seed(seed + s)) for t in tasks}
        if figure and s == 0:
            from action_images.report import save_streams_figure
            save_streams_figure(batch, outs[tasks[0]], figure)
        for b, w in enumerate(items):
            R = cfg.image_size
            cams = [Camera(K=K, T_cam_world=Tc, width=R, height=R) for K, Tc in
                    zip(w["K"].numpy(), w["T_cam_world"].numpy())]
            poses = w["poses"].numpy()                                         # [F, 8]
            real = to_u8(w["rgb"])                                             # [V, F, R, R, 3]
            true_uv, true_vis = true_projections(poses, cams, codec)           # [V, F, 3, 2], [V, F, 3]
            clips["real"].append(real[0])
            hold = np.repeat(poses[:1], len(poses) - 1, axis=0)
            base_rows.append({"copy_frame": _video_scores(np.repeat(real[:, :1], real.shape[1] - 1, 1), real[:, 1:],
                                                          lpips_net),
                              "hold_pose_2d": pixel_error(np.broadcast_to(true_uv[:, :1], true_uv[:, 1:].shape),
                                                          true_uv[:, 1:], true_vis[:, 1:]),
                              "hold_pose_3d": pose_error(hold, poses[1:])})
            for t in tasks:
                out = outs[t]
                row: dict[str, Any] = {}
                if t in ("policy", "world_model", "video"):
                    gen = to_u8(out.rgb[b])
                    row["video"] = _video_scores(gen[:, 1:], real[:, 1:], lpips_net)
                    clips[t].append(gen[0])
                if t in ("policy", "labeler"):
                    act = _unit(out.act[b])                                    # [V, F, R, R, 3]
                    first = 1 if t == "policy" else 0
                    uv, peak = codec.peaks(act[:, first:])
                    row["action_2d"] = pixel_error(uv, true_uv[:, first:], true_vis[:, first:])
                    dec = codec.decode(act[:, first:], cams)
                    row["action_3d"] = pose_error(dec.poses, poses[first:])
                    row["disagree_fraction"] = float(dec.disagree.mean())
                    if t == "labeler":
                        row["tracks"] = jaccard(uv, peak >= codec.min_confidence, true_uv, true_vis, thresholds)
                        row["trajectory_error_m"] = row["action_3d"]["position_m_mean"]
                    else:
                        now, truth = poses[0], poses[1:]
                        moved = np.where(dec.valid[:, None], dec.poses[:, :3], now[:3])   # undecodable = stay
                        check["model_m"].append(np.linalg.norm(moved - truth[:, :3], axis=-1))
                        check["still_m"].append(np.linalg.norm(truth[:, :3] - now[:3], axis=-1))
                        g = np.nan_to_num(dec.poses[:, 7], nan=now[7])
                        check["gripper_ok"].append((g > 0.5) == (truth[:, 7] > 0.5))
                        check["valid"].append(dec.valid.copy())
                rows[t].append(row)
    result: dict[str, Any] = {"windows": len(windows), "episodes": [int(i) for i in episodes], "views": names,
                              "steps": steps, "cfg_scale": cfg_scale, "jaccard_thresholds_px": list(thresholds),
                              "tasks": {t: _summarise(r) for t, r in rows.items() if r},
                              "baselines": _summarise(base_rows) if base_rows else {}, "notes": notes}
    if check["model_m"]:
        m, st = 100 * np.stack(check["model_m"]), 100 * np.stack(check["still_m"])       # [N, H] cm
        result["learning_check"] = {
            "keyframes": int(m.size),
            "pos_err_cm_median": float(np.median(m)), "pos_err_cm_mean": float(m.mean()),
            "still_baseline_cm_median": float(np.median(st)), "still_baseline_cm_mean": float(st.mean()),
            "pos_err_cm_median_by_keyframe": np.median(m, axis=0).round(3).tolist(),
            "still_baseline_cm_median_by_keyframe": np.median(st, axis=0).round(3).tolist(),
            "gripper_accuracy": float(np.mean(check["gripper_ok"])),
            "decode_valid_rate": float(np.mean(check["valid"])),
            "rgb_psnr_db": result["tasks"]["policy"]["video"]["psnr"],
            "copy_frame_psnr_db": result["baselines"]["copy_frame"]["psnr"]}
    fvd_scores: dict[str, Any] = {}
    for t in (t for t in tasks if t != "labeler"):
        fvd_scores[t] = None
        if i3d is not None and len(clips["real"]) >= 2:
            from action_images.perceptual import fvd
            fvd_scores[t] = fvd(i3d, np.stack(clips["real"]), np.stack(clips[t]))
    result["fvd"] = fvd_scores
    return result
