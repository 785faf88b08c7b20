"""Rollout videos: frames composed from the views, the executed action image and the generated future, upscaled so a
person can see the blobs, and written atomically (GIF or H.264 mp4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from action_images.codec import ActionImageCodec, overlay
from action_images.policy import Chunk
from action_images.runfiles import atomic_write_bytes


def upscale(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 [R, R, 3] -> [size, size, 3] (nearest; the generated frame stays visibly low-res)."""
    if img.shape[0] == size:
        return img
    idx = (np.arange(size) * img.shape[0] / size).astype(int)
    return img[idx][:, idx]


def compose_frame(obs: dict[str, Any], cameras: Sequence[Any], action: np.ndarray, chunk: Chunk | None,
                  step_in_chunk: int, stride: int, codec: ActionImageCodec, min_px: int = 256) -> np.ndarray:
    """Top row: every rendered view + the executed target's action image. Bottom: generated future keyframe.

    Each tile is upscaled nearest-neighbour by a whole factor to at least ``min_px`` (the 48-64 px renders and their
    action-image blobs are too small to see otherwise); pixels stay square blocks, nothing is smoothed."""
    act_imgs = codec.encode(action, list(cameras))                           # [V, S, S, 3]
    top, bottom = [], []
    for v, cam in enumerate(cameras):
        real = obs["images"][cam.name]
        S = real.shape[0]
        size = S * max(1, -(-int(min_px) // S))
        top.append(upscale(overlay(real, act_imgs[v]), size))
        tile = np.full((size, size, 3), 40, np.uint8)
        if chunk is not None and chunk.future_rgb is not None and cam.name in chunk.view_names:
            j = chunk.view_names.index(cam.name)
            k = min(chunk.future_rgb.shape[1] - 1, step_in_chunk // stride)
            act = chunk.future_act[j, k]
            gen = overlay(chunk.future_rgb[j, k], np.where(act > 0.35, act, 0.0))   # hide generated pedestal noise
            tile = upscale(gen, size)
        bottom.append(tile)
    return np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)


def write_video(path: Path, frames: np.ndarray | list[np.ndarray], fps: int) -> None:
    """uint8 frames [N, H, W, 3] -> a GIF or an H.264 mp4 (yuv420p, viewable in browsers), by ``path``'s suffix.
    Encoded in memory, then written atomically: a crash never leaves a half video that a record points to."""
    import imageio.v3 as iio
    arr = np.ascontiguousarray(np.stack(frames) if isinstance(frames, list) else frames)
    if path.suffix == ".gif":
        data = iio.imwrite("<bytes>", arr, extension=".gif", duration=1000.0 / fps, loop=0)
    else:
        data = iio.imwrite("<bytes>", arr, extension=path.suffix, plugin="pyav", codec="libx264", fps=int(fps),
                           out_pixel_format="yuv420p")
    atomic_write_bytes(path, data, durable=False)
