"""``action-images bench NAME --json OUT``: benchmarks that write JSON (snake_case keys, arguments and seed included).

    action-images bench codec  --json bench/results/codec.json
    action-images bench sim    --json bench/results/sim.json
    action-images bench train  --json bench/results/train.json
    action-images bench policy --json bench/results/policy.json
    action-images bench serve  --json bench/results/serve.json
    action-images bench dataset --data data/rig8 --json bench/results/dataset.json

Speed and accuracy targets live here, never in timed unit tests. ``--json`` is checked before a benchmark measures
anything (a folder, a path under a file or an empty name exits 2 at once), and a write that still fails prints the
results to stdout rather than losing them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
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


def json_path_error(path: str | None) -> str:
    """Why ``--json PATH`` cannot be written ('' when it can): checked before a benchmark runs, so minutes of
    measurement are never lost to a bad output path."""
    if path is None:
        return ""
    if not str(path).strip():
        return "--json: an empty path; name a file (or leave --json out to print only)"
    p = Path(path)
    if p.is_dir():
        return f"--json {path}: is a folder; name a file in it"
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"--json {path}: {ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"--json {path}: {ancestor} is not writable"
    return ""


def run(args: argparse.Namespace) -> int:
    if args._bench is None:
        print(f"benchmark {args.benchmark!r} is not available in this build", file=sys.stderr)
        return 2
    error = json_path_error(getattr(args, "json", None))
    if error:
        print(f"action-images bench {args.benchmark}: {error}", file=sys.stderr)
        return 2
    return int(args._bench(args) or 0)


def write_json(path: str | os.PathLike | None, payload: dict[str, Any]) -> None:
    """Write the result atomically as strict JSON (non-finite numbers -> null) and say where."""
    if path:
        try:
            atomic_write_json(path, payload)
        except OSError as e:          # the results go to stdout rather than being lost with the file
            print(json.dumps(payload, default=str))
            print(f"--json {path}: could not write it ({e.strerror or e}); the results are printed above",
                  file=sys.stderr)
            raise SystemExit(2) from None
        print(f"wrote {path}")
