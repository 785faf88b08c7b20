"""``action-images openloop``: does the model predict the expert's held-out future better than "nothing moves"?

    action-images openloop --checkpoint runs/pick --data data/pick_cube_val --json runs/pick/openloop.json
    action-images openloop --checkpoint runs/pick --data data/pick_cube_val --episodes 30 --starts 3 \\
        --modes all --cameras front,left --figure runs/pick/streams.png --json runs/pick/openloop_all.json

The one open-loop evaluator: this command, ``python -m action_images.openloop`` (the same entry point) and
``action-images eval --open-loop-data`` all call :func:`evaluate_open_loop`.

* **Episodes**: ``--episodes N`` episodes of the ``--data`` dataset, spread evenly over it, first and last included
  (:func:`pick_episodes`; all of them when it has fewer), so a validation set that mixes tasks and seeds is covered
  rather than only its tail. ``eval --open-loop-data`` uses the same rule with its ``--open-loop-episodes``.
* **Start frames**: ``--starts`` evenly spaced frames of each episode before its first success; windows are the
  training windows without augmentation (the model's evaluation crop: the centred square, or the workspace square
  of a model trained with ``--crop workspace``).
* **Cameras**: ``--cameras``, else the checkpoint's ``config.camera_names`` (the cameras it was trained on), else the
  dataset's first ``max(2, num_views)`` cameras; at least 2, since decoding triangulates.
* **Modes** (``--modes``): ``policy`` (video + actions from the current frame), ``world_model`` (actions -> video),
  ``labeler`` (video -> actions) and ``video`` (video only), each sampled from the same noise seed, scored against
  the trivial baselines "copy the current frame" and "hold the current pose". With ``policy``, the learning check:
  keyframe position error (cm; an undecodable keyframe counts as "did not move") against the hold-pose baseline,
  per keyframe, gripper accuracy and the decodable fraction.
* **One-step probe** (``--noise-levels``): per noise level t, the MSE of the clean-clip prediction of the future
  frames from one network call on :meth:`WorldActionModel.noisy_input` (the training noising), against copying the
  current frame. At t = 1 the future is pure noise, so this asks whether the model predicts from the current frame
  and the instruction at all: a denoiser that ignores the context is no better than copying there, however low its
  training loss.
* **Latent models** (``config.latent``, e.g. ``--preset wan-tiny-latent``): the sampler works on Wan VAE latents
  and decodes them to pixels, so every score above is computed on pixels as for a pixel model; the starting noise is
  drawn in the folded latent layout (:func:`noise_shape`), and the one-step probe noises the encoded latents and
  decodes its clean-clip prediction before scoring it against the pixels.
* **LPIPS / FVD** need local weights (``--lpips-weights``, ``--i3d-weights``; nothing is downloaded). The I3D file is
  TorchScript, and ``torch.jit.load`` runs the code inside it, so it is loaded only with ``--trust-i3d-torchscript``.

``--json`` is strict JSON (NaN / infinity -> null) with the arguments, the seed and the run's environment.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from action_images.cliflags import Parser
from action_images.codec import ORIENTATIONS, POSITIONS
from action_images.geometry import Camera
from action_images.jobs.common import check_declared_cameras
from action_images.metrics import (JACCARD_THRESHOLDS, jaccard, pixel_error, pose_error, psnr, ssim, to_u8,
                                   true_projections)
from action_images.runfiles import args_dict, atomic_write_json, dumps, environment, json_safe, split_list
from action_images.wam import WorldActionModel, task_state

OPEN_LOOP_TASKS = ("policy", "world_model", "labeler", "video")
NOTE_LPIPS = "LPIPS not computed: pass --lpips-weights PATH (local AlexNet+LPIPS weights; nothing is downloaded)"
NOTE_FVD = ("FVD not computed: pass --i3d-weights PATH --trust-i3d-torchscript (local TorchScript I3D; nothing is "
            "downloaded)")
PROG = "action-images openloop"
DESCRIPTION = ("open-loop scores on held-out episodes (policy, world model, labeler, video) against 'nothing "
               "moves'")


# ---- which episodes, which cameras -----------------------------------------------------------------------------------
def pick_episodes(total: int, n: int) -> list[int]:
    """The open-loop episode rule: ``n`` of ``total`` episodes spread evenly, first and last included (all of them
    when ``n >= total``)."""
    if total < 1 or n < 1:
        raise ValueError(f"need >= 1 episode of >= 1; got {n} of {total}")
    n = min(int(n), int(total))
    return sorted({int(i) for i in np.rint(np.linspace(0, total - 1, n))})


def resolve_cameras(config: Any, dataset_cameras: Sequence[str], cameras: Sequence[str] | None = None) -> list[str]:
    """``cameras`` if given, else the first ``max(2, config.num_views)`` of the checkpoint's ``config.camera_names``
    (as many views as it saw per training window, like the closed-loop policy), else of the dataset's cameras; every
    name must be a camera of the dataset, and there must be at least 2."""
    have = list(dataset_cameras)
    if cameras:
        names, source = list(cameras), "--cameras"
    elif getattr(config, "camera_names", None):
        names, source = list(config.camera_names)[:max(2, int(config.num_views))], "the checkpoint's camera_names"
    else:
        names, source = have[:max(2, int(config.num_views))], "the dataset's cameras"
    missing = [c for c in names if c not in have]
    if missing:
        raise ValueError(f"cameras {missing} ({source}) are not in the dataset (it has {have})")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"need >= 2 distinct cameras (decoding triangulates); {source} gives {names}")
    return names


def open_windows(data: Any, config: Any, seed: int = 0) -> Any:
    """A ``Windows`` over one dataset as the model reads it: its size, horizon, stride, crop and past frames (``data``:
    a path or a ``Windows``)."""
    from action_images.data.windows import WindowConfig, Windows

    if isinstance(data, Windows):
        return data
    # the model's own windows (size, horizon, crop, past frames) over every camera of the dataset: callers pick views
    wcfg = replace(WindowConfig.from_model(config, num_views=2), views=None)
    return Windows([str(data)], wcfg, seed=seed)


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


def probe_arguments(p: Any, *, checkpoint: str, samples: int, min_samples: int, views: str, json: str) -> None:
    """The flags the open-loop probes under bench/ share, with each probe's defaults: the checkpoint and the
    dataset, windows per episode, samples per window (``min_samples`` at least), sampler steps, seed, views and the
    JSON written."""
    p.add_argument("--checkpoint", default=checkpoint)
    p.add_argument("--data", default="data/rig8_val_heldout")
    p.add_argument("--starts", type=int, default=2, help="windows per episode (as openloop --starts)")
    p.add_argument("--samples", type=int, default=samples, help=f"samples per window, >= {min_samples}")
    p.add_argument("--sampler-steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", default=views, help=f"the episode's first N views, or all (default {views})")
    p.add_argument("--json", default=json)


def open_probe(checkpoint: str, data_root: str, seed: int, views: str) -> tuple[Any, Any, list[str]]:
    """What the open-loop probes under bench/ start from: the model of ``checkpoint``, the un-augmented windows of
    ``data_root`` (:func:`open_windows`) and the first ``views`` of its cameras (:func:`first_views`); ValueError
    naming the flag for a view count the dataset does not have."""
    from action_images.baselines import load_model

    model = load_model(checkpoint)
    data = open_windows(data_root, model.config, seed)
    return model, data, first_views(list(data.datasets[0].camera_names), views, data_root)


def sample_window(model: Any, window: dict[str, Any], samples: int, steps: int, seed: int, index: int) -> Any:
    """``samples`` policy samples of one ``window`` in one model call, each from its own starting noise, all drawn
    from the window's seed (:func:`window_seed` of ``seed`` and ``index``): the same noise whatever else is sampled."""
    from action_images.data.windows import collate

    R = model.config.image_size
    V, F = window["rgb"].shape[:2]
    gen = torch.Generator().manual_seed(window_seed(seed, index))
    noise = torch.randn((samples, *noise_shape(model.config, V, F, R, R)), generator=gen)
    return model.sample(collate([window] * samples), task="policy", steps=steps, noise=noise)


