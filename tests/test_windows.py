"""Training windows: shapes, frame alignment, determinism, calibration kept through the crop, start frames."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from action_images.codec import ActionImageCodec
from action_images.data.windows import (SyntheticWindows, WindowConfig, Windows, collate, history_times, keyframe_times,
                                         window_poses)
from action_images.geometry import Camera
from action_images.wam import WAMConfig


def test_windows_shapes_alignment_and_determinism():
    cfg = WindowConfig(image_size=32, num_views=2, horizon=3, stride=2)
    ds = SyntheticWindows(cfg, seed=0, num_scenes=3)
    w = ds[5]
    assert w["rgb"].shape == (2, 4, 3, 32, 32) and w["act"].shape == (2, 4, 3, 32, 32)
    assert w["plucker"].shape == (2, 6, 32, 32) and w["poses"].shape == (4, 8)
    assert -1 <= float(w["rgb"].min()) and float(w["rgb"].max()) <= 1 and float(w["act"].min()) >= -1
    assert torch.equal(ds[5]["rgb"], w["rgb"]) and not torch.equal(ds[6]["rgb"], w["rgb"])
    # the action images were drawn with the augmented (cropped + resized) cameras: decoding them recovers the poses
    cams = [Camera(K=w["K"][v].numpy(), T_cam_world=w["T_cam_world"][v].numpy(), width=32, height=32)
            for v in range(2)]
    imgs = ((w["act"].permute(0, 1, 3, 4, 2).numpy() + 1) / 2).astype(np.float32)
    res = ActionImageCodec().decode(imgs, cams)
    ok = res.valid
    assert ok.sum() >= 2
    err = np.linalg.norm(res.poses[ok, :3] - w["poses"][ok, :3].numpy(), axis=-1)
    assert np.median(err) < 0.01, err
    # frame alignment: current frame from the state, keyframes from the targets that led there
    times = keyframe_times(38, 40, 3, 2)
    assert times.tolist() == [38, 39, 39, 39]
    states, actions = np.arange(40)[:, None] * np.ones(8), 100 + np.arange(40)[:, None] * np.ones(8)
    assert window_poses(states, actions, times)[:, 0].tolist() == [38, 138, 138, 138]
    b = collate([ds[0], ds[1]])
    assert b["rgb"].shape[0] == 2 and isinstance(b["instruction"], list)


def test_dataset_windows_decode_to_their_poses(lerobot_root):
    ds = Windows([str(lerobot_root)], WindowConfig(image_size=32, num_views=2, horizon=2, stride=2), seed=0)
    w = ds[3]
    assert w["rgb"].shape == (2, 3, 3, 32, 32) and w["plucker"].shape == (2, 6, 32, 32)
    cams = [Camera(K=w["K"][v].numpy(), T_cam_world=w["T_cam_world"][v].numpy(), width=32, height=32)
            for v in range(2)]
    res = ActionImageCodec().decode(((w["act"].permute(0, 1, 3, 4, 2).numpy() + 1) / 2).astype(np.float32), cams)
    assert np.median(np.linalg.norm(res.poses[res.valid, :3] - w["poses"][res.valid, :3].numpy(), axis=-1)) < 0.01


def test_history_frames_are_the_earlier_windows_current_frames(lerobot_root):
    """A past frame is what the window starting ``history_gap`` steps earlier shows as its current frame, drawn in the
    same crop: its RGB and the action image of the state then; before the first frame, the first frame."""
    assert history_times(5, 2, 2).tolist() == [3, 1] and history_times(3, 2, 2).tolist() == [1, 0]
    assert history_times(0, 1, 4).tolist() == [0]
    cfg = WindowConfig(image_size=32, num_views=2, horizon=2, stride=2, history=2, history_gap=3)
    ds = Windows([str(lerobot_root)], cfg, seed=0)
    assert "history" not in Windows([str(lerobot_root)], WindowConfig(image_size=32), seed=0)[0]
    views = ds.camera_names[:2]
    rng = np.random.default_rng(0)
    w = ds.window(0, 1, 7, rng, views=views, augment=False)
    assert w["history"].shape == (2, 2, 6, 32, 32)
    for k, t in enumerate((4, 1)):
        then = ds.window(0, 1, t, rng, views=views, augment=False)
        assert torch.equal(w["history"][:, k, :3], then["rgb"][:, 0])
        assert torch.allclose(w["history"][:, k, 3:], then["act"][:, 0])
    early, first = (ds.window(0, 1, t, rng, views=views, augment=False) for t in (2, 0))
    assert torch.equal(early["history"][:, 0, :3], first["rgb"][:, 0])        # before the episode: its first frame
    assert torch.equal(early["history"][:, 1], early["history"][:, 0])
    syn = SyntheticWindows(cfg, seed=0, num_scenes=2)[3]                        # the synthetic windows have them too
    assert syn["history"].shape == (2, 2, 6, 32, 32) and collate([syn, syn])["history"].shape[0] == 2


def test_windows_keep_decoded_episodes_up_to_their_cache_size(lerobot_root, monkeypatch):
    """Episodes are read once while they fit ``cache_episodes``; past it the oldest is dropped and read again."""
    def reads(cache: int) -> int:
        ds = Windows([str(lerobot_root)], WindowConfig(image_size=32, num_views=2, horizon=2, stride=2), seed=0,
                     cache_episodes=cache)
        calls, read = [], ds.datasets[0].episode

        def counted(i):
            calls.append(i)
            return read(i)

        monkeypatch.setattr(ds.datasets[0], "episode", counted)
        for _ in range(2):                                              # every episode, twice
            for d, i in ds.episode_keys():
                ds.window(d, i, 0, np.random.default_rng(0))
        return len(calls)

    episodes = len(Windows([str(lerobot_root)], WindowConfig(image_size=32), seed=0).episode_keys())
    assert episodes >= 2 and reads(2048) == episodes and reads(1) == 2 * episodes


def test_window_config_from_model_and_camera_restriction(lerobot_root):
    cfg = WAMConfig.from_preset("cpu-tiny", camera_names=["cam0", "cam2"])
    wcfg = WindowConfig.from_model(cfg)
    assert (wcfg.image_size, wcfg.num_views, wcfg.horizon, wcfg.stride) == (32, 2, 2, 4)
    assert wcfg.views == ("cam0", "cam2")
    ds = Windows([str(lerobot_root)], wcfg, seed=0)
    assert ds.camera_names == ["cam0", "cam2"]
    assert WindowConfig.from_model(cfg, views=["cam1", "cam2"]).views == ("cam1", "cam2")
    assert WindowConfig.from_model(WAMConfig.from_preset("cpu-tiny")).views is None


def test_windows_start_before_the_hold(tmp_path):
    """Frames recorded after success (``extra/hold_steps``) are only ever future keyframes, never start frames."""
    from action_images.data import DatasetWriter
    syn = SyntheticWindows(WindowConfig(), seed=1, num_cameras=2, episode_len=10, native_size=32)
    ep = syn.episode(0)
    images = {c.name: np.stack([syn.render(c, s, ep["cube"], ep["color"], 0.0) for s in ep["states"]])
              for c in syn.cameras}
    with DatasetWriter(tmp_path / "d", fps=10, cameras=syn.cameras, image_size=(32, 32)) as w:
        w.add_episode(instruction=ep["instruction"], actions=ep["actions"], states=ep["states"], images=images,
                      extra={"hold_steps": 6})
    ds = Windows([str(tmp_path / "d")], WindowConfig(image_size=32, num_views=2, horizon=2, stride=2), seed=0)
    assert ds.num_starts(0, 0) == 4
    starts = {int(ds[k]["t0"]) for k in range(60)}
    assert starts == {0, 1, 2, 3}
    w = ds.window(0, 0, 3, np.random.default_rng(0), augment=False)       # keyframes 5 and 7 lie in the hold
    np.testing.assert_allclose(w["poses"][1:].numpy(), ep["actions"][[4, 6]])


def test_workspace_crop_frames_the_box_and_keeps_calibration(lerobot_root):
    from action_images.data.windows import WORKSPACE_MARGIN, augment_camera, view_box, workspace_box
    cam = Camera.look_at([1.2, 0.4, 0.8], [0.5, 0.0, 0.1], 50.0, 64, 64)
    box = [[0.4, -0.1, 0.0], [0.6, 0.1, 0.2]]
    x0, y0, side = workspace_box(cam, box)
    corners = np.array([[x, y, z] for x in (0.4, 0.6) for y in (-0.1, 0.1) for z in (0.0, 0.2)])
    uv, _ = cam.project(corners)
    assert 8 <= side < 64 and 0 <= x0 <= 64 - side and 0 <= y0 <= 64 - side
    assert (uv[:, 0] >= x0 - 0.5).all() and (uv[:, 0] <= x0 + side - 0.5).all()      # every corner inside the square
    assert (uv[:, 1] >= y0 - 0.5).all() and (uv[:, 1] <= y0 + side - 0.5).all()
    assert side <= np.ptp(uv, axis=0).max() * WORKSPACE_MARGIN + 1
    # a box behind the camera, or larger than the image, falls back to the short side
    assert workspace_box(cam, [[5, 5, 5], [6, 6, 6]]) == (0, 0, 64)
    assert workspace_box(cam, [[-5, -5, -5], [5, 5, 5]])[2] == 64
    cfg = WindowConfig(image_size=32, crop="workspace", workspace=tuple(map(tuple, box)))
    assert view_box(cam, cfg) == (x0, y0, side)
    boxes = {augment_camera(cam, np.random.default_rng(k), cfg)[0] for k in range(20)}
    assert len(boxes) > 5 and all(s <= 64 for _, _, s in boxes)
    # the windows of a workspace-crop model still decode to their poses (K follows the crop)
    ws = WAMConfig.from_preset("cpu-tiny", crop="workspace", workspace=[[0.3, -0.3, 0.0], [0.7, 0.3, 0.4]])
    ds = Windows([str(lerobot_root)], WindowConfig.from_model(ws), seed=0)
    for w in (ds[1], ds.window(0, 1, 2, np.random.default_rng(0), augment=False)):
        cams = [Camera(K=w["K"][v].numpy(), T_cam_world=w["T_cam_world"][v].numpy(), width=32, height=32)
                for v in range(2)]
        res = ActionImageCodec().decode(((w["act"].permute(0, 1, 3, 4, 2).numpy() + 1) / 2).astype(np.float32), cams)
        assert res.valid.sum() >= 2
        assert np.median(np.linalg.norm(res.poses[res.valid, :3] - w["poses"][res.valid, :3].numpy(), axis=-1)) < 0.01


def test_open_loop_windows_are_the_models_own_crop_over_every_camera(lerobot_root):
    """The open-loop evaluators read a model's windows as it trains and plans on them: a workspace-crop model's
    un-augmented window is the workspace square (as the live policy's), not the centred one, over every camera."""
    from action_images.openloop import open_windows
    box = [[0.3, -0.3, 0.0], [0.7, 0.3, 0.4]]
    every = Windows([str(lerobot_root)], WindowConfig(), seed=0).camera_names
    ws = WAMConfig.from_preset("cpu-tiny", crop="workspace", workspace=box, camera_names=every[:1])
    data = open_windows(str(lerobot_root), ws)
    assert data.cfg.crop == "workspace" and data.cfg.num_views == 2 and data.camera_names == every
    args, views = (0, 1, 2, np.random.default_rng(0)), every[1:]
    w = data.window(*args, views=views, augment=False)
    own = Windows([str(lerobot_root)], replace(WindowConfig.from_model(ws), views=None), seed=0)
    torch.testing.assert_close(w["K"], own.window(*args, views=views, augment=False)["K"])
    centre = open_windows(str(lerobot_root), WAMConfig.from_preset("cpu-tiny")).window(*args, views=views,
                                                                                        augment=False)
    assert not torch.allclose(w["K"], centre["K"])          # not the centred square's crop


def test_exclude_tasks_leaves_out_one_tasks_episodes(tmp_path):
    """``exclude_tasks`` drops a dataset's episodes of the named tasks (by ``extra/task_name``), only in that
    dataset; naming a task it does not hold, a dataset not given, or a dataset without task names is an error."""
    from action_images.data import DatasetWriter
    syn = SyntheticWindows(WindowConfig(), seed=1, num_cameras=2, episode_len=6, native_size=16)
    roots = []
    for name, tasks in (("a", ("push", "reach", "push")), ("b", ("push",)), ("c", (None,))):
        with DatasetWriter(tmp_path / name, fps=10, cameras=syn.cameras, image_size=(16, 16)) as w:
            for k, task in enumerate(tasks):
                ep = syn.episode(k)
                images = {c.name: np.stack([syn.render(c, s, ep["cube"], ep["color"], 0.0) for s in ep["states"]])
                          for c in syn.cameras}
                w.add_episode(instruction=ep["instruction"], actions=ep["actions"], states=ep["states"],
                              images=images, extra={} if task is None else {"task_name": task})
        roots.append(str(tmp_path / name))
    cfg = WindowConfig(image_size=16, num_views=2, horizon=2, stride=1)
    full = Windows(roots[:2], cfg)
    ds = Windows(roots[:2], cfg, exclude_tasks={roots[0]: ["push"]})
    assert full.index == [(0, 0), (0, 1), (0, 2), (1, 0)] and ds.index == [(0, 1), (1, 0)]
    assert len(ds) == 12 and len(full) == 24
    assert {(int(ds[k]["dataset"]), int(ds[k]["episode"])) for k in range(20)} == {(0, 1), (1, 0)}
    for names in (["pick"], ["push", "pick"]):                       # a misspelt name beside a right one too
        with pytest.raises(ValueError, match="has no episodes of \\['pick'\\]"):
            Windows(roots[:2], cfg, exclude_tasks={roots[0]: names})
    with pytest.raises(ValueError, match="not among the datasets"):
        Windows(roots[:1], cfg, exclude_tasks={roots[1]: ["push"]})
    with pytest.raises(ValueError, match="no extra/task_name"):
        Windows(roots, cfg, exclude_tasks={roots[2]: ["push"]})


def test_current_noise_moves_the_drawn_current_pose_only_in_training_windows(lerobot_root):
    """With ``current_noise`` a training window carries ``act_in0``, frame 0's action image as the model is given it:
    drawn at the current pose moved by N(0, σ²) per axis in ``current_noise_prob`` of the windows, the targets (``act``,
    ``poses``) unchanged; drawn from the window's key, so the same key gives the same draw; evaluation windows
    (``augment=False``) and configs without it carry none."""
    base = WindowConfig(image_size=32, num_views=2, horizon=2, stride=2)
    plain = Windows([str(lerobot_root)], base, seed=0)[3]
    assert "act_in0" not in plain
    moved = Windows([str(lerobot_root)], replace(base, current_noise=0.03, current_noise_prob=1.0), seed=0)
    w = moved[3]
    assert torch.equal(w["act"], plain["act"]) and torch.equal(w["poses"], plain["poses"])   # targets untouched
    assert w["act_in0"].shape == (2, 3, 32, 32) and not torch.equal(w["act_in0"], w["act"][:, 0])
    assert torch.equal(moved[3]["act_in0"], w["act_in0"]) and not torch.equal(moved[4]["act_in0"], w["act_in0"])
    cams = [Camera(K=w["K"][v].numpy(), T_cam_world=w["T_cam_world"][v].numpy(), width=32, height=32)
            for v in range(2)]
    codec = ActionImageCodec()
    drawn = codec.decode(((w["act_in0"].permute(0, 2, 3, 1).numpy() + 1) / 2).astype(np.float32), cams)
    shift = drawn.poses[0, :3] - w["poses"][0, :3].numpy()
    assert drawn.valid[0] and 0.002 < np.linalg.norm(shift) < 0.2, shift
    # the rotation and the gripper are drawn as they are
    assert abs(drawn.poses[0, 7] - float(w["poses"][0, 7])) < 0.2
    same = Windows([str(lerobot_root)], replace(base, current_noise=0.03, current_noise_prob=0.0), seed=0)[3]
    assert torch.equal(same["act_in0"], same["act"][:, 0])
    d, i = moved.index[0]
    assert "act_in0" not in moved.window(d, i, 0, np.random.default_rng(0), augment=False)
    synth = SyntheticWindows(replace(base, current_noise=0.03, current_noise_prob=1.0), seed=0, num_scenes=2)[1]
    assert synth["act_in0"].shape == (2, 3, 32, 32) and not torch.equal(synth["act_in0"], synth["act"][:, 0])
    assert collate([w, moved[4]])["act_in0"].shape == (2, 2, 3, 32, 32)
