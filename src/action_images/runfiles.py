"""Run files: atomic writes, strict JSON, run metadata and the command line as a dict -- one home for each.

Every file a command writes goes through :func:`atomic_write_bytes` (temp file in the same folder, fsync, rename),
so a crash leaves either the old file or the new one, never half of either. JSON is strict: NaN and infinity become
``null`` (:func:`json_safe`), numpy scalars and arrays become Python values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename (fsync first if ``durable``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    if durable:
        fsync_file(tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable)


def json_safe(x: Any) -> Any:
    """Replace NaN/inf floats by None and numpy scalars/arrays by Python ones (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (non-finite floats -> null)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    atomic_write_text(path, dumps(obj) + "\n", durable)


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one strict-JSON line and flush it to disk (a crash loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(dumps(row, indent=None) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file. A torn last line (left by a crash mid-write) is dropped; a bad line
    before the last is damage, not a crash, and raises ``ValueError`` naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for k, (i, line) in enumerate(lines):
        try:
            rows.append(json.loads(line, parse_constant=_no_constant))
        except (json.JSONDecodeError, ValueError) as e:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i} is not a JSON record ({e})") from None
    return rows


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def loads(text: str) -> Any:
    """Strict JSON text -> value: NaN and Infinity are refused (``ValueError``)."""
    return json.loads(text, parse_constant=_no_constant)


def environment() -> dict[str, Any]:
    """Where a number was measured (recorded in every JSON a command writes)."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "numpy": np.__version__, "mujoco": _version("mujoco"),
            "torch_threads": torch.get_num_threads(), "load_avg_1min": load, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _version(package: str) -> str | None:
    """An installed package's version without importing it (closed-loop numbers depend on the physics version)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def args_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed command line as a JSON-friendly dict (internal ``_``-prefixed entries and routing keys left out)."""
    return {k: json_safe(v) for k, v in vars(args).items()
            if not k.startswith("_") and not callable(v) and k not in ("command", "benchmark")}


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """An output folder: a folder or nothing yet, with no file in the way; ValueError naming ``flag`` otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag}: {path} is a file, not a folder")
    if any(q.exists() and not q.is_dir() for q in p.parents):
        raise ValueError(f"{flag}: cannot create {path} (a parent is a file)")


def probe_command(script: str | os.PathLike, argv: list[str] | None) -> str:
    """The command line a bench probe records in its JSON: ``bench/<script name>`` and its arguments (``argv``, or
    the process's own when ``main`` was called without them)."""
    return " ".join([f"bench/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def split_list(spec: str | None, flag: str = "") -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None or "" -> [] (``flag`` names the option in errors)."""
    if spec is None:
        return []
    if not isinstance(spec, str):
        raise ValueError(f"{flag or 'list'}: expected a comma separated string; got {spec!r}")
    return [s.strip() for s in spec.split(",") if s.strip()]
