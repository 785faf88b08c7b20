"""``action-images eval``: closed-loop rollouts of the policy in a benchmark suite, metrics.json and an HTML report.

    action-images eval --checkpoint runs/pick --tasks reach_target,pick_cube --episodes 20 --out runs/pick/eval
    action-images eval --checkpoint runs/pick --tasks all --episodes 20 --perturb-cameras --out runs/pick/eval_shift
    action-images eval --checkpoint runs/pick --tasks pick_cube --episodes 5 --open-loop-data data/demos --out DIR
    action-images eval --checkpoint runs/pick --tasks all --episodes 100 --out DIR --resume     # after a crash, or
                                                                      # to extend a 20-episode run to 100
    action-images eval --server ws://127.0.0.1:8000 --tasks reach_target --episodes 20 --out DIR   # via serve
    action-images eval --suite metaworld --checkpoint runs/mw --tasks drawer-open-v3 --episodes 50 --out DIR

``--suite`` picks the benchmark: the built-in tabletop (``sim``, default) or Meta-World v3 (``metaworld``; success is
``info["success"]`` at any step within 500 steps, docs/metaworld.md); the policy, metrics and report are the same.

Reproducible by construction: episode k of task t resets the env (and seeds the policy's sampler noise) with
``seeds.episode_seed(--seed, t, k)``, a SeedSequence keyed by "eval" so it never coincides with the collection seeds
of ``action-images collect``. Success rates carry a 95 % Wilson interval (honest at 0 % / 100 % and small n). Latency
is measured per replanning step (observe -> generate -> decode -> chunk), the env's own time excluded.

The cameras follow the checkpoint: the model sees ``config.camera_names`` (``--policy-cameras`` overrides) and those
are rendered (``--cameras`` overrides, e.g. to add views to the videos). Every setting is checked before the first
episode (:class:`EvalSettings`, :class:`~action_images.policy.PolicySettings`, files named by flags).

Outputs in ``--out``: ``episodes.jsonl`` (a header line with the settings, then one line per finished episode, appended
and flushed as it finishes, so an interrupted run keeps its episodes and ``--resume`` continues it), ``metrics.json``
(rebuilt from ``episodes.jsonl``; snake_case; arguments and seed included), ``report.html`` + ``success.png`` and
``videos/`` (all views side by side, upscaled nearest-neighbour to >= ``--video-px`` per view, with the executed
target's action image overlaid; below, the generated future keyframe the policy is heading to, with its generated
action image) -- every path relative, so the folder can move.

This module holds the command (:func:`add_arguments`, :func:`run`, :func:`main`), :class:`Evaluation` (the checks,
``episodes.jsonl`` and ``--resume``, the metrics) and the report outputs (:func:`write_outputs`); the episodes
themselves, in this process or in ``--jobs`` worker processes, run in :mod:`action_images.rollout`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from action_images.cliflags import DeprecatedAlias, Parser, add_policy_arguments, add_sampler_steps, whole_number
from action_images.eval_settings import (DEFAULT_CAMERAS, MAX_JOBS, RIG_SPLITS, VIDEO_FORMATS, EvalSettings,
                                         resolve_settings)  # noqa: F401 (re-export)
from action_images.metrics import wilson_interval
from action_images.policy import PolicySettings
from action_images.rollout import EpisodeRunner, episode_pairs, run_in_workers
from action_images.runfiles import (append_jsonl, args_dict, atomic_write_json, atomic_write_text, check_out_dir,
                                    dumps, environment, json_safe, read_jsonl)

EPISODES_FILE = "episodes.jsonl"
EPISODES_FORMAT = "action-images-eval-episodes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="run directory (config.json + model.safetensors); or --server")
    p.add_argument("--server", default=None, metavar="URL",
                   help="evaluate the policy of a running 'action-images serve' at this ws:// or wss:// URL instead "
                        "of a --checkpoint: the env renders here, the server plans; the policy settings are the "
                        "server's")
    p.add_argument("--token", default=None,
                   help="the server's bearer token (default: $ACTION_IMAGES_SERVE_TOKEN, which keeps it out of ps)")
    from action_images.sim.suites import DEFAULT_SUITE, SUITES

    p.add_argument("--suite", default=DEFAULT_SUITE, choices=SUITES,
                   help="benchmark suite: the built-in tabletop (sim, default) or Meta-World v3 (metaworld)")
    p.add_argument("--tasks", default="all", help="task names, comma separated, or 'all'")
    p.add_argument("--episodes", type=whole_number, default=10, help="episodes per task, >= 1 (default 10)")
    p.add_argument("--out", required=True,
                   help="output directory (episodes.jsonl, metrics.json, report.html, videos/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the evaluation in --out: skip the episodes episodes.jsonl holds; refused if the "
                        "settings or the checkpoint differ from the recorded ones, except a larger --episodes, "
                        "which extends a finished run")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds finished episodes (default: refuse; see --resume)")
    p.add_argument("--perturb-cameras", action="store_true", help="viewpoint shift: jitter cameras every episode")
    from action_images.sim.env import START_JITTER_HELP

    p.add_argument("--start-jitter", type=float, default=0.0, metavar="M", help=START_JITTER_HELP)
    p.add_argument("--seed", type=whole_number, default=0, help="base seed, >= 0; episode seeds derive from it")
    p.add_argument("--open-loop-data", default=None, help="LeRobot dataset: also run open-loop metrics on it")
    p.add_argument("--open-loop-episodes", type=int, default=4,
                   help="episodes, spread evenly over the dataset (first and last included)")
    p.add_argument("--open-loop-windows", type=int, default=4, help="windows per held-out episode")
    g = p.add_argument_group("cameras and policy")
    g.add_argument("--cameras", default=None,
                   help="cameras rendered, comma separated (default: the policy cameras; add more to see them in "
                        "the videos)")
    g.add_argument("--policy-cameras", default=None,
                   help="cameras the model sees, comma separated, >= 2, or 'all' (every rendered camera, e.g. all "
                        "of a rig's --rig-views; default: the checkpoint's camera_names, as many as it saw per "
                        "window; a checkpoint without them gets the first num_views rendered cameras and a warning)")
    g.add_argument("--policy-views", dest="policy_cameras", default=argparse.SUPPRESS, action=DeprecatedAlias,
                   new="--policy-cameras", help="deprecated alias of --policy-cameras")
    r = p.add_argument_group("camera rigs (any calibrated viewpoint; default: the scene's named cameras)")
    r.add_argument("--camera-rig", default=None,
                   help="place the static cameras exactly as in this meta/cameras.json-format file (names, K, "
                        "T_cam_world, size); bad files are refused with the camera and the problem")
    r.add_argument("--random-rig", type=whole_number, default=None, metavar="SEED",
                   help="one rig drawn with this seed from the held-out split of the simulator's rig distribution "
                        "(docs/benchmark.md); held-out draws never coincide with training rigs")
    r.add_argument("--rig-distribution", default=None, choices=RIG_SPLITS,
                   help="a new rig every episode from this split (seeded by the episode seed)")
    r.add_argument("--rig-views", type=whole_number, default=4,
                   help="views of a random rig, 2..8 (2..5 with --suite metaworld; default 4)")
    g.add_argument("--image-size", type=whole_number, default=64,
                   help="render size in px, 16..1024 (the model input is resized)")
    add_sampler_steps(g, 10, "ODE sampler steps per chunk, 1..1000 (default 10)")
    add_policy_arguments(g)
    g.add_argument("--decode-head", default=None, metavar="DIR",
                   help="decode the generated action images with this learned head (python -m "
                        "action_images.decode_head train) instead of triangulating them")
    g.add_argument("--max-steps", type=whole_number, default=None,
                   help="cap on episode length in control steps, >= 1 (default: the task's)")
    o = p.add_argument_group("output")
    o.add_argument("--videos", type=whole_number, default=2, help="rollout videos for the first N episodes per task")
    o.add_argument("--video-format", default="gif", choices=VIDEO_FORMATS)
    o.add_argument("--video-px", type=whole_number, default=256,
                   help="each view is upscaled (nearest neighbour) to at least this many px, 16..2048 (default 256)")
    o.add_argument("--lpips-weights", default=None, help="local LPIPS weights file (open-loop); else reported null")
    o.add_argument("--i3d-weights", default=None,
                   help="local TorchScript I3D file (open-loop FVD; else null). TorchScript loading runs code from "
                        "the file, so it is accepted only with --trust-i3d-torchscript")
    o.add_argument("--trust-i3d-torchscript", action="store_true",
                   help="allow --i3d-weights to be loaded with torch.jit.load (only for files you trust)")
    o.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads oversubscribe and run slower)")
    o.add_argument("--jobs", type=whole_number, default=1,
                   help=f"worker processes for the episodes, 1..{MAX_JOBS} (same results, less wall time; 2 on a "
                        "2-core machine). A worker that dies fails the run at once; --resume continues it")
    o.add_argument("--no-progress", action="store_true")


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


def model_digest(model: Any) -> str:
    """sha256 of the model's tensors (names, dtypes, shapes, bytes): ties episodes.jsonl to the weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _record_key(settings: EvalSettings) -> dict[str, Any]:
    return json_safe(settings.record_dict())


