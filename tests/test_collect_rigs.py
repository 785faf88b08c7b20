"""collect with camera rigs: a new random rig per episode (calibration per frame), or a fixed rig from a file."""

import argparse

import numpy as np
import pytest

from action_images.data import LeRobotDataset
from action_images.data import collect


def collect_main(*argv: str) -> int:
    p = argparse.ArgumentParser()
    collect.add_arguments(p)
    return collect.run(p.parse_args(list(argv)))


def test_random_rig_per_episode_is_stored_per_frame(tmp_path):
    from action_images.sim import random_rig
    out = tmp_path / "rr"
    assert collect_main("--tasks", "reach_target", "--episodes", "2", "--out", str(out), "--rig-distribution", "train",
                        "--rig-views", "3", "--image-size", "32") == 0
    ds = LeRobotDataset(out)
    assert ds.camera_names == ["rig0", "rig1", "rig2"] and ds.per_frame_cameras
    e0, e1 = ds.episode(0), ds.episode(1)
    T0 = e0.frame_cameras["rig0"][0].T_cam_world
    assert not np.allclose(T0, e1.frame_cameras["rig0"][0].T_cam_world)          # a new rig per episode
    assert np.allclose(T0, e0.frame_cameras["rig0"][-1].T_cam_world)             # static within the episode
    seed = collect.episode_seed(0, "reach_target", 0)
    np.testing.assert_allclose(T0, random_rig(seed, 3, 32, "train")[0].T_cam_world, atol=1e-6)
    # resuming with another rig split is refused
    assert collect_main("--tasks", "reach_target", "--episodes", "3", "--out", str(out), "--rig-distribution", "heldout",
                        "--rig-views", "3", "--image-size", "32", "--resume") == 2


def test_camera_rig_file_places_the_static_cameras(tmp_path):
    from action_images.sim import random_rig, save_rig
    rig = random_rig(5, 2, 32, "heldout")
    path = save_rig(rig, tmp_path / "rig.json")
    out = tmp_path / "fixed"
    assert collect_main("--tasks", "press_button", "--episodes", "1", "--out", str(out), "--camera-rig", str(path),
                        "--image-size", "32") == 0
    ds = LeRobotDataset(out)
    assert ds.camera_names == [c.name for c in rig] and not ds.per_frame_cameras
    np.testing.assert_allclose(ds.cameras[rig[1].name].T_cam_world, rig[1].T_cam_world, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--rig-distribution", "train", "--rig-views", "1"], "--rig-views must be in 2..8"),
    (["--rig-distribution", "train", "--perturb-cameras"], "--perturb-cameras cannot be combined"),
    (["--rig-distribution", "train", "--camera-rig", "x.json"], "exclude each other"),
    (["--rig-distribution", "train", "--cameras", "front,left"], "--cameras"),
    (["--camera-rig", "missing.json"], "--camera-rig: missing.json: cannot read the rig file"),
])
def test_bad_rig_flags_exit_2(tmp_path, argv, message, capsys):
    assert collect_main("--tasks", "reach_target", "--episodes", "1", "--out", str(tmp_path / "x"), *argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_old_random_rig_spelling_still_works(tmp_path, capsys):
    out = tmp_path / "old"
    assert collect_main("--tasks", "reach_target", "--episodes", "1", "--out", str(out), "--random-rig", "train",
                        "--rig-views", "2", "--image-size", "16") == 0
    assert "--random-rig is deprecated; use --rig-distribution" in capsys.readouterr().err
    assert LeRobotDataset(out).camera_names == ["rig0", "rig1"]
