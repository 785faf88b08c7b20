"""``action-images eval``: closed-loop rollouts of the policy in the built-in sim, metrics.json and an HTML report.

    action-images eval --checkpoint runs/pick --tasks reach_target,pick_cube --episodes 20 --out runs/pick/eval
    action-images eval --checkpoint runs/pick --tasks all --episodes 20 --perturb-cameras --out runs/pick/eval_shift
    action-images eval --checkpoint runs/pick --tasks pick_cube --episodes 5 --open-loop-data data/demos --out DIR

Reproducible by construction: episode k of task t resets the env (and seeds the policy's sampler noise) with
``episode_seed(--seed, t, k)``, a SeedSequence keyed by "eval" so it never coincides with the collection seeds of
``action-images collect``. Success rates carry a 95 % Wilson interval (honest at 0 % / 100 % and small n). Latency is
measured per replanning step (observe -> generate -> decode -> chunk), the env's own time excluded.
Outputs in ``--out``: ``metrics.json`` (snake_case; arguments and seed included), ``report.html`` + ``success.png`` and
``videos/`` (all views side by side with the executed target's action image overlaid; below, the generated future
keyframe the policy is heading to, with its generated action image) -- every path relative, so the folder can move.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from action_images.codec import ActionImageCodec, overlay
from action_images.metrics import json_safe, wilson_interval
from action_images.policy import DISAGREE_CHOICES, GRIPPER_MODES, ActionImagesPolicy, Chunk

DEFAULT_CAMERAS = "front,left,right"
os.environ.setdefault("MUJOCO_GL", "egl")   # headless rendering unless the user chose a backend (before mujoco loads)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory (config.json + model.safetensors)")
    p.add_argument("--tasks", default="all", help="task names, comma separated, or 'all'")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    p.add_argument("--out", required=True, help="output directory (metrics.json, report.html, videos/)")
    p.add_argument("--perturb-cameras", action="store_true", help="viewpoint shift: jitter cameras every episode")
    p.add_argument("--seed", type=int, default=0, help="base seed; episode seeds derive from it (default 0)")
    p.add_argument("--open-loop-data", default=None, help="LeRobot dataset: also run open-loop metrics on it")
    p.add_argument("--open-loop-episodes", type=int, default=4, help="held-out episodes (the dataset's last N)")
    p.add_argument("--open-loop-windows", type=int, default=4, help="windows per held-out episode")
    g = p.add_argument_group("policy")
    g.add_argument("--cameras", default=DEFAULT_CAMERAS, help=f"views rendered (default {DEFAULT_CAMERAS})")
    g.add_argument("--policy-views", default=None, help="views the model sees (default: the first num_views)")
    g.add_argument("--image-size", type=int, default=64, help="render size (the model input is resized)")
    g.add_argument("--steps", type=int, default=10, help="sampler steps per chunk")
    g.add_argument("--cfg-scale", type=float, default=1.0)
    g.add_argument("--horizon", type=int, default=None, help="keyframes per chunk (default: the model's)")
    g.add_argument("--execute-k", type=int, default=None, help="control steps executed per chunk")
    g.add_argument("--on-disagree", default="replan", choices=DISAGREE_CHOICES)
    g.add_argument("--disagree-px", type=float, default=None,
                   help="views disagree above this RMS reprojection error, in model pixels (default 2 sigma = "
                        "0.1 x the model's image size)")
    g.add_argument("--gripper", default="linear", choices=GRIPPER_MODES)
    g.add_argument("--max-steps", type=int, default=None, help="cap on episode length (default: the task's)")
    o = p.add_argument_group("output")
    o.add_argument("--videos", type=int, default=2, help="rollout videos for the first N episodes per task")
    o.add_argument("--video-format", default="gif", choices=["gif", "mp4"])
    o.add_argument("--lpips-weights", default=None, help="local LPIPS weights (open-loop); else reported null")
    o.add_argument("--i3d-weights", default=None, help="local TorchScript I3D (open-loop FVD); else null")
    o.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads oversubscribe, ~10x slower)")
    o.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the episodes (same results, less wall time; 2 on a 2-core machine)")
    o.add_argument("--no-progress", action="store_true")


def episode_seed(base_seed: int, task: str, k: int) -> int:
    """Seed of evaluation episode ``k`` of ``task`` (disjoint from collection seeds by the "eval" key)."""
    ss = np.random.SeedSequence(entropy=int(base_seed), spawn_key=(zlib.crc32(b"eval"), zlib.crc32(task.encode()),
                                                                   int(k)))
    return int(ss.generate_state(1)[0])


def parse_tasks(spec: str) -> list[str]:
    from action_images.sim import TASKS
    names = list(TASKS) if spec == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise ValueError(f"unknown task(s) {bad}; choose from {list(TASKS)} or 'all'")
    return names


# ---- video frames ----------------------------------------------------------------------------------------------------
def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 [R, R, 3] -> [size, size, 3] (nearest; the generated frame stays visibly low-res)."""
    if img.shape[0] == size:
        return img
    idx = (np.arange(size) * img.shape[0] / size).astype(int)
    return img[idx][:, idx]