class Evaluation:
    """A closed-loop evaluation, checked in full by the constructor (nothing written, no episode run) and carried
    out by :meth:`run`.

    ``out/episodes.jsonl``: a header line ``{"format", "version", "settings", "model_sha256", "checkpoint"}``, then one
    line per finished episode, appended and flushed as it finishes. ``resume=True`` keeps the finished episodes and
    runs the others; it raises ValueError when the recorded settings or weights differ from these, except a larger
    ``episodes``, which extends a finished run (its episodes are the first ones of the longer run).
    ``jobs > 1`` runs episodes in worker processes (each loads ``checkpoint``, one torch thread); records are the
    same as with one process. A worker that dies raises RuntimeError at once (finished episodes stay on disk).

    ``server`` (with ``model`` None): the URL of a running ``action-images serve``, ``token`` its bearer token; the
    env renders here and the server plans (:class:`~action_images.serve.remote.RemotePolicy`). The policy settings
    are then the server's (``settings.policy`` may only name the cameras), the header records the server's model and
    checkpoint instead of the weights' digest, and the records are the in-process ones."""

    def __init__(self, model: Any, settings: EvalSettings, out: str | Path, checkpoint: str | Path | None = None,
                 resume: bool = False, overwrite: bool = False, server: str | None = None,
                 token: str | None = None):
        if not isinstance(settings, EvalSettings):
            raise TypeError(f"settings must be an EvalSettings; got {type(settings).__name__}")
        if (model is None) == (server is None):
            raise ValueError("give either a checkpoint (--checkpoint) or a policy server (--server), not both")
        if settings.jobs > 1 and checkpoint is None and server is None:
            raise ValueError("--jobs > 1 needs the checkpoint path (each worker process loads the model)")
        self.model, self.out, self.checkpoint, self.resume = model, Path(out), checkpoint, resume
        check_out_dir(self.out)
        if (not resume and not overwrite and self.out.is_dir() and not (self.out / EPISODES_FILE).exists()
                and any(self.out.iterdir())):     # someone else's files: never written over without being asked
            raise ValueError(f"--out {self.out} holds files but no {EPISODES_FILE}; choose a new or empty folder, "
                             "or pass --overwrite")
        self.server = None if server is None else (str(server), token)
        policy = None
        if server is not None:
            settings, config, policy = _remote_policy(settings, str(server), token)
        else:
            config = model.config
        self.config = config
        self.settings = resolve_settings(settings, config)
        if policy is not None:
            policy.camera_names = list(self.settings.policy.camera_names)
        # the policy checks model-bound ranges
        self.runner = EpisodeRunner(model, self.out, self.settings, policy=policy)
        self.path = self.out / EPISODES_FILE
        self.header = {"format": EPISODES_FORMAT, "version": 1, "settings": _record_key(self.settings),
                       "model_sha256": model_digest(model) if model is not None else None,
                       "checkpoint": None if checkpoint is None else str(checkpoint)}
        if policy is not None:
            self.header["server"] = {k: policy.metadata.get(k) for k in ("model", "checkpoint")}
        self.done: list[dict[str, Any]] = []
        if not resume and not overwrite and self.path.exists() and len(read_jsonl(self.path)) > 1:
            raise ValueError(f"{self.path} already holds finished episodes; pass --resume to continue them, "
                             "--overwrite to start over, or choose another --out")
        if resume and self.path.exists():
            rows = read_jsonl(self.path)
            head = rows[0] if rows else {}
            if head.get("format") != EPISODES_FORMAT or not isinstance(head.get("settings"), dict):
                raise ValueError(f"--resume: {self.path} is not an evaluation record; choose another --out")
            bad = [i for i, r in enumerate(rows[1:], 2) if not (isinstance(r, dict) and isinstance(r.get("task"), str)
                                                                 and isinstance(r.get("episode"), int)
                                                                 and isinstance(r.get("success"), bool))]
            if bad:
                raise ValueError(f"--resume: {self.path}: line {bad[0]} is not an episode record")
            # a larger --episodes extends the run: episode k's seed depends on (seed, task, k) only, so the recorded
            # episodes are the first ones of the longer run; a smaller one would drop records and is refused
            was, now = head["settings"].get("episodes"), self.header["settings"].get("episodes")
            extend = isinstance(was, int) and isinstance(now, int) and now > was
            recorded = dict(head["settings"])
            if isinstance(recorded.get("policy"), dict):        # a setting the record lacks reads as its default
                recorded["policy"] = {**PolicySettings().to_dict(), **recorded["policy"]}
            diff = sorted(k for k in set(recorded) | set(self.header["settings"])
                          if recorded.get(k) != self.header["settings"].get(k)
                          and not (k == "episodes" and extend))
            if diff:
                raise ValueError(f"--resume: settings differ from the ones recorded in {self.path}: "
                                 + "; ".join(f"{k} {recorded.get(k)!r} -> {self.header['settings'].get(k)!r}"
                                             for k in diff))
            if head.get("model_sha256") != self.header["model_sha256"]:
                raise ValueError(f"--resume: the checkpoint's weights differ from the ones recorded in {self.path}")
            if head.get("server") != self.header.get("server"):
                raise ValueError(f"--resume: the policy server's model differs from the one recorded in {self.path} "
                                 f"({head.get('server')} -> {self.header.get('server')})")
            seen: set[tuple[str, int]] = set()
            for r in rows[1:]:
                key = (r.get("task"), r.get("episode"))
                if key not in seen and r["task"] in self.settings.tasks and 0 <= r["episode"] < self.settings.episodes:
                    seen.add(key)
                    self.done.append(r)

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Runs the episodes not yet in episodes.jsonl; returns the metrics dict rebuilt from episodes.jsonl."""
        from tqdm import tqdm

        s = self.settings
        (self.out / "videos").mkdir(parents=True, exist_ok=True)
        # a fresh file (or the complete lines of an interrupted one: appending after a torn line would corrupt it)
        atomic_write_text(self.path, "".join(dumps(r, indent=None) + "\n" for r in [self.header, *self.done]))
        counts: dict[str, list[int]] = {}
        for r in self.done:
            counts.setdefault(r["task"], [0, 0])
            counts[r["task"]][0] += int(bool(r["success"]))
            counts[r["task"]][1] += 1
        total = len(s.tasks) * s.episodes
        bar = tqdm(total=total, initial=len(self.done), desc="eval episodes", unit="ep", disable=not progress,
                   dynamic_ncols=True)

        def done(rec: dict[str, Any]) -> None:
            append_jsonl(self.path, rec)
            c = counts.setdefault(rec["task"], [0, 0])
            c[0] += int(bool(rec["success"]))
            c[1] += 1
            bar.update(1)
            bar.set_postfix(task=rec["task"], ok=c[0], n=c[1])

        pairs = episode_pairs(s.tasks, s.episodes, {(r["task"], r["episode"]) for r in self.done})
        try:
            if s.jobs > 1:
                self._run_workers(pairs, done)
            else:
                for task, k in pairs:
                    done(self.runner.episode(task, k))
        finally:
            self.runner.close()
            if hasattr(self.runner.policy, "close"):                  # a server connection
                self.runner.policy.close()
            bar.close()
        return self.metrics(read_jsonl(self.path)[1:])

    def _run_workers(self, pairs: Iterator[tuple[str, int]], done: Any) -> None:
        """Episodes in ``jobs`` worker processes (:func:`~action_images.rollout.run_in_workers`); a worker that dies
        fails the run at once with a RuntimeError (the finished episodes stay in episodes.jsonl)."""
        try:
            run_in_workers(pairs, done, self.settings, self.checkpoint, self.out, self.server)
        except BrokenProcessPool as e:
            n = len(read_jsonl(self.path)) - 1
            raise RuntimeError(f"a worker process died ({e}); {n} finished episodes are kept in {self.path}; "
                               "rerun with --resume to continue") from None

    def metrics(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The metrics dict from episode records (in run order, whatever order they finished in)."""
        s, model = self.settings, self.model
        order = {t: i for i, t in enumerate(s.tasks)}
        records = sorted((r for r in rows if r.get("task") in order), key=lambda r: (order[r["task"]], r["episode"]))
        per_task = {task: summarise_task([r for r in records if r["task"] == task]) for task in s.tasks}
        video_paths: dict[str, list[str]] = {}
        for r in records:
            if "video" in r:
                video_paths.setdefault(r["task"], []).append(r["video"])
        n = len(records)
        succ = sum(r["success"] for r in records)
        lo, hi = wilson_interval(succ, n)
        cfg = self.config
        policy = self.runner.policy
        out = {"settings": s.to_dict(),
                "tasks": per_task,
                "overall": {"episodes": n, "successes": int(succ), "success_rate": succ / n if n else None,
                            "success_ci95": [lo, hi],
                            "mean_task_success_rate": (float(np.mean([t["success_rate"] for t in per_task.values()
                                                                      if t["success_rate"] is not None]))
                                                       if n else None),
                            "mean_episode_length": float(np.mean([r["length"] for r in records])) if n else None,
                            "latency": _latency([x for r in records for x in r["latency_s"]]),
                            "latency_parts_ms_mean": {k: (1000 * float(np.mean([r["latency_parts_s"][k]
                                                                                 for r in records
                                                                                 if r["latency_parts_s"][k]
                                                                                 is not None]))
                                                          if any(r["latency_parts_s"][k] is not None for r in records)
                                                          else None)
                                                      for k in ("observe", "generate", "decode", "chunk")}},
                "policy": {"views": list(s.policy.camera_names or []), "cameras": list(s.cameras or []),
                           "horizon": policy.horizon, "execute_k": policy.execute_k, "stride": policy.stride,
                           "sampler_steps": s.policy.sampler_steps, "cfg_scale": s.policy.cfg_scale,
                           "method": s.policy.method, "on_disagree": s.policy.on_disagree,
                           "gripper": s.policy.gripper, "max_resamples": s.policy.max_resamples,
                           "ensemble": s.policy.ensemble, "orientation": s.policy.orientation, "zoom": s.policy.zoom,
                           "noise": s.policy.noise, "position": s.policy.position,
                           "disagree_px": policy.codec.reject_px, "model_image_size": cfg.image_size,
                           "model_preset": cfg.preset, "model_camera_names": getattr(cfg, "camera_names", None),
                           "model_parameters": (int(sum(p.numel() for p in model.parameters()))
                                                if model is not None else None), "jobs": s.jobs},
                "episodes": [{k: v for k, v in r.items() if k not in ("latency_s", "views")} for r in records],
                "videos": video_paths}
        if self.server is not None:
            out["policy"]["server"] = dict(self.header["server"], url=self.server[0])
        return out


