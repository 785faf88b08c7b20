"""Running evaluation episodes: one closed-loop rollout, the runner that plays episode k of a task, and the worker
processes of ``--jobs``.

:func:`rollout` plays one episode of a policy in an env (:class:`~action_images.sim.suites.Env`) and returns its
record; :class:`EpisodeRunner` plays episodes by (task, k) with their episode seeds, one env open at a time, and
writes their videos; :func:`episode_pairs` gives the (task, k) pairs in run order and :func:`run_in_workers` spreads
them over spawned worker processes, each with its own runner. The command (``action-images eval``), the records on
disk and the metrics are :mod:`action_images.evaluate`'s.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from action_images.codec import ActionImageCodec
from action_images.eval_settings import EvalSettings, env_kwargs
from action_images.policy import ActionImagesPolicy
from action_images.seeds import episode_seed
from action_images.sim.suites import Env
from action_images.videos import compose_frame, write_video


def episode_pairs(tasks: Sequence[str], episodes: int, skip: set[tuple[str, int]] | frozenset = frozenset()
                  ) -> Iterator[tuple[str, int]]:
    """The (task, k) pairs in run order, generated one at a time (a large --episodes costs no memory up front)."""
    for task in tasks:
        for k in range(episodes):
            if (task, k) not in skip:
                yield task, k


def rollout(env: Env, policy: ActionImagesPolicy, seed: int, max_steps: int, record: bool,
            codec: ActionImageCodec, video_px: int = 256) -> dict[str, Any]:
    """One closed-loop episode; returns its record (and video frames if ``record``)."""
    env.observe_images = True
    obs, info = env.reset(seed=seed)
    policy.reset(seed)
    # where each camera stood in this episode (differs per episode under --perturb-cameras)
    positions = {c.name: [round(float(x), 6) for x in c.position] for c in env.cameras}
    start = [round(float(x), 6) for x in obs["ee_pose"][:3]]     # where the hand starts (varies under --start-jitter)
    frames: list[np.ndarray] = []
    success, steps = False, 0
    t_begin = time.perf_counter()
    for steps in range(1, max_steps + 1):
        action = policy.act(obs, env.cameras)
        if record:
            ch = policy.last_chunk
            done = len(ch.actions) - len(policy.queue) - 1 if ch is not None else 0
            frames.append(compose_frame(obs, env.cameras, action, ch, done, policy.stride, codec, video_px))
        # render the next observation only if the policy or the video reads it
        env.observe_images = record or policy.needs_images
        obs, _, terminated, truncated, info = env.step(action)
        success = bool(info.get("success", False))
        if terminated or truncated:
            break
    env.observe_images = True            # the env leaves the rollout as it came: every observation rendered
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
            "camera_positions": positions, "start_position": start, "_frames": frames}


class EpisodeRunner:
    """Runs single episodes by (task, k): one policy, the current task's env kept open, videos written as they finish.

    Episode k of a task depends only on its seed, not on what ran before it, so any split of the (task, k) pairs
    over processes gives the same records (``--jobs``). ``settings`` must be resolved
    (:func:`~action_images.eval_settings.resolve_settings`)."""

    def __init__(self, model: Any, out: Path, settings: EvalSettings, policy: Any = None):
        self.settings = settings
        from action_images.baselines.policy import make_policy   # BaselinePolicy for models that predict poses

        # ``policy``: a ready policy (e.g. serve.remote.RemotePolicy, model None) instead of one around ``model``
        self.policy = policy if policy is not None else make_policy(model, settings.policy, seed=settings.seed)
        self.codec = ActionImageCodec()
        self.out = Path(out)
        from action_images.sim.suites import get_suite

        self.suite = get_suite(settings.suite)
        self.env_kwargs = dict(cameras=tuple(settings.cameras or self.suite.eval_cameras),
                               image_size=settings.image_size, perturb_cameras=settings.perturb_cameras,
                               **env_kwargs(settings))
        self.task: str | None = None
        self.env: Any = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, out: Path, settings: EvalSettings) -> "EpisodeRunner":
        """A runner around a saved checkpoint, ``settings`` resolved against its config the way ``action-images eval``
        resolves them: for probes that play the evaluation's episodes."""
        from action_images.baselines import load_model
        from action_images.eval_settings import resolve_settings

        model = load_model(checkpoint)
        return cls(model, out, resolve_settings(settings, model.config))

    def open(self, task: str) -> Any:
        """The task's environment, made once and kept while episodes come from the same task."""
        if task != self.task:                                      # pairs come task by task: one env at a time
            self.close()
            self.task, self.env = task, self.suite.make_env(task, **self.env_kwargs)
        return self.env

    def episode(self, task: str, k: int) -> dict[str, Any]:
        s = self.settings
        env = self.open(task)
        limit = min(env.max_steps, s.max_steps) if s.max_steps else env.max_steps
        rec = rollout(env, self.policy, episode_seed(s.seed, task, k), limit, k < s.videos, self.codec, s.video_px)
        frames = rec.pop("_frames")
        if frames:
            rel = f"videos/{task}_ep{k:03d}.{s.video_format}"
            write_video(self.out / rel, frames, int(env.fps))
            rec["video"] = rel
        chunks = self.policy.chunks
        rec.update(task=task, episode=k, views=list(chunks[0].view_names) if chunks else None)
        return rec

    def logged_episode(self, task: str, k: int, after_step: Callable[[Any, tuple], None]) -> dict[str, Any]:
        """:meth:`episode`, with ``after_step(env, out)`` called after every control step (``out``: what
        ``env.step`` returned), for probes that read the scene while the policy acts."""
        env = self.open(task)
        inner = type(env).step.__get__(env)

        def step(action: Any) -> tuple:
            out = inner(action)
            after_step(env, out)
            return out

        env.step = step
        try:
            return self.episode(task, k)
        finally:
            del env.step                                           # the class's step again

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.task, self.env = None, None


