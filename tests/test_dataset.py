"""LeRobot v3.0 writer/reader: round trip, documented schema, crash safety (SIGKILL) with resume, and bad inputs."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from action_images.data import DatasetWriter, Episode, LeRobotDataset
from action_images.geometry import POSE_NAMES, Camera, euler_to_quat

H = W = 32
CAMS = ("front", "top")


def cameras(size=H, names=CAMS, shift=0.0):
    eyes = {"front": (1.0, 0.0, 0.8), "top": (0.05, 0.0, 1.5), "left": (0.0, 1.0, 0.8)}
    return [Camera.look_at(np.asarray(eyes[n]) + shift, (0, 0, 0.1), 50, size, size, name=n) for n in names]


def make_episode(T, seed, size=H, names=CAMS):
    """Poses on a random walk and images that look like renders: shaded background and two moving blocks."""
    rng = np.random.default_rng(seed)
    a = np.zeros((T, 8))
    a[:, :3] = np.cumsum(rng.normal(0, 0.01, (T, 3)), axis=0) + [0.4, 0.0, 0.3]
    a[:, 3:7] = euler_to_quat(rng.uniform(-np.pi, np.pi, (T, 3)))
    a[:, 7] = rng.uniform(0, 1, T)
    s = np.roll(a, 1, axis=0)
    s[0] = a[0]
    yy, xx = np.mgrid[0:size, 0:size]
    images = {}
    for v, n in enumerate(names):
        x = np.empty((T, size, size, 3), np.uint8)
        for t in range(T):
            img = np.stack([90 + 60 * yy / size, 100 + 40 * xx / size, np.full_like(xx, 120.0 + 10 * v)], -1)
            cx, cy = (5 + t + 3 * v) % size, size // 2
            img[(abs(xx - cx) < size // 10) & (abs(yy - cy) < size // 10)] = (220, 40, 30)
            img[(xx - size * 0.6) ** 2 + (yy - size * 0.3 - t * 0.3) ** 2 < (size / 10) ** 2] = (30, 200, 60)
            x[t] = np.clip(img + rng.normal(0, 1.0, img.shape), 0, 255)
        images[n] = x
    return a, s, images


def write(root, lengths=(5, 7, 6), instr=("pick the cube", "push it", "pick the cube"), **kw):
    eps = []
    with DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W), **kw) as w:
        for i, T in enumerate(lengths):
            a, s, im = make_episode(T, seed=i)
            w.add_episode(instruction=instr[i % len(instr)], actions=a, states=s, images=im)
            eps.append((a, s, im))
    return eps


# ----------------------------------------------------------------------------------------------------------------------
# round trip and schema
# ----------------------------------------------------------------------------------------------------------------------

def test_round_trip(tmp_path):
    root = tmp_path / "ds"
    eps = write(root)
    ds = LeRobotDataset(root)
    assert ds.fps == 10 and ds.num_episodes == 3 and ds.num_frames == 18 and len(ds) == 3
    assert ds.camera_names == list(CAMS) and ds.image_size == (H, W)
    assert ds.tasks == ["pick the cube", "push it"] and ds.episode_lengths == [5, 7, 6]
    for c in cameras():
        assert ds.cameras[c.name].to_dict() == c.to_dict()  # calibration exact
    for i, (a, s, im) in enumerate(eps):
        ep = ds.episode(i)
        assert isinstance(ep, Episode) and ep.index == i and len(ep) == len(a)
        assert ep.actions.dtype == np.float64 and np.array_equal(ep.actions, a)  # bit-exact
        assert np.array_equal(ep.states, s)
        assert ep.instruction == ["pick the cube", "push it"][i % 2] and ep.task_index == i % 2
        assert ep.frame_cameras is None and ep.cameras["top"].to_dict() == ds.cameras["top"].to_dict()
        for cam in CAMS:
            got = ep.images[cam]
            assert got.dtype == np.uint8 and got.shape == im[cam].shape
            err = np.abs(got.astype(int) - im[cam].astype(int))
            assert err.mean() < 0.6 and err.max() <= 4, (cam, err.mean(), err.max())
    assert ds.episode(1).images is ds.episode(1).images  # decoded once, cached per episode
    with pytest.raises(IndexError):
        ds.episode(3)
    small = LeRobotDataset(root, cache_size=1)  # least recently used episode is dropped from the cache
    first = small.episode(0).images
    assert small.episode(0).images is first
    small.episode(1).images
    assert small.episode(0).images is not first
    assert all(np.array_equal(small.episode(0).images[c], first[c]) for c in CAMS)


def test_codec_error_64px(tmp_path):
    """The number quoted in docs/dataset.md: mean abs error of the decoded 64 px frames (H.264 4:4:4, crf 0)."""
    a, s, im = make_episode(20, seed=3, size=64)
    with DatasetWriter(tmp_path / "d", fps=10, cameras=cameras(64), image_size=(64, 64)) as w:
        w.add_episode(instruction="x", actions=a, states=s, images=im)
    ep = LeRobotDataset(tmp_path / "d").episode(0)
    err = np.concatenate([np.abs(ep.images[c].astype(int) - im[c]).ravel() for c in CAMS])
    assert err.mean() < 0.6 and np.percentile(err, 99.9) <= 2


def test_layout_matches_lerobot_v3_schema(tmp_path):
    root = tmp_path / "ds"
    write(root)
    info = json.loads((root / "meta/info.json").read_text())
    assert set(info) == {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                         "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
                         "data_path", "video_path", "features"}
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["chunks_size"] == 1000
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 18, 2)
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    f = info["features"]
    for key in ("action", "observation.state"):
        assert f[key] == {"dtype": "float64", "shape": [8], "names": ["x", "y", "z", "qx", "qy", "qz", "qw",
                                                                      "gripper"]}
    assert list(POSE_NAMES) == f["action"]["names"]
    for cam in CAMS:
        v = f[f"observation.images.{cam}"]
        assert v["dtype"] == "video" and v["shape"] == [H, W, 3] and v["names"] == ["height", "width", "channels"]
        assert v["info"]["video.codec"] == "h264" and v["info"]["video.fps"] == 10 and not v["info"]["has_audio"]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert f[key]["shape"] == [1]

    # data files: columns, types, index bookkeeping
    t = pq.read_table(root / "data/chunk-000/file-001.parquet")
    assert t.column_names == ["action", "observation.state", "timestamp", "frame_index", "episode_index", "index",
                              "task_index"]
    assert t.schema.field("action").type == pa.list_(pa.float64(), 8) and t.schema.field("timestamp").type == pa.float32()
    assert t.column("index").to_pylist() == list(range(5, 12)) and set(t.column("episode_index").to_pylist()) == {1}
    np.testing.assert_allclose(t.column("timestamp").to_numpy(), np.arange(7) / 10, atol=1e-6)

    # episodes metadata: LeRobot's columns, file indices and video time ranges
    e = pq.read_table(root / "meta/episodes/chunk-000/file-002.parquet").to_pylist()[0]
    assert e["episode_index"] == 2 and e["tasks"] == ["pick the cube"] and e["length"] == 6
    assert (e["dataset_from_index"], e["dataset_to_index"]) == (12, 18)
    assert (e["data/chunk_index"], e["data/file_index"], e["meta/episodes/chunk_index"],
            e["meta/episodes/file_index"]) == (0, 2, 0, 2)
    for cam in CAMS:
        k = f"videos/observation.images.{cam}"
        assert (e[f"{k}/chunk_index"], e[f"{k}/file_index"], e[f"{k}/from_timestamp"]) == (0, 2, 0.0)
        assert e[f"{k}/to_timestamp"] == pytest.approx(0.6)
        assert np.asarray(e[f"stats/observation.images.{cam}/mean"]).shape == (3, 1, 1)
    assert e["stats/action/count"] == [6] and len(e["stats/action/mean"]) == 8

    # every path the templates produce exists; nothing else is left behind
    for i in range(3):
        assert (root / info["data_path"].format(chunk_index=0, file_index=i)).is_file()
        for cam in CAMS:
            assert (root / info["video_path"].format(video_key=f"observation.images.{cam}", chunk_index=0,
                                                     file_index=i)).is_file()
    assert not list(root.rglob("*.partial"))

    # tasks.parquet: task_index + task, with pandas metadata restoring the task string as the index (LeRobot's reader)
    tt = pq.read_table(root / "meta/tasks.parquet")
    assert tt.column("task").to_pylist() == ["pick the cube", "push it"]
    assert tt.column("task_index").to_pylist() == [0, 1]
    assert json.loads(tt.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    # stats.json: pooled over all frames
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count"} and stats["action"]["count"] == [18]
    allA = np.concatenate([make_episode(T, i)[0] for i, T in enumerate((5, 7, 6))])
    np.testing.assert_allclose(stats["action"]["mean"], allA.mean(0), atol=1e-12)
    np.testing.assert_allclose(stats["action"]["std"], allA.std(0), atol=1e-12)
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)

    cams = json.loads((root / "meta/cameras.json").read_text())
    assert [c["name"] for c in cams["cameras"]] == list(CAMS)
    assert all(c["static"] is True and {"width", "height", "K", "T_cam_world"} <= set(c) for c in cams["cameras"])


def test_declared_columns_are_written_with_features_and_stats(tmp_path):
    """``columns=``: extra per-frame columns land in the data files, info.json and the episode stats; the reader
    keeps working; bad columns are refused before anything is written."""
    cols = {"score": {"dtype": "float32", "shape": [1], "names": None},
            "flag": {"dtype": "bool", "shape": [1], "names": None},
            "other_pose": {"dtype": "float64", "shape": [8], "names": list(POSE_NAMES)}}
    root = tmp_path / "ds"
    a, s, im = make_episode(5, seed=0)
    score = np.linspace(0, 1, 5)
    with DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W), columns=cols) as w:
        w.add_episode("pick", a, s, im, columns={"score": score, "flag": score > 0.5, "other_pose": a[::-1]})
        for bad, match in (({"score": score, "flag": score > 0.5}, "exactly the declared"),
                           ({"score": score[:4], "flag": score > 0.5, "other_pose": a}, "'score' must be"),
                           ({"score": score * np.nan, "flag": score > 0.5, "other_pose": a}, "NaN")):
            with pytest.raises(ValueError, match=match):
                w.add_episode("pick", a, s, im, columns=bad)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_episodes"] == 1 and all(info["features"][k] == v for k, v in cols.items())
    table = pq.read_table(next((root / "data").rglob("*.parquet")))
    assert table.schema.field("score").type == pa.float32() and table.schema.field("flag").type == pa.bool_()
    np.testing.assert_array_equal(table.column("score").to_numpy(), score.astype(np.float32))
    np.testing.assert_array_equal(np.stack(table.column("other_pose").to_numpy(zero_copy_only=False)), a[::-1])
    ds = LeRobotDataset(root)
    np.testing.assert_array_equal(ds.episode(0).actions, a)
    assert ds.episode_stats(0)["score"]["max"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="features every dataset has"):
        DatasetWriter(tmp_path / "x", fps=10, cameras=cameras(), image_size=(H, W),
                      columns={"action": {"dtype": "float64", "shape": [8], "names": None}})
    with pytest.raises(ValueError, match="dtype must be one of"):
        DatasetWriter(tmp_path / "y", fps=10, cameras=cameras(), image_size=(H, W),
                      columns={"z": {"dtype": "int8", "shape": [1]}})
    with pytest.raises(ValueError, match="cannot resume"):
        DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W), resume=True,
                      columns={"score": {"dtype": "float64", "shape": [1], "names": None}})


def test_per_frame_cameras_round_trip(tmp_path):
    root = tmp_path / "ds"
    T = 4
    a, s, im = make_episode(T, 0)
    moving = {c.name: [cameras(shift=0.01 * t)[i] for t in range(T)] for i, c in enumerate(cameras())}
    perturbed = cameras(shift=0.02)
    with DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W), per_frame_cameras=True) as w:
        w.add_episode(instruction="a", actions=a, states=s, images=im, cameras=moving)
        w.add_episode(instruction="a", actions=a, states=s, images=im, cameras=perturbed)
    ds = LeRobotDataset(root)
    assert ds.per_frame_cameras and "calibration.front.K" in ds.info["features"]
    ep0, ep1 = ds.episode(0), ds.episode(1)
    for name in CAMS:
        for t in range(T):
            assert ep0.frame_cameras[name][t].to_dict() == moving[name][t].to_dict()
        assert ep1.cameras[name].to_dict() == {c.name: c for c in perturbed}[name].to_dict()
        # a static rig's repeated rows share one checked camera; a moving camera gets one per frame
        assert all(c is ep1.frame_cameras[name][0] for c in ep1.frame_cameras[name])
        assert len({id(c) for c in ep0.frame_cameras[name]}) == T
    doc = json.loads((root / "meta/cameras.json").read_text())
    assert doc["cameras"][0]["static"] is False and doc["cameras"][0]["per_frame"]["K"] == "calibration.front.K"


def test_writer_rejects_bad_episodes(tmp_path):
    a, s, im = make_episode(4, 0)
    with DatasetWriter(tmp_path / "d", fps=10, cameras=cameras(), image_size=(H, W)) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.add_episode(instruction="x", actions=a, states=s, images={**im, "top": im["top"][:, :16]})
        with pytest.raises(ValueError, match="uint8"):
            w.add_episode(instruction="x", actions=a, states=s, images={**im, "top": im["top"].astype(np.float32)})
        with pytest.raises(ValueError, match="cameras"):
            w.add_episode(instruction="x", actions=a, states=s, images={"front": im["front"]})
        with pytest.raises(ValueError, match=r"\[T, 8\]"):
            w.add_episode(instruction="x", actions=a, states=s[:3], images=im)
        bad = a.copy()
        bad[0, 3:7] *= 2
        with pytest.raises(ValueError, match="unit norm"):
            w.add_episode(instruction="x", actions=bad, states=s, images=im)
        with pytest.raises(ValueError, match="static calibration"):
            w.add_episode(instruction="x", actions=a, states=s, images=im, cameras=cameras(shift=0.1))
        w.add_episode(instruction="x", actions=a, states=s, images=im, extra={"seed": 1})
        with pytest.raises(ValueError, match="extra keys"):
            w.add_episode(instruction="x", actions=a, states=s, images=im, extra={"other": 1})
    assert LeRobotDataset(tmp_path / "d").num_episodes == 1  # rejected episodes left nothing behind
    assert not list((tmp_path / "d").rglob("*.partial"))
    with pytest.raises(ValueError, match="calibrated for"):
        DatasetWriter(tmp_path / "e", fps=10, cameras=cameras(16), image_size=(H, W))


def test_existing_dataset_needs_resume_and_matching_settings(tmp_path):
    root = tmp_path / "ds"
    write(root, lengths=(3,))
    with pytest.raises(FileExistsError, match="resume"):
        DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W))
    with pytest.raises(ValueError, match="fps"):
        DatasetWriter(root, fps=20, cameras=cameras(), image_size=(H, W), resume=True)
    with pytest.raises(ValueError, match="calibration"):
        DatasetWriter(root, fps=10, cameras=cameras(shift=0.1), image_size=(H, W), resume=True)


# ----------------------------------------------------------------------------------------------------------------------
# crash safety: a forked writer SIGKILLs itself at each step of the commit protocol
# ----------------------------------------------------------------------------------------------------------------------

def _killed_writer(root, phase, at_episode):
    pid = os.fork()
    if pid == 0:  # child: write until the fault point, then die like `kill -9`
        try:
            w = DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W))

            def hook(p):
                if p == phase and w.num_episodes == at_episode:
                    os.kill(os.getpid(), signal.SIGKILL)
            w._fault_hook = hook
            for i, T in enumerate((5, 7, 6, 4)):
                a, s, im = make_episode(T, seed=i)
                w.add_episode(instruction=f"task {i % 2}", actions=a, states=s, images=im)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("phase,complete", [("files_written", 2), ("videos_committed", 2), ("data_committed", 2),
                                            ("tasks_committed", 2), ("committed", 3), ("info_written", 2)])
def test_kill_during_commit_keeps_complete_episodes_and_resume_finishes(tmp_path, phase, complete):
    root = tmp_path / "ds"
    _killed_writer(root, phase, at_episode=2)
    ds = LeRobotDataset(root)  # loads: complete episodes only
    assert ds.num_episodes == complete
    for i in range(complete):
        assert np.array_equal(ds.episode(i).actions, make_episode((5, 7, 6, 4)[i], i)[0])
    # resume removes the leftovers and continues with the next index
    with DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W), resume=True) as w:
        assert w.num_episodes == complete
        for i in range(complete, 4):
            a, s, im = make_episode((5, 7, 6, 4)[i], seed=i)
            w.add_episode(instruction=f"task {i % 2}", actions=a, states=s, images=im)
    assert not list(root.rglob("*.partial"))
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 4 and ds.episode_lengths == [5, 7, 6, 4] and ds.tasks == ["task 0", "task 1"]
    assert json.loads((root / "meta/info.json").read_text())["total_frames"] == 22
    for i in range(4):
        ep = ds.episode(i)
        assert np.array_equal(ep.actions, make_episode((5, 7, 6, 4)[i], i)[0]) and ep.instruction == f"task {i % 2}"
    n_files = len(list((root / "data").rglob("*.parquet")))
    assert n_files == 4  # no orphan data file a LeRobot glob could pick up


def test_kill_before_first_episode_then_resume(tmp_path):
    root = tmp_path / "ds"
    _killed_writer(root, "files_written", at_episode=0)
    assert LeRobotDataset(root).num_episodes == 0
    with DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W), resume=True) as w:
        a, s, im = make_episode(3, 0)
        w.add_episode(instruction="x", actions=a, states=s, images=im)
    assert LeRobotDataset(root).num_episodes == 1


# ----------------------------------------------------------------------------------------------------------------------
# bad files on disk: every error names the file
# ----------------------------------------------------------------------------------------------------------------------

def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def ds_root(tmp_path):
    root = tmp_path / "ds"
    write(root)
    return root


@pytest.mark.parametrize("rel,exc", [
    ("data/chunk-000/file-001.parquet", ValueError),
    ("videos/observation.images.top/chunk-000/file-002.mp4", ValueError),
    ("meta/episodes/chunk-000/file-000.parquet", ValueError),
    ("meta/tasks.parquet", ValueError),
    ("meta/info.json", ValueError),
    ("meta/cameras.json", ValueError),
])
def test_truncated_file_is_named(ds_root, rel, exc):
    _truncate(ds_root / rel)
    with pytest.raises(exc, match=str(ds_root / rel).replace(".", r"\.")):
        LeRobotDataset(ds_root)


@pytest.mark.parametrize("rel", ["meta/cameras.json", "meta/info.json", "meta/tasks.parquet",
                                 "data/chunk-000/file-002.parquet",
                                 "videos/observation.images.front/chunk-000/file-000.mp4"])
def test_missing_file_is_named(ds_root, rel):
    (ds_root / rel).unlink()
    with pytest.raises(FileNotFoundError, match=str(ds_root / rel).replace(".", r"\.")):
        LeRobotDataset(ds_root)


def test_missing_episode_metadata_in_the_middle(ds_root):
    (ds_root / "meta/episodes/chunk-000/file-001.parquet").unlink()
    with pytest.raises(ValueError, match="without gaps"):
        LeRobotDataset(ds_root)


def test_shape_mismatches_are_named(ds_root, tmp_path):
    # calibration for another image size
    path = ds_root / "meta/cameras.json"
    doc = json.loads(path.read_text())
    doc["cameras"][1]["width"] = 64
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"cameras\.json.*64x32"):
        LeRobotDataset(ds_root)
    doc["cameras"][1]["width"] = W
    doc["cameras"] = doc["cameras"][:1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"cameras\.json.*do not match"):
        LeRobotDataset(ds_root)

    # a data file of the wrong episode (wrong length) and a video of the wrong length
    root = tmp_path / "b"
    write(root)
    (root / "data/chunk-000/file-001.parquet").write_bytes((root / "data/chunk-000/file-000.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"file-001\.parquet"):
        LeRobotDataset(root).episode(1)
    root = tmp_path / "c"
    write(root)
    v = "videos/observation.images.front/chunk-000/"
    (root / v / "file-000.mp4").write_bytes((root / v / "file-001.mp4").read_bytes())  # 7 frames where 5 belong
    with pytest.raises(ValueError, match=r"file-000\.mp4.*7 frames"):
        LeRobotDataset(root)
    with pytest.raises(ValueError, match=r"file-000\.mp4: video holds 7 frames"):
        LeRobotDataset(root, check_files=False).episode(0).images
    # action feature with the wrong width in info.json
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [7]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"info\.json.*'action'"):
        LeRobotDataset(root)


def test_partial_leftovers_are_ignored(ds_root):
    (ds_root / "data/chunk-000/file-003.parquet.partial").write_bytes(b"junk")
    (ds_root / "data/chunk-000/file-003.parquet").write_bytes(b"orphan without metadata")
    (ds_root / "videos/observation.images.top/chunk-000/file-003.mp4").write_bytes(b"junk")
    assert LeRobotDataset(ds_root).num_episodes == 3


# ----------------------------------------------------------------------------------------------------------------------
# a dataset written by LeRobot's own writer (tests/fixtures/README.md): pandas-indexed tasks.parquet, several episodes
# per data / video file, AV1 4:2:0 video, float32 poses, calibration supplied from outside
# ----------------------------------------------------------------------------------------------------------------------

NATIVE = Path(__file__).parent / "fixtures" / "lerobot_v3_native"


def test_reads_a_dataset_written_by_lerobot():
    with pytest.raises(FileNotFoundError, match=r"meta/cameras\.json.*pass cameras="):
        LeRobotDataset(NATIVE)
    ds = LeRobotDataset(NATIVE, cameras=NATIVE.parent / "lerobot_v3_native.cameras.json")
    assert (ds.num_episodes, ds.num_frames, ds.fps, ds.image_size) == (4, 57, 10, (64, 64))
    assert ds.camera_names == ["left", "right"] and len(ds.tasks) == 4 and not ds.per_frame_cameras
    data = pq.read_table(NATIVE / "data/chunk-000/file-000.parquet")
    assert data.schema.field("action").type == pa.list_(pa.float32(), 8)
    rows = data.column("action").combine_chunks().flatten().to_numpy().reshape(-1, 8).astype(np.float64)
    whole = {c: av_frames(NATIVE / f"videos/observation.images.{c}/chunk-000/file-000.mp4") for c in ds.camera_names}
    start = 0
    for i in range(4):
        ep = ds.episode(i)
        T = len(ep)
        assert ep.instruction == ds.tasks[ep.task_index] and ep.actions.dtype == np.float64
        np.testing.assert_array_equal(ep.actions, rows[start:start + T])  # this episode's rows of the shared file
        for c in ds.camera_names:  # this episode's frames of the shared video
            assert ep.images[c].shape == (T, 64, 64, 3)
            np.testing.assert_array_equal(ep.images[c], whole[c][start:start + T])
        start += T
    assert start == 57 and all(v.shape[0] == 57 for v in whole.values())


def av_frames(path):
    import av
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