def _remote_policy(settings: EvalSettings, url: str, token: str | None) -> tuple[EvalSettings, Any, Any]:
    """For ``--server``: the settings with the server's policy settings, a stand-in for the checkpoint config
    (from the server's metadata) and the connected :class:`~action_images.serve.remote.RemotePolicy`. ValueError
    for policy flags (they are the server's) or a server that cannot be reached."""
    try:
        from action_images.serve.client import ServerError
        from action_images.serve.remote import RemotePolicy
    except ModuleNotFoundError as e:
        raise ValueError(f"--server needs the serve extra ({e.name} is missing): pip install "
                         "'action-images[serve]'") from None
    from action_images.policy import FLAGS as POLICY_FLAGS

    mine = settings.policy.to_dict()
    default = PolicySettings().to_dict()
    given = [POLICY_FLAGS[k] for k in mine if k != "camera_names" and mine[k] != default[k]]
    if given:
        raise ValueError(f"--server: the policy settings are the server's; drop {', '.join(given)} (set them on "
                         "action-images serve)")
    try:
        policy = RemotePolicy(url, token, settings.policy.camera_names, seed=settings.seed)
    except ServerError as e:
        raise ValueError(f"--server: {e}") from None
    except ValueError as e:
        raise ValueError(f"--policy-cameras: {e}") from None
    meta = policy.metadata
    served = meta.get("camera_names")
    config = argparse.Namespace(num_views=len(served) if served else int(meta.get("min_views", 2)),
                                camera_names=served, image_size=policy.image_size, preset=None)
    pol = replace(policy.settings, camera_names=settings.policy.camera_names or policy.settings.camera_names)
    return replace(settings, policy=pol), config, policy


