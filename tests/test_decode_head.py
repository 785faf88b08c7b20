"""The learned decoder of action images (the ablation of triangulation): it learns, loads, decodes and plugs into the
policy in place of the codec."""

import json

import numpy as np
import pytest
import torch

from action_images.codec import ActionImageCodec
from action_images.data.windows import SyntheticWindows, WindowConfig, collate
from action_images.geometry import Camera
from action_images.decode_head import (DecodeHead, DecodeHeadConfig, LearnedDecoder, augment, frame_samples,
                                       main)
from action_images.wam import CheckpointError, WAMConfig, WorldActionModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def batch():
    syn = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=2), seed=0, num_cameras=3)
    return collate([syn[k] for k in range(4)])


@pytest.fixture(scope="module")
def wam_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("head") / "wam"
    torch.manual_seed(0)
    WorldActionModel(WAMConfig.from_preset("cpu-tiny")).save_pretrained(path)
    return path


def small_head(**kw):
    return DecodeHead(DecodeHeadConfig(image_size=32, channels=[8, 16], keypoints=8, view_dim=32, **kw))


def test_the_head_fits_rendered_action_images(batch):
    torch.manual_seed(0)
    head = small_head()
    act, plucker, poses = frame_samples(batch)
    assert act.shape[:2] == (4 * 3, 2) and plucker.shape == (12, 2, 6, 32, 32) and poses.shape == (12, 8)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        parts = head.loss(act, plucker, poses)
        first = first if first is not None else float(parts["loss"].detach())
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
    assert float(parts["loss"].detach()) < 0.3 * first


def test_augment_keeps_the_range_and_changes_the_images(batch):
    act = frame_samples(batch)[0]
    out = augment(act, torch.Generator().manual_seed(0))
    assert out.shape == act.shape and out.min() >= -1 and out.max() <= 1 and not torch.equal(out, act)


