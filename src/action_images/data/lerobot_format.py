"""LeRobot v3.0 layout: paths, the feature schema, calibration file, statistics and episode-file commits.

Shared by the reader (``lerobot.py``) and the writer (``lerobot_writer.py``) so both agree on one schema. The layout
follows LeRobot's documented v3.0 format (``meta/info.json`` path templates, ``meta/episodes/chunk-XXX/file-XXX``,
``data/...parquet``, ``videos/<key>/...mp4``); we write one file per episode, so episode ``i`` lives in chunk
``i // chunks_size``, file ``i % chunks_size`` everywhere. Our calibration lives in ``meta/cameras.json``. Every path
built from a dataset's metadata goes through :func:`resolve_inside`, so no template, name or symlink in a dataset can
make the reader or the writer touch a file outside its root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..geometry import POSE_DIM, POSE_NAMES, Camera
from ..runfiles import atomic_write_bytes, fsync_file, loads

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # LeRobot's DEFAULT_CHUNK_SIZE: max files per chunk directory
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CAMERAS_PATH = "meta/cameras.json"
COLLECT_PATH = "meta/collect.json"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"

ACTION_KEY = "action"
STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."
CALIB_PREFIX = "calibration."  # per-frame calibration columns: calibration.<cam>.K [9], calibration.<cam>.T_cam_world [16]
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
PARTIAL_SUFFIX = ".partial"  # temp files: never end in .parquet/.mp4, so no loader globs them

# Video settings: H.264 4:4:4 (no chroma subsampling: 4:2:0 smears small coloured objects at 64 px), crf 0 = lossless in
# YUV, so the only loss is the RGB<->YUV rounding (measured in docs/dataset.md). No B-frames keeps pts == frame index.
VIDEO_CODEC = "libx264"
VIDEO_CODEC_NAME = "h264"
VIDEO_PIX_FMT = "yuv444p"
DEFAULT_CRF = 0
VIDEO_GOP = 10


def image_key(cam: str) -> str:
    return IMAGE_PREFIX + cam


def calib_keys(cam: str) -> tuple[str, str]:
    return f"{CALIB_PREFIX}{cam}.K", f"{CALIB_PREFIX}{cam}.T_cam_world"


def chunk_file(episode_index: int, chunks_size: int = CHUNKS_SIZE) -> dict[str, int]:
    """One file per episode: episode ``i`` -> chunk ``i // chunks_size``, file ``i % chunks_size``."""
    return {"chunk_index": episode_index // chunks_size, "file_index": episode_index % chunks_size}


def episode_paths(info: dict, episode_index: int, camera_names: Sequence[str],
                  source: Path | str = INFO_PATH) -> dict[str, str]:
    """Relative paths of one episode's files: ``meta`` (episode row), ``data`` and one video per camera key."""
    cf = chunk_file(episode_index, int(info["chunks_size"]))
    out = {"meta": EPISODES_PATH.format(**cf), "data": format_template(info, "data_path", source, **cf)}
    for cam in camera_names:
        out[image_key(cam)] = format_template(info, "video_path", source, video_key=image_key(cam), **cf)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Paths from metadata: every file a dataset's metadata leads to must lie inside the dataset root
# ----------------------------------------------------------------------------------------------------------------------

def check_name(name: Any, what: str, source: Path | str) -> str:
    """A camera name or video key that becomes a path component: a non-empty string without separators or
    ``.``/``..`` (so ``videos/<key>/...`` stays one folder below ``videos/``); ``ValueError`` naming ``source``."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or name != name.strip()):
        raise ValueError(f"{source}: {what} {name!r} is not usable in a file name (needs a non-empty name without "
                         "'/', '\\', NUL, surrounding spaces, or '.'/'..')")
    return name


def format_template(info: dict, field_name: str, source: Path | str, **values: Any) -> str:
    """``info[field_name]`` (``data_path`` / ``video_path``) filled in; ``ValueError`` naming the field if the
    template is not a relative path template with exactly LeRobot's placeholders."""
    template = info.get(field_name)
    if not isinstance(template, str) or not template:
        raise ValueError(f"{source}: {field_name} must be a non-empty path template; got {template!r}")
    try:
        rel = template.format(**values)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{source}: {field_name} {template!r} is not a valid path template "
                         f"({type(e).__name__}: {e})") from e
    return rel


