"""Closed-loop policy: interpolation, an end-to-end episode in the real sim, hold vs replan on view disagreement."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from action_images.codec import ActionImageCodec
from action_images.geometry import Camera, euler_to_quat
from action_images.policy import ActionImagesPolicy, Chunk, PolicySettings, interpolate_chunk, prepare_view
from action_images.wam import WAMConfig, WorldActionModel

torch.set_num_threads(1)


def pose(x, y, z, yaw=0.0, g=1.0):
    return np.concatenate([[x, y, z], euler_to_quat([np.pi, 0.0, yaw]), [g]])


# ---- interpolation ---------------------------------------------------------------------------------------------------
def test_interpolation_hits_keyframes_and_slerps():
    cur = pose(0.0, 0.0, 0.2, 0.0, 1.0)
    keys = np.stack([pose(0.1, 0.0, 0.2, 0.4, 1.0), pose(0.1, 0.2, 0.2, 0.8, 0.0)])
    out = interpolate_chunk(cur, keys, np.array([True, True]), stride=4)
    assert out.shape == (8, 8) and np.isfinite(out).all()
    np.testing.assert_allclose(out[3], keys[0], atol=1e-9)          # keyframe 1 at step stride - 1
    np.testing.assert_allclose(out[7], keys[1], atol=1e-9)
    np.testing.assert_allclose(out[1, :3], [0.05, 0.0, 0.2], atol=1e-9)   # halfway to keyframe 1
    yaw_mid = Rotation.from_quat(out[1, 3:7]).as_euler("xyz")[2]
    assert abs(yaw_mid - 0.2) < 1e-6                                 # slerp halfway
    np.testing.assert_allclose(np.linalg.norm(out[:, 3:7], axis=1), 1.0, atol=1e-9)
    assert out[5, 7] == pytest.approx(0.5)                           # gripper linear between keyframes
    step = interpolate_chunk(cur, keys, np.array([True, True]), stride=4, gripper="step")
    assert step[4, 7] == 0.0 and step[3, 7] == 1.0                   # switches right after keyframe 1


def test_interpolation_skips_invalid_and_holds_when_nothing_decodes():
    cur = pose(0.0, 0.0, 0.2)
    keys = np.stack([np.full(8, np.nan), pose(0.2, 0.0, 0.2)])
    out = interpolate_chunk(cur, keys, np.array([False, True]), stride=2)
    np.testing.assert_allclose(out[:, 0], [0.05, 0.1, 0.15, 0.2], atol=1e-9)
    held = interpolate_chunk(cur, np.full((2, 8), np.nan), np.array([False, False]), stride=2)
    assert np.isfinite(held).all() and np.allclose(held, cur)


def test_prepare_view_workspace_crop_follows_the_config():
    """crop="workspace" (as trained): the square around the projected box, not the centred square."""
    from action_images.data.windows import workspace_box

    cam = Camera.look_at((1.0, 0.0, 0.8), (0.3, 0.0, 0.1), 50, 64, 64, name="front")
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    box = [[0.2, -0.05, 0.0], [0.4, 0.05, 0.1]]
    x0, y0, side = workspace_box(cam, box)
    assert side < 64
    out, cam2 = prepare_view(img, cam, side, crop="workspace", workspace=box)
    np.testing.assert_array_equal(out, img[y0:y0 + side, x0:x0 + side])
    assert not np.array_equal(prepare_view(img, cam, side)[0], out)


def test_prepare_view_matches_camera():
    cam = Camera.look_at((1.0, 0.0, 0.8), (0.3, 0.0, 0.1), 50, 64, 64, name="front")
    img = np.zeros((64, 64, 3), np.uint8)
    out, cam2 = prepare_view(img, cam, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and cam2.width == 32
    p = np.array([0.4, 0.05, 0.1])
    np.testing.assert_allclose(cam2.project(p)[0], (cam.project(p)[0] + 0.5) / 2 - 0.5, atol=1e-9)


# ---- end to end in the real sim --------------------------------------------------------------------------------------
def tiny_model() -> WorldActionModel:
    torch.manual_seed(0)
    return WorldActionModel(WAMConfig.from_preset("cpu-tiny"))


def test_episode_end_to_end_in_real_sim(capsys):
    from action_images.sim import make_env

    env = make_env("reach_target", cameras=("front", "left", "right"), image_size=32)
    try:
        obs, _ = env.reset(seed=3)
        policy = ActionImagesPolicy(tiny_model(), PolicySettings(sampler_steps=2, execute_k=2))
        for _ in range(5):
            a = policy.act(obs, env.cameras)
            assert a.shape == (8,) and np.isfinite(a).all()
            obs, _, term, trunc, info = env.step(a)
            assert "success" in info
        ch = policy.last_chunk
        V, H, R = 2, policy.horizon, policy.image_size
        # a config without camera_names: the first num_views rendered cameras, and one warning line saying so
        assert len(policy.chunks) == 3 and ch.view_names == ["front", "left"]
        warning = capsys.readouterr().err.strip().splitlines()
        assert len(warning) == 1 and "camera_names" in warning[0] and "front,left" in warning[0]
        assert ch.future_rgb.shape == (V, H, R, R, 3) and ch.future_rgb.dtype == np.uint8
        assert ch.future_act.shape == (V, H, R, R, 3) and 0 <= ch.future_act.min() <= ch.future_act.max() <= 1
        assert ch.input_rgb.shape == (V, R, R, 3)
        assert set(ch.timings) == {"observe", "generate", "decode", "chunk", "total"}
        u = ch.uncertainty()
        assert json.dumps(u) and u["decision"] == "execute" and u["invalid_keyframes"] == 0
        # untrained = "nothing moves": the zero-initialised output copies the current frame, so the plan holds still
        np.testing.assert_allclose(ch.actions[:, :3], np.broadcast_to(ch.current[:3], (2, 3)), atol=2e-3)
    finally:
        env.close()


# ---- forced disagreement ---------------------------------------------------------------------------------------------
@dataclass
class StubModel:
    """Returns action images of given keyframe poses; view 1 can see a shifted pose (the views then disagree)."""

    targets: np.ndarray            # [H, 8]
    shift: np.ndarray              # [H] metres added to z in view 1 only (not along an epipolar line)
    config: SimpleNamespace = None
    calls: int = 0

    def __post_init__(self):
        self.config = SimpleNamespace(image_size=32, stride=2, horizon=len(self.targets), num_views=2)

    def eval(self):
        return self

    def sample(self, batch, task="policy", steps=1, cfg_scale=1.0, generator=None, method="euler", noise=None):
        self.calls += 1
        R = self.config.image_size
        cams = [Camera(K=K, T_cam_world=T, width=R, height=R) for K, T in
                zip(batch["K"][0].numpy(), batch["T_cam_world"][0].numpy())]
        codec = ActionImageCodec()
        act = batch["act"].clone()
        for v, cam in enumerate(cams):
            poses = self.targets.copy()
            if v == 1:
                poses[:, 2] += self.shift
            img = torch.from_numpy(codec.encode(poses, [cam])[0]).permute(0, 3, 1, 2) * 2 - 1   # [H, 3, R, R]
            act[0, v, 1:] = img
        return SimpleNamespace(rgb=batch["rgb"].clone(), act=act)


def fake_obs_and_cameras():
    cams = [Camera.look_at(e, (0.45, 0.0, 0.15), 55, 32, 32, name=n)
            for n, e in (("front", (1.3, 0.0, 0.7)), ("left", (0.5, 0.9, 0.7)))]
    obs = {"images": {c.name: np.zeros((32, 32, 3), np.uint8) for c in cams}, "ee_pose": pose(0.45, 0.0, 0.15),
           "instruction": "reach the red ball"}
    return obs, cams


TARGETS = np.stack([pose(0.47, 0.0, 0.15), pose(0.49, 0.0, 0.15), pose(0.51, 0.0, 0.15)])


def test_agreeing_views_execute_the_chunk():
    obs, cams = fake_obs_and_cameras()
    pol = ActionImagesPolicy(StubModel(TARGETS, np.zeros(3)), PolicySettings(execute_k=4))
    ch = pol.plan(obs, cams)
    assert ch.decision == "execute" and not ch.disagree.any() and ch.valid.all()
    assert len(ch.actions) == 4
    np.testing.assert_allclose(ch.actions[1, :3], TARGETS[0, :3], atol=2e-3)


@pytest.mark.parametrize("mode", ["replan", "hold"])
def test_disagreement_replan_executes_agreeing_prefix_hold_stays(mode):
    obs, cams = fake_obs_and_cameras()
    model = StubModel(TARGETS, np.array([0.0, 0.06, 0.06]))     # keyframe 1 agrees, 2 and 3 do not
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=6, on_disagree=mode, disagree_px=0.8))
    ch = pol.plan(obs, cams)
    assert list(ch.disagree) == [False, True, True]
    if mode == "replan":
        assert ch.decision == "replan" and len(ch.actions) == 2     # only the segment to keyframe 1
        np.testing.assert_allclose(ch.actions[-1, :3], TARGETS[0, :3], atol=2e-3)
    else:
        assert ch.decision == "hold" and len(ch.actions) == 6
        np.testing.assert_allclose(ch.actions, np.repeat(ch.current[None], 6, 0))
    assert model.calls == 1 and np.isfinite(ch.actions).all()


def test_disagreement_on_first_keyframe_resamples_then_holds():
    obs, cams = fake_obs_and_cameras()
    model = StubModel(TARGETS, np.full(3, 0.06))
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=4, on_disagree="replan", max_resamples=2,
                                                   disagree_px=0.8))
    ch = pol.plan(obs, cams)
    assert model.calls == 3 and ch.samples == 3
    assert ch.decision == "hold" and len(ch.actions) == 1 and np.allclose(ch.actions[0], ch.current)


def test_nothing_decodes_holds_current_pose_never_nan():
    obs, cams = fake_obs_and_cameras()
    model = StubModel(TARGETS, np.zeros(3))
    model.sample = lambda batch, **kw: SimpleNamespace(rgb=batch["rgb"], act=torch.full_like(batch["act"], -1.0))
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=3))
    pol.last_command = pose(0.4, 0.0, 0.2, g=0.0)
    ch = pol.plan(obs, cams)
    assert ch.decision == "hold_invalid" and not ch.valid.any()
    assert np.isfinite(ch.actions).all() and len(ch.actions) == 3
    assert ch.actions[0, 7] == 0.0                                   # holds the commanded gripper, not the measured


@pytest.mark.parametrize("kwargs, flag", [
    (dict(on_disagree="panic"), "--on-disagree"), (dict(disagree_px=0), "--disagree-px"),
    (dict(horizon=0), "--horizon"), (dict(execute_k=0), "--execute-k"), (dict(execute_k=-3), "--execute-k"),
    (dict(cfg_scale=float("nan")), "--cfg-scale"), (dict(cfg_scale=float("inf")), "--cfg-scale"),
    (dict(sampler_steps=0), "--sampler-steps"), (dict(max_resamples=-1), "--max-resamples"),
    (dict(gripper="loose"), "--gripper"), (dict(method="rk45"), "--method"),
    (dict(camera_names=("left",)), "--policy-cameras"), (dict(camera_names=("left", "left")), "--policy-cameras"),
    (dict(camera_names="all,left"), "--policy-cameras")])
def test_settings_reject_out_of_range_values(kwargs, flag):
    """One line naming the flag and what is allowed; a zero is not read as "use the default"."""
    with pytest.raises(ValueError, match=flag) as e:
        PolicySettings(**kwargs)
    assert "\n" not in str(e.value) and ("must be" in str(e.value))


def test_model_bound_ranges_are_checked_by_the_policy():
    model = StubModel(TARGETS, np.zeros(3))                          # stride 2, horizon 3 -> execute_k <= 6
    with pytest.raises(ValueError, match=r"--execute-k .*\[1, 6\]"):
        ActionImagesPolicy(model, PolicySettings(execute_k=7))
    assert ActionImagesPolicy(model, PolicySettings(execute_k=6)).execute_k == 6
    with pytest.raises(TypeError, match="PolicySettings"):
        ActionImagesPolicy(model, {"execute_k": 6})


def test_checkpoint_cameras_are_the_default(capsys):
    """A config that names its training cameras decides what the policy sees, whatever the render order."""
    from action_images.sim import make_env

    model = tiny_model()
    model.config.camera_names = ["left", "right"]
    env = make_env("reach_target", cameras=("front", "left", "right"), image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        ch = ActionImagesPolicy(model, PolicySettings(sampler_steps=1, execute_k=1)).plan(obs, env.cameras)
        assert ch.view_names == ["left", "right"] and capsys.readouterr().err == ""
        ch = ActionImagesPolicy(model, PolicySettings(camera_names=("right", "front"), sampler_steps=1,
                                                      execute_k=1)).plan(obs, env.cameras)
        assert ch.view_names == ["right", "front"]
    finally:
        env.close()


def test_all_views_plans_on_every_view_given():
    """camera_names "all": the model sees as many views as the observation has (here 3, trained on 2)."""
    from action_images.sim import make_env

    model = tiny_model()
    model.config.camera_names = ["left", "right"]
    env = make_env("reach_target", cameras=("front", "left", "right"), image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        pol = ActionImagesPolicy(model, PolicySettings(camera_names="all", sampler_steps=1, execute_k=1))
        ch = pol.plan(obs, env.cameras)
        assert ch.view_names == ["front", "left", "right"] and ch.future_act.shape[0] == 3
        assert np.isfinite(ch.actions).all()
        obs2 = {**obs, "images": {"left": obs["images"]["left"]}}
        with pytest.raises(ValueError, match=">= 2 views"):
            pol.plan(obs2, env.cameras)
    finally:
        env.close()


def test_default_disagreement_threshold_is_two_sigma():
    """2 sigma of the blob at model resolution (0.1 x image size); the 6 cm shift of the stub (~2 px) passes it."""
    model = StubModel(TARGETS, np.array([0.0, 0.06, 0.06]))
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=6))
    assert pol.codec.reject_px == pytest.approx(0.1 * 32)
    assert ActionImagesPolicy(model, PolicySettings(disagree_px=1.5)).codec.reject_px == 1.5
    obs, cams = fake_obs_and_cameras()
    ch = pol.plan(obs, cams)
    assert ch.decision == "execute" and not ch.disagree.any()


# ---- ensembles -------------------------------------------------------------------------------------------------------
class SpreadModel(StubModel):
    """Sample i of a batch draws the targets moved by ``offsets[i]`` metres along x in every view."""

    offsets: tuple = ()

    def sample(self, batch, task="policy", steps=1, cfg_scale=1.0, generator=None, method="euler", noise=None):
        self.calls += 1
        B, R = batch["act"].shape[0], self.config.image_size
        cams = [Camera(K=K, T_cam_world=T, width=R, height=R) for K, T in
                zip(batch["K"][0].numpy(), batch["T_cam_world"][0].numpy())]
        act = batch["act"].clone()
        for b in range(B):
            poses = self.targets.copy()
            poses[:, 0] += self.offsets[b]
            for v, cam in enumerate(cams):
                act[b, v, 1:] = torch.from_numpy(ActionImageCodec().encode(poses, [cam])[0]).permute(0, 3, 1, 2) * 2 - 1
        return SimpleNamespace(rgb=batch["rgb"].clone(), act=act)


def test_ensemble_averages_the_samples_action_images_in_one_call():
    """Two samples 1 cm either side of the targets: their averaged action images decode between them."""
    obs, cams = fake_obs_and_cameras()
    model = SpreadModel(TARGETS, np.zeros(3))
    model.offsets = (0.01, -0.01)
    ch = ActionImagesPolicy(model, PolicySettings(execute_k=6, ensemble=2)).plan(obs, cams)
    assert model.calls == 1 and ch.decision == "execute"
    np.testing.assert_allclose(ch.keyframes[:, :3], TARGETS[:, :3], atol=2e-3)
    model.calls = 0
    ch = ActionImagesPolicy(model, PolicySettings(execute_k=6)).plan(obs, cams)   # one sample: the first offset
    assert model.calls == 1
    np.testing.assert_allclose(ch.keyframes[:, 0], TARGETS[:, 0] + 0.01, atol=2e-3)


def test_ensemble_first_sample_is_the_single_sample():
    """At an episode's first plan the ensemble's first sample draws the noise a single sample draws (same seed); the
    video frames shown are that first sample's."""
    obs, cams = fake_obs_and_cameras()
    model = tiny_model()
    with torch.no_grad():                      # an untrained model ignores its noise (zero-initialised output)
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))

    def plan(seed, n):
        return ActionImagesPolicy(model, PolicySettings(sampler_steps=1, execute_k=2, ensemble=n),
                                  seed=seed).plan(obs, cams)

    one, three = plan(5, 1), plan(5, 3)
    # equal up to the last bit of the model's arithmetic, which may differ between batch sizes
    assert np.abs(one.future_rgb.astype(int) - three.future_rgb.astype(int)).max() <= 1
    assert three.future_act.shape == one.future_act.shape
    assert not np.array_equal(one.future_rgb, plan(6, 1).future_rgb)        # the noise does reach the frames
    assert not np.allclose(one.future_act, three.future_act)                # and the average differs from sample 0


