"""eval on any calibrated rig: a rig file, one held-out random rig, or a new rig every episode."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from action_images import evaluate
from action_images.evaluate import EvalSettings, resolve_settings
from action_images.policy import PolicySettings
from action_images.wam import WAMConfig, WorldActionModel


def eval_main(*argv: str) -> int:
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    return evaluate.run(p.parse_args(list(argv)))


@pytest.fixture(scope="module")
def rig_checkpoint(tmp_path_factory):
    """A tiny model that was trained on random rigs (its cameras are named rig0..rig3)."""
    path = tmp_path_factory.mktemp("ckpt") / "rigs"
    torch.manual_seed(0)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=[f"rig{i}" for i in range(4)])
                     ).save_pretrained(path)
    return path


def test_settings_take_the_rigs_views():
    fixed = WAMConfig.from_preset("cpu-tiny", camera_names=["left", "right"])
    rigs = WAMConfig.from_preset("cpu-tiny", camera_names=["rig0", "rig1", "rig2", "rig3"])
    s = resolve_settings(EvalSettings(tasks="reach_target", random_rig=4, rig_views=3), fixed, warn=False)
    assert s.cameras == ("rig0", "rig1", "rig2") and s.policy.camera_names == ("rig0", "rig1")
    s = resolve_settings(EvalSettings(tasks="reach_target"), rigs, warn=False)      # no rig: the named cameras
    assert s.cameras == evaluate.DEFAULT_CAMERAS and s.policy.camera_names == ("front", "left")
    s = resolve_settings(EvalSettings(tasks="reach_target", cameras=("left", "top")), rigs, warn=False)
    assert s.policy.camera_names == ("left", "top")                                 # the fixed pair left + top
    s = resolve_settings(EvalSettings(tasks="reach_target", rig_distribution="heldout",
                                      policy=PolicySettings(camera_names=("rig2", "rig0"))), rigs, warn=False)
    assert s.policy.camera_names == ("rig2", "rig0")
    with pytest.raises(ValueError, match="--cameras: unknown camera"):
        resolve_settings(EvalSettings(tasks="reach_target", random_rig=1, cameras=("rig0", "rig1", "front")), rigs)
    with pytest.raises(ValueError, match="--policy-cameras: unknown camera"):      # the flag the names came from
        resolve_settings(EvalSettings(tasks="reach_target", policy=PolicySettings(camera_names=("nope", "nope2"))),
                         rigs)
    every = PolicySettings(camera_names="all")          # --policy-cameras all: every rendered view
    s = resolve_settings(EvalSettings(tasks="reach_target", rig_distribution="heldout", policy=every), rigs)
    assert s.cameras == s.policy.camera_names == ("rig0", "rig1", "rig2", "rig3")
    s = resolve_settings(EvalSettings(tasks="reach_target", random_rig=2, rig_views=3, policy=every), fixed)
    assert s.policy.camera_names == ("rig0", "rig1", "rig2")
    s = resolve_settings(EvalSettings(tasks="reach_target", cameras=("left", "top", "right"), policy=every), rigs)
    assert s.policy.camera_names == ("left", "top", "right")
    s = resolve_settings(EvalSettings(tasks="reach_target", policy=every), rigs)       # the scene's eval cameras
    assert s.policy.camera_names == evaluate.DEFAULT_CAMERAS == s.cameras


def test_eval_on_a_rig_file_and_per_episode_rigs(rig_checkpoint, tmp_path):
    from action_images.sim import random_rig, save_rig
    rig = random_rig(7, 2, 64, "heldout")
    path = save_rig(rig, tmp_path / "rig.json")
    out = tmp_path / "fixed"
    assert eval_main("--checkpoint", str(rig_checkpoint), "--tasks", "reach_target", "--episodes", "1",
                     "--max-steps", "3", "--sampler-steps", "1", "--videos", "0", "--no-progress",
                     "--camera-rig", str(path), "--out", str(out)) == 0
    rec = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()][-1]
    for cam in rig:
        np.testing.assert_allclose(rec["camera_positions"][cam.name], cam.position, atol=1e-5)
    out = tmp_path / "per_episode"
    assert eval_main("--checkpoint", str(rig_checkpoint), "--tasks", "reach_target", "--episodes", "2",
                     "--max-steps", "2", "--sampler-steps", "1", "--videos", "0", "--no-progress",
                     "--rig-distribution", "heldout", "--out", str(out)) == 0
    recs = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines() if '"task"' in x]
    assert len(recs) == 2 and recs[0]["camera_positions"]["rig0"] != recs[1]["camera_positions"]["rig0"]
    assert recs[0]["views"] == ["rig0", "rig1"]


@pytest.mark.parametrize("argv, message", [
    (["--random-rig", "1", "--rig-distribution", "heldout"], "exclude each other"),
    (["--random-rig", "1", "--perturb-cameras"], "--perturb-cameras cannot be combined"),
    (["--rig-distribution", "heldout", "--rig-views", "1"], "--rig-views"),
    (["--camera-rig", "missing.json"], "--camera-rig: missing.json: cannot read"),
    (["--camera-rig", "."], "--camera-rig: .: cannot read"),
    (["--threads", "0"], "--threads must be in 1..1024"),
])
def test_bad_rig_flags_exit_2(rig_checkpoint, tmp_path, argv, message, capsys):
    assert eval_main("--checkpoint", str(rig_checkpoint), "--tasks", "reach_target", "--episodes", "1",
                     "--out", str(tmp_path / "x"), *argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_bad_rig_file_names_the_camera(rig_checkpoint, tmp_path, capsys):
    from action_images.sim import random_rig, save_rig
    path = save_rig(random_rig(1, 2, 64, "heldout"), tmp_path / "rig.json")
    doc = json.loads(path.read_text())
    T = np.asarray(doc["cameras"][1]["T_cam_world"])
    T[:3, :3] *= 1.5                                                        # not a rotation any more
    doc["cameras"][1]["T_cam_world"] = T.tolist()
    path.write_text(json.dumps(doc))
    assert eval_main("--checkpoint", str(rig_checkpoint), "--tasks", "reach_target", "--episodes", "1",
                     "--out", str(tmp_path / "x"), "--camera-rig", str(path)) == 2
    err = capsys.readouterr().err
    assert "rig.json" in err and "rig1" in err


def test_optional_env_kwargs_names_only_what_was_asked_for():
    """collect and eval hand make_env only the optional arguments asked for, so a suite without one works."""
    from action_images.sim.suites import optional_env_kwargs

    assert optional_env_kwargs() == {}
    assert optional_env_kwargs("rig.json") == {"rig": "rig.json"}
    assert optional_env_kwargs(None, "train", 6, 0.0) == {"rig_distribution": "train", "rig_views": 6}
    assert optional_env_kwargs(start_jitter=0.05) == {"start_jitter": 0.05}