def resolve_inside(root: Path, rel: str | Path, source: Path | str, field_name: str) -> Path:
    """``root / rel`` if it lies inside ``root`` once ``..`` and symlinks are resolved, else ``ValueError`` naming the
    metadata ``source`` file and ``field_name`` that produced the path (a dataset never reaches outside its root)."""
    rel_s = str(rel)
    if not rel_s or "\0" in rel_s or Path(rel_s).is_absolute():
        raise ValueError(f"{source}: {field_name} gives the path {rel_s!r}, which is not relative to the dataset "
                         f"root {root}")
    path = root / rel_s
    base = root.resolve()
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as e:  # symlink loops
        raise ValueError(f"{source}: {field_name} gives the path {rel_s!r}, which cannot be resolved ({e})") from e
    if real != base and base not in real.parents:
        raise ValueError(f"{source}: {field_name} gives the path {rel_s!r}, which resolves to {real}, outside the "
                         f"dataset root {base}; refusing to read or write it")
    return root / real.relative_to(base)  # one spelling per file, so paths from different sources compare equal


# ----------------------------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------------------------

def build_features(fps: int, camera_names: Sequence[str], image_size: tuple[int, int],
                   per_frame_cameras: bool) -> dict[str, dict]:
    """The ``features`` block of ``info.json`` (dtype / shape / names, video info), in LeRobot's format."""
    H, W = image_size
    pose = {"dtype": "float64", "shape": [POSE_DIM], "names": list(POSE_NAMES)}
    feats: dict[str, dict] = {ACTION_KEY: dict(pose), STATE_KEY: dict(pose)}
    for cam in camera_names:
        feats[image_key(cam)] = {
            "dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": H, "video.width": W, "video.codec": VIDEO_CODEC_NAME,
                     "video.pix_fmt": VIDEO_PIX_FMT, "video.is_depth_map": False, "video.fps": int(fps),
                     "video.channels": 3, "has_audio": False}}
    if per_frame_cameras:
        for cam in camera_names:
            k, t = calib_keys(cam)
            feats[k] = {"dtype": "float64", "shape": [9], "names": None}
            feats[t] = {"dtype": "float64", "shape": [16], "names": None}
    feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in INDEX_KEYS[1:]:
        feats[key] = {"dtype": "int64", "shape": [1], "names": None}
    return feats