def test_decoder_result_save_load_and_bad_files(batch, tmp_path):
    torch.manual_seed(1)
    head = small_head()
    cams = [Camera(K=batch["K"][0, v].numpy(), T_cam_world=batch["T_cam_world"][0, v].numpy(), width=32, height=32)
            for v in range(2)]
    poses = batch["poses"][0].numpy()
    images = ActionImageCodec().encode(poses, cams)                         # [V, T, R, R, 3]
    dec = LearnedDecoder(head).decode(images, cams)
    T = len(poses)
    assert dec.poses.shape == (T, 8) and dec.valid.all() and not dec.disagree.any()
    np.testing.assert_allclose(np.linalg.norm(dec.poses[:, 3:7], axis=1), 1, atol=1e-9)
    assert ((dec.poses[:, 7] >= 0) & (dec.poses[:, 7] <= 1)).all()

    head.save_pretrained(tmp_path / "h")
    again = LearnedDecoder.from_pretrained(tmp_path / "h").decode(images, cams)
    np.testing.assert_array_equal(dec.poses, again.poses)
    with pytest.raises(ValueError, match="action images of every view"):
        LearnedDecoder(head).decode(images[:1], cams)
    with pytest.raises(ValueError, match="orientation"):          # no constrained fit: the policy refuses it first
        LearnedDecoder(head).decode(images, cams, orientation="topdown")
    with pytest.raises(ValueError, match="position"):
        LearnedDecoder(head).decode(images, cams, position="point")

    meta = json.loads((tmp_path / "h" / "config.json").read_text())
    for bad, match in (({**meta, "format": "action-images-wam"}, "not a decode head"),
                       ({**meta, "config": {**meta["config"], "keypoints": 0}}, "keypoints"),
                       ({**meta, "config": {**meta["config"], "bogus": 1}}, "unknown")):
        (tmp_path / "h" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            LearnedDecoder.from_pretrained(tmp_path / "h")


def test_the_policy_runs_with_the_head_in_place_of_the_codec(wam_dir, tmp_path):
    from action_images.baselines import load_model
    from action_images.policy import ActionImagesPolicy, PolicySettings
    from action_images.sim import make_env

    model = load_model(wam_dir)
    head = DecodeHead(DecodeHeadConfig(image_size=model.config.image_size, channels=[8, 16], keypoints=8,
                                       view_dim=32))
    env = make_env("reach_target", image_size=32, cameras=("left", "right"))
    try:
        obs, _ = env.reset(seed=0)
        policy = ActionImagesPolicy(model, PolicySettings(sampler_steps=1, camera_names=("left", "right")),
                                    codec=LearnedDecoder(head))
        chunk = policy.plan(obs, env.cameras)
        assert chunk.decision == "execute" and np.isfinite(chunk.actions).all() and len(chunk.actions) >= 1
    finally:
        env.close()


def test_command_trains_and_compares(lerobot_root, wam_dir, tmp_path, capsys):
    out = tmp_path / "head"
    assert main(["train", "--checkpoint", str(wam_dir), "--data", str(lerobot_root), "--out", str(out),
                 "--steps", "2", "--batch-size", "2", "--no-progress"]) == 0
    assert (out / "model.safetensors").is_file() and json.loads(capsys.readouterr().out)["steps"] == 2
    assert main(["compare", "--checkpoint", str(wam_dir), "--data", str(lerobot_root), "--head", str(out),
                 "--episodes", "2", "--starts", "1", "--sampler-steps", "1", "--no-progress",
                 "--json", str(tmp_path / "c.json")]) == 0
    res = json.loads((tmp_path / "c.json").read_text())
    assert set(res["errors"]) >= {"triangulation", "head", "head_on_true_images", "still"}
    assert res["errors"]["head"]["n"] == 2 * 1 * 2                          # episodes x starts x keyframes
    capsys.readouterr()
    assert main(["train", "--checkpoint", str(wam_dir), "--data", str(lerobot_root), "--out", str(out),
                 "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps" in err[0]


def test_action_windows_are_the_training_windows_without_video(lerobot_root):
    from action_images.data.windows import Windows
    from action_images.decode_head import action_window

    windows = Windows([str(lerobot_root)], WindowConfig(image_size=32, num_views=2, horizon=2, stride=2), seed=3)
    cache: dict = {}
    for key in range(5):
        full, light = windows[key], action_window(windows, key, cache)
        for k in ("act", "plucker", "poses"):
            torch.testing.assert_close(light[k], full[k], rtol=0, atol=0)


def test_eval_decodes_with_the_head_and_refuses_it_where_it_cannot_apply(wam_dir, tmp_path, capsys):
    from action_images.cli import main as cli
    from action_images.runfiles import read_jsonl

    head_dir = tmp_path / "head"
    small_head().save_pretrained(head_dir)
    common = ["--tasks", "reach_target", "--episodes", "1", "--max-steps", "4", "--image-size", "32", "--videos",
              "0", "--sampler-steps", "1", "--cameras", "left,right", "--no-progress"]
    assert cli(["eval", "--checkpoint", str(wam_dir), "--decode-head", str(head_dir), "--out",
                str(tmp_path / "ev"), *common]) == 0
    head = read_jsonl(tmp_path / "ev" / "episodes.jsonl")[0]
    assert head["settings"]["policy"]["decode_head"] == str(head_dir)
    capsys.readouterr()
    bc_dir = tmp_path / "bc"
    from action_images.baselines import BCConfig, BCModel
    BCModel(BCConfig(image_size=32)).save_pretrained(bc_dir)
    for argv, expect in ((["--checkpoint", str(wam_dir), "--decode-head", str(tmp_path / "nothing")], "--decode-head"),
                         (["--checkpoint", str(bc_dir), "--decode-head", str(head_dir)], "--decode-head")):
        assert cli(["eval", *argv, "--out", str(tmp_path / "bad"), *common]) == 2
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "warning" not in ln]
        assert len(err) == 1 and err[0].startswith("action-images eval: ") and expect in err[0], err
