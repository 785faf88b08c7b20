"""Simulator benchmark: env steps/s per camera count and image size, scripted-expert success per task, calibration.

    action-images bench sim --json bench/results/sim.json                 # full: 100 episodes per task
    action-images bench sim --episodes 5 --speed-steps 100 --json /tmp/s.json   # quick

Speed: ``env.step`` wall time only (the expert's target is computed outside the timer), episodes of the pick_cube
task driven by its expert, auto-reset outside the timer; the median over ``--repeats`` blocks is reported because the
machine is shared. Success: episodes seeded ``seed, seed+1, ...`` with ``render=False`` (rendering does not change
the physics). Calibration: mean pixel distance between projected TCP-marker / cube centres and their segmentation-mask
centroids, five cameras, 64 px.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from action_images.benchmarks import write_json
from action_images.cliflags import Parser
from action_images.runfiles import args_dict, environment
from action_images.sim.scene import CAMERA_SETS

SPEED_CAMERAS = CAMERA_SETS["all_static"]
TARGET_COLLECT_S = 120.0
TARGET_STEPS_PER_S = 100.0  # with 3 cameras at 64 px


def measure_speed(n_cams: int, size: int, steps: int, repeats: int, task: str = "pick_cube") -> dict:
    from action_images.sim import make_env

    env = make_env(task, cameras=SPEED_CAMERAS[:n_cams], image_size=size, render=n_cams > 0)
    t_reset = []
    t0 = time.perf_counter()
    env.reset(seed=0)
    t_reset.append(time.perf_counter() - t0)
    blocks, episode = [], 0
    for _ in range(repeats):
        elapsed = 0.0
        for _ in range(steps):
            a = env.expert_action()
            t0 = time.perf_counter()
            _, _, term, trunc, _ = env.step(a)
            elapsed += time.perf_counter() - t0
            if term or trunc:
                episode += 1
                t0 = time.perf_counter()
                env.reset(seed=episode)
                t_reset.append(time.perf_counter() - t0)
        blocks.append(steps / elapsed)
    env.close()
    return {"cameras": n_cams, "camera_names": list(SPEED_CAMERAS[:n_cams]), "image_size": size,
            "steps_per_s": float(np.median(blocks)), "steps_per_s_blocks": [float(b) for b in blocks],
            "ms_per_step": float(1000.0 / np.median(blocks)), "reset_ms_median": float(np.median(t_reset) * 1000)}


def measure_expert(task: str, episodes: int, seed: int) -> dict:
    from action_images.sim import make_env

    env = make_env(task, render=False)
    successes, lengths, failed = 0, [], []
    t0 = time.perf_counter()
    for k in range(episodes):
        env.reset(seed=seed + k)
        info = {"success": False}
        for _ in range(env.max_steps):
            _, _, term, trunc, info = env.step(env.expert_action())
            if term or trunc:
                break
        successes += bool(info["success"])
        if info["success"]:
            lengths.append(env.step_count)
        else:
            failed.append(seed + k)
    return {"episodes": episodes, "successes": successes, "success_rate": successes / max(episodes, 1),
            "mean_steps_successful": float(np.mean(lengths)) if lengths else None, "max_steps": env.max_steps,
            "failed_seeds": failed, "seconds": time.perf_counter() - t0}


def measure_calibration() -> dict:
    from action_images.sim import make_env
    from action_images.sim.cameras import centroid_errors

    env = make_env("pick_cube", cameras=CAMERA_SETS["all"], image_size=64)
    errs = centroid_errors(env, ("cube", "tcp_marker"))
    shifted = centroid_errors(env, ("cube", "tcp_marker"), principal_shift=0.5)
    env.close()
    return {"image_size": 64, "points": len(errs), "mean_px": float(np.mean(errs)), "max_px": float(np.max(errs)),
            "mean_px_if_principal_point_were_w_over_2": float(np.mean(shifted))}


def measure_collect(task: str, episodes: int, seed: int) -> dict:
    """Wall time of ``action-images collect`` (4 cameras, 64 px, video encoding and all) into a temporary folder."""
    import tempfile

    from action_images.cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rc = cli_main(["collect", "--tasks", task, "--episodes", str(episodes), "--out", f"{tmp}/ds", "--seed", str(seed)])
        seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"collect failed with exit code {rc}")
    r = {"task": task, "episodes": episodes, "seconds": seconds, "seconds_per_100_demos": seconds * 100 / episodes}
    print(f"collect {episodes} {task} demos: {seconds:.1f} s", flush=True)
    return r


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, default=100, help="expert episodes per task")
    p.add_argument("--tasks", default="all", help="comma-separated task names or 'all'")
    p.add_argument("--sizes", default="64,128", help="image sizes for the speed test")
    p.add_argument("--camera-counts", default="0,3,4", help="numbers of cameras (front, left, right, top order)")
    p.add_argument("--speed-steps", type=int, default=200, help="timed env steps per block")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per configuration (median reported)")
    p.add_argument("--seed", type=int, default=0, help="first episode seed")
    p.add_argument("--collect-task", default="pick_cube", help="task timed for dataset collection")
    p.add_argument("--collect-episodes", type=int, default=100, help="demos to collect for the timing (0: skip)")
    p.add_argument("--json", default=None, help="write results here")


def run(args: argparse.Namespace) -> int:
    from action_images.sim import TASKS

    tasks = list(TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        print(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
        return 2
    counts = [int(c) for c in args.camera_counts.split(",")]
    if any(not 0 <= n <= len(SPEED_CAMERAS) for n in counts):
        print(f"--camera-counts must lie in 0..{len(SPEED_CAMERAS)} ({', '.join(SPEED_CAMERAS)})")
        return 2
    speed = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for n in counts:
            if n == 0 and any(r["cameras"] == 0 for r in speed):
                continue  # image size is irrelevant without cameras
            r = measure_speed(n, size, args.speed_steps, args.repeats)
            speed.append(r)
            print(f"speed  {n} cameras {size:>3}px  {r['steps_per_s']:7.1f} steps/s  "
                  f"({r['ms_per_step']:.2f} ms/step, reset {r['reset_ms_median']:.1f} ms)", flush=True)
    calibration = measure_calibration()
    print(f"calibration  mean {calibration['mean_px']:.3f} px, max {calibration['max_px']:.3f} px "
          f"({calibration['points']} points; W/2 principal point would give "
          f"{calibration['mean_px_if_principal_point_were_w_over_2']:.3f} px)", flush=True)
    expert = {}
    for task in tasks:
        expert[task] = r = measure_expert(task, args.episodes, args.seed)
        print(f"expert {task:<13} {r['successes']:>4}/{r['episodes']}  mean {r['mean_steps_successful'] or 0:5.1f} "
              f"steps (limit {r['max_steps']})  {r['seconds']:.1f} s", flush=True)
    collect = measure_collect(args.collect_task, args.collect_episodes, args.seed) if args.collect_episodes else None
    three = [r for r in speed if r["cameras"] == 3 and r["image_size"] == 64]
    payload = {
        "benchmark": "sim", "arguments": args_dict(args), "seed": args.seed, "environment": environment(),
        "speed": speed, "calibration": calibration, "expert": expert, "collect": collect,
        "targets": {"collect_100_demos_seconds": TARGET_COLLECT_S,
                    "collect_100_demos_met": bool(collect and collect["seconds_per_100_demos"] <= TARGET_COLLECT_S),
                    "steps_per_s_3_cameras_64px": TARGET_STEPS_PER_S,
                    "steps_per_s_3_cameras_64px_met": bool(three and three[0]["steps_per_s"] >= TARGET_STEPS_PER_S),
                    "expert_success_rate": 0.95,
                    "expert_success_rate_met": all(r["success_rate"] >= 0.95 for r in expert.values())},
    }
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    parser = Parser(description="simulator benchmark")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