@pytest.mark.parametrize("value", [0, -1, 65, 2.5])
def test_ensemble_size_is_checked(value):
    with pytest.raises(ValueError, match="--ensemble"):
        PolicySettings(ensemble=value)


def test_an_ensemble_plans_alone_in_a_batched_server():
    """Requests share a model call only when each draws one sample (serve --max-batch)."""
    from action_images.serve.batching import _joinable, plan_batch

    obs, cams = fake_obs_and_cameras()
    model = SpreadModel(TARGETS, np.zeros(3))
    model.offsets = (0.01, -0.01)
    assert _joinable(ActionImagesPolicy(tiny_model(), PolicySettings()))
    pols = [ActionImagesPolicy(model, PolicySettings(execute_k=6, ensemble=2)) for _ in range(2)]
    assert not _joinable(pols[0])
    chunks = plan_batch([(p, obs, cams) for p in pols])
    assert model.calls == 2 and all(c.decision == "execute" for c in chunks)
    np.testing.assert_allclose(chunks[1].keyframes[:, :3], TARGETS[:, :3], atol=2e-3)


# ---- top-down orientation ----------------------------------------------------------------------------------------------
def test_topdown_orientation_decodes_a_yaw_only():
    """Keyframes drawn 10° off vertical decode tilted with orientation "free" and straight down with "topdown"; the
    constrained least-squares fit moves the tool centre by under a centimetre (a share of the points' tilt)."""
    from scipy.spatial.transform import Rotation

    obs, cams = fake_obs_and_cameras()
    tilted = TARGETS.copy()
    tilted[:, 3:7] = (Rotation.from_euler("y", 10, degrees=True) * Rotation.from_quat(TARGETS[:, 3:7])).as_quat()
    model = StubModel(tilted, np.zeros(3))
    free = ActionImagesPolicy(model, PolicySettings(execute_k=6)).plan(obs, cams)
    top = ActionImagesPolicy(model, PolicySettings(execute_k=6, orientation="topdown")).plan(obs, cams)
    assert free.valid.all() and top.valid.all()
    approach = lambda ch: Rotation.from_quat(ch.keyframes[:, 3:7]).as_matrix()[:, :, 2]      # noqa: E731
    assert (np.degrees(np.arccos(-approach(free)[:, 2])) > 8).all()
    np.testing.assert_allclose(approach(top), np.tile([0.0, 0.0, -1.0], (3, 1)), atol=1e-9)
    assert np.linalg.norm(top.keyframes[:, :3] - free.keyframes[:, :3], axis=-1).max() < 0.01
    np.testing.assert_allclose(Rotation.from_quat(top.actions[:, 3:7]).as_matrix()[:, 2, 2], -1.0, atol=1e-6)


