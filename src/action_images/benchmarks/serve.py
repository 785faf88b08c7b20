"""The policy server under load and under attack: N concurrent robots on loopback plus clients that misbehave.

    action-images bench serve --json bench/results/serve.json                     # 100 clients, 20 s
    action-images bench serve --clients 5 --seconds 3 --json /tmp/serve.json      # smoke run
    action-images bench serve --max-batch 8 --json bench/results/serve_batch8.json # requests planned 8 at a time

Starts ``action-images serve`` in its own process on a tiny random model (``cpu-tiny``, 2 views at 32 px, untrained:
what is measured is the serving path, not a useful policy) with a token, then for ``--seconds`` runs ``--clients``
robots, each one :class:`~action_images.serve.client.PolicyClient` sending an observation from ``reach_target`` and
waiting for its chunk, again and again. Alongside them, fault injectors repeat, each in its own thread:

* ``disconnect``: a client sends a valid request and goes away without reading the reply (closing the websocket, or
  dropping the TCP connection without a close frame, alternately);
* ``malformed``: garbage bytes, a JSON text frame, a forged array header, a NaN pose, an unknown key -- each must be
  answered ``{"error": ...}`` on a connection that then still serves a valid request;
* ``oversized``: a message over ``--max-message-mb`` -- its connection must be closed with code 1009;
* ``wrong_token``: a handshake with a wrong token -- it must get HTTP 401.

A fault is *survived* when the server reacted as described and the next connection is served. At the end the server
process must be alive, answer ``GET /healthz`` and serve a fresh client. The JSON holds the round-trip latency of
the robots' requests (p50, p95, mean, max), the throughput (chunks/s), the server's resident memory (VmRSS) when it
started listening, its largest value while sampled once a second and at the end, its CPU time per chunk, the batch
sizes (``--max-batch`` > 1 passes ``--max-batch`` and ``--batch-wait-ms`` to the server), the 1-minute load average
before and after, and every fault counted and survived. Exit 1 when any fault was not survived or a robot's request
failed.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from action_images.benchmarks import write_json
from action_images.runfiles import args_dict, environment

os.environ.setdefault("MUJOCO_GL", "egl")
TOKEN = "bench-serve-token-0123456789"
MAX_SECONDS = 600
MAX_CLIENTS = 1000
FAULTS = ("disconnect", "malformed", "oversized", "wrong_token")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=100, help=f"concurrent robots, 1..{MAX_CLIENTS} (default 100)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help=f"how long the robots send requests, (0, {MAX_SECONDS}] (default 20; startup and draining "
                        "the requests in flight come on top)")
    p.add_argument("--sampler-steps", type=int, default=2, help="the server's ODE sampler steps (default 2)")
    p.add_argument("--max-message-mb", type=float, default=1.0, help="the server's message limit (default 1 MiB)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="the server's --max-batch: requests planned in one model call, at most (default 1)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="the server's --batch-wait-ms (default 5; used with --max-batch > 1)")
    p.add_argument("--fault-interval", type=float, default=0.2,
                   help="seconds between the faults of each injector (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="model weights and the observation's episode seed")
    p.add_argument("--json", default=None, help="write results here")


# ---- the server process ----------------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> dict[str, float | None]:
    """VmRSS and VmHWM (peak) of a process in MiB, from /proc (None where there is no /proc)."""
    out: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for key, name in (("VmRSS", "rss_mb"), ("VmHWM", "peak_rss_mb")):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[name] = int(m[1]) / 1024.0
    return out


def _start_server(checkpoint: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "action_images.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0",
           "--threads", "1", "--sampler-steps", str(args.sampler_steps), "--max-resamples", "0",
           "--max-clients", str(args.clients + 2 * len(FAULTS) + 4), "--max-message-mb", str(args.max_message_mb),
           "--max-batch", str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms)]
    env = dict(os.environ, ACTION_IMAGES_SERVE_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    errf = open(log, "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env=env, text=True)
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        errf.seek(0)
        m = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", errf.read())
        if m:
            return proc, int(m[1])
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    errf.seek(0)
    raise RuntimeError(f"the server did not start: {errf.read()[-500:]}")


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


# ---- robots and faults -----------------------------------------------------------------------------------------------
class Tally:
    """Thread-safe counters: faults counted / survived (with the first few failures), robot latencies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counted = {f: 0 for f in FAULTS}
        self.survived = {f: 0 for f in FAULTS}
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.server_ms: list[float] = []
        self.batches: list[int] = []
        self.robot_errors: list[str] = []

    def fault(self, kind: str, ok: bool, why: str = "") -> None:
        with self.lock:
            self.counted[kind] += 1
            self.survived[kind] += int(ok)
            if not ok and len(self.failures) < 20:
                self.failures.append(f"{kind}: {why}"[:300])


