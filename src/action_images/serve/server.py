"""The websocket policy server behind ``action-images serve``: one model, one observation in, one action chunk out.

    action-images serve --checkpoint checkpoints/cpu-small --port 8000

    server = PolicyServer(load_model("checkpoints/cpu-small"), PolicySettings(execute_k=4), port=0)
    port = server.start_in_thread()      # or: asyncio.run(server.serve_forever())
    ...
    server.stop()

Each connection first receives the metadata message (:meth:`PolicyServer.metadata`), then every binary message it
sends is one request answered by exactly one reply: an action chunk, ``{"reset": true, ...}`` for a reset-only
request, or ``{"error": "..."}``; a refused request changes nothing and the connection stays open. Each connection
has its own episode state (a policy object around the shared model: sampler noise, the last commanded gripper);
requests from all connections reach the model one at a time. ``GET /healthz`` on the same port answers 200.

Defaults that keep a careless start safe: the server listens on 127.0.0.1; any other address is refused without a
token, and with a token every websocket handshake must carry ``Authorization: Bearer TOKEN``. Messages over
``max_message_bytes`` close that connection (code 1009) before they are read into memory. The wire format and every
check are in :mod:`action_images.serve.protocol`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
from http import HTTPStatus
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HTTPRequest
from websockets.http11 import Response
from websockets.protocol import State

from action_images.geometry import POSE_NAMES
from action_images.serve import TOKEN_ENV
from action_images.serve.protocol import (PROTOCOL_VERSION, RequestError, chunk_reply, pack, parse_request,
                                          unpack)

log = logging.getLogger("action_images.serve")

DEFAULT_MAX_MESSAGE_BYTES = 8 * 2**20
DEFAULT_MAX_CLIENTS = 8
MIN_TOKEN_LEN = 16
MAX_BATCH = 256                # --max-batch at most
MAX_BATCH_WAIT_MS = 1000.0     # --batch-wait-ms at most
DEFAULT_BATCH_WAIT_MS = 5.0


def check_batching(max_batch: Any, batch_wait_ms: Any) -> tuple[int, float]:
    """(max_batch, batch_wait_ms) checked: an integer in [1, MAX_BATCH] and a number of ms in
    [0, MAX_BATCH_WAIT_MS]; else ValueError naming the flag."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or not 1 <= max_batch <= MAX_BATCH:
        raise ValueError(f"--max-batch must be an integer in [1, {MAX_BATCH}]; got {max_batch!r}")
    try:
        wait = float(batch_wait_ms)
    except (TypeError, ValueError):
        wait = float("nan")
    if isinstance(batch_wait_ms, bool) or not 0.0 <= wait <= MAX_BATCH_WAIT_MS:
        raise ValueError(f"--batch-wait-ms must be a number of milliseconds in [0, {MAX_BATCH_WAIT_MS:g}]; "
                         f"got {batch_wait_ms!r}")
    return int(max_batch), wait


class _Queued:
    """A checked request waiting for a batched model call, and the future its connection awaits."""

    def __init__(self, policy: Any, req: Any, future: asyncio.Future, ws: Any) -> None:
        self.policy, self.req, self.future, self.ws = policy, req, future, ws
        self.queued = time.perf_counter()
        self.started = self.queued


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine ("localhost" or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """ValueError unless the server may listen on ``host`` with ``token``: any address other than loopback needs a
    token, and a token has at least ``MIN_TOKEN_LEN`` characters."""
    if token is not None and (len(token) < MIN_TOKEN_LEN or not token.isprintable() or " " in token):
        raise ValueError(f"--token (or ${TOKEN_ENV}) must be at least {MIN_TOKEN_LEN} printable characters "
                         "without spaces")
    if token is None and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host!r} without a token: pass --token or set {TOKEN_ENV} "
                         "(clients then send 'Authorization: Bearer TOKEN'), or bind 127.0.0.1")