def test_orientation_setting_is_checked():
    with pytest.raises(ValueError, match="--orientation"):
        PolicySettings(orientation="tilted")
    with pytest.raises(ValueError, match="--orientation.*--decode-head"):
        PolicySettings(orientation="topdown", decode_head="runs/head")
    assert PolicySettings().to_dict()["orientation"] == "free"


def test_position_setting_is_checked_and_reaches_the_decoder(monkeypatch):
    """--position point plans from the decoder's position point; the default from the rigid fit."""
    from action_images.codec import ActionImageCodec

    seen = []
    decode = ActionImageCodec.decode

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("position", "not passed"))
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(ActionImageCodec, "decode", spy)
    obs, cams = fake_obs_and_cameras()
    model = StubModel(TARGETS, np.zeros(3))
    fit = ActionImagesPolicy(model, PolicySettings(execute_k=6)).plan(obs, cams)
    point = ActionImagesPolicy(model, PolicySettings(execute_k=6, position="point")).plan(obs, cams)
    assert seen == ["fit", "point"] and fit.valid.all() and point.valid.all()
    np.testing.assert_allclose(point.keyframes[:, :3], TARGETS[:, :3], atol=2e-3)   # clean blobs: both exact
    np.testing.assert_allclose(point.keyframes, fit.keyframes, atol=1e-6)
    with pytest.raises(ValueError, match="--position"):
        PolicySettings(position="centroid")
    with pytest.raises(ValueError, match="--position.*--decode-head"):
        PolicySettings(position="point", decode_head="runs/head")
    assert PolicySettings().to_dict()["position"] == "fit"
    assert "position" not in PolicySettings().to_metadata()                  # a default the first protocol implies
    assert PolicySettings(position="point").to_metadata()["position"] == "point"


