"""The policy on a running ``action-images serve``, with the in-process policy's interface, for
``action-images eval --server URL``.

    action-images serve --checkpoint checkpoints/cpu-small --port 8000 &
    action-images eval --server ws://127.0.0.1:8000 --tasks reach_target --episodes 20 --out runs/eval_remote

    policy = RemotePolicy("ws://127.0.0.1:8000", token=None)
    policy.reset(seed)                                   # sent with the episode's first observation
    obs, info = env.reset(seed=seed)
    obs, r, term, trunc, info = env.step(policy.act(obs, env.cameras))

The simulator renders, :meth:`RemotePolicy.plan` sends the policy cameras' images with their calibration and the
end-effector pose, the server answers with the chunk, and the env executes it action by action. :meth:`reset` hands
the episode seed to the server (with the next request), so the server's sampler noise is the in-process policy's:
on the same seeds, the same checkpoint and the same settings, the chunks are the in-process ones. The server
assumes the whole chunk is executed, as :meth:`act` does. Each reply becomes a
:class:`~action_images.policy.Chunk` without the generated frames (the server does not send them), so rollout
records and reports are the in-process ones; the latency of a step is the round trip the robot waits for.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields
from typing import Any, Sequence

import numpy as np

from action_images.codec import ActionImageCodec
from action_images.policy import Chunk, ChunkQueue, PolicySettings
from action_images.serve.client import PolicyClient, ServerError


class RemotePolicy(ChunkQueue):
    """Closed loop through a policy server at ``url`` (``token``: the server's bearer token, if it has one).

    ``camera_names``: the views sent with each request, in this order (default: the server's ``camera_names``; a
    server whose checkpoint names none needs them). Attributes follow
    :class:`~action_images.policy.ActionImagesPolicy`: ``settings`` (the server's policy settings), ``horizon``,
    ``stride``, ``execute_k``, ``image_size``, ``codec`` (``reject_px`` is the server's disagreement threshold),
    ``queue``, ``chunks``, ``last_chunk``, ``last_command``. Raises ServerError when the server cannot be reached or
    refuses the token."""

    def __init__(self, url: str, token: str | None = None, camera_names: Sequence[str] | None = None, *,
                 seed: int = 0, timeout: float = 120.0):
        self.url = url
        self.client = PolicyClient(url, token=token, timeout=timeout)
        meta = self.metadata = self.client.metadata
        try:
            self.image_size, self.horizon = int(meta["image_size"]), int(meta["horizon"])
            self.stride, self.execute_k = int(meta["stride"]), int(meta["execute_k"])
            raw = dict(meta.get("settings") or {})
            known = {f.name for f in fields(PolicySettings)}
            extra = sorted(k for k in raw if k not in known)
            if extra:                      # a newer server's settings: they act on the server, which plans
                print(f"note: {url} reports settings this client does not know: {extra}; the server applies them",
                      file=sys.stderr)
            raw = {k: v for k, v in raw.items() if k in known}
            raw["camera_names"] = tuple(raw["camera_names"]) if raw.get("camera_names") else None
            self.settings = PolicySettings(**raw)
        except (KeyError, TypeError, ValueError) as e:
            self.client.close()
            raise ServerError(f"{url}: the server metadata is not a policy server's ({e})") from None
        served = meta.get("camera_names")
        names = list(camera_names) if camera_names else (list(served) if served else None)
        if served and names and sorted(names) != sorted(served):
            self.client.close()
            raise ValueError(f"the server's model sees cameras {served}; got {names}")
        self.camera_names = names
        disagree = self.settings.disagree_px
        sigma = ActionImageCodec().sigma(self.image_size, self.image_size)
        self.codec = ActionImageCodec(reject_px=disagree if disagree is not None else 2.0 * sigma)
        self.seed = int(seed)
        self.reset(seed)

    # ---- episode state -----------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Forget the queued actions; the next request starts a new episode on the server, seeded with ``seed``
        (default: the constructor's)."""
        self._reset_seed: int = self.seed if seed is None else int(seed)
        self._pending_reset = True
        self.queue: list[np.ndarray] = []
        self.last_command: np.ndarray | None = None
        self.last_chunk: Chunk | None = None
        self.chunks: list[Chunk] = []

    def plan(self, obs: dict[str, Any], cameras: Sequence[Any]) -> Chunk:
        """One replanning step on the server: the policy cameras' images and calibration, the pose and the
        instruction out, the chunk back. ServerError if the server refuses the request or the connection fails."""
        by_name = {c.name: c for c in cameras}
        names = self.camera_names or [c.name for c in cameras if c.name in obs["images"]]
        missing = [n for n in names if n not in by_name or n not in obs["images"]]
        if missing:
            raise ValueError(f"cameras {missing} are not in the observation (have {sorted(obs['images'])})")
        t0 = time.perf_counter()
        reply = self.client.infer(obs, [by_name[n] for n in names], reset=self._pending_reset,
                                  seed=self._reset_seed if self._pending_reset else None)
        rtt = time.perf_counter() - t0
        self._pending_reset = False
        ms = {k: float(v) / 1000.0 for k, v in (reply.get("timing_ms") or {}).items()}
        timings = {k: ms.get(k, 0.0) for k in ("observe", "generate", "decode", "chunk")}
        timings.update(total=rtt, server=ms.get("server", 0.0), policy=ms.get("total", 0.0))
        actions = np.asarray(reply["actions"], dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != 8 or len(actions) == 0 or not np.isfinite(actions).all():
            raise ServerError(f"{self.url}: the reply's actions are not a finite [k, 8] array")
        chunk = Chunk(actions=actions, keyframes=np.asarray(reply["keyframes"], dtype=np.float64),
                      valid=np.asarray(reply["valid"], dtype=bool), disagree=np.asarray(reply["disagree"], dtype=bool),
                      reproj_error=np.asarray(reply["reproj_error"], dtype=np.float64),
                      decision=str(reply["decision"]), current=np.asarray(reply["current"], dtype=np.float64),
                      future_rgb=None, future_act=None, input_rgb=None, cameras=[],   # not sent by the server
                      view_names=list(reply["view_names"]), samples=int(reply["samples"]), timings=timings)
        self.last_chunk = chunk
        self.chunks.append(chunk)
        return chunk

    def close(self) -> None:
        self.client.close()
