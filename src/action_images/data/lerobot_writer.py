"""Crash-safe writer of LeRobot v3.0 datasets with calibration (one file per episode).

Commit protocol per episode (why: a ``kill -9`` at any instant must leave a loadable dataset of complete episodes):
videos and the data file are written under ``*.partial`` names, then renamed into place; the task table is updated;
the episode's metadata row (``meta/episodes/...``) is renamed into place LAST: that rename is the commit. ``info.json``
and ``stats.json`` are refreshed afterwards by write-temp-then-rename. The reader only follows committed metadata, so
files of an episode cut short are invisible; ``resume=True`` deletes them and continues with the next index. Nothing
else is ever deleted or overwritten: :func:`plan_start` refuses a folder holding files the metadata does not account
for, and every path written is checked to lie inside the root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..geometry import POSE_DIM, Camera, validate_poses
from .lerobot import EXTRA_PREFIX, LeRobotDataset
from ..runfiles import atomic_write_json
from .lerobot_format import (ACTION_KEY, CAMERAS_PATH, CHUNKS_SIZE, DEFAULT_CRF, INFO_PATH, PARTIAL_SUFFIX,
                             STATE_KEY, STATS_PATH, TASKS_PATH, aggregate_stats, array_stats, atomic_write_parquet,
                             build_features, build_info, calib_keys, cameras_to_json, check_name, commit_file,
                             data_schema, episode_paths, fixed_list, image_key, image_stats, partial_path,
                             resolve_inside, stats_to_columns, stats_to_json, tasks_table, write_parquet)
from .video import encode_video

CamerasArg = Sequence[Camera] | Mapping[str, Camera | Sequence[Camera]] | None


COLUMN_DTYPES = ("float64", "float32", "bool")   # per-frame columns a writer can add (``columns``)


class DatasetWriter:
    """Append episodes to a dataset directory. ``per_frame_cameras=True`` stores calibration per frame (cameras
    perturbed per episode or moving); otherwise every episode must use the ``cameras`` given here.

    ``columns``: more per-frame columns of the data files, ``{name: {"dtype": one of COLUMN_DTYPES, "shape": [D],
    "names": list | None}}`` (LeRobot's feature format); they are declared in ``info.json`` and every episode gives
    them to :meth:`add_episode` (``columns=``), with per-episode statistics like every other feature."""

    def __init__(self, root: str | Path, fps: int, cameras: Sequence[Camera], image_size: tuple[int, int],
                 resume: bool = False, per_frame_cameras: bool = False, crf: int = DEFAULT_CRF,
                 robot_type: str | None = "action-images-sim", chunks_size: int = CHUNKS_SIZE,
                 columns: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.columns = {k: dict(v) for k, v in (columns or {}).items()}
        for name, feat in self.columns.items():
            shape = feat.get("shape")
            if feat.get("dtype") not in COLUMN_DTYPES or not (isinstance(shape, list) and len(shape) == 1
                                                              and isinstance(shape[0], int) and shape[0] >= 1):
                raise ValueError(f"column {name!r}: dtype must be one of {COLUMN_DTYPES} and shape [D >= 1]; got "
                                 f"{feat}")
        self.root = Path(root)
        self.fps = int(fps)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.cameras = list(cameras)
        self.camera_names = [c.name for c in self.cameras]
        self.per_frame_cameras = bool(per_frame_cameras)
        self.crf = int(crf)
        self._closed = False
        self._fault_hook: Callable[[str], None] | None = None  # tests: called between commit steps
        if self.fps <= 0:
            raise ValueError(f"fps must be positive; got {fps}")
        if not 0 <= self.crf <= 51:  # the range libx264 accepts
            raise ValueError(f"crf must be in 0..51; got {crf}")
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be positive; got {image_size}")
        if not self.cameras or len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"cameras need unique names; got {self.camera_names}")
        for name in self.camera_names:  # names become folder names under videos/
            check_name(name, "camera name", "DatasetWriter(cameras=...)")
        H, W = self.image_size
        for c in self.cameras:
            if (c.height, c.width) != (H, W):
                raise ValueError(f"camera {c.name!r} is calibrated for {c.width}x{c.height}, image_size is {W}x{H}")
        features = build_features(self.fps, self.camera_names, self.image_size, self.per_frame_cameras)
        clash = sorted(set(self.columns) & set(features))
        if clash:
            raise ValueError(f"columns {clash} are features every dataset has already")
        features.update(self.columns)
        self.info = build_info(self.fps, features, robot_type, chunks_size)
        self.tasks: list[str] = []
        self.num_episodes = 0
        self.num_frames = 0
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._extra_keys: list[str] | None = None
        ds, leftovers = plan_start(self.root, resume)
        if ds is not None and ds.num_episodes:
            self._resume(ds)  # refuses other settings before anything is deleted
        for p in leftovers:
            p.unlink()
        if ds is not None and ds.num_episodes:
            self._write_info()
            self._write_stats()
            return
        # a new dataset; one resumed before its first committed episode starts afresh
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / CAMERAS_PATH, cameras_to_json(self.cameras, self.per_frame_cameras))
        self._write_info()  # info.json last: its presence marks an initialised dataset

    # ---- resume ------------------------------------------------------------------------------------------------------
    def _resume(self, ds: LeRobotDataset) -> None:
        if ds.fps != self.fps or ds.image_size != self.image_size or ds.camera_names != self.camera_names:
            raise ValueError(f"{self.root}: cannot resume: it has fps={ds.fps}, image_size={ds.image_size}, cameras="
                             f"{ds.camera_names}; asked for fps={self.fps}, image_size={self.image_size}, cameras="
                             f"{self.camera_names}")
        if ds.per_frame_cameras != self.per_frame_cameras:
            raise ValueError(f"{self.root / CAMERAS_PATH}: cannot resume: per-frame calibration is "
                             f"{ds.per_frame_cameras} there but {self.per_frame_cameras} was asked for")
        if not self.per_frame_cameras:
            for c in self.cameras:
                if not _same_camera(c, ds.cameras[c.name]):
                    raise ValueError(f"{self.root / CAMERAS_PATH}: cannot resume: camera {c.name!r} calibration "
                                     "differs from the one given")
        missing = sorted(k for k in self.columns if ds.info["features"].get(k) != self.columns[k])
        if missing:
            raise ValueError(f"{self.root / INFO_PATH}: cannot resume: its features do not declare the columns "
                             f"{missing} as asked")
        self.info = ds.info
        self.tasks = list(ds.tasks)
        self.num_episodes = ds.num_episodes
        self.num_frames = ds.num_frames
        self._episode_stats = [ds.episode_stats(i) for i in range(ds.num_episodes)]
        self._extra_keys = sorted(k[len(EXTRA_PREFIX):] for k in ds._rows[0] if k.startswith(EXTRA_PREFIX))

    # ---- writing -----------------------------------------------------------------------------------------------------
    def add_episode(self, instruction: str, actions: np.ndarray, states: np.ndarray, images: Mapping[str, np.ndarray],
                    cameras: CamerasArg = None, extra: Mapping[str, Any] | None = None,
                    columns: Mapping[str, np.ndarray] | None = None) -> int:
        """Append one episode and commit it; returns its index.

        ``cameras``: ``None`` (the writer's cameras), or for per-frame datasets a list of Camera (one per view, fixed
        for the episode) or ``{name: Camera | [Camera] * T}``. ``extra``: scalar per-episode values stored as
        ``extra/<key>`` columns of the episode metadata; every episode must use the same keys. ``columns``: the
        writer's declared per-frame columns, ``{name: [T] or [T, D]}``.
        """
        if self._closed:
            raise ValueError("DatasetWriter is closed")
        if not isinstance(instruction, str) or not instruction:
            raise ValueError("instruction must be a non-empty string")
        actions = validate_poses(actions, "actions")
        states = validate_poses(states, "states")
        if actions.ndim != 2 or states.shape != actions.shape or actions.shape[0] == 0:
            raise ValueError(f"actions and states must both be [T, {POSE_DIM}] with T >= 1; got {actions.shape} and "
                             f"{states.shape}")
        T = actions.shape[0]
        H, W = self.image_size
        if set(images) != set(self.camera_names):
            raise ValueError(f"images must have exactly the cameras {self.camera_names}; got {sorted(images)}")
        for cam in self.camera_names:
            im = images[cam]
            if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.shape != (T, H, W, 3):
                raise ValueError(f"images[{cam!r}] must be uint8 [T={T}, H={H}, W={W}, 3]; got "
                                 f"{getattr(im, 'dtype', type(im))} {getattr(im, 'shape', None)}")
        frame_cams = self._frame_cameras(cameras, T)
        columns = self._check_columns(columns, T)
        extra = dict(extra or {})
        keys = sorted(extra)
        if self._extra_keys is not None and keys != self._extra_keys:
            raise ValueError(f"extra keys must match earlier episodes: {self._extra_keys}; got {keys}")

        i = self.num_episodes
        source = self.root / INFO_PATH
        paths = {k: resolve_inside(self.root, p, source, f"the path of new episode {i}")
                 for k, p in episode_paths(self.info, i, self.camera_names, source).items()}
        taken = [p for p in paths.values() if p.exists() or p.is_symlink()]
        if taken or len(set(paths.values())) != len(paths):
            raise FileExistsError(f"{taken[0] if taken else source}: episode {i}'s files would overwrite existing "
                                  "data or each other; nothing was written")
        new_tasks = self.tasks + ([instruction] if instruction not in self.tasks else [])
        task_index = new_tasks.index(instruction)
        written: list[Path] = []
        try:
            for cam in self.camera_names:  # 1. videos
                path = paths[image_key(cam)]
                path.parent.mkdir(parents=True, exist_ok=True)
                written.append(partial_path(path))
                encode_video(partial_path(path), images[cam], self.fps, self.crf)
            table = self._data_table(i, task_index, actions, states, frame_cams, columns)  # 2. data
            written.append(partial_path(paths["data"]))
            write_parquet(paths["data"], table)
            stats = self._stats(table, actions, states, images)
            stats.update({k: array_stats(v) for k, v in columns.items()})
            meta = self._meta_table(i, T, instruction, stats, extra)
            written.append(partial_path(paths["meta"]))
            write_parquet(paths["meta"], meta)
            self._hook("files_written")
            for cam in self.camera_names:
                commit_file(partial_path(paths[image_key(cam)]), paths[image_key(cam)])
            self._hook("videos_committed")
            commit_file(partial_path(paths["data"]), paths["data"])
            self._hook("data_committed")
            if len(new_tasks) != len(self.tasks):  # 3. task table (an unused task is harmless)
                atomic_write_parquet(self.root / TASKS_PATH, tasks_table(new_tasks))
            self._hook("tasks_committed")
            commit_file(partial_path(paths["meta"]), paths["meta"])  # 4. THE COMMIT
        except BaseException:
            for p in written:
                if p.exists():
                    p.unlink()
            raise
        self._hook("committed")
        self.tasks = new_tasks
        self._extra_keys = keys
        self._episode_stats.append(stats)
        self.num_episodes += 1
        self.num_frames += T
        self._write_info()
        self._write_stats()
        self._hook("info_written")
        return i

    def _frame_cameras(self, cameras: CamerasArg, T: int) -> dict[str, list[Camera]] | None:
        if cameras is None:
            if self.per_frame_cameras:
                return {c.name: [c] * T for c in self.cameras}
            return None
        if isinstance(cameras, Mapping):
            by_name = dict(cameras)
        else:
            by_name = {c.name: c for c in cameras}
        if set(by_name) != set(self.camera_names):
            raise ValueError(f"cameras must cover exactly {self.camera_names}; got {sorted(by_name)}")
        out: dict[str, list[Camera]] = {}
        H, W = self.image_size
        for name in self.camera_names:
            v = by_name[name]
            seq = [v] * T if isinstance(v, Camera) else list(v)
            if len(seq) != T:
                raise ValueError(f"cameras[{name!r}] has {len(seq)} entries for an episode of {T} frames")
            for c in seq:
                if (c.height, c.width) != (H, W):
                    raise ValueError(f"camera {name!r} is calibrated for {c.width}x{c.height}, images are {W}x{H}")
            out[name] = seq
        if not self.per_frame_cameras:
            ref = {c.name: c for c in self.cameras}
            for name, seq in out.items():
                if not all(_same_camera(c, ref[name]) for c in seq):
                    raise ValueError(f"camera {name!r} differs from the dataset's static calibration; create the "
                                     "writer with per_frame_cameras=True to store moving or perturbed cameras")
            return None
        return out

    def _check_columns(self, columns: Mapping[str, np.ndarray] | None, T: int) -> dict[str, np.ndarray]:
        """The episode's declared columns as ``[T, D]`` arrays of their dtype; ValueError names a bad one."""
        columns = dict(columns or {})
        if set(columns) != set(self.columns):
            raise ValueError(f"columns must be exactly the declared {sorted(self.columns)}; got {sorted(columns)}")
        out = {}
        for name, feat in self.columns.items():
            D = feat["shape"][0]
            v = np.asarray(columns[name])
            v = v.reshape(T, D) if v.size == T * D and v.shape[0] == T else v
            if v.shape != (T, D):
                raise ValueError(f"column {name!r} must be [T={T}] or [T, {D}]; got {np.asarray(columns[name]).shape}")
            v = v.astype(feat["dtype"])
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise ValueError(f"column {name!r} holds NaN or infinite values")
            out[name] = v
        return out

    def _data_table(self, i: int, task_index: int, actions: np.ndarray, states: np.ndarray,
                    frame_cams: dict[str, list[Camera]] | None,
                    columns: Mapping[str, np.ndarray] | None = None) -> pa.Table:
        T = actions.shape[0]
        cols: dict[str, pa.Array] = {ACTION_KEY: fixed_list(actions), STATE_KEY: fixed_list(states)}
        if frame_cams is not None:
            for cam in self.camera_names:
                kk, tk = calib_keys(cam)
                cols[kk] = fixed_list(np.stack([c.K.reshape(9) for c in frame_cams[cam]]))
                cols[tk] = fixed_list(np.stack([c.T_cam_world.reshape(16) for c in frame_cams[cam]]))
        frame_index = np.arange(T, dtype=np.int64)
        cols["timestamp"] = pa.array((frame_index / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(frame_index)
        cols["episode_index"] = pa.array(np.full(T, i, dtype=np.int64))
        cols["index"] = pa.array(self.num_frames + frame_index)
        cols["task_index"] = pa.array(np.full(T, task_index, dtype=np.int64))
        table = pa.table(cols, schema=data_schema(self.camera_names, self.per_frame_cameras))
        for name, v in (columns or {}).items():       # [T, 1] as a plain column, [T, D] as a fixed-size list
            flat = pa.array(np.ascontiguousarray(v).reshape(-1))
            table = table.append_column(name, flat if v.shape[1] == 1 else pa.FixedSizeListArray.from_arrays(
                flat, v.shape[1]))
        return table

    def _stats(self, table: pa.Table, actions: np.ndarray, states: np.ndarray,
               images: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        stats = {ACTION_KEY: array_stats(actions), STATE_KEY: array_stats(states)}
        for cam in self.camera_names:
            stats[image_key(cam)] = image_stats(images[cam])
        for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            stats[key] = array_stats(table.column(key).to_numpy()[:, None])
        return stats

    def _meta_table(self, i: int, T: int, instruction: str, stats: dict, extra: dict[str, Any]) -> pa.Table:
        cf = {"chunk_index": i // int(self.info["chunks_size"]), "file_index": i % int(self.info["chunks_size"])}
        cols: dict[str, pa.Array] = {
            "episode_index": pa.array([i], pa.int64()), "tasks": pa.array([[instruction]], pa.list_(pa.string())),
            "length": pa.array([T], pa.int64()),
            "data/chunk_index": pa.array([cf["chunk_index"]], pa.int64()),
            "data/file_index": pa.array([cf["file_index"]], pa.int64()),
            "dataset_from_index": pa.array([self.num_frames], pa.int64()),
            "dataset_to_index": pa.array([self.num_frames + T], pa.int64())}
        for cam in self.camera_names:
            key = image_key(cam)
            cols[f"videos/{key}/chunk_index"] = pa.array([cf["chunk_index"]], pa.int64())
            cols[f"videos/{key}/file_index"] = pa.array([cf["file_index"]], pa.int64())
            cols[f"videos/{key}/from_timestamp"] = pa.array([0.0], pa.float64())
            cols[f"videos/{key}/to_timestamp"] = pa.array([T / self.fps], pa.float64())
        cols["meta/episodes/chunk_index"] = pa.array([cf["chunk_index"]], pa.int64())
        cols["meta/episodes/file_index"] = pa.array([cf["file_index"]], pa.int64())
        cols.update(stats_to_columns(stats))
        for k in sorted(extra):
            v = extra[k]
            if isinstance(v, np.generic):
                v = v.item()
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"extra[{k!r}] must be a bool, int, float or str; got {type(v).__name__}")
            cols[EXTRA_PREFIX + k] = pa.array([v])
        return pa.table(cols)

    def _hook(self, phase: str) -> None:
        if self._fault_hook is not None:
            self._fault_hook(phase)

    def _write_info(self) -> None:
        self.info["total_episodes"] = self.num_episodes
        self.info["total_frames"] = self.num_frames
        self.info["total_tasks"] = len(self.tasks)
        self.info["splits"] = {"train": f"0:{self.num_episodes}"} if self.num_episodes else {}
        atomic_write_json(self.root / INFO_PATH, self.info)

    def _write_stats(self) -> None:
        if self._episode_stats:
            atomic_write_json(self.root / STATS_PATH, stats_to_json(aggregate_stats(self._episode_stats)))

    # ---- lifecycle ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Finalise ``info.json`` / ``stats.json`` (idempotent; both are also kept current after every episode)."""
        if self._closed:
            return
        self._write_info()
        self._write_stats()
        self._closed = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def plan_start(root: str | Path, resume: bool) -> tuple[LeRobotDataset | None, list[Path]]:
    """What opening a writer on ``root`` finds, without changing anything: the dataset to continue (``None`` for a
    new one) and the leftovers of a killed writer to delete. Raises, naming the file, when the writer would have to
    overwrite or delete anything else:

    - ``root`` holds a dataset and ``resume`` is false (``FileExistsError``);
    - the dataset's metadata is inconsistent or points outside ``root`` (``LeRobotDataset`` refuses it);
    - a ``.parquet`` / ``.mp4`` file that the metadata does not account for, other than the files of the one episode
      whose commit was cut short (the next index: episodes are added one at a time);
    - the next episode's files would land on files the dataset already uses;
    - ``root`` is not empty but holds no ``meta/info.json`` (only ``meta/cameras.json`` and ``*.partial`` files, which
      a writer killed before it wrote info.json leaves, are allowed there).
    """
    root = Path(root)
    info_path = root / INFO_PATH
    if not info_path.exists():
        stray = [p for p in _files(root) if p.relative_to(root).as_posix() != CAMERAS_PATH
                 and not p.name.endswith(PARTIAL_SUFFIX)] if root.is_dir() else []
        if stray:
            raise FileExistsError(f"{stray[0]}: {root} is not empty and holds no {INFO_PATH}; choose another "
                                  "directory (nothing there is overwritten or deleted)")
        return None, [p for p in _files(root) if p.name.endswith(PARTIAL_SUFFIX)] if root.is_dir() else []
    if not resume:
        raise FileExistsError(f"{root} already holds a dataset; pass resume=True (--resume) to continue it, or "
                              "choose another directory")
    ds = LeRobotDataset(root, check_files=True, cache_size=0)
    n = ds.num_episodes
    keep = ds.files()
    nxt = {resolve_inside(root, rel, info_path, f"the path of new episode {n}")
           for rel in episode_paths(ds.info, n, ds.camera_names, info_path).values()}
    used = sorted(str(p) for p in nxt & keep)
    if used:
        raise ValueError(f"{info_path}: cannot resume: episode {n} would be written over {used[0]}, which holds "
                         "earlier episodes (the dataset packs several episodes per file)")
    leftovers = []
    base = root.resolve()
    for p in _files(root):
        real = p.resolve()
        key = root / real.relative_to(base) if base in real.parents else p
        if p.name.endswith(PARTIAL_SUFFIX) or key in nxt:
            leftovers.append(p)
        elif p.suffix in (".parquet", ".mp4") and key not in keep:
            raise ValueError(f"{p}: not accounted for by the metadata of {root} ({n} committed episodes); refusing "
                             "to resume over it (move it out of the dataset and run again)")
    return ds, leftovers


def _files(root: Path) -> list[Path]:
    """Every file (or symlink) under ``root``, without following symlinked folders out of it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        out += [d / f for f in filenames]
        out += [d / f for f in dirnames if (d / f).is_symlink()]
    return sorted(out)


def _same_camera(a: Camera, b: Camera, tol: float = 1e-9) -> bool:
    return ((a.width, a.height) == (b.width, b.height) and np.allclose(a.K, b.K, atol=tol, rtol=0)
            and np.allclose(a.T_cam_world, b.T_cam_world, atol=tol, rtol=0))


__all__ = ["DatasetWriter", "plan_start"]