class PolicyServer:
    """Serves the closed-loop policy of ``model`` over websockets: one policy object per connection (its episode
    state), all sharing the model, which answers one request at a time, or with ``max_batch`` > 1 plans the
    requests queued together (waiting at most ``batch_wait_ms`` for company) in shared model calls of at most
    ``max_batch`` (:func:`~action_images.serve.batching.plan_batch`).

    ``model``: what :func:`action_images.baselines.load_model` returns; ``settings``: a
    :class:`~action_images.policy.PolicySettings`; ``seed``: the sampler seed of a new connection and of a reset
    without one. Raises ValueError for a bind that :func:`check_bind` refuses, batching flags out of range or
    settings the model cannot take.
    """

    def __init__(self, model: Any, settings: Any = None, *, host: str = "127.0.0.1", port: int = 8000,
                 token: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_clients: int = DEFAULT_MAX_CLIENTS, seed: int = 0, checkpoint: str | None = None,
                 max_batch: int = 1, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS):
        from action_images.baselines import make_policy, method_of
        from action_images.policy import ALL_VIEWS

        check_bind(host, token)
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024; got {max_message_bytes}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1; got {max_clients}")
        self.max_batch, self.batch_wait_ms = check_batching(max_batch, batch_wait_ms)
        if int(getattr(model.config, "history", 0) or 0):
            raise ValueError(f"{checkpoint or 'this checkpoint'} reads past frames (train --history), which the "
                             "server protocol does not carry: a client sends observations at replanning steps only; "
                             "evaluate it in process")
        self.model, self.settings, self.seed = model, settings, int(seed)
        self.host, self.port, self.token = host, int(port), token
        self.max_message_bytes, self.max_clients = int(max_message_bytes), int(max_clients)
        self._make_policy = make_policy
        probe = make_policy(model, settings, seed=self.seed)        # settings the model cannot take fail here
        # --policy-cameras all: any >= 2 views per request (None), else exactly the model's cameras
        self.camera_names = list(probe.camera_names) if probe.camera_names and probe.camera_names != [ALL_VIEWS] \
            else None
        self.metadata = {
            "kind": "metadata", "protocol": PROTOCOL_VERSION, "model": method_of(model.config),
            "checkpoint": checkpoint, "camera_names": self.camera_names, "min_views": 2,
            "image_size": probe.image_size, "horizon": probe.horizon, "stride": probe.stride,
            "execute_k": probe.execute_k,
            "action_format": list(POSE_NAMES[:7]) + ["g"], "action_frame": "world",
            "action_convention": "absolute end-effector pose in the world frame, quaternion scalar-last (scipy), "
                                 "g gripper openness in [0, 1] with 1 = open",
            "max_message_bytes": self.max_message_bytes, "auth": "bearer" if token else "none",
            "settings": settings.to_metadata() if settings is not None else None}
        self._lock: asyncio.Lock | None = None
        self._pending: list[_Queued] = []             # max_batch > 1: requests waiting for the model, oldest first
        self._wake: asyncio.Event | None = None
        self._clients = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.on_listening: Any = None     # called once the port is bound

    # ---- HTTP side of the handshake: health, auth, capacity ----------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: HTTPRequest) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Bearer' token\n")
        if self._clients >= self.max_clients:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"at most {self.max_clients} clients\n")
        return None

    # ---- one connection ----------------------------------------------------------------------------------------------
    def _parse(self, message: Any) -> Any:
        return parse_request(unpack(message), self.camera_names)

    def _answer(self, policy: Any, req: Any) -> dict[str, Any]:
        """The reply to one checked request (runs in a worker thread, under the model lock)."""
        if req.reset:
            policy.reset(self.seed if req.seed is None else req.seed)
        if req.obs is None:
            return {"reset": True, "seed": self.seed if req.seed is None else req.seed}
        return self._chunk_reply(policy, policy.plan(req.obs, req.cameras))

    @staticmethod
    def _chunk_reply(policy: Any, chunk: Any) -> dict[str, Any]:
        policy.chunks.clear()    # no history kept: a connection that runs for hours stays the same size
        # the robot executes the chunk: the next chunk starts from the gripper it last commanded
        policy.last_command = np.asarray(chunk.actions[-1], dtype=np.float64).copy()
        reply = chunk_reply(chunk)
        reply["timing_ms"] = {k: 1000.0 * float(v) for k, v in chunk.timings.items()}
        return reply

    def _answer_batch(self, items: list[_Queued]) -> list[Any]:
        """The replies (or exceptions) to queued observations, planned together (runs in a worker thread)."""
        from action_images.serve.batching import plan_batch

        for it in items:
            if it.req.reset:
                it.policy.reset(self.seed if it.req.seed is None else it.req.seed)
        out: list[Any] = plan_batch([(it.policy, it.req.obs, it.req.cameras) for it in items], self.max_batch)
        for i, (it, chunk) in enumerate(zip(items, out)):
            if not isinstance(chunk, BaseException):
                out[i] = self._chunk_reply(it.policy, chunk)
                out[i]["batch"] = int(chunk.batch)
        return out

    async def _batcher(self) -> None:
        """Takes the oldest queued request, waits until ``max_batch`` are queued or the oldest has been queued for
        ``batch_wait_ms`` (one that queued behind a busy model mostly has), and plans up to ``max_batch`` together."""
        wait = self.batch_wait_ms / 1000.0
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            while len(self._pending) < self.max_batch:
                left = self._pending[0].queued + wait - time.perf_counter()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            items = []
            for it in self._pending[:self.max_batch]:
                if it.future.done():
                    continue
                if it.ws is not None and it.ws.state in (State.CLOSING, State.CLOSED):    # the client went away:
                    it.future.set_result({"error": "the connection closed"})     # no model time; the slot frees
                else:
                    items.append(it)
            del self._pending[:self.max_batch]
            if not items:
                continue
            t = time.perf_counter()
            for it in items:
                it.started = t
            try:
                results = await asyncio.to_thread(self._answer_batch, items)
            except Exception as e:        # noqa: BLE001 -- each request of the batch gets the error
                results = [e] * len(items)
            for it, res in zip(items, results):
                if not it.future.done():
                    it.future.set_result(res)

    async def _reply(self, policy: Any, message: Any, ws: Any = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            req = await asyncio.to_thread(self._parse, message)
            if self.max_batch == 1 or req.obs is None:     # a reset alone needs no model: no queue
                async with self._lock:
                    t1 = time.perf_counter()
                    reply = await asyncio.to_thread(self._answer, policy, req)
            else:
                item = _Queued(policy, req, asyncio.get_running_loop().create_future(), ws)
                self._pending.append(item)
                self._wake.set()
                reply = await item.future
                t1 = item.started
                if isinstance(reply, BaseException):
                    raise reply
        except RequestError as e:
            return {"error": str(e)}
        except Exception as e:    # the model or the decoder failed on accepted input: say so, keep serving
            log.exception("request failed")
            return {"error": f"internal error: {type(e).__name__}: {e}"[:500]}
        timing = reply.setdefault("timing_ms", {})
        timing["queue"] = 1000.0 * (t1 - t0)                        # parse + wait for the model (and company)
        timing["server"] = 1000.0 * (time.perf_counter() - t0)      # message in -> reply ready
        return reply

    async def _handler(self, ws: ServerConnection) -> None:
        self._clients += 1
        try:
            policy = self._make_policy(self.model, self.settings, seed=self.seed)
            await ws.send(pack(self.metadata))
            async for message in ws:
                await ws.send(pack(await self._reply(policy, message, ws)))
        except ConnectionClosed as e:     # e.g. 1009 for an oversize message: this connection ends, the server not
            log.info("connection closed: %s", e)
        finally:
            self._clients -= 1

    # ---- running -----------------------------------------------------------------------------------------------------
    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Listen until ``stop`` is set (or the task is cancelled); ``self.port`` is the bound port once
        listening (useful with port 0)."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = stop or asyncio.Event()
        self._loop = asyncio.get_running_loop()
        batcher = asyncio.create_task(self._batcher()) if self.max_batch > 1 else None
        async with serve(self._handler, self.host, self.port, process_request=self._process_request,
                         max_size=self.max_message_bytes, max_queue=4, compression=None,
                         logger=log) as server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            self._ready.set()
            if self.on_listening is not None:
                self.on_listening()
            try:
                await self._stop.wait()
            finally:
                if batcher is not None:
                    batcher.cancel()

    def start_in_thread(self, timeout: float = 30.0) -> int:
        """Serve from a daemon thread; returns the bound port once listening."""
        def main() -> None:
            try:
                asyncio.run(self.serve_forever())
            except BaseException as e:       # noqa: BLE001 -- handed to the starting thread
                self._error = e
                self._ready.set()

        self._thread = threading.Thread(target=main, name="action-images-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the policy server did not start: {self._error!r}")
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started by :meth:`start_in_thread` (open connections are closed)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
