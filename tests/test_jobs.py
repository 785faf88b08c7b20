"""``action-images label / imagine / generate``: the labeler, world-model and video jobs as commands, on a tiny
random model and the 4-episode synthetic dataset (``lerobot_root``: 3 cameras cam0..cam2, 40 px, 12 frames)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from action_images.codec import ActionImageCodec
from action_images.data import LeRobotDataset
from action_images.data.windows import WindowConfig, Windows
from action_images.jobs import common, label
from action_images.wam import WAMConfig, WorldActionModel

torch.set_num_threads(1)


def _tiny(camera_names=None) -> WorldActionModel:
    """cpu-tiny (32 px, H = 2, stride 4) with random weights and its output layer zeroed: "nothing moves"."""
    torch.manual_seed(0)
    model = WorldActionModel(WAMConfig.from_preset("cpu-tiny", camera_names=camera_names)).eval()
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0.0, 0.2)
        model.backbone.out.weight.zero_()
        model.backbone.out.bias.zero_()
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "zero"
    _tiny().save_pretrained(path)
    return path


def _cli(module, argv):
    """``action-images <command> ARGV`` as the CLI router runs it; argparse errors -> their exit code."""
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    try:
        return module.run(p.parse_args([str(a) for a in argv]))
    except SystemExit as e:
        return e.code


def _strict(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


# ---- windows ---------------------------------------------------------------------------------------------------------
def test_window_at_is_the_training_window_without_augmentation(lerobot_root):
    cfg = WAMConfig.from_preset("cpu-tiny")
    wcfg = WindowConfig.from_model(cfg, views=["cam2", "cam0"], num_views=2)
    win = Windows([str(lerobot_root)], wcfg)
    ep = win.datasets[0].episode(1)
    for t0 in (0, 5, 11):
        ref = win.window(0, 1, t0, np.random.default_rng(0), views=["cam2", "cam0"], augment=False)
        got = common.window_at(ep, t0, ["cam2", "cam0"], wcfg, win.codec)
        for k in ("rgb", "act", "plucker", "poses", "K", "T_cam_world"):
            assert torch.equal(got[k], ref[k]), (t0, k)
        assert got["t0"] == ref["t0"] == t0 and got["instruction"] == ref["instruction"]


# ---- label -----------------------------------------------------------------------------------------------------------
def test_label_targets_follow_the_training_alignment():
    # cpu-tiny: H = 2, stride 4; keyframe k at t_k shows action[t_k - 1]; frame 0 the pose action[t0 - 1] led to
    assert label.label_targets(0, 12, 2, 4) == [(1, 3, True), (2, 7, True)]
    assert label.label_targets(9, 12, 2, 4) == [(1, 10, True), (2, 10, True), (0, 8, False)]   # clipped keyframes
    assert label.label_targets(11, 12, 2, 4) == [(1, 10, True), (2, 10, True), (0, 10, False), (0, 11, False)]
    assert label.window_starts(12, 1) == list(range(12))
    assert label.window_starts(12, 5) == [0, 5, 10, 11]
    for T in (1, 2, 5, 12):                                                   # every action is labeled at step 1
        targets = [x for t0 in label.window_starts(T, 1) for x in label.label_targets(t0, T, 2, 4)]
        assert {j for _, j, _ in targets} == set(range(T)), T
        key = {j for _, j, is_key in targets if is_key}
        assert key == (set(range(min(3, T - 2), T - 1)) if T > 1 else {0}), (T, key)    # clipped: action T - 2


def _pose(xyz, yaw_deg, g=1.0):
    return np.r_[xyz, Rotation.from_euler("z", yaw_deg, degrees=True).as_quat(), g]


def test_stitch_weights_by_confidence_and_flags_disagreement():
    D = label.Decode
    fallback = np.tile(_pose([9, 9, 9], 0.0), (4, 1))
    decodes = [
        [D(_pose([0, 0, 0], 0), 0.75, True, False), D(_pose([0.4, 0, 0], 90), 0.25, True, False),
         D(_pose([5, 5, 5], 0), 1.0, True, True)],                              # the disagreeing one is left out
        [D(_pose([1, 0, 0], 0, 0.0), 0.5, True, True), D(_pose([1, 0, 0], 90, 0.0), 0.5, True, True)],
        [D(np.full(8, np.nan), 0.0, False, False)],
        [],
    ]
    lab = label.stitch(decodes, fallback)
    np.testing.assert_allclose(lab.poses[0, :3], [0.1, 0, 0], atol=1e-12)
    yaw = Rotation.from_quat(lab.poses[0, 3:7]).as_euler("xyz", degrees=True)[2]
    assert 10 < yaw < 40                                                      # pulled towards the heavier 0 deg
    assert lab.valid[0] and not lab.disagree[0] and lab.confidence[0] == pytest.approx(0.5)
    assert lab.valid[1] and lab.disagree[1]                                   # only disagreeing decodes: flagged
    assert Rotation.from_quat(lab.poses[1, 3:7]).as_euler("xyz", degrees=True)[2] == pytest.approx(45, abs=1e-6)
    assert lab.poses[1, 7] == 0.0
    for j in (2, 3):                                                          # nothing decoded: the state, flagged
        assert not lab.valid[j] and lab.disagree[j] and lab.confidence[j] == 0
        np.testing.assert_array_equal(lab.poses[j], fallback[j])
    assert lab.decodes.tolist() == [3, 2, 1, 0]


class _Oracle:
    """A "model" whose labeler output is the true action images of the window."""
    tasks: list = []

    def sample(self, batch, task, **kw):
        self.tasks.append(task)
        return SimpleNamespace(act=batch["act"].clone())


def test_label_episode_recovers_the_actions_from_perfect_action_images(lerobot_root):
    ds = LeRobotDataset(lerobot_root)
    ep = ds.episode(0)
    wcfg = WindowConfig.from_model(WAMConfig.from_preset("cpu-tiny"), views=["cam0", "cam1"], num_views=2)
    oracle = _Oracle()
    lab = label.label_episode(oracle, ep, ["cam0", "cam1"], wcfg, ActionImageCodec(), batch_size=5)
    assert set(oracle.tasks) == {"labeler"}
    T = len(ep)
    truth = np.r_[ep.actions[:-1], ep.states[-1:]]                            # the last action: the last pose seen
    assert lab.valid.all() and (lab.confidence > 0.5).all()
    err = np.linalg.norm(lab.poses[:, :3] - truth[:, :3], axis=-1)
    assert err.max() < 0.005, err                                             # < 5 mm at 32 px
    ang = (Rotation.from_quat(lab.poses[:, 3:7]).inv() * Rotation.from_quat(truth[:, 3:7])).magnitude()
    assert np.degrees(ang).max() < 3.0
    assert ((lab.poses[:, 7] > 0.5) == (truth[:, 7] > 0.5)).all()
    # actions 0..2 no keyframe shows (stride 4): they come from frame-0 decodes (here actions = next states)
    assert lab.decodes[:3].tolist() == [0, 0, 0] and lab.decodes[3:T - 1].min() >= 1


def test_label_writes_a_dataset_a_zeroed_model_labels_as_the_current_pose(lerobot_root, checkpoint, tmp_path):
    out = tmp_path / "labeled"
    assert _cli(label, ["--checkpoint", checkpoint, "--data", lerobot_root, "--out", out, "--episodes", "2,0",
                        "--sampler-steps", "2", "--window-step", "1"]) == 0
    src, ds = LeRobotDataset(lerobot_root), LeRobotDataset(out)
    assert ds.num_episodes == 2 and ds.camera_names == src.camera_names and ds.fps == src.fps
    assert ds.episode_lengths == [src.episode_lengths[2], src.episode_lengths[0]]
    info = json.loads((out / "meta" / "info.json").read_text())
    assert set(label.LABEL_FEATURES) <= set(info["features"])
    for new, old in enumerate((2, 0)):
        a, b = ds.episode(new), src.episode(old)
        cols = label.read_label_columns(out, new)
        assert a.extra["label_source_episode"] == old and a.instruction == b.instruction
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(cols[label.ORIGINAL_KEY], b.actions)   # the original actions kept
        # the zeroed model draws no blob: nothing decodes, every frame is flagged and holds the current pose
        np.testing.assert_array_equal(a.actions, b.states)
        assert cols[label.CONFIDENCE_KEY].shape == (len(b),) and (cols[label.CONFIDENCE_KEY] == 0).all()
        assert not cols[label.VALID_KEY].any() and cols[label.DISAGREE_KEY].all()
        for cam in src.camera_names:                                         # the same videos (lossless re-encode)
            assert np.abs(a.images[cam].astype(int) - b.images[cam].astype(int)).max() <= 3
    res = _strict(out / label.LABEL_INFO_PATH)
    assert res["views"] == ["cam0", "cam1"] and res["job"] == "labeler"       # the dataset's first num_views
    assert [e["source_episode"] for e in res["episodes"]] == [2, 0] and res["valid_fraction"] == 0.0


def test_label_columns_survive_with_the_oracle(lerobot_root, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(WorldActionModel, "sample", lambda self, batch, task, **kw: _Oracle.sample(_Oracle(), batch,
                                                                                                   task))
    out = tmp_path / "oracle"
    assert _cli(label, ["--checkpoint", checkpoint, "--data", lerobot_root, "--out", out, "--episodes", "1",
                        "--cameras", "cam1,cam2", "--window-step", "3"]) == 0
    ep, src = LeRobotDataset(out).episode(0), LeRobotDataset(lerobot_root).episode(1)
    cols = label.read_label_columns(out, 0)
    v = cols[label.VALID_KEY]
    assert v.sum() >= len(src) // 2 and (cols[label.CONFIDENCE_KEY][v] > 0.5).all()
    assert np.abs(ep.actions[v, :3] - np.r_[src.actions[:-1], src.states[-1:]][v, :3]).max() < 0.005
    assert (cols[label.DISAGREE_KEY][~v]).all()                               # actions no window showed: flagged
    res = _strict(out / label.LABEL_INFO_PATH)
    assert res["views"] == ["cam1", "cam2"] and res["episodes"][0]["vs_original"]["position_cm_median"] < 0.5


LABEL_BAD = [
    (["--sampler-steps", "0"], "--sampler-steps"), (["--threads", "0"], "--threads"), (["--seed", "-1"], "--seed"),
    (["--cfg-scale", "nan"], "--cfg-scale"), (["--window-step", "0"], "--window-step"),
    (["--batch-size", "0"], "--batch-size"), (["--episodes", "1,x"], "--episodes"), (["--episodes", "1,1"], "--episodes"),
    (["--episodes", "7"], "--episodes"), (["--cameras", "cam0"], "--cameras"), (["--cameras", "cam0,top"], "--cameras"),
]


@pytest.mark.parametrize("extra,flag", LABEL_BAD, ids=[" ".join(b[0]) for b in LABEL_BAD])
def test_label_bad_flags_exit_2_naming_the_flag(lerobot_root, checkpoint, tmp_path, monkeypatch, capsys, extra, flag):
    calls = []
    monkeypatch.setattr(label, "label_episode", lambda *a, **k: calls.append(a))
    rc = _cli(label, ["--checkpoint", checkpoint, "--data", lerobot_root, "--out", tmp_path / "o", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not calls and not (tmp_path / "o").exists()
    assert len(err.splitlines()) == 1 and flag in err, err


def test_label_bad_paths_exit_2(lerobot_root, checkpoint, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    for argv, flag in ((["--checkpoint", tmp_path, "--data", lerobot_root, "--out", tmp_path / "o"], "--checkpoint"),
                       (["--checkpoint", checkpoint, "--data", tmp_path, "--out", tmp_path / "o"], "--data"),
                       (["--checkpoint", checkpoint, "--data", lerobot_root, "--out", tmp_path / "full"], "--out"),
                       (["--checkpoint", checkpoint, "--data", lerobot_root, "--out", lerobot_root], "--out")):
        assert _cli(label, argv) == 2
        assert flag in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep"
