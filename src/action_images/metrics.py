"""Open-loop metrics: video quality, action accuracy, action labeling. Metric functions only; the evaluator that
applies them to held-out episodes is :mod:`action_images.openloop`.

Definitions (fixed here, so numbers are comparable across runs):

* **PSNR** per clip from the MSE over all its pixels (uint8 range 255), averaged over clips; identical -> ``inf``
  (strict JSON writes it as ``null``; the open-loop summary counts such clips in ``psnr_identical_windows``).
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
from action_images.runfiles import json_safe  # noqa: F401  (re-exported: callers that still import it from here)

JACCARD_THRESHOLDS = (1.0, 2.0, 4.0, 8.0)


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


def paired_outcomes(base: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Two evaluations' episode records (``metrics.json``'s ``episodes``) compared episode by episode: the episodes
    of ``new`` matched by (task, episode) in ``base``, which must have run the same seed; how many succeeded in both,
    only in ``new`` (won), only in ``base`` (lost), and the exact two-sided sign test's p on won against lost."""
    from scipy.stats import binomtest

    by_key = {(e["task"], e["episode"]): e for e in base}
    won = lost = both = 0
    for e in new:
        b = by_key.get((e["task"], e["episode"]))
        if b is None or b["seed"] != e["seed"]:
            raise ValueError(f"{e['task']} episode {e['episode']}: not the same episode in both evaluations")
        both += bool(e["success"] and b["success"])
        won += bool(e["success"] and not b["success"])
        lost += bool(b["success"] and not e["success"])
    p = binomtest(won, won + lost, 0.5).pvalue if won + lost else 1.0
    return {"episodes": len(new), "both": both, "won": won, "lost": lost, "sign_test_p": float(p)}


# ---- image helpers ---------------------------------------------------------------------------------------------------
def to_u8(x: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()