# ---- zoomed virtual views --------------------------------------------------------------------------------------------
def test_zoom_box_centres_on_the_point_and_stays_inside_the_image():
    from action_images.policy import zoom_box

    cam = Camera.look_at((1.0, 0.0, 0.8), (0.3, 0.0, 0.1), 50, 64, 48, name="front")
    x0, y0, side = zoom_box(cam, np.array([0.3, 0.0, 0.1]), 2.0)
    assert side == 24
    uv = cam.project(np.array([[0.3, 0.0, 0.1]]))[0][0]
    np.testing.assert_allclose([x0 + (side - 1) / 2, y0 + (side - 1) / 2], uv, atol=0.5)
    x0, y0, side = zoom_box(cam, np.array([0.3, 0.6, 0.1]), 2.0)      # projects near the right edge: moved inside
    assert x0 == 64 - 24 and side == 24 and 0 <= y0 <= 48 - 24
    assert zoom_box(cam, np.array([3.0, 0.0, 0.8]), 1.5) == ((64 - 32) // 2, (48 - 32) // 2, 32)   # behind: centred


def test_zoom_adds_a_zoomed_virtual_view_per_view_and_decodes_from_all():
    """zoom 2: four views (each camera and its square around the hand, K updated), the targets decode as before."""
    obs, cams = fake_obs_and_cameras()
    pol = ActionImagesPolicy(StubModel(TARGETS, np.zeros(3)), PolicySettings(execute_k=4, zoom=2.0))
    ch = pol.plan(obs, cams)
    assert ch.view_names == ["front", "left", "front@zoom", "left@zoom"] and ch.future_act.shape[0] == 4
    assert ch.decision == "execute" and ch.valid.all()
    np.testing.assert_allclose(ch.actions[1, :3], TARGETS[0, :3], atol=2e-3)
    hand = obs["ee_pose"][:3][None]
    for plain, zoomed in ((ch.cameras[0], ch.cameras[2]), (ch.cameras[1], ch.cameras[3])):
        assert zoomed.K[0, 0] == pytest.approx(2 * plain.K[0, 0])          # twice the pixels per centimetre
        np.testing.assert_allclose(zoomed.project(hand)[0][0], [15.5, 15.5], atol=1.0)   # the hand at the centre
    assert PolicySettings(zoom=2.0).to_metadata()["zoom"] == 2.0 and "zoom" not in PolicySettings().to_metadata()


@pytest.mark.parametrize("value", [0.5, 0.0, float("nan"), "x"])
def test_zoom_below_one_is_refused_naming_the_flag(value):
    with pytest.raises(ValueError, match="--zoom"):
        PolicySettings(zoom=value)


# ---- one starting noise per episode ----------------------------------------------------------------------------------
class NoiseRecordingModel(StubModel):
    """The stub, recording the starting noise each call is given (None: the model draws its own)."""

    seen: list = None

    def sample(self, batch, task="policy", steps=1, cfg_scale=1.0, generator=None, method="euler", noise=None):
        self.seen = (self.seen or []) + [noise]
        return super().sample(batch, task, steps, cfg_scale, generator, method, noise)


def test_episode_noise_starts_every_replan_from_one_draw_and_reset_draws_again():
    from action_images.serve.batching import plan_batch

    obs, cams = fake_obs_and_cameras()
    model = NoiseRecordingModel(TARGETS, np.zeros(3))
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=2, noise="episode"), seed=5)
    pol.plan(obs, cams)
    pol.plan(obs, cams)
    first, second = model.seen
    assert first.shape == (1, 2, 1 + len(TARGETS), 6, 32, 32) and second is first
    pol.reset(6)
    pol.plan(obs, cams)
    assert not torch.equal(model.seen[-1], first)                    # a new episode, a new draw
    pol.reset(5)
    pol.plan(obs, cams)
    assert torch.equal(model.seen[-1], first)                        # the same seed, the same draw
    fresh = ActionImagesPolicy(model, PolicySettings(execute_k=2))
    fresh.plan(obs, cams)
    assert model.seen[-1] is None                                    # the default: the model draws anew each time
    ch = plan_batch([(pol, obs, cams), (ActionImagesPolicy(model, PolicySettings(execute_k=2, noise="episode")),
                                        obs, cams)])                 # planned alone, each with its own draw
    assert all(isinstance(c, Chunk) for c in ch) and torch.equal(model.seen[-2], first)


