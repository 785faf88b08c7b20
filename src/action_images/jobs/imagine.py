"""``action-images imagine``: the video an action trajectory would produce (the world-model job: actions -> video).

    action-images imagine --checkpoint runs/pick --data data/pick_cube_val --episode 0 --out runs/pick/imagine0
    action-images imagine --checkpoint RUN --data DATASET --episode 0 --start-frame 5 --actions traj.npz --out OUT

In: the start frames of each view (frame ``--start-frame`` of episode ``--episode`` of ``--data``, cut and resized
like the model's training windows) and an action trajectory: the episode's own actions from the start frame on, or
``--actions FILE`` (``.npz`` with an ``actions`` array, or ``.json``: a list of poses or ``{"actions": [...]}``;
``[T, 8]`` absolute poses ``[x, y, z, qx, qy, qz, qw, g]``, entry j the target commanded j control steps after the
start frame, the convention of the dataset's ``action`` column).

Rolled forward chunk by chunk: chunk c is one model window whose current frame is chunk c - 1's last generated
frame (the real start frames for c = 0); all its action images are given -- frame 0 the current pose (the episode's
state at the start frame for c = 0, else the pose chunk c - 1's last keyframe showed), keyframe k the trajectory's
entry ``c * H * stride + k * stride - 1`` (past its end: its last entry, held) -- and its future RGB is generated.
``--chunks N`` (default: enough to cover the trajectory) sets the length: 1 + N * H frames, one every ``stride``
control steps, played at ``fps / stride``.

Out (``--out``): ``generated.mp4`` (the views side by side), with the episode's own actions also
``real_vs_generated.mp4`` (the real views above) and PSNR against the real frames beside copying the start frame;
``imagine.json`` records the command, the cameras, the frames' episode times and the scores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from action_images.cliflags import Parser
from action_images.codec import ActionImageCodec
from action_images.geometry import validate_poses
from action_images.jobs.common import (MAX_CHUNKS, add_model_arguments, add_rollout_arguments, check_chunks,
                                       check_rollout_arguments, episode_views, real_times, roll_forward, save_videos,
                                       start, video_job_summary, video_scores, write_summary)

PROG = "action-images imagine"
DESCRIPTION = "the multi-view video an action trajectory would produce (the world-model job), rolled forward"


def read_actions(path: str) -> np.ndarray:
    """``[T, 8]`` poses from ``.npz`` (array ``actions``; never unpickled) or ``.json``; ValueError naming the file."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "actions" not in z.files:
                    raise ValueError(f"no array named 'actions' (it has {z.files})")
                arr = np.asarray(z["actions"])
        elif p.suffix.lower() == ".json":
            doc = json.loads(p.read_text())
            arr = np.asarray(doc["actions"] if isinstance(doc, dict) else doc, dtype=np.float64)
        else:
            raise ValueError("must end in .npz or .json")
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"poses must be numbers; got dtype {arr.dtype}")
        poses = validate_poses(arr, "actions")
        if poses.ndim != 2 or len(poses) < 1:
            raise ValueError(f"must be [T, 8] with T >= 1; got shape {poses.shape}")
        return poses
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--actions: {path}: {e}".replace("\n", " ")) from None


def chunk_poses(trajectory: np.ndarray, current: np.ndarray, horizon: int, stride: int):
    """``c -> [1 + H, 8]``: the poses drawn as the given action images of chunk c (see the module docstring)."""
    last = len(trajectory) - 1

    def poses(c: int) -> np.ndarray:
        base = c * horizon * stride
        now = current if c == 0 else trajectory[min(base - 1, last)]
        keys = [trajectory[min(base + k * stride - 1, last)] for k in range(1, horizon + 1)]
        return np.stack([now, *keys])
    return poses


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_rollout_arguments(p)
    p.add_argument("--actions", default=None,
                   help="[T, 8] poses (.npz array 'actions', or .json) instead of the episode's own actions")
    p.add_argument("--chunks", type=int, default=None,
                   help="chunks to generate (default: enough to cover the trajectory)")


def run(args: argparse.Namespace) -> int:
    try:
        check_rollout_arguments(args)
        check_chunks(args.chunks)
        own = args.actions is None
        file_actions = None if own else read_actions(args.actions)
        model, ds, ep, names, wcfg = start(args)
        t0, H, s = args.start_frame, wcfg.horizon, wcfg.stride
        trajectory = ep.actions[t0:] if own else file_actions
        chunks = args.chunks or max(1, math.ceil(len(trajectory) / (H * s)))
        if chunks > MAX_CHUNKS:
            raise ValueError(f"--chunks: covering {len(trajectory)} actions takes {chunks} chunks, more than "
                             f"{MAX_CHUNKS}; pass --chunks {MAX_CHUNKS} or fewer")
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    first, cams = episode_views(ep, names, [t0], t0, wcfg)
    instruction = args.instruction or ep.instruction
    gen = roll_forward(model, "world_model", first[:, 0], cams, instruction, chunks, ActionImageCodec(),
                       chunk_poses(trajectory, ep.states[t0], H, s), steps=args.sampler_steps,
                       cfg_scale=args.cfg_scale, seed=args.seed)
    times = real_times(t0, len(ep), gen.shape[1], s)
    real = episode_views(ep, names, times, t0, wcfg)[0] if own else None
    fps = max(1, round(ds.fps / s))
    files = save_videos(args.out, gen, real, fps, args.zoom)
    res = video_job_summary(
        "imagine", "world_model", args, names, instruction, actions="episode" if own else str(args.actions),
        start_frame=t0, chunks=chunks, frames=int(gen.shape[1]), episode_frames=times.tolist() if own else None,
        fps=fps, image_size=wcfg.image_size, scores=video_scores(gen, real) if own else None, files=files,
        seconds=time.perf_counter() - t_start)
    return write_summary(Path(args.out) / "imagine.json", res)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog=PROG, description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