def evaluate(model: Any, settings: EvalSettings, out: str | Path, *, checkpoint: str | Path | None = None,
             progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Closed-loop rollouts of every task (see :class:`Evaluation`); writes ``out/episodes.jsonl`` and videos under
    ``out/videos``; returns the metrics dict."""
    return Evaluation(model, settings, out, checkpoint=checkpoint, resume=resume, overwrite=overwrite).run(progress)


def write_outputs(out: Path, metrics: dict[str, Any]) -> Path:
    """metrics.json (strict JSON: NaN/inf -> null) and report.html; returns the report path."""
    from action_images.report import write_report
    atomic_write_json(out / "metrics.json", metrics)
    return write_report(out, json_safe(metrics))


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """EvalSettings (and PolicySettings) from the parsed command line; ValueError names the bad flag."""
    policy = PolicySettings(camera_names=args.policy_cameras, horizon=args.horizon, execute_k=args.execute_k,
                            sampler_steps=args.sampler_steps, cfg_scale=args.cfg_scale, on_disagree=args.on_disagree,
                            disagree_px=args.disagree_px, gripper=args.gripper, max_resamples=args.max_resamples,
                            method=args.method, decode_head=args.decode_head, ensemble=args.ensemble,
                            orientation=args.orientation, zoom=args.zoom, noise=args.noise,
                            position=args.position)
    return EvalSettings(tasks=args.tasks, episodes=args.episodes, seed=args.seed, cameras=args.cameras,
                        image_size=args.image_size, perturb_cameras=args.perturb_cameras, max_steps=args.max_steps,
                        videos=args.videos, video_format=args.video_format, video_px=args.video_px, jobs=args.jobs,
                        camera_rig=args.camera_rig, random_rig=args.random_rig, rig_distribution=args.rig_distribution,
                        rig_views=args.rig_views, policy=policy, suite=getattr(args, "suite", "sim"),
                        start_jitter=getattr(args, "start_jitter", 0.0))


def check_files(args: argparse.Namespace) -> None:
    """Files named by flags exist (and --i3d-weights is trusted) before any work; ValueError names the flag."""
    if args.open_loop_data and not Path(args.open_loop_data).exists():
        raise ValueError(f"--open-loop-data: no such dataset {args.open_loop_data}")
    if args.open_loop_data:           # opened now: a broken dataset fails before the closed-loop episodes, not after
        from action_images.data import LeRobotDataset
        try:
            LeRobotDataset(args.open_loop_data)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--open-loop-data: {e}".replace("\n", " ")) from None
    for flag, path in (("--lpips-weights", args.lpips_weights), ("--i3d-weights", args.i3d_weights)):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag}: no such file {path}")
    if args.lpips_weights:
        from action_images.perceptual import check_lpips_file
        check_lpips_file(args.lpips_weights)
    if args.i3d_weights and not args.trust_i3d_torchscript:
        raise ValueError("--i3d-weights is TorchScript, which runs code from the file when loaded; add "
                         "--trust-i3d-torchscript if you trust it")
    if args.decode_head and not (Path(args.decode_head) / "config.json").is_file():
        raise ValueError(f"--decode-head: {args.decode_head} does not hold a decode head (config.json + "
                         "model.safetensors from python -m action_images.decode_head train)")
    for flag in ("--open-loop-episodes", "--open-loop-windows"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if args.open_loop_data and value < 1:
            raise ValueError(f"{flag} must be an integer >= 1; got {value}")


def run(args: argparse.Namespace) -> int:
    from action_images.baselines import load_model   # the world action model or a baseline, by config.json

    if not 1 <= args.threads <= 1024:
        print(f"action-images eval: --threads must be in 1..1024; got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:                                           # every check before the first episode: bad input exits 2
        settings = settings_from_args(args)
        check_files(args)
        server = getattr(args, "server", None)
        if (args.checkpoint is None) == (server is None):
            raise ValueError("give --checkpoint DIR or --server URL (exactly one)")
        if server is not None:
            if args.open_loop_data:
                raise ValueError("--open-loop-data needs the weights: use --checkpoint, not --server")
            token = args.token if args.token is not None else (os.environ.get("ACTION_IMAGES_SERVE_TOKEN") or None)
            model = None
        else:
            if args.token is not None:
                raise ValueError("--token is the policy server's; it goes with --server")
            if not (Path(args.checkpoint) / "config.json").is_file():
                raise ValueError(f"--checkpoint: no config.json in {args.checkpoint}")
            model = load_model(args.checkpoint)
            token = None
        if args.open_loop_data and not hasattr(model, "sample"):
            raise ValueError(f"--open-loop-data: the open-loop metrics score generated video; {args.checkpoint} "
                             f"is a {type(model).__name__}")
        ev = Evaluation(model, settings, out, checkpoint=args.checkpoint, resume=args.resume,
                        overwrite=args.overwrite, server=server, token=token)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"action-images eval: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"command": "eval", "arguments": {k: v for k, v in args_dict(args).items()
                                                                 if k != "token"},      # never the secret
                               "seed": args.seed, "checkpoint": str(args.checkpoint),
                               "model_sha256": ev.header["model_sha256"],     # the weights these numbers are of
                               "perturb_cameras": bool(args.perturb_cameras), "start_jitter": settings.start_jitter}
    try:
        metrics.update(ev.run(progress=not args.no_progress))
    except RuntimeError as e:
        print(f"action-images eval: {e}", file=sys.stderr)
        return 1
    metrics["open_loop"] = None
    if args.open_loop_data:
        from action_images.openloop import evaluate_open_loop
        metrics["open_loop"] = evaluate_open_loop(
            model, args.open_loop_data, num_episodes=args.open_loop_episodes,
            windows_per_episode=args.open_loop_windows, steps=args.sampler_steps, cfg_scale=args.cfg_scale,
            seed=args.seed,
            views=metrics["policy"]["views"], lpips_weights=args.lpips_weights, i3d_weights=args.i3d_weights,
            trust_i3d_torchscript=getattr(args, "trust_i3d_torchscript", False),
            orientation=getattr(args, "orientation", "free"), position=getattr(args, "position", "fit"))
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
    parser = Parser(prog="action-images eval", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
