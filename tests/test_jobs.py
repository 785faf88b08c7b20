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
from action_images.jobs import common, generate, imagine, label
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
    (["--batch-size", "0"], "--batch-size"), (["--episodes", "1,x"], "--episodes"),
    (["--episodes", "1,1"], "--episodes"),
    (["--episodes", "7"], "--episodes"), (["--episodes", "-1"], "--episodes"), (["--cameras", "cam0"], "--cameras"),
    (["--cameras", "cam0,top"], "--cameras"),
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


def test_a_model_that_reads_past_frames_is_refused_by_every_job(lerobot_root, tmp_path, capsys):
    """label, imagine and generate build their windows without past frames: a checkpoint that reads them is refused
    in one line naming --checkpoint, before anything is written."""
    cfg = WAMConfig.from_preset("cpu-tiny", history=1)
    cfg.backbone = {**cfg.backbone, "context_channels": 4}
    WorldActionModel(cfg).save_pretrained(tmp_path / "ckpt")
    for module in (label, imagine, generate):
        out = tmp_path / f"out_{module.__name__.rsplit('.', 1)[-1]}"
        argv = ["--checkpoint", tmp_path / "ckpt", "--data", lerobot_root, "--out", out]
        assert _cli(module, argv + ([] if module is label else ["--episode", "0"])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--checkpoint" in err[0] and "past frames" in err[0], err
        assert not out.exists()


# ---- imagine / generate ----------------------------------------------------------------------------------------------


def _read_video(path: Path) -> np.ndarray:
    import imageio.v3 as iio
    return iio.imread(path, index=None, plugin="pyav")


def test_chunk_poses_follow_the_trajectory_and_hold_its_end():
    traj = np.tile(_pose([0, 0, 0], 0), (10, 1))
    traj[:, 0] = np.arange(10)
    now = _pose([-1, 0, 0], 0)
    poses = imagine.chunk_poses(traj, now, horizon=2, stride=4)
    assert poses(0)[:, 0].tolist() == [-1, 3, 7]                              # current pose, then target k*stride - 1
    assert poses(1)[:, 0].tolist() == [7, 9, 9]                               # previous chunk's last; end held
    assert poses(2)[:, 0].tolist() == [9, 9, 9]


class _Brighten:
    """A "model" whose future frames are the current one k * 8 grey levels brighter (k = keyframe), recording its
    calls: the rollout must feed each chunk's last generated frame to the next chunk."""

    def __init__(self, horizon):
        self.config = SimpleNamespace(horizon=horizon)
        self.calls = []

    def sample(self, batch, task, steps, cfg_scale, generator):
        self.calls.append((task, batch))
        rgb = batch["rgb"].clone()
        for k in range(1, rgb.shape[2]):
            rgb[:, :, k] = rgb[:, :, 0] + k * 8 / 127.5
        return SimpleNamespace(rgb=rgb, act=batch["act"].clone())


def test_roll_forward_feeds_each_chunks_last_frame_to_the_next(lerobot_root):
    ds = LeRobotDataset(lerobot_root)
    ep = ds.episode(3)
    wcfg = WindowConfig.from_model(WAMConfig.from_preset("cpu-tiny"), views=["cam0", "cam1"], num_views=2)
    first, cams = common.episode_views(ep, ["cam0", "cam1"], [2], 2, wcfg)
    first = np.full_like(first[:, 0], 40)
    fake = _Brighten(wcfg.horizon)
    poses = imagine.chunk_poses(ep.actions[2:], ep.states[2], wcfg.horizon, wcfg.stride)
    codec = ActionImageCodec()
    gen = common.roll_forward(fake, "world_model", first, cams, "go", 3, codec, poses)
    assert gen.shape == (2, 1 + 3 * 2, 32, 32, 3) and gen.dtype == np.uint8
    assert [int(gen[:, n].mean()) for n in range(7)] == [40 + 8 * n for n in range(7)]
    assert [c[0] for c in fake.calls] == ["world_model"] * 3
    for c, (_, batch) in enumerate(fake.calls):                               # the given action images: the chunk's
        act = ((batch["act"][0] + 1) / 2).movedim(-3, -1).numpy()             # poses, decoded back
        dec = codec.decode(act, cams)
        np.testing.assert_allclose(dec.poses[:, :3], poses(c)[:, :3], atol=0.005)
    video = _Brighten(wcfg.horizon)
    common.roll_forward(video, "video", first, cams, "go", 2, codec)
    assert [c[0] for c in video.calls] == ["video"] * 2
    assert all(float(b["act"].abs().max()) == 0.0 for _, b in video.calls)   # no action stream


def test_imagine_writes_videos_of_the_expected_length_and_size(lerobot_root, checkpoint, tmp_path):
    out = tmp_path / "im"
    assert _cli(imagine, ["--checkpoint", checkpoint, "--data", lerobot_root, "--episode", "1", "--out", out,
                          "--sampler-steps", "2", "--zoom", "2"]) == 0
    res = _strict(out / "imagine.json")
    # 12 frames, H = 2, stride 4: 12 actions need ceil(12 / 8) = 2 chunks -> 1 + 2 * 2 frames
    assert res["chunks"] == 2 and res["frames"] == 5 and res["episode_frames"] == [0, 4, 8, 11, 11]
    assert res["job"] == "world_model" and res["views"] == ["cam0", "cam1"] and res["actions"] == "episode"
    gen, both = _read_video(out / "generated.mp4"), _read_video(out / "real_vs_generated.mp4")
    assert gen.shape == (5, 64, 128, 3) and both.shape == (5, 128, 128, 3)
    # the zeroed model predicts "nothing moves": every generated frame is the start frame
    assert np.abs(gen.astype(int) - gen[:1].astype(int)).mean() < 2
    assert np.abs(both[:, 64:].astype(int) - gen.astype(int)).mean() < 2
    assert res["scores"]["psnr_db"] == pytest.approx(res["scores"]["copy_start_frame_psnr_db"], abs=0.5)
    before = (out / "imagine.json").read_bytes()
    again = ["--checkpoint", checkpoint, "--data", lerobot_root, "--episode", "0", "--out", out, "--sampler-steps",
             "1", "--zoom", "1"]
    assert _cli(imagine, again) == 2 and (out / "imagine.json").read_bytes() == before    # nothing written over
    assert _cli(imagine, [*again, "--overwrite"]) == 0 and _strict(out / "imagine.json")["episode"] == 0


def test_imagine_takes_a_trajectory_file(lerobot_root, checkpoint, tmp_path):
    ep = LeRobotDataset(lerobot_root).episode(0)
    np.savez(tmp_path / "traj.npz", actions=ep.actions[:3])
    (tmp_path / "traj.json").write_text(json.dumps({"actions": ep.actions[:9].tolist()}))
    for name, chunks, frames in (("traj.npz", ["--chunks", "3"], 7), ("traj.json", [], 5)):
        out = tmp_path / name.replace(".", "_")
        assert _cli(imagine, ["--checkpoint", checkpoint, "--data", lerobot_root, "--episode", "0", "--out", out,
                              "--actions", tmp_path / name, "--start-frame", "2", "--sampler-steps", "1", "--zoom",
                              "1", *chunks]) == 0
        res = _strict(out / "imagine.json")
        assert res["frames"] == frames and res["scores"] is None and res["actions"].endswith(name)
        assert _read_video(out / "generated.mp4").shape == (frames, 32, 64, 3)
        assert not (out / "real_vs_generated.mp4").exists()                    # no real video for these actions


def test_generate_writes_videos_of_the_expected_length_and_size(lerobot_root, checkpoint, tmp_path):
    out = tmp_path / "gen"
    assert _cli(generate, ["--checkpoint", checkpoint, "--data", lerobot_root, "--episode", "2", "--chunks", "3",
                           "--instruction", "push the cube", "--out", out, "--sampler-steps", "1",
                           "--cameras", "cam2,cam1", "--zoom", "1"]) == 0
    res = _strict(out / "generate.json")
    assert res["job"] == "video" and res["chunks"] == 3 and res["frames"] == 7
    assert res["instruction"] == "push the cube" and res["views"] == ["cam2", "cam1"]
    assert _read_video(out / "generated.mp4").shape == (7, 32, 64, 3)
    assert _read_video(out / "real_vs_generated.mp4").shape == (7, 64, 64, 3)


ROLL_BAD = [
    (["--episode", "-1"], "--episode"), (["--episode", "4"], "--episode"), (["--start-frame", "-1"], "--start-frame"),
    (["--start-frame", "12"], "--start-frame"), (["--zoom", "0"], "--zoom"), (["--instruction", " "], "--instruction"),
    (["--sampler-steps", "0"], "--sampler-steps"), (["--cfg-scale", "-1"], "--cfg-scale"), (["--seed", "-2"], "--seed"),
    (["--cameras", "cam0,cam0"], "--cameras"), (["--cameras", "cam0,top"], "--cameras"),
    (["--chunks", "0"], "--chunks"), (["--chunks", str(common.MAX_CHUNKS + 1)], "--chunks"),
]
IMAGINE_BAD = [(["--actions", "missing.npz"], "--actions"), (["--actions", "traj.txt"], "--actions"),
               (["--actions", "bad.json"], "--actions"), (["--actions", "obj.npz"], "--actions"),
               (["--actions", "short.npz"], "--actions")]
CASES = ([(generate, *b) for b in ROLL_BAD] + [(imagine, *b) for b in ROLL_BAD + IMAGINE_BAD])


@pytest.mark.parametrize("module,extra,flag", CASES, ids=[f"{m.__name__.split('.')[-1]} {' '.join(e)}"
                                                          for m, e, _ in CASES])
def test_rollout_bad_flags_exit_2_naming_the_flag(lerobot_root, checkpoint, tmp_path, monkeypatch, capsys, module,
                                                  extra, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "traj.txt").write_text("0 0 0")
    (tmp_path / "bad.json").write_text(json.dumps([[0, 0, 0, 0, 0, 0, 2, 1]]))            # quaternion not unit
    np.savez(tmp_path / "obj.npz", actions=np.array([object()], dtype=object))             # needs pickle: refused
    np.savez(tmp_path / "short.npz", actions=np.zeros((3, 7)))
    calls = []
    monkeypatch.setattr(common, "roll_forward", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(module, "roll_forward", lambda *a, **k: calls.append(a))
    argv = ["--checkpoint", checkpoint, "--data", lerobot_root, "--out", tmp_path / "o"]
    if "--episode" not in extra:
        argv += ["--episode", "0"]
    rc = _cli(module, argv + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not calls and not (tmp_path / "o").exists()
    assert len(err.splitlines()) == 1 and flag in err, err


def test_episode_out_of_range_is_refused_before_the_model_loads(lerobot_root, checkpoint, tmp_path, monkeypatch,
                                                                capsys):
    """meta/info.json's episode count is checked first: no model or dataset is loaded for a flag out of range."""
    loads = []
    monkeypatch.setattr(common, "load", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(label, "load", lambda *a, **k: loads.append(a))
    n = common.declared_episodes(lerobot_root)
    assert n == LeRobotDataset(lerobot_root).num_episodes
    base = ["--checkpoint", checkpoint, "--data", lerobot_root, "--out", tmp_path / "o"]
    for module, extra, flag in ((imagine, ["--episode", str(n)], "--episode"),
                                (generate, ["--episode", str(n)], "--episode"),
                                (label, ["--episodes", f"0,{n}"], "--episodes")):
        assert _cli(module, base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and f"it has {n}" in err, err
    assert not loads and not (tmp_path / "o").exists()


def test_unknown_camera_and_start_frame_past_the_end_are_refused_before_the_model_loads(
        lerobot_root, checkpoint, tmp_path, monkeypatch, capsys):
    """meta/info.json's cameras and meta/episodes' lengths are checked first, as the episode count is."""
    loads = []
    monkeypatch.setattr(common, "load", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(label, "load", lambda *a, **k: loads.append(a))
    ds = LeRobotDataset(lerobot_root)
    assert common.declared_cameras(lerobot_root) == list(ds.camera_names)
    length = len(ds.episode(1))
    assert common.declared_length(lerobot_root, 1) == length and common.declared_length(lerobot_root, 99) is None
    base = ["--checkpoint", checkpoint, "--data", lerobot_root, "--out", tmp_path / "o"]
    for module, extra, words in (
            (label, ["--cameras", "cam0,nope"], ["--cameras", "['nope']"]),
            (imagine, ["--episode", "0", "--cameras", "nope,cam1"], ["--cameras", "['nope']"]),
            (generate, ["--episode", "1", "--start-frame", str(length)], ["--start-frame", f"({length} frames)"]),
            (imagine, ["--episode", "1", "--start-frame", str(length)], ["--start-frame", f"({length} frames)"])):
        assert _cli(module, base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not loads and not (tmp_path / "o").exists()


def test_imagine_refuses_a_trajectory_longer_than_the_chunk_cap(lerobot_root, checkpoint, tmp_path, monkeypatch,
                                                                capsys):
    calls = []
    monkeypatch.setattr(imagine, "roll_forward", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(common, "MAX_CHUNKS", 1)
    monkeypatch.setattr(imagine, "MAX_CHUNKS", 1)
    rc = _cli(imagine, ["--checkpoint", checkpoint, "--data", lerobot_root, "--out", tmp_path / "o", "--episode", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not calls and "--chunks" in err and "more than 1" in err, err


def test_cli_routes_the_three_jobs():
    from action_images import cli

    for name, module in (("label", label), ("imagine", imagine), ("generate", generate)):
        assert cli.COMMANDS[name][0] == module.__name__
        assert callable(module.add_arguments) and callable(module.run) and module.__doc__.count(f"action-images {name}")
    assert cli.main(["imagine", "--checkpoint", "none", "--data", "none", "--episode", "0", "--out", "x",
                     "--zoom", "0"]) == 2