def first_views(names: Sequence[str], spec: str, where: str) -> list[str]:
    """The first N of a dataset's camera ``names`` for a probe's ``--views N`` (``spec`` "all": every one of them);
    ValueError naming the flag for anything else than 2..len(names) or "all" (``where``: the dataset, for the
    message)."""
    try:
        n = len(names) if spec == "all" else int(spec)
    except ValueError:
        raise ValueError(f"--views: a number or 'all'; got {spec!r}") from None
    if not 2 <= n <= len(names):
        raise ValueError(f"--views: 2 to {len(names)} (the cameras of {where}); got {spec}")
    return list(names[:n])


def noise_shape(config: Any, views: int, frames: int, height: int, width: int) -> tuple[int, ...]:
    """The shape of one window's starting noise for ``model.sample(noise=...)``: ``[V, F, 6, H, W]`` in pixel space;
    for a latent model (``config.latent``) the folded latent layout ``[V, F', 6, Z/3 * h, w]`` (F' = 1 + (F - 1) / 4
    latent frames, h x w the VAE's latent grid, models/latent.py)."""
    if not getattr(config, "latent", None):
        return (views, frames, 6, height, width)
    from action_images.models.latent import factors, latent_frames

    vae = config.latent["vae"]
    spatial = factors(vae)[0]
    h, w = height // spatial, width // spatial
    return (views, latent_frames(frames), 6, int(vae["z_dim"]) // 3 * h, w)


def _decode_latent(model: Any, x: torch.Tensor, h: int) -> torch.Tensor:
    """Folded latents ``[B, V, F', 6, Z/3*h, w]`` -> pixels ``[B, V, F, 6, H, W]`` (RGB then action image)."""
    from action_images.models.latent import unfold

    z = unfold(x, h)                                                          # [B, V, F', 2Z, h, w]
    Z = model.vae.z_dim
    return torch.cat([model.vae.decode(z[:, :, :, s * Z:(s + 1) * Z]) for s in range(2)], dim=3)


def window_seed(seed: int, index: int) -> int:
    """The noise seed of window ``index`` of an evaluation with ``seed`` (scores do not depend on the batch size)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def batch_noise(config: Any, batch: dict[str, Any], seed: int, start: int) -> torch.Tensor:
    """The starting noise of the windows ``start``, ``start + 1``, ... of a collated ``batch``, each drawn from
    :func:`window_seed`."""
    shape = noise_shape(config, *batch["rgb"].shape[1:3], *batch["rgb"].shape[-2:])       # [V, F, 6, H, W]
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(window_seed(seed, start + b)))
                        for b in range(len(batch["rgb"]))])


def window_cameras(w: dict[str, Any], size: int) -> list[Camera]:
    """The cameras of a window (its crop, at ``size`` pixels)."""
    return [Camera(K=K, T_cam_world=Tc, width=size, height=size) for K, Tc in
            zip(w["K"].numpy(), w["T_cam_world"].numpy())]


# ---- scores ----------------------------------------------------------------------------------------------------------
def keyframe_rows(pred: np.ndarray, valid: np.ndarray, poses: np.ndarray) -> dict[str, np.ndarray]:
    """One window's keyframe check: ``pred`` [H, 8] predicted keyframes, ``valid`` [H] which of them were decoded
    (an invalid one counts as "did not move"), ``poses`` [1 + H, 8] the current pose then the true keyframes."""
    now, truth = poses[0], poses[1:]
    moved = np.where(valid[:, None], pred[:, :3], now[:3])
    g = np.nan_to_num(pred[:, 7], nan=now[7])
    return {"model_m": np.linalg.norm(moved - truth[:, :3], axis=-1),
            "still_m": np.linalg.norm(truth[:, :3] - now[:3], axis=-1),
            "gripper_ok": (g > 0.5) == (truth[:, 7] > 0.5), "valid": np.array(valid, dtype=bool)}


def keyframe_summary(check: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """The keyframe statistics of the windows' :func:`keyframe_rows` (lists per key): position error (cm) median,
    mean and median per keyframe, the same for holding the current pose, gripper accuracy, decodable fraction."""
    m, st = 100 * np.stack(check["model_m"]), 100 * np.stack(check["still_m"])           # [N, H] cm
    return {"keyframes": int(m.size),
            "pos_err_cm_median": float(np.median(m)), "pos_err_cm_mean": float(m.mean()),
            "still_baseline_cm_median": float(np.median(st)), "still_baseline_cm_mean": float(st.mean()),
            "pos_err_cm_median_by_keyframe": np.median(m, axis=0).round(3).tolist(),
            "still_baseline_cm_median_by_keyframe": np.median(st, axis=0).round(3).tolist(),
            "gripper_accuracy": float(np.mean(check["gripper_ok"])),
            "decode_valid_rate": float(np.mean(check["valid"]))}


def unit_images(x: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> float32 [..., H, W, 3] in [0, 1]."""
    return ((x.clamp(-1, 1) + 1) * 0.5).float().movedim(-3, -1).cpu().numpy()


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _video_scores(gen: np.ndarray, real: np.ndarray, lpips_net: Any) -> dict[str, Any]:
    from action_images.perceptual import lpips_uint8
    return {"psnr": psnr(gen, real), "ssim": ssim(gen, real),
            "lpips": lpips_uint8(lpips_net, gen, real) if lpips_net else None}


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


# ---- the evaluator ---------------------------------------------------------------------------------------------------
def evaluate_open_loop(model: Any, data_root: Any, episodes: Sequence[int] | None = None, num_episodes: int = 4,
                       windows_per_episode: int = 4, steps: int = 10, cfg_scale: float = 1.0, seed: int = 0,
                       views: Sequence[str] | None = None, tasks: Sequence[str] = OPEN_LOOP_TASKS,
                       lpips_weights: str | None = None, i3d_weights: str | None = None,
                       trust_i3d_torchscript: bool = False, thresholds: Sequence[float] = JACCARD_THRESHOLDS,
                       batch_size: int = 8, figure: str | None = None,
                       orientation: str = "free", position: str = "fit") -> dict[str, Any]:
    """Open-loop scores of ``model`` on episodes of the dataset ``data_root`` (a path or a ``Windows``).

    ``episodes``: explicit episode indices; else ``num_episodes`` picked by :func:`pick_episodes`. ``views``: camera
    names (default: :func:`resolve_cameras`). Every task samples with the same seed. Also reports the trivial
    baselines (copy the current frame; hold the current pose) so a number can be read against "nothing moves". With
    the ``policy`` task, ``learning_check`` holds keyframe position error (cm; an undecodable keyframe counts as "did
    not move") against the hold-pose baseline, per keyframe, gripper accuracy and the decodable fraction.
    ``i3d_weights`` (FVD) is TorchScript and is loaded only with ``trust_i3d_torchscript`` (loading runs its code).
    ``figure``: a PNG of real vs generated streams of the first window. ``orientation``: how generated action
    images decode, as the policy's setting of that name ("free" or "topdown"); ``position`` likewise ("fit" or
    "point").
    """
    from action_images.data.windows import collate

    for t in tasks:
        if t not in OPEN_LOOP_TASKS:
            raise ValueError(f"unknown open-loop task {t!r}; choose from {OPEN_LOOP_TASKS}")
    if not tasks:
        raise ValueError(f"no open-loop task; choose from {OPEN_LOOP_TASKS}")
    if i3d_weights and not trust_i3d_torchscript:
        raise ValueError("i3d_weights is TorchScript (loading it runs code from the file): pass "
                         "trust_i3d_torchscript=True (--trust-i3d-torchscript) to load it")
    cfg = model.config
    data = open_windows(data_root, cfg, seed)
    ds = data.datasets[0]
    names = resolve_cameras(cfg, ds.camera_names, views)
    if episodes is None:
        episodes = pick_episodes(ds.num_episodes, num_episodes)
    bad = [i for i in episodes if not 0 <= int(i) < ds.num_episodes]
    if bad:
        raise ValueError(f"episodes {bad} are not in the dataset ({ds.num_episodes} episodes)")
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
        i3d = I3DFeatures(i3d_weights, trust_torchscript=trust_i3d_torchscript)
    else:
        notes.append(NOTE_FVD)

    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in tasks}
    base_rows: list[dict[str, Any]] = []
    clips: dict[str, list[np.ndarray]] = {"real": [], **{t: [] for t in tasks if t != "labeler"}}
    check: dict[str, list[np.ndarray]] = {"model_m": [], "still_m": [], "gripper_ok": [], "valid": []}
    R = cfg.image_size
    for s in range(0, len(windows), batch_size):
        items = windows[s:s + batch_size]
        batch = collate(items)
        noise = batch_noise(cfg, batch, seed, s)      # from (seed, window index): independent of the batch size
        outs = {t: model.sample(batch, task=t, steps=steps, cfg_scale=cfg_scale, noise=noise) for t in tasks}
        if figure and s == 0:
            from action_images.report import save_streams_figure
            save_streams_figure(batch, outs[tasks[0]], figure)
        for b, w in enumerate(items):
            cams = window_cameras(w, R)
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
                    act = unit_images(out.act[b])                              # [V, F, R, R, 3]
                    first = 1 if t == "policy" else 0                          # the policy is given the current pose
                    uv, peak = codec.peaks(act[:, first:])
                    row["action_2d"] = pixel_error(uv, true_uv[:, first:], true_vis[:, first:])
                    dec = codec.decode(act[:, first:], cams, orientation=orientation, position=position)
                    row["action_3d"] = pose_error(dec.poses, poses[first:])
                    row["disagree_fraction"] = float(dec.disagree.mean())
                    if t == "labeler":
                        row["tracks"] = jaccard(uv, peak >= codec.min_confidence, true_uv, true_vis, thresholds)
                        row["trajectory_error_m"] = row["action_3d"]["position_m_mean"]
                    else:
                        for k, v in keyframe_rows(dec.poses, dec.valid, poses).items():
                            check[k].append(v)
                rows[t].append(row)
    result: dict[str, Any] = {"windows": len(windows), "episodes": [int(i) for i in episodes], "views": names,
                              "steps": steps, "cfg_scale": cfg_scale, "seed": seed,
                              "jaccard_thresholds_px": list(thresholds),
                              "tasks": {t: _summarise(r) for t, r in rows.items() if r},
                              "baselines": _summarise(base_rows) if base_rows else {}, "notes": notes}
    if check["model_m"]:
        result["learning_check"] = {
            **keyframe_summary(check),
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


@torch.no_grad()
def one_step_mse(model: WorldActionModel, data: Any, episodes: Sequence[int], starts: int, views: Sequence[str],
                 levels: Sequence[float], seed: int = 0) -> dict[str, dict[str, float]]:
    """Per noise level t: MSE of the clean-clip prediction x0_hat of the future frames (policy task, one network
    call on :meth:`WorldActionModel.noisy_input` at t) and of copying the current frame, per stream (``data``: a
    dataset path or a ``Windows``). A latent model is noised and called on the encoded latents and its prediction
    decoded to pixels, so the MSE is always on pixels in [-1, 1]."""
    from action_images.data.windows import collate

    w = open_windows(data, model.config, seed)
    b = collate(held_out_windows(w, episodes, starts, views, seed))
    x0 = torch.cat([b["rgb"], b["act"]], dim=3)                               # [B, V, F, 6, H, W]
    B, V, Fr = x0.shape[:3]
    latent = getattr(model.config, "latent", None) is not None
    if latent:
        z0, plucker = model.to_latent(b)                                      # [B, V, F', 6, Z/3*h, w]
    else:
        z0, plucker = x0, b["plucker"]
    state = task_state(["policy"] * B, V, z0.shape[2])
    text, mask = model.encode_text(b["instruction"])
    copy = (x0[:, :, :1] - x0[:, :, 1:]).square()                             # [B, V, H, 6, R, R]
    out = {}
    for t in levels:
        eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
        tt = torch.full((B,), float(t))
        x_in = WorldActionModel.noisy_input(z0, state, tt, eps)
        x0_hat = model.predict_x0(x_in, tt, state, plucker, text, mask, history=b.get("history"))
        if latent:
            x0_hat = _decode_latent(model, x0_hat, plucker.shape[-2])
        err = (x0_hat[:, :, 1:] - x0[:, :, 1:]).square()
        out[f"{t:g}"] = {"rgb_model": float(err[:, :, :, :3].mean()), "rgb_copy": float(copy[:, :, :, :3].mean()),
                         "act_model": float(err[:, :, :, 3:].mean()), "act_copy": float(copy[:, :, :, 3:].mean())}
    return out


# ---- command line ----------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run dir or save_pretrained dir (config.json + "
                                                        "model.safetensors)")
    p.add_argument("--data", required=True, help="held-out LeRobot dataset dir")
    p.add_argument("--episodes", type=int, default=20,
                   help="episodes, spread evenly over the dataset, first and last included (default 20; all when "
                        "it has fewer)")
    p.add_argument("--starts", type=int, default=3, help="evenly spaced start frames per episode (default 3)")
    p.add_argument("--cameras", "--views", dest="cameras", default=None,
                   help="comma separated camera names (default: the checkpoint's camera_names, else the dataset's "
                        "first num_views)")
    p.add_argument("--modes", default="policy",
                   help=f"comma separated, or 'all': {','.join(OPEN_LOOP_TASKS)} (default policy)")
    p.add_argument("--sampler-steps", "--steps", dest="sampler_steps", type=int, default=10,
                   help="sampler steps (default 10)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1: none)")
    p.add_argument("--orientation", default="free", choices=ORIENTATIONS,
                   help="decode any tool rotation (free, default) or only a yaw with the tool pointing down (topdown)")
    p.add_argument("--position", default="fit", choices=POSITIONS,
                   help="a keyframe's position from the rigid fit of the three decoded points (fit, default) or from "
                        "the triangulated position point alone (point)")
    p.add_argument("--seed", type=int, default=0, help="sampler noise and window seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per sampler call (default 8)")
    p.add_argument("--json", default=None, help="write the results here (strict JSON)")
    p.add_argument("--figure", default=None, help="PNG of real vs generated streams of the first window")
    p.add_argument("--noise-levels", default="1.0",
                   help="comma separated t in [0, 1] for the one-step probe: the clean-clip MSE of the future frames "
                        "from one network call at noise level t against copying the current frame (t = 1: "
                        "prediction from the context alone; 'none' skips it; default 1.0)")
    p.add_argument("--lpips-weights", default=None, help="local LPIPS weights file; else LPIPS is null")
    p.add_argument("--i3d-weights", default=None,
                   help="local TorchScript I3D file for FVD; else FVD is null. Loading TorchScript runs code from "
                        "the file, so it also needs --trust-i3d-torchscript")
    p.add_argument("--trust-i3d-torchscript", action="store_true",
                   help="allow loading --i3d-weights with torch.jit.load (runs code from the file; only for files "
                        "you trust)")