def test_episode_noise_resamples_draw_fresh_noise():
    """A resample after disagreement must not repeat the sample it replaces."""
    obs, cams = fake_obs_and_cameras()
    model = NoiseRecordingModel(TARGETS, np.full(3, 0.06))
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=4, max_resamples=2, disagree_px=0.8, noise="episode"))
    pol.plan(obs, cams)
    assert len(model.seen) == 3 and model.seen[0] is not None and model.seen[1] is None and model.seen[2] is None


def test_noise_mode_is_checked_and_left_out_of_old_metadata_at_its_default():
    with pytest.raises(ValueError, match="--noise"):
        PolicySettings(noise="frozen")
    assert PolicySettings(noise="episode").to_metadata()["noise"] == "episode"
    assert "noise" not in PolicySettings().to_metadata()


def test_history_is_read_from_the_steps_act_recorded_gap_steps_apart():
    """A model with past frames (config.history) gets, at each plan, the views of the observations ``history_gap``
    steps back that :meth:`act` recorded (the episode's first before there are enough), drawn as in training: the
    crop of now and the action image of the pose then. ``reset`` forgets them."""
    obs0, cams = fake_obs_and_cameras()
    model = StubModel(TARGETS, np.zeros(3))
    model.config.history, model.config.history_gap = 2, 3
    seen = []
    sample = model.sample
    model.sample = lambda batch, **kw: (seen.append(batch), sample(batch, **kw))[1]
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=2))

    def obs_at(step: int) -> dict:
        x = 0.45 + 0.01 * step
        return {**obs0, "images": {c.name: np.full((32, 32, 3), 10 * step, np.uint8) for c in cams},
                "ee_pose": pose(x, 0.0, 0.15)}

    for step in range(7):                                  # plans at steps 0, 2, 4, 6
        pol.act(obs_at(step), cams)
    assert len(seen) == 4
    codec = ActionImageCodec()
    for plan, step in enumerate((0, 2, 4, 6)):
        h = seen[plan]["history"]
        assert h.shape == (1, 2, 2, 6, 32, 32)
        for k in range(2):
            then = max(0, step - 3 * (k + 1))
            assert torch.allclose(h[0, :, k, :3], torch.full_like(h[0, :, k, :3], 10 * then / 127.5 - 1.0))
            drawn = codec.encode(obs_at(then)["ee_pose"][None], [pol.last_chunk.cameras[0]])[0, 0]
            np.testing.assert_allclose(h[0, 0, k, 3:].permute(1, 2, 0).numpy(), drawn * 2 - 1, atol=1e-6)
    pol.reset()
    ninth = obs_at(9)
    pol.plan(ninth, cams)                                 # a plan alone records its observation too
    assert torch.allclose(seen[-1]["history"][0, :, :, :3], torch.full((2, 2, 3, 32, 32), 90 / 127.5 - 1.0))
    pol.act(ninth, cams)
    assert len(pol.past) == 1 and pol.needs_images and not pol.replanning   # every step is read, not only plans
    with pytest.raises(ValueError, match="past frames"):              # a step without images cannot be recorded
        pol.act({k: v for k, v in obs_at(10).items() if k != "images"}, cams)


