"""Reader for LeRobot v3.0 datasets with our calibration (``meta/cameras.json``).

``LeRobotDataset(root)`` validates the whole layout up front (info, calibration, tasks, every episode's metadata and
the headers of its parquet / mp4 files) so a broken dataset fails at open time with an error naming the bad file, not
hours into training. The metadata is cross-checked against itself and the files: ``info.json``'s totals against the
episode rows, episode indices 0..N-1, each data file's row count and ``episode_index`` range against the episodes
pointing at it, video frame counts against episode lengths; every path it leads to must resolve inside the root.
Only episodes whose metadata row was committed exist: leftovers of a killed writer (``*.partial`` files, data or video
files with no episode row) are ignored. Images are decoded lazily and cached per episode.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..geometry import POSE_DIM, Camera, validate_poses
from .lerobot_format import (ACTION_KEY, CAMERAS_PATH, CODEBASE_VERSION, IMAGE_PREFIX, INFO_PATH, STATE_KEY,
                             STATS_PATH, TASKS_PATH, calib_keys, cameras_from_json, check_name, column_to_numpy,
                             format_template, read_json, read_parquet, read_tasks, resolve_inside, stats_from_row)
from .video import decode_video, probe_video

EXTRA_PREFIX = "extra/"  # our per-episode columns in meta/episodes (e.g. extra/seed, extra/success)


@dataclass
class Episode:
    """One episode. ``images`` decodes the videos on first access (then cached); ``cameras`` hold frame 0's
    calibration, ``frame_cameras`` every frame's when the dataset stores per-frame calibration (else ``None``)."""

    index: int
    instruction: str
    actions: np.ndarray  # float64 [T, 8]
    states: np.ndarray  # float64 [T, 8]
    cameras: dict[str, Camera]
    task_index: int = 0
    frame_cameras: dict[str, list[Camera]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _load_images: Callable[[], dict[str, np.ndarray]] | None = field(default=None, repr=False, compare=False)
    _images: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def images(self) -> dict[str, np.ndarray]:
        """``{camera: uint8 [T, H, W, 3]}``."""
        if self._images is None:
            if self._load_images is None:
                raise ValueError(f"episode {self.index} has no images")
            self._images = self._load_images()
        return self._images

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _read_episode_rows(files: list[Path]) -> list[dict[str, Any]]:
    """All episode-metadata rows in one scan, without the (large) stats columns, each tagged with the file it came
    from (``_file``); a bad file is named."""
    try:
        names = pq.read_schema(files[0]).names
        cols = [c for c in names if not c.startswith("stats/")] + ["__filename"]
        table = pads.dataset([str(f) for f in files], format="parquet").to_table(columns=cols)
    except (pa.ArrowException, OSError) as e:
        for f in files:  # find the culprit so the error names it
            read_parquet(f, "episode metadata")
        raise ValueError(f"{files[0].parent.parent}: cannot read episode metadata ({e})") from e
    rows = table.to_pylist()
    by_name = {str(f): f for f in files}
    for r in rows:
        name = r.pop("__filename")
        r["_file"] = by_name.get(name, Path(name))
    return rows


def _count(value: Any, source: Path | str, what: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (an integral float such as LeRobot's ``30.0`` counts); ``ValueError``
    naming ``source`` and ``what`` otherwise (bools, NaN, strings, None...)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok and isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        ok, value = True, int(value)
    if not ok or int(value) < minimum:
        raise ValueError(f"{source}: {what} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _column_range(meta: pq.FileMetaData, name: str) -> tuple[int | None, int | None]:
    """(min, max) of an integer column from the row-group statistics of a parquet footer; (None, None) if a row group
    has no statistics for it (they are optional)."""
    try:
        col = meta.schema.names.index(name)
    except ValueError:
        return None, None
    lo = hi = None
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(col).statistics
        if st is None or not st.has_min_max or not isinstance(st.min, int):
            return None, None
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    return lo, hi


class LeRobotDataset:
    """Read-only view of a dataset directory (see docs/dataset.md for the layout)."""

    def __init__(self, root: str | Path, check_files: bool = True, cache_size: int = 16,
                 cameras: str | Path | None = None) -> None:
        """``cameras``: a calibration file (``meta/cameras.json`` format) to use instead of the dataset's own, e.g. for
        a dataset written by LeRobot itself, which has no place for calibration."""
        self.root = Path(root)
        self._cameras_file = Path(cameras) if cameras is not None else None
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset directory does not exist")
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_size = int(cache_size)
        self._load_info()
        self._load_cameras()
        self._load_episodes()
        if check_files:
            self._check_data_files()
            for i in range(self.num_episodes):
                self._check_episode_videos(i)

    def _fixed(self, rel: str) -> Path:
        """A path of the fixed layout (``meta/info.json`` ...), refused if a symlink takes it outside the root."""
        return resolve_inside(self.root, rel, self.root / rel, "the dataset layout")

    # ---- metadata ----------------------------------------------------------------------------------------------------
    def _load_info(self) -> None:
        path = self._fixed(INFO_PATH)
        info = read_json(path, "dataset info (meta/info.json)")
        if not isinstance(info, dict):
            raise ValueError(f"{path}: expected a JSON object")
        missing = {"codebase_version", "fps", "features", "data_path", "video_path", "chunks_size", "total_episodes",
                   "total_frames"} - set(info)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")
        if info["codebase_version"] != CODEBASE_VERSION:
            raise ValueError(f"{path}: codebase_version is {info['codebase_version']!r}; this reader needs "
                             f"{CODEBASE_VERSION!r} (convert older datasets with LeRobot's converter)")
        self.fps = _count(info["fps"], path, "fps", minimum=1)
        _count(info["chunks_size"], path, "chunks_size", minimum=1)
        self.info_total_episodes = _count(info["total_episodes"], path, "total_episodes")
        self.info_total_frames = _count(info["total_frames"], path, "total_frames")
        feats = info["features"]
        if not isinstance(feats, dict) or not all(isinstance(ft, dict) for ft in feats.values()):
            raise ValueError(f"{path}: features must be an object of feature objects")
        for key in (ACTION_KEY, STATE_KEY):
            if key not in feats or list(feats[key].get("shape", [])) != [POSE_DIM]:
                raise ValueError(f"{path}: feature {key!r} must exist with shape [{POSE_DIM}] "
                                 f"([x,y,z,qx,qy,qz,qw,g]); got {feats.get(key)}")
        self.info = info
        self.video_keys = [k for k, ft in feats.items() if ft.get("dtype") == "video"]
        if not self.video_keys or not all(k.startswith(IMAGE_PREFIX) for k in self.video_keys):
            raise ValueError(f"{path}: expected video features named {IMAGE_PREFIX}<camera>; got {self.video_keys}")
        for k in self.video_keys:  # video keys become folder names under videos/
            check_name(k, "video feature", path)
            check_name(k[len(IMAGE_PREFIX):], "camera name in video feature", path)
        shapes = {tuple(feats[k].get("shape") or ()) for k in self.video_keys}
        shape = next(iter(shapes))
        if (len(shapes) != 1 or len(shape) != 3 or shape[2] != 3
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise ValueError(f"{path}: all cameras must share one [H, W, 3] shape; got {sorted(shapes, key=str)}")
        H, W, _ = shape
        self.image_size: tuple[int, int] = (int(H), int(W))
        # the templates must give paths inside the root (checked again for every episode's actual indices)
        for name, extra in (("data_path", {}), ("video_path", {"video_key": self.video_keys[0]})):
            resolve_inside(self.root, format_template(info, name, path, chunk_index=0, file_index=0, **extra), path,
                           name)

    def _load_cameras(self) -> None:
        path = self._cameras_file if self._cameras_file is not None else self._fixed(CAMERAS_PATH)
        what = ("camera calibration" if self._cameras_file is not None else "camera calibration (meta/cameras.json; "
                "a dataset written by LeRobot itself has none: pass cameras=<file in that format>, on the command "
                "line --calibration FILE)")
        cams, per_frame = cameras_from_json(read_json(path, what), path)
        names = [c.name for c in cams]
        video_names = [k[len(IMAGE_PREFIX):] for k in self.video_keys]
        if set(names) != set(video_names):
            raise ValueError(f"{path}: cameras {names} do not match the video features {video_names} in "
                             f"{self.root / INFO_PATH} (no calibration for "
                             f"{[n for n in video_names if n not in names]}, no video for "
                             f"{[n for n in names if n not in video_names]}; each camera is named as its video key "
                             f"without {IMAGE_PREFIX!r})")
        H, W = self.image_size
        for c in cams:
            if (c.height, c.width) != (H, W):
                raise ValueError(f"{path}: camera {c.name!r} is {c.width}x{c.height} but the videos are {W}x{H}")
        if per_frame:
            need = [k for n in names for k in calib_keys(n) if k not in self.info["features"]]
            if need:
                raise ValueError(f"{path}: per-frame calibration columns {need} are not features in "
                                 f"{self.root / INFO_PATH}")
        self.camera_names: list[str] = names
        self.cameras: dict[str, Camera] = {c.name: c for c in cams}
        self.per_frame_cameras = per_frame

    def _load_episodes(self) -> None:
        info_path = self.root / INFO_PATH
        ep_dir = self._fixed("meta/episodes")
        files = sorted(resolve_inside(self.root, f.relative_to(self.root), f, "episode metadata file")
                       for f in ep_dir.glob("chunk-*/file-*.parquet")) if ep_dir.is_dir() else []
        rows = _read_episode_rows(files) if files else []
        required = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                    "dataset_to_index"}
        for k in self.video_keys:
            required |= {f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp",
                         f"videos/{k}/to_timestamp"}
        int_cols = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                    "dataset_to_index"] + [f"videos/{k}/{c}" for k in self.video_keys for c in ("chunk_index",
                                                                                             "file_index")]
        for r in rows:
            missing = required - set(r)
            if missing:
                raise ValueError(f"{r['_file']}: episode metadata is missing columns {sorted(missing)}")
            for c in int_cols:
                r[c] = _count(r[c], r["_file"], f"column {c!r}")
            for k in self.video_keys:
                t = r[f"videos/{k}/from_timestamp"]
                if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
                    raise ValueError(f"{r['_file']}: column 'videos/{k}/from_timestamp' must be a finite time >= 0; "
                                     f"got {t!r}")
            if "meta/episodes/chunk_index" in r and "meta/episodes/file_index" in r:
                own = ep_dir / "chunk-{:03d}/file-{:03d}.parquet".format(
                    _count(r["meta/episodes/chunk_index"], r["_file"], "column 'meta/episodes/chunk_index'"),
                    _count(r["meta/episodes/file_index"], r["_file"], "column 'meta/episodes/file_index'"))
                if own != r["_file"]:
                    raise ValueError(f"{r['_file']}: the row of episode {r['episode_index']} says it lives in {own}")
        rows.sort(key=lambda r: r["episode_index"])
        for i, r in enumerate(rows):
            if r["episode_index"] != i:
                raise ValueError(f"{r['_file']}: episode indices must run 0..N-1 without gaps or repeats; found "
                                 f"{r['episode_index']} where {i} was expected (is episode {i}'s metadata file "
                                 f"missing from {ep_dir}, or an episode listed twice?)")
        # info.json is refreshed right after each episode's commit, so it counts every episode or all but the last
        n_info = self.info_total_episodes
        if not len(rows) - 1 <= n_info <= len(rows):
            raise ValueError(f"{info_path}: total_episodes is {n_info} but {ep_dir} holds metadata for {len(rows)} "
                             "episode(s)" + (f" (metadata of episodes {len(rows)}..{n_info - 1} is missing)"
                                              if n_info > len(rows) else ""))
        frames_info = sum(r["length"] for r in rows[:n_info])
        if self.info_total_frames != frames_info:
            raise ValueError(f"{info_path}: total_frames is {self.info_total_frames} but the first {n_info} "
                             f"episode(s) in {ep_dir} hold {frames_info} frames")
        tasks_path = self._fixed(TASKS_PATH)
        self.tasks: list[str] = read_tasks(tasks_path) if rows or tasks_path.exists() else []
        start = 0
        for r in rows:
            n = r["length"]
            if n <= 0 or r["dataset_from_index"] != start or r["dataset_to_index"] != start + n:
                raise ValueError(f"{r['_file']}: episode {r['episode_index']} has length {n} and global rows "
                                 f"[{r['dataset_from_index']}, {r['dataset_to_index']}); expected start {start}")
            if not isinstance(r["tasks"], list) or not r["tasks"] or r["tasks"][0] not in self.tasks:
                raise ValueError(f"{r['_file']}: episode {r['episode_index']} task {r['tasks']} is not in "
                                 f"{tasks_path}")
            start += n
        for i, r in enumerate(rows):  # every file an episode points at, resolved (and refused if outside) now
            rel = format_template(self.info, "data_path", info_path, chunk_index=r["data/chunk_index"],
                                  file_index=r["data/file_index"])
            r["_data"] = resolve_inside(self.root, rel, info_path, f"data_path of episode {i} (from {r['_file']})")
            r["_videos"] = {}
            for k in self.video_keys:
                rel = format_template(self.info, "video_path", info_path, video_key=k,
                                      chunk_index=r[f"videos/{k}/chunk_index"], file_index=r[f"videos/{k}/file_index"])
                r["_videos"][k] = resolve_inside(self.root, rel, info_path,
                                                 f"video_path of episode {i}, {k} (from {r['_file']})")
        self._rows = rows
        # file -> episodes stored in it (several when LeRobot's own writer packed them into one file)
        self._data_files: dict[Path, list[int]] = {}
        self._video_files: dict[Path, list[int]] = {}
        for i, r in enumerate(rows):
            self._data_files.setdefault(r["_data"], []).append(i)
            for k in self.video_keys:
                self._video_files.setdefault(r["_videos"][k], []).append(i)
        meta_files = {self.root / p for p in (INFO_PATH, CAMERAS_PATH, TASKS_PATH, STATS_PATH)} | set(files)
        clash = (set(self._data_files) & (set(self._video_files) | meta_files)) | (set(self._video_files) & meta_files)
        if clash:
            raise ValueError(f"{info_path}: data_path / video_path make one file serve as two kinds (data, video, "
                             f"metadata): {sorted(map(str, clash))[:3]}")
        self.num_episodes = len(rows)
        self.episode_lengths: list[int] = [r["length"] for r in rows]
        self.num_frames = int(sum(self.episode_lengths))

    def files(self) -> set[Path]:
        """Every file the metadata accounts for: info, calibration, tasks, stats, episode metadata, data, videos."""
        out = {self.root / p for p in (INFO_PATH, CAMERAS_PATH, TASKS_PATH, STATS_PATH)}
        for r in self._rows:
            out |= {r["_file"], r["_data"], *r["_videos"].values()}
        return out

    def episode_stats(self, i: int) -> dict[str, dict[str, np.ndarray]]:
        """Per-episode statistics (LeRobot's ``stats/<feature>/<stat>`` columns of the episode metadata)."""
        self._check_index(i)
        path = self._rows[i]["_file"]
        table = read_parquet(path, "episode metadata")
        table = table.filter(pa.array(table.column("episode_index").to_numpy() == i))
        return stats_from_row({k: v for k, v in table.to_pylist()[0].items() if k.startswith("stats/")})

    def _data_path(self, i: int) -> Path:
        return self._rows[i]["_data"]

    def _video_path(self, i: int, cam: str) -> Path:
        return self._rows[i]["_videos"][IMAGE_PREFIX + cam]

    def _check_data_files(self) -> None:
        """Parquet footers (so truncated files fail at open time): each data file holds exactly the rows of the
        episodes that point at it, and its ``episode_index`` statistics, when written, cover those episodes only."""
        for path, eps in self._data_files.items():
            what = f"data file of episode {eps[0]}" if len(eps) == 1 else f"data file of episodes {eps}"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing {what}")
            try:
                meta = pq.read_metadata(path)
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{path}: cannot read {what} (truncated or corrupt parquet: {e})") from e
            need = sum(self.episode_lengths[i] for i in eps)
            if meta.num_rows != need:
                raise ValueError(f"{path}: holds {meta.num_rows} rows but the metadata gives its episode(s) {eps} "
                                 f"{need} frames")
            lo, hi = _column_range(meta, "episode_index")
            if lo is not None and (lo < min(eps) or hi > max(eps)):
                raise ValueError(f"{path}: holds rows of episodes {lo}..{hi} but the metadata points episode(s) "
                                 f"{eps} at it")

    def _check_episode_videos(self, i: int) -> None:
        """mp4 headers: size and frame count of every video of episode ``i``."""
        H, W = self.image_size
        for cam in self.camera_names:
            vpath = self._video_path(i, cam)
            n, h, w = probe_video(vpath)
            start, T = self._video_start(i, cam), self.episode_lengths[i]
            if (h, w) != (H, W) or (n and (n < start + T if self._video_shared(i, cam) else n != T)):
                raise ValueError(f"{vpath}: video is {w}x{h} with {n} frames; episode {i} needs {W}x{H} and frames "
                                 f"[{start}, {start + self.episode_lengths[i]})")

    def _video_shared(self, i: int, cam: str) -> bool:
        return len(self._video_files[self._video_path(i, cam)]) > 1

    def _video_start(self, i: int, cam: str) -> int:
        return int(round(float(self._rows[i][f"videos/{IMAGE_PREFIX + cam}/from_timestamp"]) * self.fps))

    # ---- public API --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, i: int) -> Episode:
        return self.episode(i)

    def __iter__(self):
        return (self.episode(i) for i in range(self.num_episodes))

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """``meta/stats.json`` as arrays (``None`` if absent, e.g. a collection killed before its first episode)."""
        path = self._fixed(STATS_PATH)
        if not path.exists():
            return None
        return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in read_json(path, "stats").items()}

    def episode_info(self, i: int) -> dict[str, Any]:
        """The episode's metadata row without stats (LeRobot columns plus our ``extra/*`` ones)."""
        self._check_index(i)
        return {k: v for k, v in self._rows[i].items() if not k.startswith(("stats/", "_"))}

    def episode(self, i: int) -> Episode:
        """Load episode ``i`` (numeric data now, images on first access of ``.images``)."""
        self._check_index(i)
        path = self._data_path(i)
        table = read_parquet(path, f"data file of episode {i}")
        T = self.episode_lengths[i]
        need = [ACTION_KEY, STATE_KEY, "episode_index", "frame_index", "task_index"]
        if self.per_frame_cameras:
            need += [k for c in self.camera_names for k in calib_keys(c)]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        ep_col = table.column("episode_index").to_numpy()
        if len(self._data_files[path]) > 1:  # multi-episode file (e.g. written by LeRobot itself): this episode's rows
            table = table.filter(pa.array(ep_col == i))
        elif not (ep_col == i).all():
            others = sorted({int(e) for e in ep_col[ep_col != i]})[:5]
            raise ValueError(f"{path}: holds rows of episode(s) {others}; its metadata ({self._rows[i]['_file']}) "
                             f"points only episode {i} at it")
        if table.num_rows != T:
            raise ValueError(f"{path}: has {table.num_rows} rows for episode {i}; its metadata says {T}")
        if "index" in table.column_names:
            start = int(self._rows[i]["dataset_from_index"])
            if not np.array_equal(table.column("index").to_numpy(), np.arange(start, start + T)):
                raise ValueError(f"{path}: column 'index' of episode {i} is not {start}..{start + T - 1} "
                                 f"(dataset_from_index in {self._rows[i]['_file']})")
        frame_index = table.column("frame_index").to_numpy()
        if not np.array_equal(frame_index, np.arange(T)):
            raise ValueError(f"{path}: frame_index of episode {i} is not 0..{T - 1}")
        try:
            actions = validate_poses(column_to_numpy(table, ACTION_KEY, POSE_DIM), f"{path}: action")
            states = validate_poses(column_to_numpy(table, STATE_KEY, POSE_DIM), f"{path}: observation.state")
        except ValueError as e:
            raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
        task_col = table.column("task_index").to_numpy()
        task_index = int(task_col[0])
        row = self._rows[i]
        if (task_col != task_index).any() or not 0 <= task_index < len(self.tasks) \
                or self.tasks[task_index] != row["tasks"][0]:
            raise ValueError(f"{path}: task_index of episode {i} ({sorted(set(task_col.tolist()))[:5]}) does not name "
                             f"its task {row['tasks'][0]!r} in {self.root / TASKS_PATH}")
        frame_cams = self._frame_cameras(table, path) if self.per_frame_cameras else None
        cams = {c: frame_cams[c][0] for c in self.camera_names} if frame_cams else dict(self.cameras)
        extra = {k[len(EXTRA_PREFIX):]: v for k, v in row.items() if k.startswith(EXTRA_PREFIX)}
        return Episode(index=i, instruction=str(row["tasks"][0]), actions=actions, states=states, cameras=cams,
                       task_index=task_index, frame_cameras=frame_cams, extra=extra,
                       _load_images=lambda: self._images(i))

    def _frame_cameras(self, table: pa.Table, path: Path) -> dict[str, list[Camera]]:
        H, W = self.image_size
        out: dict[str, list[Camera]] = {}
        for cam in self.camera_names:
            kk, tk = calib_keys(cam)
            K = column_to_numpy(table, kk, 9).reshape(-1, 3, 3)
            T = column_to_numpy(table, tk, 16).reshape(-1, 4, 4)
            try:
                cams: list[Camera] = []
                for t in range(len(K)):     # a static rig repeats its row: share the checked (immutable) camera
                    same = t > 0 and np.array_equal(K[t], K[t - 1]) and np.array_equal(T[t], T[t - 1])
                    cams.append(cams[-1] if same else Camera(K=K[t], T_cam_world=T[t], width=W, height=H, name=cam))
                out[cam] = cams
            except ValueError as e:
                raise ValueError(f"{path}: bad per-frame calibration: {e}") from e
        return out

    def _images(self, i: int) -> dict[str, np.ndarray]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        H, W = self.image_size
        T = self.episode_lengths[i]
        imgs = {}
        for cam in self.camera_names:
            start = self._video_start(i, cam)
            frames = decode_video(self._video_path(i, cam), start + T, H, W, exact=not self._video_shared(i, cam))
            imgs[cam] = frames[start:start + T]
        if self._cache_size > 0:
            self._cache[i] = imgs
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return imgs

    def _check_index(self, i: int) -> None:
        if not 0 <= int(i) < self.num_episodes:
            raise IndexError(f"episode {i} out of range: {self.root} has {self.num_episodes} episodes")

    def __repr__(self) -> str:
        return (f"LeRobotDataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
                f"fps={self.fps}, cameras={self.camera_names}, image_size={self.image_size}, tasks={len(self.tasks)})")