def compose_frame(obs: dict[str, Any], cameras: Sequence[Any], action: np.ndarray, chunk: Chunk | None,
                  step_in_chunk: int, stride: int, codec: ActionImageCodec) -> np.ndarray:
    """Top row: every rendered view + the executed target's action image. Bottom: generated future keyframe."""
    act_imgs = codec.encode(action, list(cameras))                           # [V, S, S, 3]
    top, bottom = [], []
    for v, cam in enumerate(cameras):
        real = obs["images"][cam.name]
        S = real.shape[0]
        top.append(overlay(real, act_imgs[v]))
        tile = np.full_like(real, 40)
        if chunk is not None and cam.name in chunk.view_names:
            j = chunk.view_names.index(cam.name)
            k = min(chunk.future_rgb.shape[1] - 1, step_in_chunk // stride)
            act = chunk.future_act[j, k]
            gen = overlay(chunk.future_rgb[j, k], np.where(act > 0.35, act, 0.0))   # hide generated pedestal noise
            tile = _upscale(gen, S)
        bottom.append(tile)
    return np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v3 as iio
    arr = np.stack(frames)
    if path.suffix == ".gif":
        iio.imwrite(path, arr, duration=1000.0 / fps, loop=0)
    else:
        iio.imwrite(path, arr, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p")


# ---- rollouts --------------------------------------------------------------------------------------------------------
def rollout(env: Any, policy: ActionImagesPolicy, seed: int, max_steps: int, record: bool,
            codec: ActionImageCodec) -> dict[str, Any]:
    """One closed-loop episode; returns its record (and video frames if ``record``)."""
    obs, info = env.reset(seed=seed)
    policy.reset(seed)
    frames: list[np.ndarray] = []
    success, steps = False, 0
    t_begin = time.perf_counter()
    for steps in range(1, max_steps + 1):
        action = policy.act(obs, env.cameras)
        if record:
            ch = policy.last_chunk
            done = len(ch.actions) - len(policy.queue) - 1 if ch is not None else 0
            frames.append(compose_frame(obs, env.cameras, action, ch, done, policy.stride, codec))
        obs, _, terminated, truncated, info = env.step(action)
        success = bool(info.get("success", False))
        if terminated or truncated:
            break
    chunks = policy.chunks
    decisions = [c.decision for c in chunks]
    return {"seed": seed, "success": success, "length": steps, "wall_s": time.perf_counter() - t_begin,
            "plans": len(chunks), "samples": int(sum(c.samples for c in chunks)),
            "latency_s": [c.latency_s for c in chunks],
            "latency_parts_s": {k: float(np.mean([c.timings[k] for c in chunks])) if chunks else None
                                for k in ("observe", "generate", "decode", "chunk")},
            "decisions": {d: decisions.count(d) for d in ("execute", "replan", "hold", "hold_invalid")},
            "invalid_keyframes": int(sum((~c.valid).sum() for c in chunks)),
            "disagree_keyframes": int(sum(c.disagree.sum() for c in chunks)),
            "keyframes": int(sum(len(c.valid) for c in chunks)),
            "reproj_error_px": [u for u in (c.uncertainty()["reproj_error_px_mean"] for c in chunks) if u is not None],
            "_frames": frames}


def _latency(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"count": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None}
    a = np.asarray(samples) * 1000.0
    return {"count": int(len(a)), "mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95))}


def summarise_task(eps: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(eps)
    succ = sum(e["success"] for e in eps)
    lo, hi = wilson_interval(succ, n)
    kf = sum(e["keyframes"] for e in eps)
    decisions = {d: int(sum(e["decisions"][d] for e in eps)) for d in eps[0]["decisions"]} if eps else {}
    errs = [x for e in eps for x in e["reproj_error_px"]]
    return {"episodes": n, "successes": int(succ), "success_rate": succ / n if n else None,
            "success_ci95": [lo, hi], "mean_episode_length": float(np.mean([e["length"] for e in eps])) if n else None,
            "mean_episode_length_success": (float(np.mean([e["length"] for e in eps if e["success"]]))
                                            if succ else None),
            "latency": _latency([x for e in eps for x in e["latency_s"]]),
            "decisions": decisions, "invalid_keyframe_fraction": (sum(e["invalid_keyframes"] for e in eps) / kf
                                                                  if kf else None),
            "disagree_keyframe_fraction": sum(e["disagree_keyframes"] for e in eps) / kf if kf else None,
            "reproj_error_px_mean": float(np.mean(errs)) if errs else None}


class EpisodeRunner:
    """Runs single episodes by (task, k): one policy, the current task's env kept open, videos written as they finish.

    Episode k of a task depends only on its seed, not on what ran before it, so any split of the (task, k) pairs
    over processes gives the same records (``--jobs``)."""

    def __init__(self, model: Any, out: Path, seed: int, env_kwargs: dict[str, Any], policy_kwargs: dict[str, Any],
                 max_steps: int | None, videos: int, video_format: str):
        self.policy = ActionImagesPolicy(model, seed=seed, **policy_kwargs)
        self.codec = ActionImageCodec()
        self.out, self.seed, self.env_kwargs = out, seed, env_kwargs
        self.max_steps, self.videos, self.video_format = max_steps, videos, video_format
        self.task: str | None = None
        self.env: Any = None

    def episode(self, task: str, k: int) -> dict[str, Any]:
        from action_images.sim import make_env

        if task != self.task:                                      # pairs come task by task: one env at a time
            self.close()
            self.task, self.env = task, make_env(task, **self.env_kwargs)
        env = self.env
        limit = min(env.max_steps, self.max_steps) if self.max_steps else env.max_steps
        rec = rollout(env, self.policy, episode_seed(self.seed, task, k), limit, k < self.videos, self.codec)
        frames = rec.pop("_frames")
        if frames:
            rel = f"videos/{task}_ep{k:03d}.{self.video_format}"
            write_video(self.out / rel, frames, int(getattr(env, "fps", 10)))
            rec["video"] = rel
        chunks = self.policy.chunks
        rec.update(task=task, episode=k, views=list(chunks[0].view_names) if chunks else None)
        return rec

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.task, self.env = None, None


_WORKER: dict[str, EpisodeRunner] = {}


def _worker_init(checkpoint: str, threads: int, runner_kwargs: dict[str, Any]) -> None:
    from action_images.wam import WorldActionModel

    torch.set_num_threads(threads)
    _WORKER["runner"] = EpisodeRunner(WorldActionModel.from_pretrained(checkpoint), **runner_kwargs)


def _worker_episode(pair: tuple[str, int]) -> dict[str, Any]:
    return _WORKER["runner"].episode(*pair)


def evaluate(model: Any, tasks: Sequence[str], episodes: int, out: str | Path, seed: int = 0,
             cameras: Sequence[str] = ("front", "left", "right"), policy_views: Sequence[str] | None = None,
             image_size: int = 64, perturb_cameras: bool = False, steps: int = 10, cfg_scale: float = 1.0,
             horizon: int | None = None, execute_k: int | None = None, on_disagree: str = "replan",
             gripper: str = "linear", max_steps: int | None = None, videos: int = 2, video_format: str = "gif",
             progress: bool = True, disagree_px: float | None = None, jobs: int = 1,
             checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Closed-loop rollouts of every task; writes videos under ``out/videos``; returns the metrics dict.

    ``jobs > 1`` runs episodes in that many worker processes (each loads ``checkpoint`` and uses one torch thread);
    the records are the same as with ``jobs = 1``, only the wall time changes."""
    from tqdm import tqdm

    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    env_kwargs = dict(cameras=tuple(cameras), image_size=image_size, perturb_cameras=perturb_cameras)
    policy_kwargs = dict(camera_names=policy_views, horizon=horizon, execute_k=execute_k, steps=steps,
                         cfg_scale=cfg_scale, on_disagree=on_disagree, gripper=gripper, disagree_px=disagree_px)
    runner_kwargs = dict(out=out, seed=seed, max_steps=max_steps, videos=videos, video_format=video_format,
                         env_kwargs=env_kwargs, policy_kwargs=policy_kwargs)
    pairs = [(task, k) for task in tasks for k in range(episodes)]
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(pairs), desc="eval episodes", unit="ep", disable=not progress, dynamic_ncols=True)

    def done(rec: dict[str, Any]) -> None:
        records.append(rec)
        bar.update(1)
        bar.set_postfix(task=rec["task"], ok=sum(r["success"] for r in records if r["task"] == rec["task"]),
                        n=sum(r["task"] == rec["task"] for r in records))

    runner = EpisodeRunner(model, **runner_kwargs)                 # also the source of the policy's settings below
    try:
        if jobs > 1:
            if checkpoint is None:
                raise ValueError("jobs > 1 needs the checkpoint path (each worker process loads the model)")
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(jobs, _worker_init, (str(checkpoint), 1, runner_kwargs)) as pool:
                for rec in pool.imap_unordered(_worker_episode, pairs):
                    done(rec)
        else:
            for task, k in pairs:
                done(runner.episode(task, k))
    finally:
        runner.close()
        bar.close()
    order = {pair: i for i, pair in enumerate(pairs)}
    records.sort(key=lambda r: order[(r["task"], r["episode"])])
    per_task = {task: summarise_task([r for r in records if r["task"] == task]) for task in tasks}
    video_paths: dict[str, list[str]] = {}
    for r in records:
        if "video" in r:
            video_paths.setdefault(r["task"], []).append(r["video"])
    views = next((r["views"] for r in records if r["views"]), policy_views)
    n = len(records)
    succ = sum(r["success"] for r in records)
    lo, hi = wilson_interval(succ, n)
    cfg = model.config
    policy = runner.policy
    return {"tasks": per_task,
            "overall": {"episodes": n, "successes": int(succ), "success_rate": succ / n if n else None,
                        "success_ci95": [lo, hi],
                        "mean_task_success_rate": (float(np.mean([t["success_rate"] for t in per_task.values()]))
                                                   if per_task else None),
                        "mean_episode_length": float(np.mean([r["length"] for r in records])) if n else None,
                        "latency": _latency([x for r in records for x in r["latency_s"]]),
                        "latency_parts_ms_mean": {k: (1000 * float(np.mean([r["latency_parts_s"][k] for r in records
                                                                              if r["latency_parts_s"][k] is not None]))
                                                      if any(r["latency_parts_s"][k] is not None for r in records)
                                                      else None)
                                                  for k in ("observe", "generate", "decode", "chunk")}},
            "policy": {"views": views, "horizon": policy.horizon,
                       "execute_k": policy.execute_k, "stride": policy.stride, "steps": steps,
                       "cfg_scale": cfg_scale, "on_disagree": on_disagree, "gripper": gripper,
                       "disagree_px": policy.codec.reject_px,
                       "model_image_size": cfg.image_size, "model_preset": cfg.preset,
                       "model_parameters": int(sum(p.numel() for p in model.parameters())),
                       "jobs": jobs},
            "episodes": [{k: v for k, v in r.items() if k not in ("latency_s", "views")} for r in records],
            "videos": video_paths}


def write_outputs(out: Path, metrics: dict[str, Any]) -> Path:
    """metrics.json (strict JSON: NaN/inf -> null) and report.html; returns the report path."""
    from action_images.report import write_report
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, out / "metrics.json")
    return write_report(out, json_safe(metrics))


def run(args: argparse.Namespace) -> int:
    from action_images.benchmarks import args_dict, environment
    from action_images.wam import WorldActionModel

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        tasks = parse_tasks(args.tasks)
        model = WorldActionModel.from_pretrained(args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        print(f"action-images eval: {e}", file=sys.stderr)
        return 2
    if args.episodes < 1 or args.jobs < 1 or (args.disagree_px is not None and not args.disagree_px > 0):
        print("action-images eval: --episodes and --jobs must be >= 1 and --disagree-px > 0", file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"command": "eval", "arguments": args_dict(args), "seed": args.seed,
                               "checkpoint": str(args.checkpoint), "perturb_cameras": bool(args.perturb_cameras)}
    metrics.update(evaluate(
        model, tasks, args.episodes, out, seed=args.seed, cameras=args.cameras.split(","),
        policy_views=args.policy_views.split(",") if args.policy_views else None, image_size=args.image_size,
        perturb_cameras=args.perturb_cameras, steps=args.steps, cfg_scale=args.cfg_scale, horizon=args.horizon,
        execute_k=args.execute_k, on_disagree=args.on_disagree, gripper=args.gripper, max_steps=args.max_steps,
        videos=args.videos, video_format=args.video_format, progress=not args.no_progress,
        disagree_px=args.disagree_px, jobs=args.jobs, checkpoint=args.checkpoint))
    metrics["open_loop"] = None
    if args.open_loop_data:
        from action_images.metrics import evaluate_open_loop
        metrics["open_loop"] = evaluate_open_loop(
            model, args.open_loop_data, held_out=args.open_loop_episodes, windows_per_episode=args.open_loop_windows,
            steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed, lpips_weights=args.lpips_weights,
            i3d_weights=args.i3d_weights)
    metrics["wall_s"] = time.perf_counter() - t0
    metrics["environment"] = environment()
    report = write_outputs(out, metrics)
    ov = metrics["overall"]
    lo, hi = ov["success_ci95"]
    print(f"success {ov['successes']}/{ov['episodes']} = {ov['success_rate']:.0%} (95% CI {lo:.0%}-{hi:.0%}); "
          f"latency {ov['latency']['mean_ms'] or 0:.0f} ms mean per replanning step")
    print(f"wrote {out / 'metrics.json'} and {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="action-images eval", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
