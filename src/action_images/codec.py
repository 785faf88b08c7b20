"""Action images: a 7-DoF action drawn as pixels in every calibrated view, and decoded back.

Three 3D points of the gripper frame (ℓ = 0.1 m), each an isotropic 2D Gaussian (σ = 0.05·min(H, W) px, peak 1):

    R = Gaussian at q_pos = p
    G = Gaussian at q_nrm = p + ℓ·R(−e_z)
    B = Gaussian at q_up  = p + ℓ·R(e_x)   where it exceeds 0.25, else the pedestal 0.25·g (open → 0.25, closed → 0)

G carries the "normal" point and B the "up" point (docs/conventions.md).

Decoding (accuracy in docs/codec.md): per view and channel a peak (arg-max, or the arg-max of a smoothed copy
where the raw one is a lone noisy pixel) refined by a weighted log-Gaussian fit, its height as confidence (0 where no
blob is found); views whose blob is cut by the image border are left out where two other views see the point, else
the frame is flagged; each point triangulated from the remaining views (weighted linear least squares, Gauss-Newton on
the reprojection error, leave-one-view-out rejection of a view that disagrees); the rotation from a weighted Kabsch
fit of the three points; g from the pedestal (median of B). The paper's decoder (candidates along every view's ray,
scored by the product of all views' heatmaps) is ``method="depth_sweep"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from action_images.geometry import (Camera, matrix_to_pose, pose_to_matrix, project_points, stack_cameras,
                                   topdown_rotation)

PEDESTAL = 0.25
CHANNELS = ("pos", "nrm", "up")  # R, G, B


@dataclass
class DecodeResult:
    """What :meth:`ActionImageCodec.decode` returns. T frames, V views, 3 points (pos, nrm, up)."""

    poses: np.ndarray          # [T, 8]   decoded actions; NaN rows where not ``valid``
    points: np.ndarray         # [T, 3, 3] triangulated q_pos, q_nrm, q_up (world, m); NaN where unseen
    uv: np.ndarray             # [V, T, 3, 2] sub-pixel peaks per view
    confidence: np.ndarray     # [T, 3]   per-point confidence in [0, 1] (mean peak height over used views)
    reproj_error: np.ndarray   # [T, 3]   RMS reprojection error (px) over the views used
    view_error: np.ndarray     # [T, 3, V] per-view reprojection error (px); NaN where the view does not see the point
    n_views: np.ndarray        # [T, 3]   views used per point
    rejected: np.ndarray       # [T, 3, V] views rejected as outliers
    disagree: np.ndarray       # [T]      not trustworthy: a view was rejected, a residual is above ``reject_px``, or
                               #          a point rests on a view whose blob is cut by the image border (``border``)
    valid: np.ndarray          # [T]      every point seen by >= 2 views
    gripper_per_view: np.ndarray  # [T, V]
    cut: np.ndarray            # [T, 3, V] seen views whose blob centre is on or beyond the image border (left out
                               #          of the point where >= 2 other views see it)
    border: np.ndarray         # [T]      some point was triangulated with a cut view (its position is not reliable)


ORIENTATIONS = ("free", "topdown")   # decode(orientation=...): any rotation, or top-down poses (a yaw)
POSITIONS = ("fit", "point")         # decode(position=...): the rigid fit's translation, or the position (red) point


class ActionImageCodec:
    """Encode 7-DoF poses into action images and decode them back.

    >>> codec = ActionImageCodec()
    >>> images = codec.encode(poses, cameras)          # [V, T, H, W, 3] float32 in [0, 1]
    >>> result = codec.decode(images, cameras)         # result.poses [T, 8]
    """

    def __init__(self, ell: float = 0.1, sigma_frac: float = 0.05, pedestal: float = PEDESTAL, *,
                 min_confidence: float = 0.3, reject_px: float | None = None, refine_iters: int = 2):
        """All settings are keyword arguments and validated here; callers set them at construction.

        ``ell``: gripper-frame arm length (m); ``sigma_frac``: blob σ as a fraction of min(H, W); ``pedestal``: the
        B-channel level of an open gripper; ``min_confidence``: peak height a view needs to count as seeing a point;
        ``reject_px``: residual (px) above which a view is rejected / the frame flagged (None -> 0.5·σ, scaling with
        the image); ``refine_iters``: Gauss-Newton steps after the linear triangulation.
        """
        self.ell = _positive("ell", ell)
        self.sigma_frac = _positive("sigma_frac", sigma_frac)
        self.pedestal = _finite("pedestal", pedestal)
        if not 0 < self.pedestal < 1:
            raise ValueError(f"pedestal must be in (0, 1); got {pedestal!r}")
        self.min_confidence = _finite("min_confidence", min_confidence)
        if not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min_confidence must be in [0, 1]; got {min_confidence!r}")
        self.reject_px = None if reject_px is None else _positive("reject_px", reject_px)
        if isinstance(refine_iters, bool) or int(refine_iters) != refine_iters or refine_iters < 0:
            raise ValueError(f"refine_iters must be an integer >= 0; got {refine_iters!r}")
        self.refine_iters = int(refine_iters)

    # ------------------------------------------------------------------------------------------------------------------
    def sigma(self, height: int, width: int) -> float:
        return self.sigma_frac * min(height, width)

    def points(self, poses: np.ndarray) -> np.ndarray:
        """``[..., 8]`` poses -> ``[..., 3, 3]`` the three points (pos, nrm, up) in the world frame."""
        p, R, _ = pose_to_matrix(poses)
        q_nrm = p - self.ell * R[..., :, 2]
        q_up = p + self.ell * R[..., :, 0]
        return np.stack([p, q_nrm, q_up], axis=-2)

    def _local_points(self) -> np.ndarray:
        return np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -self.ell], [self.ell, 0.0, 0.0]])

    @staticmethod
    def _check_cameras(cameras: Sequence[Camera]) -> tuple[int, int]:
        if len(cameras) == 0:
            raise ValueError("need at least one camera")
        sizes = {(c.height, c.width) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"all cameras must share one image size; got {sorted(sizes)} (resize them first)")
        return sizes.pop()

    # ------------------------------------------------------------------------------------------------------------------
    def encode(self, poses: np.ndarray, cameras: Sequence[Camera], dtype=np.float32) -> np.ndarray:
        """``poses [T, 8]`` (or ``[8]``) -> action images ``[V, T, H, W, 3]`` in [0, 1] (``uint8`` dtype: 0..255).

        Points behind a camera draw nothing; points outside the image draw the part of the blob that falls inside.
        ``dtype``: a floating type (values in [0, 1]) or ``np.uint8`` (0..255); anything else is a ValueError.
        """
        dtype = np.dtype(dtype)
        if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
            raise ValueError(f"encode dtype must be a float type (values in [0, 1]) or uint8 (0..255); got {dtype}")
        poses = np.asarray(poses, dtype=np.float64)
        single = poses.ndim == 1
        if single:
            poses = poses[None]
        if poses.ndim != 2:
            raise ValueError(f"poses must have shape [T, 8]; got {poses.shape}")
        H, W = self._check_cameras(cameras)
        K, T_cw = stack_cameras(cameras)
        pts = self.points(poses)                                  # [T, 3, 3]
        g = poses[:, 7]                                           # [T]
        uv, depth = project_points(pts, K, T_cw)                  # [V, T, 3, 2], [V, T, 3]
        sigma = self.sigma(H, W)
        visible = (depth > 1e-6) & np.isfinite(uv).all(-1)        # [V, T, 3]
        uv = np.where(visible[..., None], uv, -1e6)
        inv = -0.5 / sigma**2
        # separable Gaussian: gx [V, T, W, 3], gy [V, T, H, 3]; the outer product runs in torch (threaded, C order)
        gx = np.exp(inv * (np.arange(W)[:, None] - uv[:, :, None, :, 0]) ** 2).astype(np.float32)
        gy = np.exp(inv * (np.arange(H)[:, None] - uv[:, :, None, :, 1]) ** 2).astype(np.float32)
        img_t = torch.from_numpy(gy)[:, :, :, None, :] * torch.from_numpy(gx)[:, :, None, :, :]   # [V, T, H, W, 3]
        b = img_t[..., 2]
        ped = torch.from_numpy((self.pedestal * g).astype(np.float32))[None, :, None, None]
        torch.where(b > self.pedestal, b, ped, out=b)
        img = img_t.numpy()
        if single:
            img = img[:, 0]
        if dtype == np.uint8:
            return np.round(img * 255.0).astype(np.uint8)
        return img.astype(dtype, copy=False)

    # ------------------------------------------------------------------------------------------------------------------
    def _prepare(self, images: np.ndarray, cameras: Sequence[Camera]) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 4:
            images = images[:, None]
        if images.ndim != 5 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape [V, T, H, W, 3]; got {images.shape}")
        if len(cameras) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} views of images but {len(cameras)} cameras")
        H, W = self._check_cameras(cameras)
        if images.shape[2:4] != (H, W):
            raise ValueError(f"images are {images.shape[3]}x{images.shape[2]} but cameras are {W}x{H}")
        if images.dtype == np.uint8:
            return images.astype(np.float32) / 255.0
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"action images must be float in [0, 1] or uint8 in 0..255; got dtype {images.dtype} "
                             "(convert to float and divide by the full-scale value first)")
        images = images.astype(np.float32, copy=False)
        if images.size == 0:
            return images
        lo, hi = float(images.min()), float(images.max())
        if not np.isfinite(lo + hi):
            raise ValueError("action images contain NaN or inf")
        if hi > 1.5 or lo < -0.5:
            raise ValueError(f"float action images must be in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                             "(0..255 images: pass uint8, or divide by 255)")
        # generated images overshoot [0, 1] a little; clipping keeps every confidence within [0, 1]
        return np.clip(images, 0.0, 1.0) if (lo < 0 or hi > 1) else images

    def peaks(self, images: np.ndarray, return_cut: bool = False):
        """Sub-pixel peak ``[V, T, 3, 2]`` (u, v) and confidence ``[V, T, 3]`` of each channel (and, with
        ``return_cut``, ``cut [V, T, 3]``: the blob's centre lies on or beyond the image border).

        The peak is the raw arg-max unless that pixel is a lone spike, in which case it is searched on a box-smoothed
        copy, so a single noisy pixel (e.g. an open gripper's B background clipped at 1) cannot win over a blob. Around it, on the raw image, a
        weighted least-squares fit of log I = c0 + c1·u + c2·v + c3·(u² + v²) over the pixels that exceed 35 % of the
        peak (weights I²; Guo 2011); in B only pixels clearly above the pedestal take part, since below it B is not
        Gaussian. The fit is exact for a clean isotropic Gaussian with pixels on both sides of its centre; a blob cut by
        the border leaves it few, one-sided pixels and the answer is not reliable, hence ``cut``.

        Confidence is the raw peak height where the fit finds a blob (negative curvature, width between σ/3 and 3σ)
        and 0 where it does not (a flat or constant image has no peak).
        """
        V, T, H, W, _ = images.shape
        sigma = self.sigma(H, W)
        r = max(2, int(np.ceil(1.6 * sigma)))
        idx = _robust_argmax(images, sigma)                         # [V, T, 3]
        r0, c0 = np.divmod(idx, W)
        d = np.arange(-r, r + 1)
        dv, du = (x.ravel() for x in np.meshgrid(d, d, indexing="ij"))   # [k²] window offsets
        rows = r0[..., None] + dv                                  # [V, T, 3, k²]
        cols = c0[..., None] + du
        inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
        base = ((np.arange(V)[:, None] * T + np.arange(T)[None, :]) * (H * W * 3))[..., None, None]
        lin = base + (np.clip(rows, 0, H - 1) * W + np.clip(cols, 0, W - 1)) * 3 + np.arange(3)[:, None]
        win = images.reshape(-1).take(lin)                         # [V, T, 3, k²]
        near = inside & (np.abs(du) <= 1) & (np.abs(dv) <= 1)
        peak = np.where(near, win, -np.inf).max(-1) if win.size else np.zeros(win.shape[:-1], np.float32)
        thr = 0.35 * peak[..., None]
        floor = np.array([1e-4, 1e-4, self.pedestal + 0.05], np.float32)[:, None]
        use = inside & (win > thr) & (win > floor)
        w = np.where(use, win, 0.0).astype(np.float64) ** 2
        # weighted LS via moments: M = Σ w a aᵀ, rhs = Σ w y a with a = (1, du, dv, du² + dv²)
        a = np.stack([np.ones_like(du), du, dv, du**2 + dv**2], axis=-1).astype(np.float64)   # [k², 4]
        outer = (a[:, :, None] * a[:, None, :]).reshape(len(du), 16)
        M = (w @ outer).reshape(V, T, 3, 4, 4)
        y = np.log(np.maximum(win, 1e-6)).astype(np.float64)
        rhs = (w * y) @ a                                          # [V, T, 3, 4]
        coef = _solve(M, rhs)
        c3 = coef[..., 3]
        ok = (c3 < -1e-6) & (use.sum(-1) >= 4)
        safe_c3 = np.where(ok, c3, -1.0)
        off_u = -coef[..., 1] / (2 * safe_c3)
        off_v = -coef[..., 2] / (2 * safe_c3)
        # fall back to a thresholded centroid where the fit is degenerate or runs away
        wc = np.where(use, win - np.maximum(thr, floor), 0.0)
        s = wc.sum(-1) + 1e-12
        cu = (wc @ du.astype(np.float32)) / s
        cv = (wc @ dv.astype(np.float32)) / s
        ok &= (np.abs(off_u) <= r) & (np.abs(off_v) <= r)
        u = c0 + np.where(ok, off_u, cu)
        v = r0 + np.where(ok, off_v, cv)
        # a blob is a curved peak of about the encoded width; anything else (flat, constant, a ramp) is no peak
        width = np.sqrt(-0.5 / safe_c3)
        blob = ok & (width > sigma / 3) & (width < 3 * sigma)
        conf = np.where(blob, np.clip(peak, 0.0, 1.0), 0.0).astype(np.float32)
        uv = np.stack([u, v], axis=-1)
        if not return_cut:
            return uv, conf
        cut = ((r0 == 0) | (r0 == H - 1) | (c0 == 0) | (c0 == W - 1)
               | (u < 0) | (u > W - 1) | (v < 0) | (v > H - 1))
        return uv, conf, cut

    def gripper(self, images: np.ndarray) -> np.ndarray:
        """``[V, T]`` gripper openness per view: median of B (the pedestal dominates the image) / 0.25."""
        V, T, H, W, _ = images.shape
        step = max(1, int(np.sqrt(H * W / 1024)))
        b = images[:, :, ::step, ::step, 2]
        b = b.reshape(V, T, b.shape[2] * b.shape[3])
        return np.clip(np.median(b, axis=-1) / self.pedestal, 0.0, 1.0)

    # ------------------------------------------------------------------------------------------------------------------
    def decode(self, images: np.ndarray, cameras: Sequence[Camera], method: str = "triangulate",
               orientation: str = "free", position: str = "fit") -> DecodeResult:
        """Action images ``[V, T, H, W, 3]`` (float in [0, 1] or uint8) -> :class:`DecodeResult`.

        ``method``: ``"triangulate"`` (ours, default) or ``"depth_sweep"`` (the paper's main-view depth sweep).
        ``orientation``: ``"free"`` fits any rotation to the three points (default); ``"topdown"`` fits only a yaw
        with the tool pointing straight down (tool +z = world -z), for robots whose grasps are all top-down: the
        tilt the three points would imply is noise there, and the constrained fit does not spread it into the yaw.
        ``position``: ``"fit"`` takes the position from the rigid fit of all three points (default), ``"point"``
        from the triangulated position (red) point alone, so errors of the two points 10 cm away do not move it.
        """
        if method not in ("triangulate", "depth_sweep"):
            raise ValueError(f"unknown decode method {method!r}; use 'triangulate' or 'depth_sweep'")
        if orientation not in ORIENTATIONS:
            raise ValueError(f"unknown orientation {orientation!r}; use one of {', '.join(ORIENTATIONS)}")
        if position not in POSITIONS:
            raise ValueError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")
        if len(cameras) < 2:
            raise ValueError(f"decoding needs at least 2 views to triangulate; got {len(cameras)}")
        images = self._prepare(images, cameras)
        V, T, H, W, _ = images.shape
        uv, peak, cut = self.peaks(images, return_cut=True)
        margin = 2.0 * self.sigma(H, W)
        seen = ((peak >= self.min_confidence)
                & (uv[..., 0] > -margin) & (uv[..., 0] < W - 1 + margin)
                & (uv[..., 1] > -margin) & (uv[..., 1] < H - 1 + margin))       # [V, T, 3]
        K, T_cw = stack_cameras(cameras)
        P = K @ T_cw[:, :3, :]                                                  # [V, 3, 4]
        uv_t = np.moveaxis(uv, 0, 2)                                            # [T, 3, V, 2]
        seen_t = np.moveaxis(seen, 0, 2)                                        # [T, 3, V]
        cut_t = np.moveaxis(cut, 0, 2) & seen_t
        # a view whose blob is cut by the border gives a biased peak: left out where >= 2 other views see the point,
        # used (and the frame flagged) otherwise
        clean_views = (seen_t & ~cut_t).sum(-1)
        drop_cut = cut_t & (clean_views >= 2)[..., None]
        w = np.where(seen_t & ~drop_cut, np.moveaxis(peak, 0, 2), 0.0).astype(np.float64)   # [T, 3, V]
        reject_px = self.reject_px or 0.5 * self.sigma(H, W)
        if method == "triangulate":
            X, used = self._triangulate_robust(uv_t, w, P, K, T_cw, reject_px)
        else:
            X, used = self._depth_sweep(images, uv_t, w, cameras, P)
        err = self._view_errors(X, uv_t, P)                                     # [T, 3, V]
        n_views = used.sum(-1)
        point_ok = n_views >= 2
        X = np.where(point_ok[..., None], X, np.nan)
        view_error = np.where(seen_t, err, np.nan)
        with np.errstate(invalid="ignore"):
            rms = np.sqrt((np.where(used, err, 0.0) ** 2).sum(-1) / np.maximum(n_views, 1))
        rms = np.where(point_ok, rms, np.nan)
        conf = np.where(point_ok, (w * used).sum(-1) / np.maximum(n_views, 1), 0.0)
        rejected = seen_t & ~used & ~drop_cut
        border = (used & cut_t).any(axis=(-1, -2))
        g_view = self.gripper(images).T                                          # [T, V]
        valid = point_ok.all(-1)
        poses = np.full((T, 8), np.nan)
        if valid.any():
            fit = self._kabsch if orientation == "free" else self._fit_topdown
            R, t = fit(X[valid], conf[valid])
            if position == "point":
                t = X[valid][:, 0]
            poses[valid] = matrix_to_pose(t, R, g_view[valid].mean(-1))
        with np.errstate(invalid="ignore"):
            disagree = (rejected.any(axis=(-1, -2)) | (np.nan_to_num(rms, nan=0.0) > reject_px).any(-1)
                        | (border & valid))
        return DecodeResult(poses=poses, points=X, uv=uv, confidence=conf, reproj_error=rms, view_error=view_error,
                            n_views=n_views, rejected=rejected, disagree=disagree, valid=valid,
                            gripper_per_view=g_view, cut=cut_t, border=border)

    # ---- triangulation -----------------------------------------------------------------------------------------------
    @staticmethod
    def _view_errors(X: np.ndarray, uv_t: np.ndarray, P: np.ndarray) -> np.ndarray:
        """Reprojection error ``[T, 3, V]`` of points ``[T, 3, 3]`` against peaks ``[T, 3, V, 2]``."""
        Xh = np.concatenate([X, np.ones(X.shape[:-1] + (1,))], -1)             # [T, 3, 4]
        x = np.einsum("vij,tcj->tcvi", P, Xh)                                   # [T, 3, V, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            proj = x[..., :2] / x[..., 2:3]
        return np.linalg.norm(proj - uv_t, axis=-1)

    @staticmethod
    def _solve_linear(uv_t: np.ndarray, w: np.ndarray, P: np.ndarray, depth_w: np.ndarray | None) -> np.ndarray:
        """Weighted DLT (inhomogeneous): rows u·P3 − P1, v·P3 − P2 per view. ``w [..., V]`` (0 = unused)."""
        a1 = uv_t[..., 0:1] * P[:, 2] - P[:, 0]                                # [..., V, 4]
        a2 = uv_t[..., 1:2] * P[:, 2] - P[:, 1]
        A = np.stack([a1, a2], axis=-2)                                         # [..., V, 2, 4]
        ww = w if depth_w is None else w / np.maximum(depth_w, 1e-6) ** 2
        ww = np.nan_to_num(ww)[..., None, None]
        A = np.nan_to_num(A)
        M = np.einsum("...vri,...vrj->...ij", A[..., :3] * ww, A[..., :3])
        b = -np.einsum("...vri,...vr->...i", A[..., :3] * ww, A[..., 3])
        return _solve(M, b)

    def _refine(self, X: np.ndarray, uv_t: np.ndarray, w: np.ndarray, K: np.ndarray, T_cw: np.ndarray) -> np.ndarray:
        """Gauss-Newton on the weighted reprojection error (a couple of iterations from the DLT start)."""
        R = T_cw[:, :3, :3]
        tr = T_cw[:, :3, 3]
        for _ in range(self.refine_iters):
            pc = np.einsum("vij,...j->...vi", R, X) + tr                        # [..., V, 3]
            z = np.where(np.abs(pc[..., 2]) > 1e-9, pc[..., 2], 1e-9)
            fx, fy = K[:, 0, 0], K[:, 1, 1]
            u = fx * pc[..., 0] / z + K[:, 0, 1] * pc[..., 1] / z + K[:, 0, 2]
            v = fy * pc[..., 1] / z + K[:, 1, 2]
            r = np.stack([u - uv_t[..., 0], v - uv_t[..., 1]], -1)             # [..., V, 2]
            # d(u,v)/d(pc), then chain through R
            J_pc = np.zeros(pc.shape[:-1] + (2, 3))
            J_pc[..., 0, 0] = fx / z
            J_pc[..., 0, 1] = K[:, 0, 1] / z
            J_pc[..., 0, 2] = -(u - K[:, 0, 2]) / z
            J_pc[..., 1, 1] = fy / z
            J_pc[..., 1, 2] = -(v - K[:, 1, 2]) / z
            J = J_pc @ R                                                        # [..., V, 2, 3]
            ww = np.nan_to_num(w)[..., None, None]
            r = np.nan_to_num(r)
            H = np.einsum("...vri,...vrj->...ij", J * ww, J)
            g = np.einsum("...vri,...vr->...i", J * ww, r)
            X = X - _solve(H, g)
        return X

    def _triangulate(self, uv_t, w, P, K, T_cw):
        X = self._solve_linear(uv_t, w, P, None)
        depth = np.einsum("vj,...j->...v", P[:, 2, :3], X) + P[:, 2, 3]         # rows rescaled by 1/depth
        X = self._solve_linear(uv_t, w, P, depth)
        return self._refine(X, uv_t, w, K, T_cw)

    def _triangulate_robust(self, uv_t, w, P, K, T_cw, reject_px):
        """Triangulate every point from all views that see it; if a residual exceeds ``reject_px`` and the point has
        >= 3 views, drop the one view whose removal leaves the smallest worst residual."""
        V = P.shape[0]
        X = self._triangulate(uv_t, w, P, K, T_cw)
        used = w > 0
        if V < 3:
            return X, used
        err = np.where(used, self._view_errors(X, uv_t, P), 0.0)
        bad = (np.nan_to_num(err).max(-1) > reject_px) & (used.sum(-1) >= 3)
        if not bad.any():
            return X, used
        best_X, best_err, best_v = X.copy(), np.full(X.shape[:-1], np.inf), np.full(X.shape[:-1], -1)
        for v in range(V):
            w_v = w.copy()
            w_v[..., v] = 0.0
            X_v = self._triangulate(uv_t, w_v, P, K, T_cw)
            e_v = np.where(w_v > 0, self._view_errors(X_v, uv_t, P), 0.0)
            worst = np.nan_to_num(e_v, nan=np.inf).max(-1)
            better = bad & used[..., v] & (worst < best_err)
            best_err = np.where(better, worst, best_err)
            best_X = np.where(better[..., None], X_v, best_X)
            best_v = np.where(better, v, best_v)
        take = bad & (best_v >= 0) & (best_err <= reject_px)
        X = np.where(take[..., None], best_X, X)
        drop = take[..., None] & (np.arange(V) == best_v[..., None])
        return X, used & ~drop

    # ---- the paper's decoder ------------------------------------------------------------------------------------------
    def _depth_sweep(self, images, uv_t, w, cameras, P, n_depth: int = 128, n_fine: int = 16, near: float = 0.05,
                     far: float = 4.0):
        """The paper's decoder: candidates along the ray through the peak of every view that sees the point (depths
        log-spaced from ``near`` to ``far``), each scored by the product of the bilinearly sampled heatmaps of all views
        that see it (a sum of logs); the best candidate's neighbourhood on its ray is swept again ``n_fine`` times
        finer, and a parabola through the best fine sample and its neighbours gives the sub-step depth."""
        V, T, H, W, _ = images.shape
        seen = w > 0                                                            # [T, 3, V]
        if T == 0:
            return np.zeros((0, 3, 3)), seen.copy()
        T_wc = np.stack([c.T_world_cam for c in cameras])                       # [V, 4, 4]
        Kinv = np.linalg.inv(np.stack([c.K for c in cameras]))
        hom = np.concatenate([uv_t, np.ones(uv_t.shape[:-1] + (1,))], -1)      # [T, 3, V, 3]
        d_cam = np.einsum("vij,tcvj->tcvi", Kinv, np.nan_to_num(hom))           # z = 1 in each camera frame
        d_world = np.einsum("vij,tcvj->tcvi", T_wc[:, :3, :3], d_cam)           # [T, 3, V, 3]
        origin = np.broadcast_to(T_wc[:, :3, 3], d_world.shape)
        log_d = np.linspace(np.log(near), np.log(far), n_depth)
        step = log_d[1] - log_d[0]

        def score(ray_o, ray_d, depths):
            """``ray_o/ray_d [T, 3, R, 3]``, ``depths [..., R, D]`` (log) -> log-product score ``[T, 3, R, D]``."""
            X = ray_o[..., None, :] + np.exp(depths)[..., None] * ray_d[..., None, :]   # [T, 3, R, D, 3]
            shape = X.shape[:-1]
            Xf = X.reshape(T, 3, -1, 3)
            Xh = np.concatenate([Xf, np.ones(Xf.shape[:-1] + (1,))], -1)
            total = np.zeros(Xf.shape[:-1])
            for v in range(V):
                x = np.einsum("ij,tcdj->tcdi", P[v], Xh)
                with np.errstate(divide="ignore", invalid="ignore"):
                    uv = x[..., :2] / x[..., 2:3]
                val = np.where(x[..., 2] > 0, _bicubic(images[v], uv), 0.0)
                total += np.where(seen[..., v, None], np.log(np.maximum(val, 1e-6)), 0.0)
            return total.reshape(shape)

        coarse = score(origin, d_world, np.broadcast_to(log_d, (V, n_depth)))  # [T, 3, V, D]
        coarse = np.where(seen[..., None], coarse, -np.inf).reshape(T, 3, V * n_depth)
        best = coarse.argmax(-1) if coarse.size else np.zeros((T, 3), dtype=int)
        ray, k = np.divmod(best, n_depth)                                       # [T, 3]
        o = np.take_along_axis(origin, ray[..., None, None], 2)                 # [T, 3, 1, 3]
        dr = np.take_along_axis(d_world, ray[..., None, None], 2)
        fine = log_d[k][..., None] + np.linspace(-step, step, 2 * n_fine + 1) # [T, 3, F]
        s_fine = score(o, dr, fine[..., None, :])[..., 0, :]                   # [T, 3, F]
        j = np.clip(s_fine.argmax(-1) if s_fine.size else np.zeros((T, 3), int), 1, 2 * n_fine - 1)
        s_m, s_0, s_p = (np.take_along_axis(s_fine, (j + i)[..., None], -1)[..., 0] for i in (-1, 0, 1))
        denom = s_m - 2 * s_0 + s_p
        with np.errstate(invalid="ignore"):
            off = np.where(np.abs(denom) > 1e-12, 0.5 * (s_m - s_p) / np.where(denom == 0, 1, denom), 0.0)
        off = np.nan_to_num(off).clip(-1, 1)
        depth = np.exp(np.take_along_axis(fine, j[..., None], -1)[..., 0] + off * step / n_fine)
        X = o[..., 0, :] + depth[..., None] * dr[..., 0, :]
        return X, seen.copy()

    def _kabsch(self, X: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted rigid fit of the tool-frame points onto the triangulated ones: ``X [N, 3, 3]`` -> (R, t)."""
        L = self._local_points()                                                # [3, 3] tool frame
        w = np.maximum(conf, 1e-3)[..., None]                                  # [N, 3, 1]
        cL = (w * L).sum(-2) / w.sum(-2)                                        # [N, 3]
        cX = (w * X).sum(-2) / w.sum(-2)
        Hm = np.nan_to_num(np.einsum("npi,npj->nij", w * (L - cL[:, None]), X - cX[:, None]))  # [N, 3, 3]
        U, _, Vt = np.linalg.svd(Hm)
        d = np.sign(np.linalg.det(np.swapaxes(Vt, -1, -2) @ np.swapaxes(U, -1, -2)))
        D = np.zeros_like(Hm)
        D[:, 0, 0] = D[:, 1, 1] = 1.0
        D[:, 2, 2] = d
        R = np.swapaxes(Vt, -1, -2) @ D @ np.swapaxes(U, -1, -2)
        t = cX - np.einsum("nij,nj->ni", R, cL)
        return R, t

    def to_topdown(self, poses: np.ndarray) -> np.ndarray:
        """``[..., 8]`` poses with each rotation replaced by the top-down one (a yaw, tool +z = world -z) that best
        fits the pose's three points, as ``decode(orientation="topdown")`` fits triangulated ones; position and
        gripper unchanged (the fit keeps the tool centre where it was)."""
        poses = np.asarray(poses, dtype=np.float64)
        flat = poses.reshape(-1, 8)
        R, _ = self._fit_topdown(self.points(flat), np.ones((len(flat), 3)))
        return matrix_to_pose(flat[:, :3], R, flat[:, 7]).reshape(poses.shape)

    def _fit_topdown(self, X: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted fit of the tool-frame points onto the triangulated ones over top-down poses only (a yaw and a
        translation): ``X [N, 3, 3]`` -> (R, t). A rotation about world z leaves heights alone, so the yaw is the 2D
        Procrustes angle of the centred points' xy and t the centroids' difference, the exact least-squares answer."""
        L = self._local_points()                                                # [3, 3] tool frame
        M = L @ topdown_rotation(0.0).T                                         # the points in world axes at yaw 0
        w = np.maximum(conf, 1e-3)[..., None]                                  # [N, 3, 1]
        cL, cM = (w * L).sum(-2) / w.sum(-2), (w * M).sum(-2) / w.sum(-2)       # [N, 3]
        cX = (w * X).sum(-2) / w.sum(-2)
        a, b = (M - cM[:, None])[..., :2], np.nan_to_num(X - cX[:, None])[..., :2]     # [N, 3, 2]
        cross = (w[..., 0] * (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0])).sum(-1)
        dot = (w[..., 0] * (a * b).sum(-1)).sum(-1)
        R = topdown_rotation(np.arctan2(cross, dot))                           # [N, 3, 3]
        t = cX - np.einsum("nij,nj->ni", R, cL)
        return R, t


def _finite(name: str, value) -> float:
    """``value`` as a finite float, or a ValueError naming the setting."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return x


def _positive(name: str, value) -> float:
    x = _finite(name, value)
    if x <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return x


def _robust_argmax(images: np.ndarray, sigma: float) -> np.ndarray:
    """Flat pixel index ``[V, T, 3]`` of each channel's blob: the raw arg-max where its 4-neighbourhood looks like a
    blob of width σ (mean of the neighbours >= 60 % of it), else the arg-max of a box-smoothed copy (side ≈ σ, edges
    replicated), so a lone noisy pixel (e.g. an open gripper's B background clipped at 1) cannot win over a blob."""
    V, T, H, W, C = images.shape
    flat = images.reshape(V, T, H * W, C)
    idx = flat.argmax(axis=2)                                               # [V, T, C]
    if images.size == 0:
        return idx
    peak = np.take_along_axis(flat, idx[:, :, None, :], axis=2)[:, :, 0, :]
    r0, c0 = np.divmod(idx, W)
    total, count = np.zeros(idx.shape, np.float32), np.zeros(idx.shape, np.float32)
    vi, ti, ci = np.meshgrid(np.arange(V), np.arange(T), np.arange(C), indexing="ij")
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        total += np.where(ok, images[vi, ti, np.clip(rr, 0, H - 1), np.clip(cc, 0, W - 1), ci], 0.0)
        count += ok
    lone = total < 0.6 * peak * np.maximum(count, 1)
    if lone.any():
        v, t, c = np.nonzero(lone)
        size = 2 * max(1, int(round(0.5 * sigma))) + 1
        sm = uniform_filter(images[v, t, :, :, c], size=(1, size, size), mode="nearest")   # [N, H, W]
        idx[v, t, c] = sm.reshape(len(v), -1).argmax(-1)
    return idx


def _solve(M: np.ndarray, b: np.ndarray, rel_eps: float = 1e-9) -> np.ndarray:
    """Batched ``M x = b`` (``M [..., n, n]``, ``b [..., n]``) that never raises on degenerate systems.

    A ridge of ``rel_eps`` times the mean diagonal keeps well-posed systems exact to ~1e-9; systems that are still
    singular (e.g. a point seen by one view, or an all-zero generated image) get the least-squares (pseudo-inverse)
    answer, which callers then mark invalid through their own checks (views used, fit quality).
    """
    n = M.shape[-1]
    M = np.nan_to_num(M)
    b = np.nan_to_num(b)
    scale = np.abs(np.trace(M, axis1=-2, axis2=-1))[..., None, None] / n
    M = M + np.eye(n) * (rel_eps * scale + 1e-300)
    try:
        return np.linalg.solve(M, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(M) @ b[..., None])[..., 0]


def _bicubic(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample ``img [T, H, W, 3]`` at ``uv [T, 3, D, 2]`` for each point's own channel -> ``[T, 3, D]`` (0 outside).

    Cubic convolution (Keys, a = -0.5): unlike bilinear sampling, whose maxima sit on pixel centres and grid lines,
    it is smooth, so a score built from it can be refined below a pixel.
    """
    T, H, W, _ = img.shape
    u, v = uv[..., 0], uv[..., 1]
    finite = np.isfinite(u) & np.isfinite(v)
    u = np.where(finite, u, -10.0)
    v = np.where(finite, v, -10.0)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    ti = np.arange(T)[:, None, None]
    ci = np.arange(3)[None, :, None]
    wu = _keys(fu)
    wv = _keys(fv)
    out = np.zeros(u.shape)
    for i in range(4):
        rr = v0 + i - 1
        row_ok = (rr >= 0) & (rr < H)
        rc = np.clip(rr, 0, H - 1)
        acc = np.zeros(u.shape)
        for j in range(4):
            cc = u0 + j - 1
            ok = row_ok & (cc >= 0) & (cc < W)
            acc += np.where(ok, img[ti, rc, np.clip(cc, 0, W - 1), ci], 0.0) * wu[j]
        out += acc * wv[i]
    return out


def _keys(f: np.ndarray) -> list[np.ndarray]:
    """Keys cubic-convolution weights (a = -0.5) of the taps at -1, 0, 1, 2 for fractional offsets ``f``."""
    a = -0.5
    x0, x1, x2, x3 = f + 1, f, 1 - f, 2 - f
    far = lambda x: a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a   # noqa: E731  (1 <= |x| < 2)
    near = lambda x: (a + 2) * x**3 - (a + 3) * x**2 + 1          # noqa: E731  (|x| < 1)
    return [far(x0), near(x1), near(x2), far(x3)]


def overlay(rgb: np.ndarray, action_image: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Blend an action image ``[..., H, W, 3]`` (float [0, 1] or uint8) onto an RGB frame for display.

    ``rgb`` is uint8 (0..255; the result is uint8) or float in [0, 1] (the result is float32 in [0, 1]); other
    dtypes and float frames outside [0, 1] are a ValueError. The pedestal is hidden so the camera frame stays visible;
    each blob shows in its own colour.
    """
    rgb = np.asarray(rgb)
    a = np.asarray(action_image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"action image must be float in [0, 1] or uint8; got dtype {a.dtype}")
    if rgb.shape != a.shape:
        raise ValueError(f"rgb {rgb.shape} and action image {a.shape} must have the same shape")
    if rgb.dtype == np.uint8:
        base = rgb.astype(np.float32) / 255.0
    elif np.issubdtype(rgb.dtype, np.floating):
        if rgb.size and not (np.isfinite(rgb).all() and rgb.min() >= 0.0 and rgb.max() <= 1.0):
            raise ValueError("float rgb must be finite and in [0, 1] (0..255 frames: pass uint8)")
        base = rgb.astype(np.float32)
    else:
        raise ValueError(f"rgb must be uint8 (0..255) or float in [0, 1]; got dtype {rgb.dtype}")
    blobs = a.copy()
    blobs[..., 2] = np.where(a[..., 2] > PEDESTAL + 1e-3, a[..., 2], 0.0)
    strength = np.clip(blobs.max(-1, keepdims=True) * alpha, 0.0, 1.0)
    colour = blobs / np.maximum(blobs.max(-1, keepdims=True), 1e-6)
    out = np.clip(base * (1 - strength) + colour * strength, 0, 1)
    if rgb.dtype == np.uint8:
        return np.round(out * 255).astype(np.uint8)
    return out.astype(np.float32)