def build_info(fps: int, features: dict, robot_type: str | None, chunks_size: int = CHUNKS_SIZE) -> dict:
    """``meta/info.json`` with exactly LeRobot v3.0's keys (its loader parses this file into a typed object)."""
    return {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0, "total_frames": 0,
            "total_tasks": 0, "chunks_size": int(chunks_size), "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "fps": int(fps), "splits": {},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features}


def data_schema(camera_names: Sequence[str], per_frame_cameras: bool) -> pa.Schema:
    """Arrow schema of ``data/*.parquet``: fixed-size lists for vectors (what ``datasets.Sequence(length=n)`` maps to)."""
    fields = [pa.field(ACTION_KEY, pa.list_(pa.float64(), POSE_DIM)),
              pa.field(STATE_KEY, pa.list_(pa.float64(), POSE_DIM))]
    if per_frame_cameras:
        for cam in camera_names:
            k, t = calib_keys(cam)
            fields += [pa.field(k, pa.list_(pa.float64(), 9)), pa.field(t, pa.list_(pa.float64(), 16))]
    fields.append(pa.field("timestamp", pa.float32()))
    fields += [pa.field(k, pa.int64()) for k in INDEX_KEYS[1:]]
    return pa.schema(fields)


def fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """``[T, D]`` float64 -> Arrow fixed-size list column (bit-exact)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def column_to_numpy(table: pa.Table, name: str, dim: int) -> np.ndarray:
    """A (fixed-size or variable) list column -> ``[T, dim]`` float64."""
    col = table.column(name).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    if flat.size != len(col) * dim:
        raise ValueError(f"column {name!r} has rows of the wrong length (expected {dim} values per row)")
    return flat.astype(np.float64, copy=False).reshape(len(col), dim)


# ----------------------------------------------------------------------------------------------------------------------
# Calibration file (meta/cameras.json)
# ----------------------------------------------------------------------------------------------------------------------

CAMERAS_FORMAT = "action-images/cameras"
CAMERAS_CONVENTION = ("OpenCV pinhole (x right, y down, z forward); K in pixels for the stored image size; "
                      "T_cam_world maps world -> camera (4x4, row-major); pixel (0,0) is the centre of the top-left "
                      "pixel; world frame right-handed, z up, metres")


def cameras_to_json(cameras: Sequence[Camera], per_frame: bool) -> dict:
    """Calibration document. Static cameras carry K / T_cam_world; per-frame ones point at their parquet columns."""
    entries = []
    for cam in cameras:
        d = cam.to_dict()
        d["static"] = not per_frame
        if per_frame:
            k, t = calib_keys(cam.name)
            d["per_frame"] = {"K": k, "T_cam_world": t, "layout": "row-major, one row per frame in data/*.parquet"}
        entries.append(d)
    return {"format": CAMERAS_FORMAT, "version": 1, "convention": CAMERAS_CONVENTION, "cameras": entries}


def cameras_from_json(doc: Any, path: Path) -> tuple[list[Camera], bool]:
    """Parse ``meta/cameras.json`` -> (cameras in order, per_frame flag); ``ValueError`` naming ``path`` if malformed.

    For per-frame calibration the K / T_cam_world stored here are the nominal (unperturbed) ones.
    """
    try:
        entries = doc["cameras"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("'cameras' must be a non-empty list")
        cams = [Camera.from_dict(e) for e in entries]
        static = {bool(e.get("static", True)) for e in entries}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed calibration file: {e}") from e
    if len(static) != 1:
        raise ValueError(f"{path}: mixing static and per-frame cameras is not supported")
    names = [check_name(c.name, "camera name", path) for c in cams]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: camera names must be unique; got {names}")
    return cams, not static.pop()


# ----------------------------------------------------------------------------------------------------------------------
# Statistics (LeRobot's stats.json: per feature min / max / mean / std / count; images per channel as [3, 1, 1])
# ----------------------------------------------------------------------------------------------------------------------

STAT_NAMES = ("min", "max", "mean", "std", "count")


def array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over the first axis of ``[T, ...]``."""
    x = np.asarray(x, dtype=np.float64)
    return {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0),
            "count": np.array([x.shape[0]], dtype=np.int64)}


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 ``[T, H, W, 3]`` frames scaled to [0, 1], shaped ``[3, 1, 1]`` like LeRobot."""
    x = frames.reshape(-1, 3)
    mean = x.mean(axis=0, dtype=np.float64) / 255.0
    sq = np.einsum("nc,nc->c", x.astype(np.float32), x.astype(np.float32), dtype=np.float64) / (x.shape[0] * 255.0**2)
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    shape = (3, 1, 1)
    return {"min": (x.min(axis=0) / 255.0).reshape(shape), "max": (x.max(axis=0) / 255.0).reshape(shape),
            "mean": mean.reshape(shape), "std": std.reshape(shape),
            "count": np.array([frames.shape[0]], dtype=np.int64)}


def aggregate_stats(per_episode: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Exact pooled min / max / mean / std / count over episodes (parallel-variance formula)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if not per_episode:
        return out
    for key in per_episode[0]:
        parts = [s[key] for s in per_episode if key in s]
        n = np.array([float(p["count"][0]) for p in parts])
        N = n.sum()
        w = (n / N).reshape((-1,) + (1,) * np.ndim(parts[0]["mean"]))
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
        stds = np.stack([np.asarray(p["std"], dtype=np.float64) for p in parts])
        mean = (w * means).sum(axis=0)
        var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)
        out[key] = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
                    "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
                    "mean": mean, "std": np.sqrt(np.maximum(var, 0.0)), "count": np.array([int(N)], dtype=np.int64)}
    return out


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_to_columns(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, pa.Array]:
    """Per-episode stats as LeRobot's ``stats/<feature>/<stat>`` columns of the episodes table (one row)."""
    cols: dict[str, pa.Array] = {}
    for key, d in stats.items():
        for s in STAT_NAMES:
            v = np.asarray(d[s])
            if v.ndim == 3:  # image stats [3, 1, 1]
                arr = pa.array([v.tolist()], type=pa.list_(pa.list_(pa.list_(pa.float64()))))
            else:
                typ = pa.int64() if s == "count" else pa.float64()
                arr = pa.array([np.atleast_1d(v).tolist()], type=pa.list_(typ))
            cols[f"stats/{key}/{s}"] = arr
    return cols


