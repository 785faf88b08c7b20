"""``action-images bench NAME --json OUT``: benchmarks that write JSON (snake_case keys, arguments and seed included).

    action-images bench codec  --json bench/results/codec.json
    action-images bench sim    --json bench/results/sim.json
    action-images bench train  --json bench/results/train.json
    action-images bench policy --json bench/results/policy.json

Speed and accuracy targets live here, never in timed unit tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS: dict[str, str] = {
    "codec": "action-image encode/decode accuracy and throughput",
    "sim": "simulator steps/s and expert success",
    "train": "training throughput and sampling latency per preset",
    "policy": "closed-loop policy latency per replanning step",
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


def environment() -> dict[str, Any]:
    """Where a number was measured (recorded in every JSON)."""
    import numpy
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "numpy": numpy.__version__, "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def args_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "benchmark")}


def write_json(path: str | os.PathLike | None, payload: dict[str, Any]) -> None:
    """Print and (atomically) write the result."""
    text = json.dumps(payload, indent=2, sort_keys=False)
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
        print(f"wrote {path}")
