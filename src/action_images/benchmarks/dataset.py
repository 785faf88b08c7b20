"""Dataset benchmark: how fast episodes' videos decode to RGB, the way training reads them and two other ways.

    action-images bench dataset --json bench/results/dataset.json                     # synthetic videos only
    action-images bench dataset --data data/rig8 --episodes 40 --json bench/results/dataset.json

Training decodes every episode once per process (the windows cache them), so a fresh or resumed run starts by
decoding. For each ``--sizes`` the benchmark encodes ``--videos`` synthetic episodes of ``--frames``
frames (a drifting gradient with mild noise, the dataset's codec settings) and decodes them ``--repeats`` times in
three ways, reporting the median milliseconds per video:

* ``default_ms``: :func:`~action_images.data.video.decode_video` (FFmpeg frame threads, one swscale context per file);
* ``one_thread_ms``: the same without frame threads;
* ``context_per_frame_ms``: frame threads, but each frame converted by ``frame.to_ndarray(format="rgb24")``, which
  builds a new swscale context per frame (PyAV's shortcut), checked to give the same pixels.

With ``--data``, it also times ``LeRobotDataset``'s decoding of the first ``--episodes`` episodes (every camera, no
cache), the path training takes, and checks that as many of the dataset's videos decode to the same pixels both ways
(``videos_same_pixels`` of ``videos_checked``). The machine is shared: the JSON records the load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from action_images.benchmarks import write_json
from action_images.runfiles import args_dict, environment


def synthetic_frames(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """A gradient drifting one pixel per frame plus mild noise: video-like, neither flat nor white noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        base = np.stack([(x + t) * 255 / size, (y + t) * 255 / size, (x + y) * 127 / size], -1)
        out[t] = np.clip(base % 256 + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    return out


def decode_context_per_frame(path: Path) -> np.ndarray:
    """PyAV's shortcut: ``to_ndarray(format=...)`` on every frame (a new conversion context each time)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def median_ms(fn: Callable[[Path], np.ndarray], paths: list[Path], repeats: int) -> float:
    """Median over ``repeats`` passes of the mean milliseconds per video."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        times.append((time.perf_counter() - t0) / len(paths))
    return float(np.median(times)) * 1000


def measure_size(size: int, frames: int, videos: int, repeats: int, seed: int, folder: Path) -> dict:
    from action_images.data.video import decode_video, encode_video

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(videos):
        p = folder / f"s{size}_{i}.mp4"
        encode_video(p, synthetic_frames(rng, frames, size), fps=10)
        paths.append(p)
    ways = {"default": lambda p: decode_video(p, frames, size, size),
            "one_thread": lambda p: decode_video(p, frames, size, size, threaded=False),
            "context_per_frame": decode_context_per_frame}
    same = all(np.array_equal(ways["default"](p), ways["context_per_frame"](p)) for p in paths)   # also warms up
    row: dict = {"image_size": size, "frames": frames, "videos": videos, "same_pixels": bool(same)}
    for name, fn in ways.items():
        row[f"{name}_ms"] = median_ms(fn, paths, repeats)
    row["speedup_over_context_per_frame"] = row["context_per_frame_ms"] / row["default_ms"]
    return row


def measure_dataset(root: str, episodes: int) -> dict:
    from action_images.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(root, cache_size=0)
    n = min(int(episodes), ds.num_episodes)
    t0 = time.perf_counter()
    frames = sum(len(next(iter(ds.episode(i).images.values()))) for i in range(n))
    s = time.perf_counter() - t0
    # the same pixels as PyAV's shortcut on the dataset's own videos (the first, in path order, one per camera and
    # episode decoded above), outside the timer
    from action_images.data.video import decode_video

    H, W = ds.image_size
    videos = sorted((Path(root) / "videos").rglob("*.mp4"))[:n * len(ds.camera_names)]
    same = [np.array_equal(decode_video(v, len(a), H, W, exact=False), a)
            for v, a in ((v, decode_context_per_frame(v)) for v in videos)]
    return {"data": str(root), "episodes": n, "cameras": len(ds.camera_names), "image_size": list(ds.image_size),
            "frames": frames, "seconds": s, "ms_per_episode": 1000 * s / n,
            "every_episode_minutes_estimate": s / n * ds.num_episodes / 60,
            "videos_checked": len(same), "videos_same_pixels": int(sum(same))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="48,64,128,256", help="square frame sizes of the synthetic videos")
    p.add_argument("--frames", type=int, default=25, help="frames per synthetic video (about one episode)")
    p.add_argument("--videos", type=int, default=8, help="synthetic videos per size")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per way (the median is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="a LeRobot dataset root to time as training reads it")
    p.add_argument("--episodes", type=int, default=20, help="episodes of --data to decode")
    p.add_argument("--json", default=None, help="write the results here")


def run(args: argparse.Namespace) -> int:
    try:
        sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes:
        print(f"--sizes: comma-separated integers expected; got {args.sizes!r}", file=sys.stderr)
        return 2
    for flag, value, lo in (("--sizes", min(sizes, default=0), 16), ("--frames", args.frames, 1),
                            ("--videos", args.videos, 1), ("--repeats", args.repeats, 1),
                            ("--episodes", args.episodes, 1)):
        if value < lo:
            print(f"{flag} must be >= {lo}; got {value}", file=sys.stderr)
            return 2
    if args.seed < 0:
        print(f"--seed must be >= 0; got {args.seed}", file=sys.stderr)
        return 2
    if args.data is not None:
        if not (Path(args.data) / "meta" / "info.json").is_file():
            print(f"--data {args.data}: not a LeRobot dataset (no meta/info.json)", file=sys.stderr)
            return 2
        try:                                  # open it now: a broken dataset fails before minutes of synthetic work
            from action_images.data.lerobot import LeRobotDataset
            LeRobotDataset(args.data, cache_size=0)
        except (ValueError, OSError, KeyError, TypeError) as e:
            print(f"--data {args.data}: {e}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure_size(s, args.frames, args.videos, args.repeats, args.seed, Path(tmp)) for s in sizes]
    for r in rows:
        print(f"{r['image_size']:>4} px, {r['frames']} frames: {r['default_ms']:.1f} ms per video "
              f"({r['one_thread_ms']:.1f} on one thread, {r['context_per_frame_ms']:.1f} with a context per frame)")
    payload = {"arguments": args_dict(args), "seed": args.seed, "sizes": rows, "environment": environment()}
    if args.data is not None:
        try:
            payload["dataset"] = d = measure_dataset(args.data, args.episodes)
        except (ValueError, OSError) as e:
            print(f"--data {args.data}: {e}", file=sys.stderr)
            return 2
        print(f"{d['data']}: {d['ms_per_episode']:.0f} ms per episode ({d['cameras']} cameras), about "
              f"{d['every_episode_minutes_estimate']:.1f} min for every episode")
    write_json(args.json, payload)
    return 0