def stats_from_row(row: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`stats_to_columns` for one episodes-table row (as a python dict)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for col, v in row.items():
        if col.startswith("stats/"):
            key, s = col[len("stats/"):].rsplit("/", 1)
            out.setdefault(key, {})[s] = np.asarray(v, dtype=np.int64 if s == "count" else np.float64)
    return {k: d for k, d in out.items() if set(STAT_NAMES) <= set(d)}


# ----------------------------------------------------------------------------------------------------------------------
# Episode files: written under a temp name, committed later in a fixed order (see lerobot_writer.py). Whole small
# files (info, stats, cameras, tasks) go through runfiles.atomic_write_* (temp file, fsync, rename).
# ----------------------------------------------------------------------------------------------------------------------

def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def commit_file(tmp: Path, path: Path) -> None:
    """Make a finished temp file durable and move it into place atomically."""
    fsync_file(tmp)
    os.replace(tmp, path)


def write_parquet(path: Path, table: pa.Table) -> None:
    """Write ``table`` to a temp name only (the caller commits it): lets episode files be renamed in a fixed order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, partial_path(path), compression="snappy")


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what}")
    try:
        return loads(path.read_text())
    except ValueError as e:             # not JSON, not text, or NaN / Infinity (not strict JSON)
        raise ValueError(f"{path}: {what} is not valid JSON ({e})") from e


def read_parquet(path: Path, what: str) -> pa.Table:
    """Read a parquet file; a missing file is ``FileNotFoundError``, a truncated/corrupt one ``ValueError``, both naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what}")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot read {what} (truncated or corrupt parquet: {e})") from e


# ----------------------------------------------------------------------------------------------------------------------
# tasks.parquet: LeRobot reads it with pandas as a frame indexed by the task string with a ``task_index`` column.
# We write it with pyarrow alone and attach the pandas metadata that makes ``pd.read_parquet`` restore that index.
# ----------------------------------------------------------------------------------------------------------------------

def tasks_table(tasks: Sequence[str]) -> pa.Table:
    table = pa.table({"task_index": pa.array(range(len(tasks)), type=pa.int64()),
                      "task": pa.array(list(tasks), type=pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def read_tasks(path: Path) -> list[str]:
    """Task strings by ``task_index``. The string is a ``task`` column (ours) or, in files LeRobot wrote with pandas,
    the frame's index, stored as the column its pandas metadata names (``__index_level_0__``)."""
    table = read_parquet(path, "task table")
    task_col = "task"
    if task_col not in table.column_names:
        try:
            index_cols = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}")).get("index_columns", [])
        except (json.JSONDecodeError, AttributeError):
            index_cols = []
        named = [c for c in index_cols if isinstance(c, str) and c in table.column_names]
        task_col = named[0] if len(named) == 1 else task_col
    if not {task_col, "task_index"} <= set(table.column_names):
        raise ValueError(f"{path}: task table needs columns 'task' (or a pandas index of task strings) and "
                         f"'task_index'; got {table.column_names}")
    idx = table.column("task_index").to_pylist()
    names = table.column(task_col).to_pylist()
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: task strings must be non-empty strings")
    if sorted(idx) != list(range(len(idx))):
        raise ValueError(f"{path}: task_index must be 0..{len(idx) - 1}; got {idx}")
    out = [""] * len(idx)
    for i, n in zip(idx, names):
        out[i] = n
    return out
