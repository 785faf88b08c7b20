"""Reader for LeRobot v3.0 datasets with our calibration (``meta/cameras.json``).

``LeRobotDataset(root)`` validates the whole layout up front (info, calibration, tasks, every episode's metadata and
the headers of its parquet / mp4 files) so a broken dataset fails at open time with an error naming the bad file, not
hours into training. Only episodes whose metadata row was committed exist: leftovers of a killed writer (``*.partial``
files, data or video files with no episode row) are ignored. Images are decoded lazily and cached per episode.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..geometry import POSE_DIM, Camera, validate_poses
from .lerobot_format import (ACTION_KEY, CAMERAS_PATH, CODEBASE_VERSION, EPISODES_PATH, IMAGE_PREFIX, INFO_PATH,
                             STATE_KEY, STATS_PATH, TASKS_PATH, calib_keys, cameras_from_json, column_to_numpy,
                             read_json, read_parquet, read_tasks, stats_from_row)
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


def _read_episode_rows(files: list[Path]) -> pa.Table:
    """All episode-metadata files in one scan, without the (large) stats columns; a bad file is named."""
    try:
        names = pq.read_schema(files[0]).names
        cols = [c for c in names if not c.startswith("stats/")]
        return pads.dataset([str(f) for f in files], format="parquet").to_table(columns=cols)
    except (pa.ArrowException, OSError) as e:
        for f in files:  # find the culprit so the error names it
            read_parquet(f, "episode metadata")
        raise ValueError(f"{files[0].parent.parent}: cannot read episode metadata ({e})") from e


class LeRobotDataset:
    """Read-only view of a dataset directory (see docs/dataset.md for the layout)."""

    def __init__(self, root: str | Path, check_files: bool = True, cache_size: int = 16) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset directory does not exist")
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_size = int(cache_size)
        self._load_info()
        self._load_cameras()
        self._load_episodes()
        if check_files:
            for i in range(self.num_episodes):
                self._check_episode_files(i)

    # ---- metadata ----------------------------------------------------------------------------------------------------
    def _load_info(self) -> None:
        path = self.root / INFO_PATH
        info = read_json(path, "dataset info (meta/info.json)")
        if not isinstance(info, dict):
            raise ValueError(f"{path}: expected a JSON object")
        missing = {"codebase_version", "fps", "features", "data_path", "video_path", "chunks_size"} - set(info)
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")
        if info["codebase_version"] != CODEBASE_VERSION:
            raise ValueError(f"{path}: codebase_version is {info['codebase_version']!r}; this reader needs "
                             f"{CODEBASE_VERSION!r} (convert older datasets with LeRobot's converter)")
        feats = info["features"]
        for key in (ACTION_KEY, STATE_KEY):
            if key not in feats or list(feats[key].get("shape", [])) != [POSE_DIM]:
                raise ValueError(f"{path}: feature {key!r} must exist with shape [{POSE_DIM}] "
                                 f"([x,y,z,qx,qy,qz,qw,g]); got {feats.get(key)}")
        self.info = info
        self.fps = int(info["fps"])
        self.video_keys = [k for k, ft in feats.items() if ft.get("dtype") == "video"]
        if not self.video_keys or not all(k.startswith(IMAGE_PREFIX) for k in self.video_keys):
            raise ValueError(f"{path}: expected video features named {IMAGE_PREFIX}<camera>; got {self.video_keys}")
        shapes = {tuple(feats[k]["shape"]) for k in self.video_keys}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
            raise ValueError(f"{path}: all cameras must share one [H, W, 3] shape; got {sorted(shapes)}")
        H, W, _ = next(iter(shapes))
        self.image_size: tuple[int, int] = (int(H), int(W))

    def _load_cameras(self) -> None:
        path = self.root / CAMERAS_PATH
        cams, per_frame = cameras_from_json(read_json(path, "camera calibration (meta/cameras.json)"), path)
        names = [c.name for c in cams]
        video_names = [k[len(IMAGE_PREFIX):] for k in self.video_keys]
        if set(names) != set(video_names):
            raise ValueError(f"{path}: cameras {names} do not match the video features {video_names} in "
                             f"{self.root / INFO_PATH}")
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
        ep_dir = self.root / "meta" / "episodes"
        files = sorted(ep_dir.glob("chunk-*/file-*.parquet")) if ep_dir.is_dir() else []
        rows = _read_episode_rows(files).to_pylist() if files else []
        for r in rows:
            r["_file"] = ep_dir / "chunk-{:03d}/file-{:03d}.parquet".format(
                int(r.get("meta/episodes/chunk_index", -1)), int(r.get("meta/episodes/file_index", -1)))
        required = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                    "dataset_to_index"}
        for k in self.video_keys:
            required |= {f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp",
                         f"videos/{k}/to_timestamp"}
        for r in rows:
            missing = required - set(r)
            if missing:
                raise ValueError(f"{r['_file']}: episode metadata is missing columns {sorted(missing)}")
        rows.sort(key=lambda r: int(r["episode_index"]))
        for i, r in enumerate(rows):
            if int(r["episode_index"]) != i:
                raise ValueError(f"{r['_file']}: episode indices must run 0..N-1 without gaps; found "
                                 f"{int(r['episode_index'])} where {i} was expected (is episode {i}'s metadata "
                                 f"file missing from {ep_dir}?)")
        if rows:
            self.tasks: list[str] = read_tasks(self.root / TASKS_PATH)
        else:
            path = self.root / TASKS_PATH
            self.tasks = read_tasks(path) if path.exists() else []
        start = 0
        for r in rows:
            n = int(r["length"])
            if n <= 0 or int(r["dataset_from_index"]) != start or int(r["dataset_to_index"]) != start + n:
                raise ValueError(f"{r['_file']}: episode {r['episode_index']} has length {n} and global rows "
                                 f"[{r['dataset_from_index']}, {r['dataset_to_index']}); expected start {start}")
            if not r["tasks"] or r["tasks"][0] not in self.tasks:
                raise ValueError(f"{r['_file']}: episode {r['episode_index']} task {r['tasks']} is not in "
                                 f"{self.root / TASKS_PATH}")
            start += n
        self._rows = rows
        refs: dict[tuple, int] = {}
        for r in rows:
            for k in self.video_keys:
                ref = (k, int(r[f"videos/{k}/chunk_index"]), int(r[f"videos/{k}/file_index"]))
                refs[ref] = refs.get(ref, 0) + 1
        self._shared_videos = {ref for ref, n in refs.items() if n > 1}  # multi-episode files (LeRobot's own writer)
        self.num_episodes = len(rows)
        self.episode_lengths: list[int] = [int(r["length"]) for r in rows]
        self.num_frames = int(sum(self.episode_lengths))

    def episode_stats(self, i: int) -> dict[str, dict[str, np.ndarray]]:
        """Per-episode statistics (LeRobot's ``stats/<feature>/<stat>`` columns of the episode metadata)."""
        self._check_index(i)
        path = self._rows[i]["_file"]
        table = read_parquet(path, "episode metadata")
        table = table.filter(pa.array(table.column("episode_index").to_numpy() == i))
        return stats_from_row({k: v for k, v in table.to_pylist()[0].items() if k.startswith("stats/")})

    def _data_path(self, i: int) -> Path:
        r = self._rows[i]
        return self.root / self.info["data_path"].format(chunk_index=int(r["data/chunk_index"]),
                                                         file_index=int(r["data/file_index"]))

    def _video_path(self, i: int, cam: str) -> Path:
        key = IMAGE_PREFIX + cam
        r = self._rows[i]
        return self.root / self.info["video_path"].format(video_key=key, chunk_index=int(r[f"videos/{key}/chunk_index"]),
                                                          file_index=int(r[f"videos/{key}/file_index"]))

    def _check_episode_files(self, i: int) -> None:
        """Header-level checks (parquet footer, mp4 moov) so truncated files fail at open time."""
        path = self._data_path(i)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing data file of episode {i}")
        try:
            meta = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: cannot read data file of episode {i} (truncated or corrupt parquet: {e})") from e
        if meta.num_rows < self.episode_lengths[i]:
            raise ValueError(f"{path}: holds {meta.num_rows} rows but episode {i} has {self.episode_lengths[i]} frames")
        H, W = self.image_size
        for cam in self.camera_names:
            vpath = self._video_path(i, cam)
            n, h, w = probe_video(vpath)
            start, T = self._video_start(i, cam), self.episode_lengths[i]
            if (h, w) != (H, W) or (n and (n < start + T if self._video_shared(i, cam) else n != T)):
                raise ValueError(f"{vpath}: video is {w}x{h} with {n} frames; episode {i} needs {W}x{H} and frames "
                                 f"[{start}, {start + self.episode_lengths[i]})")

    def _video_shared(self, i: int, cam: str) -> bool:
        key = IMAGE_PREFIX + cam
        r = self._rows[i]
        return (key, int(r[f"videos/{key}/chunk_index"]), int(r[f"videos/{key}/file_index"])) in self._shared_videos

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
        path = self.root / STATS_PATH
        if not path.exists():
            return None
        return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in read_json(path, "stats").items()}

    def episode_info(self, i: int) -> dict[str, Any]:
        """The episode's metadata row without stats (LeRobot columns plus our ``extra/*`` ones)."""
        self._check_index(i)
        return {k: v for k, v in self._rows[i].items() if not k.startswith("stats/") and k != "_file"}

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
        if table.num_rows != T:  # multi-episode file (e.g. written by LeRobot itself): keep this episode's rows
            ep_col = table.column("episode_index").to_numpy()
            table = table.filter(pa.array(ep_col == i))
        if table.num_rows != T:
            raise ValueError(f"{path}: has {table.num_rows} rows for episode {i}; its metadata says {T}")
        frame_index = table.column("frame_index").to_numpy()
        if not np.array_equal(frame_index, np.arange(T)):
            raise ValueError(f"{path}: frame_index of episode {i} is not 0..{T - 1}")
        try:
            actions = validate_poses(column_to_numpy(table, ACTION_KEY, POSE_DIM), f"{path}: action")
            states = validate_poses(column_to_numpy(table, STATE_KEY, POSE_DIM), f"{path}: observation.state")
        except ValueError as e:
            raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
        task_index = int(table.column("task_index")[0].as_py())
        frame_cams = self._frame_cameras(table, path) if self.per_frame_cameras else None
        cams = {c: frame_cams[c][0] for c in self.camera_names} if frame_cams else dict(self.cameras)
        row = self._rows[i]
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
                out[cam] = [Camera(K=K[t], T_cam_world=T[t], width=W, height=H, name=cam) for t in range(len(K))]
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
