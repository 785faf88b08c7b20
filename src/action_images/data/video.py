"""MP4 encode / decode with PyAV for dataset videos (frame ``i`` has pts ``i`` at time base ``1/fps``).

Why these settings: see ``lerobot_format.VIDEO_*``; the round-trip error is measured in ``tests/test_dataset.py`` and
reported in ``docs/dataset.md``. Every failure is re-raised as ``ValueError`` naming the file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .lerobot_format import DEFAULT_CRF, VIDEO_CODEC, VIDEO_GOP, VIDEO_PIX_FMT


def encode_video(path: Path, frames: np.ndarray, fps: int, crf: int = DEFAULT_CRF) -> None:
    """Write uint8 ``[T, H, W, 3]`` RGB frames to ``path`` (mp4, H.264 4:4:4)."""
    T, H, W, _ = frames.shape
    tb = Fraction(1, int(fps))
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = W, H, VIDEO_PIX_FMT
        stream.time_base = tb
        stream.options = {"crf": str(int(crf)), "g": str(VIDEO_GOP), "bf": "0", "preset": "medium"}
        for i in range(T):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts, frame.time_base = i, tb
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def probe_video(path: Path) -> tuple[int, int, int]:
    """(frames, height, width) from the container header; ``ValueError`` naming the file if unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            s = container.streams.video[0]
            return int(s.frames), int(s.codec_context.height), int(s.codec_context.width)
    except (av.FFmpegError, ValueError, OSError) as e:
        raise ValueError(f"{path}: cannot open video (truncated or corrupt mp4: {e})") from e


def decode_video(path: Path, num_frames: int, height: int, width: int, exact: bool = True,
                 threaded: bool = True) -> np.ndarray:
    """Decode the first ``num_frames`` frames -> uint8 ``[T, H, W, 3]``, checking size and count against the
    metadata (``exact``: the file must hold exactly that many, as our one-episode-per-file videos do). ``threaded``:
    FFmpeg's frame threads (the frames are the same either way; `action-images bench dataset` times both)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing video file")
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    n = 0
    try:
        # one reformatter for the whole file keeps its swscale context: the same RGB as ``to_ndarray(format=...)``,
        # which builds a new context for every frame (most of the decode time at 64 px: `action-images bench dataset`)
        to_rgb = VideoReformatter()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if threaded:
                stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if n >= num_frames:
                    if not exact:
                        break
                    n += 1  # keep counting to report the true length
                    continue
                img = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                if img.shape != (height, width, 3):
                    raise ValueError(f"frame {n} is {img.shape[1]}x{img.shape[0]}, expected {width}x{height}")
                out[n] = img
                n += 1
    except (av.FFmpegError, ValueError, OSError, IndexError) as e:
        raise ValueError(f"{path}: cannot decode video (truncated or corrupt mp4: {e})") from e
    if n != num_frames:
        raise ValueError(f"{path}: video holds {n} frames but the episode metadata says {num_frames} (truncated or "
                         "mismatched video)")
    return out
