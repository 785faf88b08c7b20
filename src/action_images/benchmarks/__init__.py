"""``action-images bench NAME --json OUT``: benchmarks that write JSON (snake_case keys, arguments and seed included).

    action-images bench codec  --json bench/results/codec.json
    action-images bench sim    --json bench/results/sim.json
    action-images bench train  --json bench/results/train.json
    action-images bench policy --json bench/results/policy.json
    action-images bench serve  --json bench/results/serve.json
    action-images bench dataset --data data/rig8 --json bench/results/dataset.json

Speed and accuracy targets live here, never in timed unit tests.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from action_images.runfiles import atomic_write_json

BENCHMARKS: dict[str, str] = {
    "codec": "action-image encode/decode accuracy and throughput",
    "sim": "simulator steps/s and expert success",
    "train": "training throughput and sampling latency per preset",
    "policy": "closed-loop policy latency per replanning step",
    "serve": "the policy server under N concurrent clients and injected faults",
    "dataset": "episode video decoding to RGB, three ways, and a dataset's first pass",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(f"action_images.benchmarks.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"action_images.benchmarks.{name}":
                raise
            p.set_defaults(_bench=None)
            continue
        module.add_arguments(p)
        p.set_defaults(_bench=module.run)


def run(args: argparse.Namespace) -> int:
    if args._bench is None:
        print(f"benchmark {args.benchmark!r} is not available in this build", file=sys.stderr)
        return 2
    return int(args._bench(args) or 0)


def write_json(path: str | os.PathLike | None, payload: dict[str, Any]) -> None:
    """Write the result atomically as strict JSON (non-finite numbers -> null) and say where."""
    if path:
        atomic_write_json(path, payload)
        print(f"wrote {path}")
