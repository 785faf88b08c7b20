"""What ``label``, ``imagine`` and ``generate`` share: flags and their checks, the checkpoint, the episode cut into
the model's windows, the chunk-by-chunk rollout, the videos and the summary JSON.

The model sees what it was trained on: every window goes through the training-window code path of
``data.windows`` without augmentation -- the evaluation crop of each view (``view_box``: the centred square, or the
workspace square), ``crop_resize`` to the model's size with the camera updated, keyframes ``keyframe_times`` (the
current frame t0, then t0 + k * stride clipped to the episode), action images from ``window_poses`` and
``finish_window``. :func:`window_at` is ``Windows.window(..., augment=False)`` for any start frame (``Windows`` only
starts windows before an episode's success, the label job needs every frame; the tests hold the two equal).

Cameras: ``--cameras``, else the checkpoint's ``config.camera_names``, else the dataset's first ``num_views``
(``openloop.resolve_cameras``; at least 2, since decoding triangulates).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from action_images.codec import ActionImageCodec
from action_images.data.lerobot_format import IMAGE_PREFIX, INFO_PATH
from action_images.data.windows import (WindowConfig, collate, crop_resize, finish_window, keyframe_times, view_box,
                                        window_poses)
from action_images.geometry import Camera
from action_images.metrics import to_u8
from action_images.runfiles import (args_dict, atomic_write_json, check_out_dir, dumps, environment, json_safe,
                                    split_list)
from action_images.videos import write_video


# ---- flags -----------------------------------------------------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every job command has: checkpoint, dataset, cameras, sampler, seed, threads."""
    p.add_argument("--checkpoint", required=True, help="run dir or save_pretrained dir (config.json + "
                                                        "model.safetensors)")
    p.add_argument("--data", required=True, help="LeRobot v3 dataset dir (with meta/cameras.json)")
    p.add_argument("--cameras", default=None,
                   help="comma separated camera names (default: the checkpoint's camera_names, else the dataset's "
                        "first num_views)")
    p.add_argument("--sampler-steps", type=int, default=10, help="ODE sampler steps per chunk (default 10)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (default 1: none)")
    p.add_argument("--seed", type=int, default=0, help="sampler noise seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def check_model_arguments(args: argparse.Namespace) -> None:
    """Checks of :func:`add_model_arguments`'s flags; raises ValueError with one line naming the flag."""
    for flag, value in (("--sampler-steps", args.sampler_steps), ("--threads", args.threads)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1; got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0; got {args.seed}")
    if not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 0):
        raise ValueError(f"--cfg-scale must be a finite number >= 0; got {args.cfg_scale}")
    ckpt = Path(args.checkpoint)
    if not ((ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()):
        raise ValueError(f"--checkpoint: {ckpt} does not hold config.json and model.safetensors")
    if not (Path(args.data) / "meta" / "info.json").is_file():
        raise ValueError(f"--data: {args.data} is not a LeRobot dataset (no meta/info.json)")
    if args.cameras is not None:
        cams = split_list(args.cameras, "--cameras")
        if len(cams) < 2 or len(set(cams)) != len(cams):
            raise ValueError(f"--cameras: need >= 2 distinct camera names; got {args.cameras!r}")
    check_declared_cameras(args.data, args.cameras)


def _declared_info(data: str) -> dict | None:
    try:
        info = json.loads((Path(data) / INFO_PATH).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def declared_episodes(data: str) -> int | None:
    """The episode count ``meta/info.json`` declares, read without loading the dataset, so that an episode flag out
    of range fails before the model and the dataset load; None when it cannot be read (the full load then says why)."""
    n = (_declared_info(data) or {}).get("total_episodes")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def declared_cameras(data: str) -> list[str] | None:
    """The camera names ``meta/info.json`` declares (its ``observation.images.<name>`` features), read without
    loading the dataset; None when it cannot be read or declares none (the full load then says why)."""
    features = (_declared_info(data) or {}).get("features")
    if not isinstance(features, dict):
        return None
    names = [k[len(IMAGE_PREFIX):] for k in features if isinstance(k, str) and k.startswith(IMAGE_PREFIX)]
    return names or None


def check_declared_cameras(data: str, cameras: str | None, flag: str = "--cameras") -> None:
    """ValueError naming ``flag`` when a camera of ``cameras`` (comma separated) is not one ``meta/info.json``
    declares, so that a misspelt name fails before the model and the dataset load."""
    have = declared_cameras(data) if cameras is not None else None
    if have is None:
        return
    missing = [c for c in split_list(cameras, flag) if c not in have]
    if missing:
        raise ValueError(f"{flag}: cameras {missing} are not in the dataset (it has {have})")


def declared_length(data: str, episode: int) -> int | None:
    """The frame count of ``episode`` in ``meta/episodes/`` (its ``length`` column), read without decoding any
    video; None when it cannot be read (the full load then says why)."""
    import pyarrow.parquet as pq

    for path in sorted((Path(data) / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        try:
            table = pq.read_table(path, columns=["episode_index", "length"]).to_pydict()
        except (OSError, ValueError, KeyError):
            return None
        for i, n in zip(table["episode_index"], table["length"]):
            if i == episode:
                return n if isinstance(n, int) and n >= 0 else None
    return None


def check_declared_episodes(data: str, episodes: Sequence[int], flag: str) -> None:
    """ValueError naming ``flag`` when an episode is past the count ``meta/info.json`` declares."""
    n = declared_episodes(data)
    bad = [i for i in episodes if n is not None and i >= n]
    if bad:
        what = f"episode {bad[0]} is" if len(bad) == 1 else f"episodes {bad} are"
        raise ValueError(f"{flag}: {what} not in the dataset (it has {n})")


def load(args: argparse.Namespace) -> tuple[Any, Any, list[str], WindowConfig]:
    """The model, the dataset, the cameras and the model's window settings; ValueError naming the flag."""
    from action_images.data import LeRobotDataset
    from action_images.openloop import resolve_cameras
    from action_images.wam import WorldActionModel

    torch.set_num_threads(args.threads)
    try:
        model = WorldActionModel.from_pretrained(args.checkpoint).eval()
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--checkpoint: {e}".replace("\n", " ")) from None
    if getattr(model.config, "history", 0):
        raise ValueError(f"--checkpoint: {args.checkpoint} reads past frames (train --history), which the label, "
                         "imagine and generate jobs do not build")
    try:
        ds = LeRobotDataset(args.data, cameras=getattr(args, "calibration", None))   # label --calibration
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--data: {e}".replace("\n", " ")) from None
    if ds.num_episodes < 1:
        raise ValueError(f"--data: {args.data} holds no episodes")
    try:
        names = resolve_cameras(model.config, ds.camera_names, split_list(args.cameras, "--cameras"))
    except ValueError as e:
        raise ValueError(f"--cameras: {e}") from None
    return model, ds, names, WindowConfig.from_model(model.config, views=names, num_views=len(names))


def check_episode(ds: Any, episode: int, flag: str = "--episode") -> None:
    if not 0 <= episode < ds.num_episodes:
        raise ValueError(f"{flag}: episode {episode} is not in the dataset (it has {ds.num_episodes})")


# ---- windows ---------------------------------------------------------------------------------------------------------
def camera_at(ep: Any, name: str, t: int) -> Camera:
    """Camera ``name`` at frame ``t`` (per-frame calibration), else the episode's camera."""
    return ep.frame_cameras[name][t] if ep.frame_cameras else ep.cameras[name]


def episode_views(ep: Any, names: Sequence[str], times: np.ndarray, t_cam: int, wcfg: WindowConfig
                  ) -> tuple[np.ndarray, list[Camera]]:
    """Frames ``times`` of each view, cropped (``view_box``) and resized to the model: uint8 [V, F, R, R, 3], and
    the cameras of frame ``t_cam`` updated to match."""
    frames, cams = [], []
    for name in names:
        cam = camera_at(ep, name, t_cam)
        img, cam_out = crop_resize(ep.images[name][np.asarray(times)], cam, view_box(cam, wcfg), wcfg.image_size)
        frames.append(img.numpy())
        cams.append(cam_out)
    return np.stack(frames), cams


def window_at(ep: Any, t0: int, names: Sequence[str], wcfg: WindowConfig, codec: ActionImageCodec
              ) -> dict[str, Any]:
    """The un-augmented training window of episode ``ep`` at start frame ``t0`` (any frame of the episode)."""
    times = keyframe_times(int(t0), len(ep), wcfg.horizon, wcfg.stride)
    rgb, cams = episode_views(ep, names, times, int(t0), wcfg)
    poses = window_poses(ep.states, ep.actions, times)
    return finish_window(rgb, cams, poses, ep.instruction, codec, episode=ep.index, dataset=0, t0=int(t0))


# ---- rolling forward -------------------------------------------------------------------------------------------------
def roll_forward(model: Any, task: str, first: np.ndarray, cams: Sequence[Camera], instruction: str, chunks: int,
                 codec: ActionImageCodec, chunk_poses: Callable[[int], np.ndarray] | None = None, steps: int = 10,
                 cfg_scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """Generate ``chunks`` chunks of video from the current frames ``first`` (uint8 [V, R, R, 3]): chunk c is one
    window whose current frame is the previous chunk's last generated frame (the start frames for c = 0), sampled
    with ``task`` ("world_model": ``chunk_poses(c)`` [1 + H, 8] drawn as the given action images; "video": no
    actions) and noise seed ``seed + c``. Returns uint8 [V, 1 + chunks * H, R, R, 3]: the start frames, then every
    chunk's H generated keyframes."""
    H = model.config.horizon
    V, R = first.shape[0], first.shape[1]
    out, cur = [first[:, None]], first
    for c in range(chunks):
        rgb = np.zeros((V, 1 + H, R, R, 3), np.uint8)
        rgb[:, 0] = cur
        if chunk_poses is not None:
            poses = np.asarray(chunk_poses(c), np.float64)
        else:                                                     # the video job: the action stream is absent
            poses = np.tile(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]), (1 + H, 1))
        w = finish_window(rgb, cams, poses, instruction, codec)
        if chunk_poses is None:
            w["act"].zero_()
        sample = model.sample(collate([w]), task=task, steps=steps, cfg_scale=cfg_scale,
                              generator=torch.Generator().manual_seed(seed + c))
        gen = to_u8(sample.rgb[0])                                # [V, 1 + H, R, R, 3]; frame 0 is ``cur``
        out.append(gen[:, 1:])
        cur = gen[:, -1]
    return np.concatenate(out, axis=1)


def real_times(t0: int, T: int, frames: int, stride: int) -> np.ndarray:
    """Episode frames a rolled-out video's frames stand for: t0, t0 + stride, ... clipped to the last frame."""
    return np.minimum(t0 + stride * np.arange(frames), T - 1)


def video_scores(gen: np.ndarray, real: np.ndarray) -> dict[str, Any]:
    """PSNR (dB) of the generated future frames against the real ones, and of copying the start frame, per frame
    and over all future frames (``gen``, ``real``: uint8 [V, N, R, R, 3])."""
    from action_images.metrics import psnr

    copy = np.repeat(real[:, :1], real.shape[1], axis=1)
    return {"psnr_db": psnr(gen[:, 1:], real[:, 1:]) if gen.shape[1] > 1 else None,
            "copy_start_frame_psnr_db": psnr(copy[:, 1:], real[:, 1:]) if gen.shape[1] > 1 else None,
            "psnr_db_by_frame": [psnr(gen[:, j], real[:, j]) for j in range(gen.shape[1])]}


# ---- videos ----------------------------------------------------------------------------------------------------------
def tile(*rows: np.ndarray, zoom: int = 1) -> np.ndarray:
    """Rows of views (each uint8 [V, N, R, R, 3]) -> video frames [N, rows * R * zoom, V * R * zoom, 3]: the views
    of a row side by side, rows top to bottom, upscaled by pixel repetition."""
    grid = np.concatenate([np.concatenate(list(r), axis=2) for r in rows], axis=1)     # [N, rows*R, V*R, 3]
    return grid.repeat(zoom, axis=1).repeat(zoom, axis=2)


def save_videos(out_dir: str | Path, gen: np.ndarray, real: np.ndarray | None, fps: int, zoom: int) -> list[str]:
    """``generated.mp4`` (the views side by side) and, with ``real``, ``real_vs_generated.mp4`` (the real views above
    the generated ones) in ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "generated.mp4"]
    write_video(paths[0], tile(gen, zoom=zoom), fps)
    if real is not None:
        paths.append(out / "real_vs_generated.mp4")
        write_video(paths[1], tile(real, gen, zoom=zoom), fps)
    return [str(p) for p in paths]


def add_rollout_arguments(p: argparse.ArgumentParser) -> None:
    """The flags ``imagine`` and ``generate`` share."""
    p.add_argument("--episode", type=int, required=True, help="episode of --data whose frames start the video")
    p.add_argument("--start-frame", type=int, default=0, help="the episode frame the video starts from (default 0)")
    p.add_argument("--instruction", default=None, help="the instruction (default: the episode's)")
    p.add_argument("--out", required=True, help="output folder (videos and a JSON record)")
    p.add_argument("--zoom", type=int, default=4, help="upscale the videos by pixel repetition (1..16, default 4)")
    p.add_argument("--overwrite", action="store_true", help="write into an --out folder that already holds files")


MAX_CHUNKS = 256   # 1 + 256 * H frames at most: a rollout holds every generated frame in memory until it is written


def check_chunks(chunks: int | None) -> None:
    """--chunks: None (the command's default) or 1..MAX_CHUNKS; ValueError naming the flag."""
    if chunks is not None and not 1 <= chunks <= MAX_CHUNKS:
        raise ValueError(f"--chunks must be in 1..{MAX_CHUNKS}; got {chunks}")


def check_rollout_arguments(args: argparse.Namespace) -> None:
    check_model_arguments(args)
    if args.episode < 0:
        raise ValueError(f"--episode must be >= 0; got {args.episode}")
    if args.start_frame < 0:
        raise ValueError(f"--start-frame must be >= 0; got {args.start_frame}")
    check_declared_episodes(args.data, [args.episode], "--episode")
    n = declared_length(args.data, args.episode)
    if n is not None and args.start_frame >= n:
        raise ValueError(f"--start-frame: frame {args.start_frame} is past the end of episode {args.episode} "
                         f"({n} frames)")
    if not 1 <= args.zoom <= 16:
        raise ValueError(f"--zoom must be in 1..16; got {args.zoom}")
    if args.instruction is not None and not args.instruction.strip():
        raise ValueError("--instruction must not be empty")
    check_out_dir(args.out)
    out = Path(args.out)
    if not args.overwrite and out.is_dir() and any(out.iterdir()):    # an earlier rollout's videos and record
        raise ValueError(f"--out {args.out} already holds files; choose a new folder or pass --overwrite")


def start(args: argparse.Namespace) -> tuple[Any, Any, Any, list[str], WindowConfig]:
    """Model, dataset, episode, cameras and window settings of a rollout command; ValueError naming the flag."""
    model, ds, names, wcfg = load(args)
    check_episode(ds, args.episode)
    ep = ds.episode(args.episode)
    if args.start_frame >= len(ep):
        raise ValueError(f"--start-frame: frame {args.start_frame} is past the end of episode {args.episode} "
                         f"({len(ep)} frames)")
    return model, ds, ep, names, wcfg


# ---- the summary -----------------------------------------------------------------------------------------------------
def video_job_summary(command: str, job: str, args: argparse.Namespace, views: Sequence[str], instruction: str,
                      **rest: Any) -> dict[str, Any]:
    """The summary a video job (``imagine``, ``generate``) writes: what ran, on which episode and views, then
    ``rest``."""
    return {"command": command, "job": job, "arguments": args_dict(args), "checkpoint": str(args.checkpoint),
            "data": str(args.data), "episode": args.episode, "views": list(views), "instruction": instruction, **rest}


def write_summary(path: str | Path, res: dict[str, Any]) -> int:
    """Write a job's summary to ``path`` (strict JSON, atomic, with the environment) and print it without the
    arguments; returns the exit code 0."""
    res = json_safe(res)
    atomic_write_json(path, {**res, "environment": environment()})
    print(dumps({k: v for k, v in res.items() if k != "arguments"}))
    return 0
