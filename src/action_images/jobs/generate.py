"""``action-images generate``: a video from start frames and an instruction (the video job: no actions).

    action-images generate --checkpoint runs/pick --data data/pick_cube_val --episode 0 \\
        --instruction "pick up the red cube" --chunks 4 --out runs/pick/generate0

In: the start frames of each view (frame ``--start-frame`` of episode ``--episode`` of ``--data``, cut and resized
like the model's training windows) and ``--instruction`` (default: the episode's). Rolled forward chunk by chunk:
chunk c is one model window whose current frame is chunk c - 1's last generated frame (the real start frames for
c = 0); the action stream is absent and the future RGB generated, with noise seed ``--seed + c``. ``--chunks N``
gives 1 + N * H frames, one every ``stride`` control steps, played at ``fps / stride``.

Out (``--out``): ``generated.mp4`` (the views side by side), ``real_vs_generated.mp4`` (the episode's real frames at
the same times above; a reference, not a target: the instruction need not be the episode's), and
``generate.json`` with the command, the cameras, the frames' episode times and PSNR against the real frames beside
copying the start frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from action_images.cliflags import Parser
from action_images.codec import ActionImageCodec
from action_images.jobs.common import (add_model_arguments, add_rollout_arguments, check_chunks,
                                       check_rollout_arguments, episode_views, real_times, roll_forward, save_videos,
                                       start, video_job_summary, video_scores, write_summary)

PROG = "action-images generate"
DESCRIPTION = "a multi-view video from start frames and an instruction (the video job), rolled forward"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_rollout_arguments(p)
    p.add_argument("--chunks", type=int, default=4, help="chunks to generate, H frames each (default 4)")


def run(args: argparse.Namespace) -> int:
    try:
        check_rollout_arguments(args)
        check_chunks(args.chunks)
        model, ds, ep, names, wcfg = start(args)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    t0, s = args.start_frame, wcfg.stride
    first, cams = episode_views(ep, names, [t0], t0, wcfg)
    instruction = args.instruction or ep.instruction
    gen = roll_forward(model, "video", first[:, 0], cams, instruction, args.chunks, ActionImageCodec(),
                       steps=args.sampler_steps, cfg_scale=args.cfg_scale, seed=args.seed)
    times = real_times(t0, len(ep), gen.shape[1], s)
    real = episode_views(ep, names, times, t0, wcfg)[0]
    fps = max(1, round(ds.fps / s))
    files = save_videos(args.out, gen, real, fps, args.zoom)
    res = video_job_summary(
        "generate", "video", args, names, instruction, episode_instruction=ep.instruction, start_frame=t0,
        chunks=args.chunks, frames=int(gen.shape[1]), episode_frames=times.tolist(), fps=fps,
        image_size=wcfg.image_size, scores=video_scores(gen, real), files=files, seconds=time.perf_counter() - t_start)
    return write_summary(Path(args.out) / "generate.json", res)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog=PROG, description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