def test_the_policy_builds_the_past_frames_its_training_windows_hold(lerobot_root):
    """Replaying a recorded episode through ``act``, every plan's past frames (and current frame) are exactly what
    the un-augmented training window of the same start frame and views holds: same frames, crops, cameras and
    action images, clipped at the episode's start the same way."""
    from action_images.data import LeRobotDataset
    from action_images.data.windows import WindowConfig, Windows

    ds = LeRobotDataset(str(lerobot_root))
    ep, names = ds.episode(1), ds.camera_names[1:3]
    cams = [ep.cameras[n] for n in names]
    model = StubModel(TARGETS, np.zeros(3))
    model.config.history, model.config.history_gap = 2, 3
    seen, now = [], [0]
    sample = model.sample
    model.sample = lambda batch, **kw: (seen.append((now[0], batch)), sample(batch, **kw))[1]
    pol = ActionImagesPolicy(model, PolicySettings(execute_k=2, camera_names=tuple(names)))
    for t in range(len(ep)):
        now[0] = t
        pol.act({"images": {n: ep.images[n][t] for n in ds.camera_names}, "ee_pose": ep.states[t],
                 "instruction": ep.instruction}, cams)
    windows = Windows([str(lerobot_root)], WindowConfig(image_size=32, num_views=2, horizon=3, stride=2, history=2,
                                                        history_gap=3), seed=0)
    assert len(seen) >= 4 and any(t >= 6 for t, _ in seen)
    for t, batch in seen:
        w = windows.window(0, 1, t, np.random.default_rng(0), views=list(names), augment=False)
        assert torch.equal(batch["rgb"][0, :, 0], w["rgb"][:, 0])
        assert torch.equal(batch["history"][0, :, :, :3], w["history"][:, :, :3])
        torch.testing.assert_close(batch["history"][0, :, :, 3:], w["history"][:, :, 3:], atol=1e-6, rtol=0)
