"""Hostile metadata and faults: paths that leave the dataset root, counts that disagree with the files, bad numbers,
and `collect` flags out of range. Every case is refused with one error naming the file (or flag), and nothing outside
the dataset is read or written, nor anything inside it lost."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal

import numpy as np
import pytest

import collect_fake_env as fake
from action_images.data import DatasetWriter, LeRobotDataset, collect
from action_images.geometry import Camera
from test_dataset import H, W, cameras, write


@pytest.fixture(autouse=True)
def fake_sim(monkeypatch):
    monkeypatch.setattr(collect, "_load_sim", lambda: (fake.make_env, fake.TASKS))
    monkeypatch.setattr(collect, "_load_cameras", lambda: tuple(fake.EYES))
    fake.KILL["after_steps"] = None
    fake._steps["n"] = 0


def collect_args(out, *extra):
    p = argparse.ArgumentParser()
    collect.add_arguments(p)
    return p.parse_args(["--out", str(out), "--cameras", "front,top", "--image-size", "16", *extra])


def snapshot(root):
    """{relative path: sha256} of every file under ``root`` (symlinks by their target text)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            data = os.readlink(p).encode() if os.path.islink(p) else open(p, "rb").read()
            out[os.path.relpath(p, root)] = hashlib.sha256(data).hexdigest()
    return out


def edit_info(root, **changes):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


@pytest.fixture()
def ds_root(tmp_path):
    root = tmp_path / "ds"
    write(root)
    return root


@pytest.fixture()
def collected(tmp_path):
    """A 4-episode dataset written by `collect` (fake sim), for --resume cases."""
    out = tmp_path / "c"
    assert collect.run(collect_args(out, "--tasks", "reach_fake", "--episodes", "4")) == 0
    return out


# ----------------------------------------------------------------------------------------------------------------------
# paths from metadata stay inside the dataset root
# ----------------------------------------------------------------------------------------------------------------------

def _plant_outside(root, outside, kind="data"):
    """Copies of the dataset's own files outside it, where a hostile template points (so a reader could open them)."""
    outside.mkdir(exist_ok=True)
    src = sorted((root / ("data" if kind == "data" else "videos/observation.images.front")).rglob("file-*"))
    for p in src:
        shutil.copy(p, outside / ("evil-" + p.name.split("-")[1]))


@pytest.mark.parametrize("field", ["data_path", "video_path"])
def test_template_leaving_the_root_is_refused(ds_root, tmp_path, field):
    outside = tmp_path / "outside"
    _plant_outside(ds_root, outside, "data" if field == "data_path" else "video")
    ext = "parquet" if field == "data_path" else "mp4"
    edit_info(ds_root, **{field: f"../outside/evil-{{file_index:03d}}.{ext}"})
    with pytest.raises(ValueError, match=rf"info\.json: {field} .*outside the dataset root"):
        LeRobotDataset(ds_root)
    with pytest.raises(ValueError, match=rf"info\.json: {field}"):
        LeRobotDataset(ds_root, check_files=False)


@pytest.mark.parametrize("template", ["/etc/evil-{file_index}.parquet", "data/{nope}.parquet", "data/{0}.parquet",
                                      "data/{file_index:zz}.parquet", 7])
def test_malformed_template_is_refused(ds_root, template):
    edit_info(ds_root, data_path=template)
    with pytest.raises(ValueError, match=r"info\.json: data_path"):
        LeRobotDataset(ds_root)


def test_symlinked_folder_leaving_the_root_is_refused(ds_root, tmp_path):
    outside = tmp_path / "outside"
    shutil.move(ds_root / "data/chunk-000", outside)
    (ds_root / "data/chunk-000").symlink_to(outside)
    assert (ds_root / "data/chunk-000/file-000.parquet").is_file()  # readable through the link
    with pytest.raises(ValueError, match=r"data_path .*outside the dataset root"):
        LeRobotDataset(ds_root)
    shutil.move(ds_root / "meta/episodes", tmp_path / "eps")
    (ds_root / "meta/episodes").symlink_to(tmp_path / "eps")
    with pytest.raises(ValueError, match=r"outside the dataset root"):
        LeRobotDataset(ds_root)