def _robot(url: str, request: dict[str, Any], stop: threading.Event, tally: Tally, index: int) -> None:
    from action_images.serve.client import PolicyClient, ServerError

    try:
        client = PolicyClient(url, token=TOKEN, timeout=120.0)
    except ServerError as e:
        with tally.lock:
            tally.robot_errors.append(f"robot {index}: {e}"[:300])
        return
    first = True
    try:
        while not stop.is_set():
            msg = dict(request, reset=True, seed=index) if first else request
            t0 = time.perf_counter()
            try:
                reply = client.infer(msg)
            except ServerError as e:
                with tally.lock:
                    tally.robot_errors.append(f"robot {index}: {e}"[:300])
                continue
            rtt = time.perf_counter() - t0
            first = False
            with tally.lock:
                tally.latencies.append(rtt)
                tally.server_ms.append(float(reply["timing_ms"]["server"]))
                tally.batches.append(int(reply.get("batch", 1)))
    finally:
        client.close()


def _connect(url: str, token: str | None = TOKEN) -> Any:
    from websockets.sync.client import connect

    from action_images.serve.protocol import unpack

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ws = connect(url, additional_headers=headers, max_size=2**26, compression=None, open_timeout=60,
                 close_timeout=2, legacy=True)          # the connection itself, closed by the caller
    meta = unpack(ws.recv(timeout=60))
    if meta.get("kind") != "metadata":
        ws.close()
        raise RuntimeError("the first message is not the metadata")
    return ws


def _malformed_messages(request: dict[str, Any]) -> list[tuple[str, Any]]:
    from action_images.serve.protocol import pack

    forged = dict(request, ee_pose={"__ndarray__": True, "dtype": "<f8", "shape": [8], "data": b"\0" * 63})
    nan_pose = dict(request, ee_pose=np.r_[np.nan, request["ee_pose"][1:]])
    return [("garbage bytes", bytes(range(193, 256)) * 3), ("JSON text frame", '{"images": {}}'),
            ("forged array", pack(forged)), ("NaN pose", pack(nan_pose)), ("unknown key", pack(dict(request, x=1))),
            ("not a map", pack([1, 2, 3]))]


def _inject(kind: str, url: str, request: dict[str, Any], limit: int, stop: threading.Event, tally: Tally,
            interval: float) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from action_images.serve.protocol import pack, unpack

    valid = pack(request)
    bad = _malformed_messages(request)
    i = 0
    while not stop.is_set():
        i += 1
        try:
            if kind == "disconnect":
                ws = _connect(url)
                ws.send(valid)
                if i % 2:
                    ws.close()                                           # a close frame, the reply unread
                else:
                    ws.socket.shutdown(socket.SHUT_RDWR)                 # the TCP connection dropped, no close frame
                    ws.socket.close()
                again = _connect(url)                                    # the next connection is served
                again.close()
                tally.fault(kind, True)
            elif kind == "malformed":
                name, payload = bad[i % len(bad)]
                with _connect(url) as ws:
                    ws.send(payload)
                    reply = unpack(ws.recv(timeout=120))
                    ok = isinstance(reply, dict) and set(reply) == {"error"}
                    ws.send(valid)
                    after = unpack(ws.recv(timeout=120))
                    ok = ok and isinstance(after, dict) and "actions" in after
                tally.fault(kind, ok, f"{name}: {reply!r:.100} then {after!r:.100}")
            elif kind == "oversized":
                with _connect(url) as ws:
                    ws.send(b"\0" * (limit + 1))
                    try:
                        ws.recv(timeout=60)
                        code, why = None, "answered instead of closing"
                    except ConnectionClosed as e:
                        code, why = (e.rcvd.code if e.rcvd is not None else None), f"closed without 1009 ({e})"
                again = _connect(url)
                again.close()
                tally.fault(kind, code == 1009, why)
            else:
                try:
                    _connect(url, token="wrong-" + TOKEN).close()
                    tally.fault(kind, False, "a wrong token was let in")
                except InvalidStatus as e:
                    status = e.response.status_code
                    tally.fault(kind, status == 401, f"HTTP {status}")
        except Exception as e:          # noqa: BLE001 -- any other outcome is a fault not survived
            tally.fault(kind, False, f"{type(e).__name__}: {e}")
        stop.wait(interval)


