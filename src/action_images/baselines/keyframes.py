"""Open-loop keyframe error of any checkpoint: the world action model (geometric or learned decode), the action-token
ablation and the pose-predicting baselines, scored on the same held-out windows with the same statistics.

    model = action_images.baselines.load_model("runs/rig8-bc")
    res = evaluate_keyframes(model, "data/rig8_val_heldout", num_episodes=40, starts=2, steps=6, seed=0,
                             reference=(4, 2))

Windows. The rule of :func:`~action_images.openloop.evaluate_open_loop`: :func:`~action_images.openloop.
pick_episodes` episodes, ``starts`` evenly spaced start frames before each one's success, the checkpoint's first two
cameras (:func:`~action_images.openloop.resolve_cameras`), no augmentation (each model's evaluation crop: the
centred square, or the workspace square of a model trained with ``--crop workspace``). Each model reads the windows
at its own resolution; the episodes, start frames and views do not depend on the model.

Prediction (:func:`predictor`). The world action model samples the policy job from the noise
:func:`~action_images.openloop.batch_noise` draws for the window (as ``openloop``'s policy mode does) and decodes
its generated action images by triangulation, or by a learned decoding head; a model with ``predict`` (bc, dp,
tokens) returns its chunk of absolute poses, sampling (dp, tokens) from a generator seeded by
:func:`~action_images.openloop.window_seed`, so every number is independent of the batch size.

Keyframe alignment. Each model predicts H keyframes ``stride`` control steps apart: keyframe j lies j * stride
control steps after the current frame. Every model is scored at the *reference* times, ``reference = (H, stride)``
(the claims table: the world action model's 4 x 2, i.e. 2, 4, 6 and 8 control steps ahead), against the same true
poses (the targets that led to those frames, as the world action model's windows draw them). A model whose keyframes
include a reference time is scored on that keyframe as predicted (image BC at 8 x 1 uses its keyframes 2, 4, 6, 8,
Diffusion Policy at 8 x 2 its keyframes 1-4); a reference time between two keyframes takes the position linearly
interpolated between them (the current pose at time 0) and the rest of the later one; a reference time past the
model's last keyframe is refused.

Scores. :func:`~action_images.openloop.keyframe_rows` and :func:`~action_images.openloop.keyframe_summary`, the
policy-mode learning check: keyframe position error (cm; an undecodable or non-finite keyframe counts as "did not
move") against holding the current pose, per keyframe, gripper accuracy and the decodable fraction (``null`` for a
model that predicts poses: nothing is decoded).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from action_images.openloop import (batch_noise, held_out_windows, keyframe_rows, keyframe_summary, open_windows,
                                    pick_episodes, resolve_cameras, unit_images, window_cameras, window_seed)

Predict = Callable[[list[dict[str, Any]], int], tuple[np.ndarray, np.ndarray]]


def keyframe_times(horizon: int, stride: int) -> np.ndarray:
    """Control steps after the current frame of keyframes 1..H."""
    return int(stride) * np.arange(1, int(horizon) + 1)


def align(pred: np.ndarray, valid: np.ndarray, current: np.ndarray, stride: int, times: Sequence[int]
          ) -> tuple[np.ndarray, np.ndarray]:
    """A chunk ``pred`` [H, 8] (keyframe j at j * ``stride`` control steps, ``valid`` [H]) at the control steps
    ``times`` -> ([K, 8], [K]): a keyframe on a time as is, between two the linearly interpolated position and the
    rest of the later one (``current`` [8] at time 0); valid when the keyframes it uses are."""
    H = len(pred)
    knots = np.concatenate([np.asarray(current, np.float64)[None], np.asarray(pred, np.float64)])
    ok = np.concatenate([[True], np.asarray(valid, bool)])
    out, out_ok = np.empty((len(times), 8)), np.empty(len(times), bool)
    for k, t in enumerate(times):
        if not 0 < t <= H * stride:
            raise ValueError(f"the model predicts {H} keyframes {stride} control steps apart; it cannot be scored "
                             f"{t} control steps ahead")
        hi = -(-int(t) // int(stride))                       # the first keyframe at or after t
        w = (t - (hi - 1) * stride) / stride                  # 1 when t is that keyframe's time
        out[k] = knots[hi]
        out[k, :3] = (1 - w) * knots[hi - 1, :3] + w * knots[hi, :3] if w < 1 else knots[hi, :3]
        out_ok[k] = ok[hi] and (w == 1 or ok[hi - 1])
    return out, out_ok


def true_poses(windows: Any, w: dict[str, Any], horizon: int, stride: int) -> np.ndarray:
    """[1 + H, 8] of window ``w``: its current pose, then the poses the reference keyframes (H x stride) are drawn
    from, read from the episode as :class:`~action_images.data.windows.Windows` reads them."""
    from action_images.data.windows import keyframe_times as frame_times, window_poses

    ep = windows.datasets[int(w["dataset"])].episode(int(w["episode"]))
    return window_poses(ep.states, ep.actions, frame_times(int(w["t0"]), len(ep), horizon, stride))


def predictor(model: Any, steps: int = 6, seed: int = 0, decode_head: Any = None) -> Predict:
    """``predict(windows, start) -> (poses [B, H, 8], valid [B, H])`` for the windows ``start``, ``start + 1``, ...
    at the model's own keyframes: the world action model's decoded action images (``decode_head``: a
    :class:`~action_images.decode_head.LearnedDecoder` or a head folder, else triangulation), or ``model.predict``."""
    from action_images.data.windows import collate

    if callable(getattr(model, "predict", None)):
        if decode_head is not None:
            raise ValueError("a decoding head decodes generated action images; this checkpoint predicts poses")

        def predict_poses(items: list[dict[str, Any]], start: int) -> tuple[np.ndarray, np.ndarray]:
            poses = np.stack([model.predict(collate([w]), generator=torch.Generator().manual_seed(
                window_seed(seed, start + b)), steps=steps)[0].double().cpu().numpy() for b, w in enumerate(items)])
            return poses, np.isfinite(poses).all(axis=-1)
        return predict_poses

    from action_images.codec import ActionImageCodec

    if isinstance(decode_head, (str, bytes)) or hasattr(decode_head, "__fspath__"):
        from action_images.decode_head import LearnedDecoder
        decode_head = LearnedDecoder.from_pretrained(decode_head)
    decoder = decode_head if decode_head is not None else ActionImageCodec()
    R = int(model.config.image_size)

    def predict_images(items: list[dict[str, Any]], start: int) -> tuple[np.ndarray, np.ndarray]:
        batch = collate(items)
        with torch.no_grad():
            out = model.sample(batch, task="policy", steps=steps, noise=batch_noise(model.config, batch, seed, start))
        decs = [decoder.decode(unit_images(out.act[b])[:, 1:], window_cameras(w, R)) for b, w in enumerate(items)]
        return np.stack([d.poses for d in decs]), np.stack([d.valid for d in decs])
    return predict_images


def evaluate_keyframes(model: Any, data: Any, *, num_episodes: int = 40, starts: int = 2, steps: int = 6,
                       seed: int = 0, views: Sequence[str] | None = None, reference: tuple[int, int] | None = None,
                       decode_head: Any = None, batch_size: int = 8, predict: Predict | None = None
                       ) -> dict[str, Any]:
    """Open-loop keyframe error of ``model`` on held-out windows of ``data`` (a dataset path or a ``Windows``),
    scored at the reference keyframes ``(H, stride)`` (default: the model's own). ``predict`` replaces the model's
    :func:`predictor` (same keyframes as the model's config)."""
    cfg = model.config
    H, stride = int(cfg.horizon), int(cfg.stride)
    ref_h, ref_s = reference or (H, stride)
    times = keyframe_times(ref_h, ref_s)
    windows = open_windows(data, cfg, seed)
    ds = windows.datasets[0]
    names = resolve_cameras(cfg, ds.camera_names, views)
    episodes = pick_episodes(ds.num_episodes, num_episodes)
    items = held_out_windows(windows, episodes, starts, names, seed)
    predict = predict or predictor(model, steps, seed, decode_head)
    check: dict[str, list[np.ndarray]] = {"model_m": [], "still_m": [], "gripper_ok": [], "valid": []}
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        poses, valid = predict(chunk, s)
        for w, p, ok in zip(chunk, poses, valid):
            truth = true_poses(windows, w, ref_h, ref_s)
            at, at_ok = align(p[:H], ok[:H], truth[0], stride, times)
            for k, v in keyframe_rows(at, at_ok, truth).items():
                check[k].append(v)
    res = keyframe_summary(check)
    if callable(getattr(model, "predict", None)):                        # poses are predicted, not decoded
        res["decode_valid_rate"] = None
    return {"windows": len(items), "episodes": [int(i) for i in episodes], "starts": int(starts), "views": names,
            "seed": int(seed), "steps": int(steps), "keyframe_steps": times.tolist(),
            "model_keyframes": {"horizon": H, "stride": stride}, **res}