@pytest.mark.parametrize("bad", ["../top", "a/b", "..", " top"])
def test_camera_names_that_are_not_file_names_are_refused(ds_root, bad):
    info = json.loads((ds_root / "meta/info.json").read_text())
    info["features"][f"observation.images.{bad}"] = info["features"].pop("observation.images.top")
    (ds_root / "meta/info.json").write_text(json.dumps(info))
    doc = json.loads((ds_root / "meta/cameras.json").read_text())
    doc["cameras"][1]["name"] = bad
    (ds_root / "meta/cameras.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"info\.json: .*not usable in a file name"):
        LeRobotDataset(ds_root)
    with pytest.raises(ValueError, match="not usable in a file name"):
        DatasetWriter(ds_root.parent / "new", fps=10, image_size=(H, W),
                      cameras=[Camera.look_at((1, 0, 1), (0, 0, 0), 50, W, H, name=bad)])
    assert not (ds_root.parent / "new").exists()


def test_collect_resume_never_writes_outside(collected, tmp_path, capsys):
    outside = tmp_path / "outside"
    _plant_outside(collected, outside)
    edit_info(collected, data_path="../outside/evil-{file_index:03d}.parquet")
    before, before_out = snapshot(collected), snapshot(outside)
    rc = collect.run(collect_args(collected, "--tasks", "reach_fake", "--episodes", "6", "--resume"))
    err = capsys.readouterr().err
    assert rc == 2 and "data_path" in err and "outside the dataset root" in err
    assert snapshot(collected) == before and snapshot(outside) == before_out


# ----------------------------------------------------------------------------------------------------------------------
# counts, indices and lengths agree with the files
# ----------------------------------------------------------------------------------------------------------------------

def test_missing_last_episode_metadata_is_refused(ds_root):
    (ds_root / "meta/episodes/chunk-000/file-002.parquet").unlink()
    with pytest.raises(ValueError, match=r"info\.json: total_episodes is 3 but .* holds metadata for 2 episode\(s\) "
                                         r"\(metadata of episodes 2\.\.2 is missing\)"):
        LeRobotDataset(ds_root)


def test_info_lagging_one_committed_episode_loads(ds_root):
    """A writer killed between an episode's commit and the info.json refresh leaves info one episode behind."""
    edit_info(ds_root, total_episodes=2, total_frames=12)
    assert LeRobotDataset(ds_root).num_episodes == 3
    edit_info(ds_root, total_episodes=1, total_frames=5)
    with pytest.raises(ValueError, match="total_episodes is 1"):
        LeRobotDataset(ds_root)


def test_wrong_total_frames_is_refused(ds_root):
    edit_info(ds_root, total_frames=17)
    with pytest.raises(ValueError, match=r"info\.json: total_frames is 17 .* hold 18 frames"):
        LeRobotDataset(ds_root)


def test_deleted_episode_metadata_refused_and_resume_keeps_the_files(collected, capsys):
    shutil.rmtree(collected / "meta/episodes")
    with pytest.raises(ValueError, match=r"total_episodes is 4 but .* holds metadata for 0"):
        LeRobotDataset(collected)
    before = snapshot(collected)
    assert collect.run(collect_args(collected, "--tasks", "reach_fake", "--episodes", "4", "--resume")) == 2
    assert "total_episodes is 4" in capsys.readouterr().err
    assert snapshot(collected) == before
    with pytest.raises(ValueError, match="total_episodes"):
        DatasetWriter(collected, fps=10, cameras=cameras(16), image_size=(16, 16), resume=True)
    assert snapshot(collected) == before


def test_resume_refuses_files_the_metadata_does_not_account_for(collected, capsys):
    stray = collected / "data/chunk-000/file-009.parquet"
    shutil.copy(collected / "data/chunk-000/file-000.parquet", stray)
    before = snapshot(collected)
    assert collect.run(collect_args(collected, "--tasks", "reach_fake", "--episodes", "5", "--resume")) == 2
    assert "file-009.parquet: not accounted for" in capsys.readouterr().err
    assert snapshot(collected) == before
    # the leftover of the one episode whose commit was cut short (the next index) is expected, and is replaced
    stray.rename(collected / "data/chunk-000/file-004.parquet")
    assert collect.run(collect_args(collected, "--tasks", "reach_fake", "--episodes", "5", "--resume")) == 0
    assert LeRobotDataset(collected).num_episodes == 5


def test_writer_refuses_a_non_dataset_folder_with_files(tmp_path):
    """No info.json but files: nothing is deleted, with or without resume."""
    root = tmp_path / "d"
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000/file-000.parquet").write_bytes(b"someone's data")
    (root / "notes.txt").write_text("keep me")
    before = snapshot(root)
    for resume in (False, True):
        with pytest.raises(FileExistsError, match="holds no meta/info.json"):
            DatasetWriter(root, fps=10, cameras=cameras(), image_size=(H, W), resume=resume)
        assert snapshot(root) == before


def test_data_file_of_another_episode_is_refused(tmp_path):
    root = tmp_path / "ds"
    write(root, lengths=(5, 5, 6))
    (root / "data/chunk-000/file-001.parquet").write_bytes((root / "data/chunk-000/file-000.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"file-001\.parquet: holds rows of episodes 0\.\.0"):
        LeRobotDataset(root)
    with pytest.raises(ValueError, match=r"file-001\.parquet: holds rows of episode\(s\) \[0\]"):
        LeRobotDataset(root, check_files=False).episode(1)


def test_data_file_with_extra_rows_is_refused(tmp_path):
    root = tmp_path / "ds"
    write(root, lengths=(5, 7, 6))
    (root / "data/chunk-000/file-000.parquet").write_bytes((root / "data/chunk-000/file-001.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"file-000\.parquet: holds 7 rows but .* 5 frames"):
        LeRobotDataset(root)


def test_metadata_row_in_the_wrong_file_is_refused(ds_root):
    ep = ds_root / "meta/episodes/chunk-000"
    (ep / "file-001.parquet").rename(ep / "file-007.parquet")
    with pytest.raises(ValueError, match=r"file-007\.parquet: the row of episode 1 says it lives in .*file-001"):
        LeRobotDataset(ds_root)


@pytest.mark.parametrize("fps", [0, -10, math.nan, "10", 10.5, True, None])
def test_bad_fps_is_refused(ds_root, fps):
    path = ds_root / "meta/info.json"
    info = json.loads(path.read_text())
    info["fps"] = fps
    path.write_text(json.dumps(info))  # json.dumps writes NaN as the (non-standard) literal NaN
    message = r"info\.json: .*NaN is not strict JSON" if fps != fps else r"info\.json: fps must be an integer >= 1"
    with pytest.raises(ValueError, match=message):
        LeRobotDataset(ds_root)


@pytest.mark.parametrize("key,value", [("total_episodes", -1), ("chunks_size", 0), ("total_frames", "18")])
def test_bad_counts_are_refused(ds_root, key, value):
    edit_info(ds_root, **{key: value})
    with pytest.raises(ValueError, match=rf"info\.json: {key} must be an integer"):
        LeRobotDataset(ds_root)


# ----------------------------------------------------------------------------------------------------------------------
# collect: flags checked before any work, one line naming the flag and its range
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (("--episodes", "0"), "--episodes must be >= 1; got 0"),
    (("--episodes", "-1"), "--episodes must be >= 1; got -1"),
    (("--max-attempts", "0"), "--max-attempts must be >= 1; got 0"),
    (("--video-crf", "-5"), "--video-crf must be in 0..51; got -5"),
    (("--video-crf", "100"), "--video-crf must be in 0..51; got 100"),
    (("--image-size", "4"), "--image-size must be in 8..1024; got 4"),
    (("--image-size", "4096"), "--image-size must be in 8..1024; got 4096"),
    (("--hold-steps", "-1"), "--hold-steps must be >= 0; got -1"),
    (("--seed", "-3"), "--seed must be >= 0; got -3"),
    (("--tasks", "nope"), "--tasks: unknown ['nope']"),
    (("--tasks", "reach_fake,reach_fake"), "--tasks: repeated names"),
    (("--cameras", "front,nope"), "--cameras: unknown ['nope']"),
    (("--cameras", "front,front"), "--cameras: repeated names"),
    (("--tasks", "reach_fake", "--task", "push_fake"), "give only --tasks"),
])
def test_collect_flags_out_of_range(tmp_path, capsys, argv, needle):
    out = tmp_path / "d"
    assert collect.run(collect_args(out, *argv)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists() and fake._steps["n"] == 0  # refused before any work


def test_task_is_a_deprecated_alias_of_tasks(tmp_path, capsys):
    assert collect.run(collect_args(tmp_path / "a", "--task", "push_fake", "--episodes", "2")) == 0
    assert "--task is deprecated; use --tasks" in capsys.readouterr().err
    assert collect.run(collect_args(tmp_path / "b", "--tasks", "push_fake", "--episodes", "2")) == 0
    assert "deprecated" not in capsys.readouterr().err
    a, b = LeRobotDataset(tmp_path / "a"), LeRobotDataset(tmp_path / "b")
    assert a.num_episodes == b.num_episodes == 2
    assert all(np.array_equal(a.episode(i).actions, b.episode(i).actions) for i in range(2))
    rec = json.loads((tmp_path / "a/meta/collect.json").read_text())
    assert rec["args"]["tasks"] == "push_fake" and "task_deprecated" not in rec["args"]


def test_collect_into_a_non_empty_folder_is_refused_before_work(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "precious.mp4").write_bytes(b"x")
    assert collect.run(collect_args(out, "--tasks", "reach_fake", "--episodes", "1")) == 2
    assert "precious.mp4" in capsys.readouterr().err and fake._steps["n"] == 0
    assert [p.name for p in out.iterdir()] == ["precious.mp4"]


# ----------------------------------------------------------------------------------------------------------------------
# kill -9, again and again, then --resume: the same files, bit for bit, as an uninterrupted run
# ----------------------------------------------------------------------------------------------------------------------

def _killed_collect(out, argv, after_steps):
    pid = os.fork()
    if pid == 0:
        try:
            fake._steps["n"] = 0
            fake.KILL["after_steps"] = after_steps
            collect.run(collect_args(out, *argv))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_repeated_kill_then_resume_is_bit_identical(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    argv = ("--tasks", "all", "--episodes", "3")
    assert collect.run(collect_args(ref, *argv)) == 0
    kills = 0
    for after in (9, 7, 11, 5, 13):  # every run dies a few steps into its work
        kills += _killed_collect(out, (*argv, "--resume"), after)
    assert kills >= 3 and LeRobotDataset(out).num_episodes < 6
    assert collect.run(collect_args(out, *argv, "--resume")) == 0
    a, b = snapshot(ref), snapshot(out)
    a.pop("meta/collect.json"), b.pop("meta/collect.json")  # holds wall times
    assert a == b


@pytest.mark.parametrize("kw,match", [({"crf": 52}, "crf must be in 0..51"), ({"crf": -1}, "crf must be in 0..51"),
                                      ({"fps": 0}, "fps must be positive")])
def test_writer_arguments_out_of_range(tmp_path, kw, match):
    args = {"fps": 10, "cameras": cameras(), "image_size": (H, W), **kw}
    with pytest.raises(ValueError, match=match):
        DatasetWriter(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()