# ---- worker processes ------------------------------------------------------------------------------------------------
_WORKER: dict[str, EpisodeRunner] = {}


def die_with_parent() -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a killed
    evaluation leaves no worker running its queued episodes; returns whether the request was made (False elsewhere)."""
    import ctypes
    import ctypes.util
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:          # 1 = PR_SET_PDEATHSIG
        return False
    if os.getppid() != parent:                                      # the parent died before the request
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _worker_init(checkpoint: str, threads: int, out: str, settings: EvalSettings,
                 server: tuple[str, str | None] | None = None) -> None:
    die_with_parent()
    torch.set_num_threads(threads)
    if server is not None:                       # each worker its own connection (its own episode state)
        from action_images.serve.remote import RemotePolicy
        policy = RemotePolicy(server[0], server[1], settings.policy.camera_names, seed=settings.seed)
        _WORKER["runner"] = EpisodeRunner(None, Path(out), settings, policy=policy)
        return
    from action_images.baselines import load_model

    _WORKER["runner"] = EpisodeRunner(load_model(checkpoint), Path(out), settings)


def _worker_episode(pair: tuple[str, int]) -> dict[str, Any]:
    return _WORKER["runner"].episode(*pair)


def run_in_workers(pairs: Iterator[tuple[str, int]], done: Callable[[dict[str, Any]], Any], settings: EvalSettings,
                   checkpoint: str | Path | None, out: Path, server: tuple[str, str | None] | None = None) -> None:
    """Episodes in ``settings.jobs`` spawned processes (each loads ``checkpoint``, or connects to ``server``, with one
    torch thread), at most 2 per worker queued; ``done(record)`` is called here as each finishes. A dead worker raises
    BrokenProcessPool at once (ProcessPoolExecutor notices the lost process; multiprocessing.Pool would wait for its
    result forever); on any error the other workers are stopped before it propagates."""
    ex = ProcessPoolExecutor(settings.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(str(checkpoint), 1, str(out), settings, server))
    pending: set[Any] = set()
    finished_ok = False
    try:
        while True:
            for pair in pairs:
                pending.add(ex.submit(_worker_episode, pair))
                if len(pending) >= 2 * settings.jobs:
                    break
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done(fut.result())
        finished_ok = True
    finally:
        for fut in pending:
            fut.cancel()
        # on an error, stop the workers now instead of letting them finish their queued episodes
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            if not finished_ok and proc.is_alive():
                proc.terminate()
        ex.shutdown(wait=True, cancel_futures=True)