# ---- the benchmark ---------------------------------------------------------------------------------------------------
def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.clients <= MAX_CLIENTS:
        raise ValueError(f"--clients must be in 1..{MAX_CLIENTS}; got {args.clients}")
    if not 0 < args.seconds <= MAX_SECONDS:
        raise ValueError(f"--seconds must be in (0, {MAX_SECONDS}]; got {args.seconds}")
    if not 1 <= args.sampler_steps <= 1000:
        raise ValueError(f"--sampler-steps must be in 1..1000; got {args.sampler_steps}")
    if not 0.05 <= args.max_message_mb <= 64:
        raise ValueError(f"--max-message-mb must be in [0.05, 64]; got {args.max_message_mb}")
    if not 0 <= args.fault_interval <= 60:
        raise ValueError(f"--fault-interval must be in [0, 60]; got {args.fault_interval}")
    from action_images.serve.server import check_batching
    check_batching(args.max_batch, args.batch_wait_ms)


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"count": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None, "max_ms": None}
    a = np.asarray(xs) * 1000.0
    return {"count": int(len(a)), "mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max())}


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        import websockets  # noqa: F401 -- the serve extra
    except ModuleNotFoundError as e:
        print(f"action-images bench serve: needs the serve extra ({e.name} is missing): pip install "
              "'action-images[serve]'", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"action-images bench serve: {e}", file=sys.stderr)
        return 2
    import torch

    from action_images.serve.client import PolicyClient
    from action_images.serve.protocol import observation
    from action_images.sim import make_env
    from action_images.wam import WAMConfig, WorldActionModel

    env = make_env("reach_target", cameras=("left", "right"), image_size=32)
    obs, _ = env.reset(seed=args.seed)
    request = observation(obs, env.cameras)
    env.close()
    limit = int(args.max_message_mb * 2**20)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        torch.manual_seed(args.seed)
        checkpoint = Path(tmp) / "tiny"
        WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=["left", "right"])).save_pretrained(checkpoint)
        t_start = time.perf_counter()
        load_start = os.getloadavg()[0]
        proc, port = _start_server(checkpoint, args, Path(tmp) / "server.log")
        url = f"ws://127.0.0.1:{port}"
        memory: dict[str, Any] = {"start": _rss_mb(proc.pid)}
        samples: list[float] = []
        tally, stop, done = Tally(), threading.Event(), threading.Event()

        def sample_memory() -> None:
            while not done.wait(1.0):
                rss = _rss_mb(proc.pid)["rss_mb"]
                if rss is not None:
                    samples.append(rss)

        try:
            robots = [threading.Thread(target=_robot, args=(url, request, stop, tally, i), daemon=True)
                      for i in range(args.clients)]
            injectors = [threading.Thread(target=_inject, daemon=True,
                                          args=(kind, url, request, limit, stop, tally, args.fault_interval))
                         for kind in FAULTS]
            sampler = threading.Thread(target=sample_memory, daemon=True)
            sampler.start()
            t0, cpu0 = time.perf_counter(), _cpu_s(proc.pid)
            for t in robots + injectors:
                t.start()
            stop.wait(args.seconds)
            stop.set()
            t_stop = time.perf_counter()
            for t in robots + injectors:
                t.join(300)
            t_drained, cpu1 = time.perf_counter(), _cpu_s(proc.pid)
            hung = sum(t.is_alive() for t in robots + injectors)
            alive = proc.poll() is None
            healthy = alive and _healthy(port)
            fresh_ok = False
            if alive:
                try:
                    with PolicyClient(url, token=TOKEN) as c:
                        fresh_ok = "actions" in c.infer(request)
                except Exception as e:     # noqa: BLE001 -- reported as not served
                    tally.failures.append(f"final client: {e}"[:300])
            memory["end"] = _rss_mb(proc.pid)
            done.set()
        finally:
            stop.set()
            done.set()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        server_log = (Path(tmp) / "server.log").read_text()[-2000:]
    memory["max_sampled_rss_mb"] = max(samples) if samples else None
    served = len(tally.latencies)
    cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    result = {
        "benchmark": "serve", "arguments": args_dict(args), "seed": args.seed,
        "model": {"preset": "cpu-tiny", "weights": "random", "views": 2, "image_px": 32,
                  "sampler_steps": args.sampler_steps},
        "clients": args.clients, "seconds": args.seconds,
        "wall_s": {"startup": t0 - t_start, "load": t_stop - t0, "drain": t_drained - t_stop},
        "requests": served, "throughput_per_s": served / max(t_drained - t0, 1e-9),
        "latency": _stats(tally.latencies), "server_latency": _stats([x / 1000.0 for x in tally.server_ms]),
        "batching": {"max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms if args.max_batch > 1 else None,
                     "mean_batch": float(np.mean(tally.batches)) if tally.batches else None,
                     "largest_batch": max(tally.batches, default=None)},
        "load_avg_1min": {"start": load_start, "end": os.getloadavg()[0]},
        # the server's CPU time while the robots ran: its cost per chunk, less sensitive than wall time to other load
        "server_cpu_s": cpu_s, "server_cpu_ms_per_chunk": 1000.0 * cpu_s / served if cpu_s and served else None,
        "robot_errors": len(tally.robot_errors), "robot_error_examples": tally.robot_errors[:10],
        "faults": {k: {"counted": tally.counted[k], "survived": tally.survived[k]} for k in FAULTS},
        "fault_failures": tally.failures,
        "server": {"alive_at_end": alive, "healthz_at_end": healthy, "fresh_client_served": fresh_ok,
                   "hung_threads": hung, "memory": memory},
        "ok": False, "environment": environment()}
    result["ok"] = bool(alive and healthy and fresh_ok and not hung and not tally.robot_errors and served > 0
                        and all(tally.counted[k] > 0 and tally.survived[k] == tally.counted[k] for k in FAULTS))
    if not result["ok"]:
        result["server_log_tail"] = server_log
    write_json(args.json, result)
    lat = result["latency"]
    batching = (f" (batches of <= {args.max_batch}, mean {result['batching']['mean_batch'] or 0:.1f})"
                if args.max_batch > 1 else "")
    print(f"{args.clients} clients{batching}, {served} chunks in {t_drained - t0:.1f} s = "
          f"{result['throughput_per_s']:.1f}/s; "
          f"round trip p50 {lat['p50_ms'] or 0:.0f} ms, p95 {lat['p95_ms'] or 0:.0f} ms; faults survived "
          + ", ".join(f"{k} {tally.survived[k]}/{tally.counted[k]}" for k in FAULTS)
          + f"; server CPU {result['server_cpu_ms_per_chunk'] or 0:.1f} ms per chunk"
          + f"; server RSS {memory['start']['rss_mb'] or 0:.0f} -> {memory['end']['rss_mb'] or 0:.0f} MiB"
          + ("" if result["ok"] else "; FAILED"))
    return 0 if result["ok"] else 1