def _check_args(args: argparse.Namespace) -> tuple[list[str], list[float]]:
    """Every number and path checked before any work; raises ValueError with a line naming the flag."""
    for flag, value in (("--episodes", args.episodes), ("--starts", args.starts),
                        ("--sampler-steps", args.sampler_steps), ("--threads", args.threads),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1; got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0; got {args.seed}")
    if not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 0):
        raise ValueError(f"--cfg-scale must be a finite number >= 0; got {args.cfg_scale}")
    modes = list(OPEN_LOOP_TASKS) if args.modes.strip() == "all" else split_list(args.modes, "--modes")
    bad = [m for m in modes if m not in OPEN_LOOP_TASKS]
    if bad or not modes or len(set(modes)) != len(modes):
        raise ValueError(f"--modes: {args.modes!r} is not a list of distinct {', '.join(OPEN_LOOP_TASKS)} or 'all'")
    levels: list[float] = []
    if args.noise_levels.strip().lower() != "none":
        for s in split_list(args.noise_levels, "--noise-levels"):
            try:
                t = float(s)
            except ValueError:
                raise ValueError(f"--noise-levels: {s!r} is not a number") from None
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"--noise-levels: {s} is not in [0, 1]")
            levels.append(t)
    ckpt = Path(args.checkpoint)
    if not ((ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()):
        raise ValueError(f"--checkpoint: {ckpt} does not hold config.json and model.safetensors")
    if not (Path(args.data) / "meta" / "info.json").is_file():
        raise ValueError(f"--data: {args.data} is not a LeRobot dataset (no meta/info.json)")
    for flag, path in (("--lpips-weights", args.lpips_weights), ("--i3d-weights", args.i3d_weights)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{flag}: {path} is not a file")
    if args.lpips_weights:                     # a wrong file fails now, not after the model and data are loaded
        from action_images.perceptual import check_lpips_file
        check_lpips_file(args.lpips_weights)
    if args.i3d_weights and not args.trust_i3d_torchscript:
        raise ValueError("--i3d-weights: loading TorchScript runs code from the file; add --trust-i3d-torchscript "
                         "if you trust it")
    for flag, path, suffix in (("--json", args.json, ".json"), ("--figure", args.figure, ".png")):
        if path is None:
            continue
        if Path(path).suffix.lower() != suffix:
            raise ValueError(f"{flag}: {path} must end in {suffix}")
        if Path(path).is_dir() or any(p.exists() and not p.is_dir() for p in Path(path).parents):
            raise ValueError(f"{flag}: cannot write {path}")
    if args.cameras is not None:
        cams = split_list(args.cameras, "--cameras")
        if len(cams) < 2 or len(set(cams)) != len(cams):
            raise ValueError(f"--cameras: need >= 2 distinct camera names; got {args.cameras!r}")
        check_declared_cameras(args.data, args.cameras)
    return modes, levels


def run(args: argparse.Namespace) -> int:
    try:
        modes, levels = _check_args(args)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        model = WorldActionModel.from_pretrained(args.checkpoint).eval()
    except (OSError, ValueError, KeyError) as e:
        print(f"{PROG}: --checkpoint: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    try:
        data = open_windows(args.data, model.config, args.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f"{PROG}: --data: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    ds = data.datasets[0]
    try:
        views = resolve_cameras(model.config, ds.camera_names, split_list(args.cameras, "--cameras"))
    except ValueError as e:
        print(f"{PROG}: --cameras: {e}", file=sys.stderr)
        return 2
    episodes = pick_episodes(ds.num_episodes, args.episodes)
    t0 = time.perf_counter()
    full = evaluate_open_loop(model, data, episodes=episodes, windows_per_episode=args.starts,
                              steps=args.sampler_steps, cfg_scale=args.cfg_scale, seed=args.seed, views=views,
                              tasks=tuple(modes), lpips_weights=args.lpips_weights, i3d_weights=args.i3d_weights,
                              trust_i3d_torchscript=args.trust_i3d_torchscript, batch_size=args.batch_size,
                              figure=args.figure, orientation=args.orientation, position=args.position)
    res: dict[str, Any] = {"command": "openloop", "arguments": args_dict(args), "seed": args.seed,
                           "checkpoint": str(args.checkpoint), "data": str(args.data), "modes": modes,
                           "episodes": full["episodes"], "windows": full["windows"], "views": full["views"],
                           "steps": args.sampler_steps, **full.get("learning_check", {})}
    if levels:
        res["one_step_mse"] = one_step_mse(model, data, episodes, args.starts, views, levels, args.seed)
    res.update(seconds=time.perf_counter() - t0, open_loop=full, environment=environment())
    res = json_safe(res)
    print(dumps({k: v for k, v in res.items() if k not in ("open_loop", "arguments", "environment")}))
    if args.json:
        atomic_write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog=PROG, description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
