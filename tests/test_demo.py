"""``action-images demo``: the quick run, the missing-checkpoint message, the checkpoint's cameras, bad flags."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from action_images import demo
from action_images.wam import WAMConfig, WorldActionModel

torch.set_num_threads(1)


def parse(argv):
    p = argparse.ArgumentParser(prog="action-images demo")
    demo.add_arguments(p)
    return p.parse_args(argv)


def test_demo_quick_with_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.run(parse(["--quick", "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress"])) == 0
    text = capsys.readouterr().out
    assert "reach_target" in text and "report:" in text and str(out.resolve() / "report.html") in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"] == "demo" and metrics["overall"]["episodes"] == 1
    assert (out / "report.html").is_file() and (out / "episodes.jsonl").is_file()
    # the cameras come from the checkpoint, not from the demo
    assert metrics["policy"]["views"] == ["left", "right"] and "left,right" in text
    # its own folder is scratch: a second demo writes over it; someone else's evaluation is never written over
    assert demo.run(parse(["--quick", "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress"])) == 0
    theirs = tmp_path / "eval"
    theirs.mkdir()
    (theirs / "metrics.json").write_text(json.dumps({"command": "eval"}))
    capsys.readouterr()
    assert demo.run(parse(["--quick", "--checkpoint", str(checkpoint), "--out", str(theirs), "--no-progress"])) == 2
    assert "not a demo's" in capsys.readouterr().err
    assert json.loads((theirs / "metrics.json").read_text()) == {"command": "eval"}


def test_demo_policy_cameras_follow_the_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "top_right"
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=["top", "right"])).save_pretrained(ckpt)
    out = tmp_path / "demo"
    assert demo.run(parse(["--quick", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"])) == 0
    assert json.loads((out / "metrics.json").read_text())["policy"]["views"] == ["top", "right"]


def test_demo_on_unseen_random_rigs(tmp_path, capsys):
    """--rig-distribution heldout: a random-rig checkpoint looks through a rig no training episode had."""
    torch.manual_seed(0)
    ckpt = tmp_path / "rigs"
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=["rig0", "rig1", "rig2", "rig3"])
                     ).save_pretrained(ckpt)
    out = tmp_path / "demo"
    assert demo.run(parse(["--quick", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress",
                           "--rig-distribution", "heldout"])) == 0
    assert "heldout rig per episode" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rig_distribution"] == "heldout" and metrics["settings"]["rig_distribution"] == "heldout"
    assert metrics["policy"]["views"] == ["rig0", "rig1", "rig2", "rig3"]         # every view of the rig
    assert demo.run(parse(["--quick", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress",
                           "--policy-cameras", "rig0,rig1"])) == 0
    assert json.loads((out / "metrics.json").read_text())["policy"]["views"] == ["rig0", "rig1"]


def test_demo_shows_a_random_rig_checkpoint_unseen_rigs_by_default(tmp_path, capsys):
    """Without --rig-distribution, a checkpoint trained on random rigs is shown from held-out rigs; one trained on
    named cameras from those cameras."""
    torch.manual_seed(0)
    ckpt = tmp_path / "rigs"
    WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=["rig0", "rig1", "rig2", "rig3"])
                     ).save_pretrained(ckpt)
    out = tmp_path / "demo"
    assert demo.run(parse(["--quick", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"])) == 0
    assert json.loads((out / "metrics.json").read_text())["settings"]["rig_distribution"] == "heldout"
    assert demo.trained_on_rigs(["rig0", "rig12"]) and not demo.trained_on_rigs(["rig0", "left"])
    assert not demo.trained_on_rigs(None) and not demo.trained_on_rigs(["rigs"])
    assert parse([]).tasks == "all" and parse([]).episodes == 1
    # every view of the rig samples 3 steps (the measured rig setting), 2 given views 6, unless told
    rigs = ["rig0", "rig1", "rig2", "rig3"]
    assert demo.settings_from_args(parse([]), rigs).policy.sampler_steps == 3
    assert demo.settings_from_args(parse(["--policy-cameras", "rig0,rig1"]), rigs).policy.sampler_steps == 6
    assert demo.settings_from_args(parse([]), ["left", "right"]).policy.sampler_steps == 6
    assert demo.settings_from_args(parse(["--sampler-steps", "5"]), rigs).policy.sampler_steps == 5


def test_demo_without_checkpoint_says_how_to_make_one(tmp_path, capsys):
    assert demo.run(parse(["--checkpoint", str(tmp_path / "missing")])) == 1
    err = capsys.readouterr().err
    assert "action-images train" in err and "recipes/rig8-ctx-3h.json" in err and "checkpoints/rig8-ctx-3h/" in err
    assert "recipes/rig8-ctx-recover-noise-9k.json" in err and "checkpoints/rig8-ctx-recover-noise-9k/" in err
    assert "make checkpoint-quick" in err


@pytest.mark.parametrize("argv, flag", [(["--episodes", "0"], "--episodes"), (["--sampler-steps", "0"],
                                                                             "--sampler-steps"),
                                        (["--tasks", "fly"], "--tasks"), (["--seed", "-1"], "--seed")])
def test_demo_rejects_bad_flags_before_any_work(checkpoint, tmp_path, capsys, argv, flag):
    out = tmp_path / "demo"
    assert demo.run(parse(["--checkpoint", str(checkpoint), "--out", str(out), "--no-progress", *argv])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not out.exists()


def test_demo_steps_is_a_deprecated_alias(capsys):
    assert parse(["--steps", "3"]).sampler_steps == 3
    assert "--steps is deprecated, use --sampler-steps" in capsys.readouterr().err


def test_quick_mode_runs_one_task_even_for_all():
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    s = demo.settings_from_args(p.parse_args(["--quick", "--tasks", "all"]))
    assert len(s.tasks) == 1 and s.episodes == 1
