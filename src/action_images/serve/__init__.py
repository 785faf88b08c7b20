"""``action-images serve``: the closed-loop policy of a checkpoint as a websocket server (docs/serve.md).

    action-images serve --checkpoint checkpoints/cpu-small                  # ws://127.0.0.1:8000, GET /healthz
    ACTION_IMAGES_SERVE_TOKEN=$(openssl rand -hex 16) \\
        action-images serve --checkpoint runs/pick --host 0.0.0.0 --port 8000 --execute-k 4

One observation in (per camera the uint8 image and its calibration, the end-effector pose, the instruction), one
action chunk out (``[k, 8]`` absolute ``[x,y,z,qx,qy,qz,qw,g]`` targets in the world frame); msgpack with numpy
arrays, never pickle. The robot side is :class:`action_images.serve.client.PolicyClient`. Needs the ``serve`` extra
(``pip install action-images[serve]``: websockets, msgpack); this module imports them only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys

TOKEN_ENV = "ACTION_IMAGES_SERVE_TOKEN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from action_images.cliflags import add_policy_arguments, whole_number

    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint (config.json + weights)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=whole_number, default=8000, help="port, 0..65535 (0: any free port; default 8000)")
    p.add_argument("--token", default=None,
                   help=f"shared secret every client sends as 'Authorization: Bearer TOKEN', >= 16 characters "
                        f"(default: ${TOKEN_ENV}; the variable keeps it out of the process list)")
    p.add_argument("--max-message-mb", type=float, default=8.0,
                   help="largest request accepted, in MiB (default 8); a larger one closes its connection")
    p.add_argument("--max-clients", type=whole_number, default=8, help="open connections at most (default 8)")
    p.add_argument("--seed", type=whole_number, default=0, help="sampler seed of a new connection or reset")
    p.add_argument("--threads", type=whole_number, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-batch", type=whole_number, default=1,
                   help="plan up to N queued requests in one model call, 1..256 (default 1: one at a time)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="with --max-batch > 1, how long the oldest queued request waits for company, in ms, "
                        "0..1000 (default 5)")
    g = p.add_argument_group("policy (as in action-images eval)")
    g.add_argument("--policy-cameras", default=None,
                   help="cameras the model sees, comma separated, >= 2, or 'all' (every view a request sends, "
                        "any number >= 2; default: the checkpoint's camera_names)")
    g.add_argument("--sampler-steps", type=whole_number, default=10, help="ODE sampler steps per chunk (default 10)")
    add_policy_arguments(g)


def run(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"action-images serve: {message}", file=sys.stderr)
        return 2

    token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    try:                                           # every check before the model loads: bad input exits 2
        from action_images.serve.server import check_batching, check_bind
    except ModuleNotFoundError as e:
        return fail(f"needs the serve extra ({e.name} is missing): pip install 'action-images[serve]'")
    try:
        check_bind(args.host, token)
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in 0..65535; got {args.port}")
        if not 0.001 <= args.max_message_mb <= 1024:
            raise ValueError(f"--max-message-mb must be in [0.001, 1024]; got {args.max_message_mb}")
        check_batching(args.max_batch, args.batch_wait_ms)
        if args.max_clients < 1:
            raise ValueError(f"--max-clients must be >= 1; got {args.max_clients}")
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0; got {args.seed}")
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0 (0: torch's choice); got {args.threads}")
        import torch

        from action_images.baselines import load_model
        from action_images.policy import PolicySettings
        from action_images.serve.server import PolicyServer

        settings = PolicySettings(camera_names=args.policy_cameras, horizon=args.horizon, execute_k=args.execute_k,
                                  sampler_steps=args.sampler_steps, cfg_scale=args.cfg_scale,
                                  on_disagree=args.on_disagree, disagree_px=args.disagree_px, gripper=args.gripper,
                                  max_resamples=args.max_resamples, method=args.method, ensemble=args.ensemble,
                                  orientation=args.orientation, zoom=args.zoom, noise=args.noise,
                                  position=args.position)
        if args.threads:
            torch.set_num_threads(args.threads)
        model = load_model(args.checkpoint)
        server = PolicyServer(model, settings, host=args.host, port=args.port, token=token,
                              max_message_bytes=int(args.max_message_mb * 2**20), max_clients=args.max_clients,
                              seed=args.seed, checkpoint=str(args.checkpoint), max_batch=args.max_batch,
                              batch_wait_ms=args.batch_wait_ms)
    except (ValueError, TypeError, FileNotFoundError) as e:
        return fail(str(e))
    import asyncio

    server.on_listening = lambda: print(
        f"action-images serve: listening on ws://{args.host}:{server.port} (model {server.metadata['model']}, "
        f"cameras {','.join(server.camera_names or ['any'])}, auth {server.metadata['auth']}"
        + (f", batches of <= {server.max_batch} within {server.batch_wait_ms:g} ms" if server.max_batch > 1 else "")
        + "; GET /healthz)",
        file=sys.stderr, flush=True)
    try:
        asyncio.run(server.serve_forever())
    except KeyboardInterrupt:
        pass
    except OSError as e:                            # e.g. the port is taken
        return fail(f"cannot listen on {args.host}:{args.port}: {e}")
    return 0
