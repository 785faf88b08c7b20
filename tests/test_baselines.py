"""Baselines (bc, dp): chunk numbers, camera conditioning, view fusion, learning, the sampler, checkpoints and their
formats, ``train --method`` with bit-for-bit resume, the closed-loop policy in the sim and ``eval`` on a checkpoint."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.spatial.transform import Rotation

from action_images import baselines, evaluate, train
from action_images.baselines import BCConfig, BCModel, DiffusionPolicyModel, DPConfig, TokensConfig, load_model
from action_images.baselines.common import decode_chunk, encode_chunk
from action_images.baselines.policy import BaselinePolicy, make_policy
from action_images.data.windows import SyntheticWindows, WindowConfig, collate
from action_images.policy import ActionImagesPolicy, PolicySettings
from action_images.wam import CheckpointError, WAMConfig, WorldActionModel

torch.set_num_threads(1)

TINY_NET = {"channels": [8, 16], "keypoints": 4, "view_dim": 16, "text_dim": 8, "text_vocab": 64}
TINY_BC = {**TINY_NET, "hidden": 32, "depth": 1}
TINY_DP = {**TINY_NET, "groups": 4, "down_dims": [16, 32], "cond_dim": 32, "time_dim": 8}
SHAPE = {"image_size": 16, "horizon": 2, "stride": 2}


def bc(**kw) -> BCModel:
    torch.manual_seed(0)
    return BCModel(BCConfig(**{**SHAPE, **TINY_BC, **kw}))


def dp(**kw) -> DiffusionPolicyModel:
    torch.manual_seed(0)
    return DiffusionPolicyModel(DPConfig(**{**SHAPE, **TINY_DP, **kw}))


def windows(cfg, n: int = 4, seed: int = 0) -> dict:
    ds = SyntheticWindows(WindowConfig.from_model(cfg), seed=seed, num_scenes=4)
    return collate([ds[i] for i in range(n)])


def random_poses(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q = Rotation.random(n, random_state=seed).as_quat()
    q[0] = Rotation.from_euler("x", 180, degrees=True).as_quat()              # top-down gripper: w = 0
    return torch.from_numpy(np.concatenate([rng.uniform(-0.5, 0.5, (n, 3)), q, rng.uniform(0, 1, (n, 1))], 1))


# ---- chunk numbers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rotation", ["6d", "quat"])
def test_chunk_numbers_round_trip_and_zero_holds_still(rotation):
    cfg = BCConfig(rotation=rotation, horizon=5)
    poses = random_poses(6)
    current, targets = poses[:1].repeat(2, 1), torch.stack([poses[1:], poses[[1, 2, 0, 4, 5]]])
    x = encode_chunk(current, targets, cfg)
    assert x.shape == (2, 5, cfg.action_dim)
    back = decode_chunk(current, x, cfg)
    np.testing.assert_allclose(back[..., :3], targets[..., :3], atol=1e-9)
    np.testing.assert_allclose(back[..., 7], targets[..., 7], atol=1e-9)
    angle = (Rotation.from_quat(back[..., 3:7].reshape(-1, 4).numpy()).inv()
             * Rotation.from_quat(targets[..., 3:7].reshape(-1, 4).numpy())).magnitude()
    assert angle.max() < 1e-6
    # the target equal to the current pose is the zero chunk (gripper aside), even at w = 0
    still = encode_chunk(current, current[:, None].repeat(1, 3, 1), cfg)
    assert still[..., :-1].abs().max() < 1e-6


# ---- the observation encoder -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("plucker", [True, False])
def test_plucker_switch_is_camera_conditioning(plucker):
    m = bc(plucker=plucker)
    assert m.encoder.cnn[0].in_channels == (9 if plucker else 3)
    b = windows(m.config)
    other = dict(b, plucker=torch.roll(b["plucker"], 1, dims=0))             # same pixels, other cameras' rays
    with torch.no_grad():
        same = torch.equal(m.encoder(b), m.encoder(other))
    assert same != plucker


def test_set_fusion_ignores_view_order_concat_does_not():
    swap = (lambda b: dict(b, rgb=b["rgb"].flip(1), plucker=b["plucker"].flip(1)))
    for fusion, invariant in (("set", True), ("concat", False)):
        m = bc(fusion=fusion)
        b = windows(m.config)
        with torch.no_grad():
            a, c = m.encoder(b), m.encoder(swap(b))
        assert torch.allclose(a, c, atol=1e-5) == invariant, fusion
    b = windows(m.config)
    with pytest.raises(ValueError, match="concat"):
        m.encoder(dict(b, rgb=b["rgb"][:, :1], plucker=b["plucker"][:, :1]))
    assert bc(pool="avg").encoder(b).shape == bc().encoder(b).shape


# ---- behaviour cloning -----------------------------------------------------------------------------------------------
def test_bc_untrained_holds_still_and_learns_a_batch():
    m = bc()
    b = windows(m.config, n=8)
    p = m.predict(b)
    assert p.shape == (8, 2, 8) and p.dtype == torch.float64
    np.testing.assert_allclose(p[..., :7], b["poses"][:, :1, :7].expand(-1, 2, -1), atol=1e-6)   # zero head
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        out = m(b)
        first = first if first is not None else out["pos_err_cm"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert set(out) == {"loss", "loss_pos", "loss_rot", "loss_grip", "pos_err_cm"}
    err = (m.predict(b)[..., :3] - b["poses"][:, 1:, :3]).norm(dim=-1).mean().item() * 100
    assert err < 0.3 * first, (first, err)


@pytest.mark.parametrize("kw", [{"loss": "l1"}, {"rotation": "quat"}, {"pool": "avg", "plucker": False}])
def test_bc_variants_give_finite_gradients(kw):
    m = bc(**kw)
    out = m(windows(m.config))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(torch.isfinite(p.grad).all() for p in m.parameters()
                                               if p.grad is not None)


# ---- diffusion policy ------------------------------------------------------------------------------------------------
def test_dp_sampler_recovers_the_chunk_from_the_exact_velocity(monkeypatch):
    """With the true velocity (x_t - x0) / t, Euler integration from noise lands on x0: the sampler, the gripper
    mapping and the decoding to absolute poses are exact."""
    m = dp(horizon=3)
    b = windows(m.config)
    x0 = m.clean_chunk(b)
    monkeypatch.setattr(m, "velocity", lambda x, t, obs: (x - x0) / t[:, None, None])
    for steps in (1, 4):
        p = m.predict(b, generator=torch.Generator().manual_seed(1), steps=steps)
        np.testing.assert_allclose(p[..., :3], b["poses"][:, 1:, :3], atol=1e-5)
        np.testing.assert_allclose(p[..., 7], b["poses"][:, 1:, 7], atol=1e-5)
        dots = (p[..., 3:7] * b["poses"][:, 1:, 3:7]).sum(-1).abs()
        assert dots.min() > 1 - 1e-6


@pytest.mark.parametrize("prediction", ["x0", "velocity"])
def test_dp_sampling_is_seeded_and_learns_a_batch(prediction):
    m = dp(horizon=4, prediction=prediction)
    b = windows(m.config)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert torch.equal(m.predict(b, g(0), steps=3), m.predict(b, g(0), steps=3))
    assert not torch.equal(m.predict(b, g(0), steps=3), m.predict(b, g(1), steps=3))
    assert torch.equal(m(b, g(5))["loss"], m(b, g(5))["loss"])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for s in range(200 if prediction == "x0" else 20):
        loss = m(b, g(s))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    if prediction == "x0":      # the sampled chunk lands near the demonstrated one (holding still is far off)
        err = (m.predict(b, g(0), steps=10)[..., :3] - b["poses"][:, 1:, :3]).norm(dim=-1).mean()
        still = (b["poses"][:, :1, :3] - b["poses"][:, 1:, :3]).norm(dim=-1).mean()
        assert err < 0.3 * still, (err, still)


# ---- checkpoints -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [({"rotation": "euler"}, "rotation must be one of"),
                                           ({"crop": "zoom"}, "crop must be one of"),
                                           ({"crop": "workspace"}, "crop 'workspace' needs a workspace box"),
                                           ({"workspace": [[0, 0, 0], [0, 1, 1]]}, "workspace must be"),
                                           ({"camera_names": ["left", ""]}, "camera_names must be")])
def test_every_baseline_config_checks_its_chunk_fields_alike(bad, message):
    """BC, Diffusion Policy and the action-token model refuse the same bad window / chunk fields with one message."""
    for cls in (BCConfig, DPConfig, TokensConfig):
        with pytest.raises(ValueError, match=message):
            cls(**bad).validate()


def test_save_load_and_load_model_dispatch(tmp_path):
    b = windows(bc().config)
    for name, model in (("bc", bc(rotation="quat")), ("dp", dp())):
        model.save_pretrained(tmp_path / name)
        meta = json.loads((tmp_path / name / "config.json").read_text())
        assert meta["format"] == f"action-images-{name}"
        back = load_model(tmp_path / name)
        assert type(back) is type(model) and back.config == model.config
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        assert torch.equal(back.predict(b, g(), steps=2), model.predict(b, g(), steps=2))
    WorldActionModel(WAMConfig.from_preset("cpu-tiny")).save_pretrained(tmp_path / "wam")
    assert isinstance(load_model(tmp_path / "wam"), WorldActionModel)
    # the wrong class, a foreign format, a bad value, weights of another shape: refused, naming the file
    with pytest.raises(CheckpointError, match="'action-images-dp'.*load_model"):
        BCModel.from_pretrained(tmp_path / "dp")
    with pytest.raises(CheckpointError, match="action-images-bc"):
        WorldActionModel.from_pretrained(tmp_path / "bc")
    meta = json.loads((tmp_path / "bc" / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((tmp_path / "bc" / "model.safetensors").read_bytes())
    for change, message in (({"format": "other"}, "unknown format 'other'"),
                            ({"config": {**meta["config"], "pool": "max"}}, "pool must be one of"),
                            ({"config": {**meta["config"], "hidden": 64}}, "weights do not match"),
                            ({"config": {**meta["config"], "extra": 1}}, "unknown keys")):
        (bad / "config.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(CheckpointError, match=message) as e:
            load_model(bad)
        assert str(bad) in str(e.value)
    with pytest.raises(CheckpointError, match="does not hold"):
        load_model(tmp_path / "missing")


# ---- train --method --------------------------------------------------------------------------------------------------
TINY_TRAIN = ["--data", "synthetic:4", "--batch-size", "2", "--log-every", "1", "--no-progress", "--threads", "1",
              "--warmup", "2", "--seed", "3"]


def train_main(*argv: str) -> int:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return train.run(p.parse_args(list(argv)))


def recipe_file(tmp_path: Path, method: str, **model) -> str:
    tiny = TINY_BC if method == "bc" else TINY_DP
    path = tmp_path / f"{method}.json"
    path.write_text(json.dumps({"model": {"method": method, **SHAPE, "baseline": tiny, **model}}))
    return str(path)


@pytest.mark.parametrize("method", ["bc", "dp"])
def test_train_method_resumes_bit_for_bit(tmp_path, method):
    cfg = recipe_file(tmp_path, method)
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main("--config", cfg, *TINY_TRAIN, "--out", str(a), "--steps", "4") == 0
    assert train_main("--config", cfg, *TINY_TRAIN, "--out", str(b), "--steps", "2") == 0
    assert train_main("--config", cfg, *TINY_TRAIN, "--out", str(b), "--steps", "4", "--resume") == 0
    la, lb = train.read_log(a / "log.jsonl"), train.read_log(b / "log.jsonl")
    assert [r["step"] for r in la] == [1, 2, 3, 4]
    assert [(r["loss"], r["loss_pos"]) for r in la] == [(r["loss"], r["loss_pos"]) for r in lb]
    ea, eb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    model = load_model(a)
    assert type(model) is baselines.MODELS[method] and model.config.image_size == 16
    assert model.config.camera_names and (a / "loss.png").exists()
    assert json.loads((a / "train_config.json").read_text())["model"]["method"] == method
    # another method on resume is another trajectory: refused
    other = recipe_file(tmp_path, "dp" if method == "bc" else "bc")
    assert train_main("--config", other, *TINY_TRAIN, "--out", str(b), "--steps", "5", "--resume") == 2


def test_train_method_checks_its_settings(tmp_path, capsys):
    """WAM-only settings (a WAM recipe file reused) are ignored with a warning; wrong baseline settings exit 2."""
    with pytest.warns(UserWarning, match="ignores the world action model's model.t_mean"):
        cfg = train.build_config(train.recipes.from_args(argparse.Namespace(**{
            "model.method": "bc", "model.t_mean": "1", "data.data": "synthetic"})))
    assert isinstance(cfg, BCConfig) and cfg.image_size == 64 and cfg.horizon == 8
    with pytest.warns(UserWarning, match="model.depth"):           # the DiT's blocks; BC's own depth stays
        deep = train.build_config(train.recipes.from_args(argparse.Namespace(**{
            "model.method": "bc", "model.depth": "8", "data.data": "synthetic"})))
    assert deep.depth == cfg.depth
    with warnings.catch_warnings():                                 # the tokens baseline's DiT takes it
        warnings.simplefilter("error")
        tokens = train.build_config(train.recipes.from_args(argparse.Namespace(**{
            "model.method": "tokens", "model.depth": "6", "data.data": "synthetic"})))
    assert tokens.depth == 6 and tokens.backbone_config().depth == 6
    for method in ("bc", "tokens"):                                 # the world action model's text encoder only
        with pytest.warns(UserWarning, match="model.text_layers"):
            train.build_config(train.recipes.from_args(argparse.Namespace(**{
                "model.method": method, "model.text_layers": "1", "data.data": "synthetic"})))
    out = str(tmp_path / "r")
    assert train_main("--config", recipe_file(tmp_path, "bc", baseline={"widht": 3}), *TINY_TRAIN, "--out", out,
                      "--steps", "1") == 2
    assert "unknown keys ['widht']" in capsys.readouterr().err
    assert train_main("--config", recipe_file(tmp_path, "bc", baseline={"pool": "max"}), *TINY_TRAIN, "--out", out,
                      "--steps", "1") == 2
    assert "pool must be one of" in capsys.readouterr().err
    assert train_main("--config", recipe_file(tmp_path, "wam"), *TINY_TRAIN, "--out", out, "--steps", "1") == 2
    assert "model.baseline applies to" in capsys.readouterr().err
    assert train_main("--method", "ppo", *TINY_TRAIN, "--out", out, "--steps", "1") == 2
    assert not (tmp_path / "r" / "log.jsonl").exists()


# ---- closed loop -----------------------------------------------------------------------------------------------------
def test_baseline_policy_closed_loop_in_the_sim():
    from action_images.sim import make_env

    model = bc(camera_names=["left", "right"])
    assert isinstance(make_policy(model, PolicySettings()), BaselinePolicy)
    assert type(make_policy(WorldActionModel(WAMConfig.from_preset("cpu-tiny")))) is ActionImagesPolicy
    with pytest.raises(ValueError, match="horizon"):
        BaselinePolicy(model, PolicySettings(horizon=3))
    with pytest.raises(ValueError, match="--ensemble"):              # averages action images, which BC has none of
        BaselinePolicy(model, PolicySettings(ensemble=2))
    with pytest.raises(ValueError, match="--zoom"):                  # virtual views belong to the action-image policy
        BaselinePolicy(model, PolicySettings(zoom=1.5))
    with pytest.raises(ValueError, match="--noise"):
        BaselinePolicy(model, PolicySettings(noise="episode"))
    with pytest.raises(ValueError, match="--position"):              # no triangulated point: BC predicts the pose
        BaselinePolicy(model, PolicySettings(position="point"))
    env = make_env("reach_target", cameras=("front", "left", "right"), image_size=32)
    try:
        for m, k in ((model, 2), (dp(camera_names=["right", "left"]), 3)):
            policy = BaselinePolicy(m, PolicySettings(execute_k=k, sampler_steps=2))
            obs, _ = env.reset(seed=3)
            policy.reset(3)
            for _ in range(5):
                a = policy.act(obs, env.cameras)
                assert a.shape == (8,) and np.isfinite(a).all()
                obs, *_ = env.step(a)
            ch = policy.last_chunk
            assert len(policy.chunks) == -(-5 // k) and ch.view_names == m.config.camera_names
            assert ch.decision == "execute" and ch.valid.all() and len(ch.actions) == k
            assert set(ch.timings) == {"observe", "generate", "decode", "chunk", "total"} and ch.latency_s > 0
            assert ch.future_act.shape == (2, 2, 16, 16, 3) and ch.input_rgb.shape == (2, 16, 16, 3)
            assert json.dumps(ch.uncertainty())
        # the untrained regression holds still: every executed target is the pose the chunk started from
        first = BaselinePolicy(model, PolicySettings(execute_k=2))
        obs, _ = env.reset(seed=4)
        first.act(obs, env.cameras)
        ch = first.last_chunk
        np.testing.assert_allclose(ch.actions[:, :3], np.broadcast_to(ch.current[:3], (2, 3)), atol=1e-6)
        assert np.abs(ch.actions[:, 3:7] @ ch.current[3:7]).min() > 1 - 1e-9            # the same rotation
    finally:
        env.close()


def test_baseline_policy_sees_every_view_given():
    """camera_names "all": a set-fusion baseline trained on 2 views plans on all 3 of the observation, and the third
    view changes its plan; a concat-fusion one refuses the count it was not trained on."""
    from action_images.sim import make_env

    env = make_env("reach_target", cameras=("front", "left", "right"), image_size=32)
    try:
        obs, _ = env.reset(seed=5)
        for m in (bc(camera_names=["left", "right"]), dp(camera_names=["left", "right"])):
            with torch.no_grad():                           # untrained heads start at zero: give every input a say
                for w in m.parameters():
                    w.add_(0.05 * torch.randn_like(w))
            every = BaselinePolicy(m, PolicySettings(camera_names="all", sampler_steps=2))
            two = BaselinePolicy(m, PolicySettings(camera_names=("left", "right"), sampler_steps=2))
            every.reset(0)
            two.reset(0)
            ch, ch2 = every.plan(obs, env.cameras), two.plan(obs, env.cameras)
            assert ch.view_names == ["front", "left", "right"] and ch.future_act.shape[0] == 3
            assert np.isfinite(ch.keyframes).all() and not np.allclose(ch.keyframes, ch2.keyframes)
        concat = BaselinePolicy(bc(camera_names=["left", "right"], fusion="concat"), PolicySettings(camera_names="all"))
        with pytest.raises(ValueError, match="concat' needs the trained 2 views; got 3"):
            concat.plan(obs, env.cameras)
    finally:
        env.close()


def test_eval_command_runs_a_baseline_checkpoint(tmp_path, capsys, lerobot_root):
    ckpt = tmp_path / "bc"
    bc(camera_names=["left", "right"]).save_pretrained(ckpt)
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    common = ["--checkpoint", str(ckpt), "--tasks", "press_button", "--episodes", "1", "--image-size", "32",
              "--max-steps", "3", "--videos", "1", "--no-progress", "--threads", "1"]
    assert evaluate.run(p.parse_args([*common, "--out", str(tmp_path / "ev")])) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["overall"]["episodes"] == 1 and metrics["policy"]["model_preset"] == "bc"
    assert metrics["policy"]["views"] == ["left", "right"] and metrics["episodes"][0]["length"] == 3
    assert (tmp_path / "ev" / metrics["videos"]["press_button"][0]).is_file()
    assert evaluate.run(p.parse_args([*common, "--out", str(tmp_path / "ol"), "--open-loop-data",
                                      str(lerobot_root)])) == 2
    assert "open-loop metrics score generated video" in capsys.readouterr().err


def test_image_dependence_sees_a_blind_encoder(lerobot_root, tmp_path):
    """The check reports ~0 movement for an encoder whose CNN ignores its input, and more for a live one."""
    from action_images.baselines.bc import BCConfig, BCModel
    from action_images.baselines.image_dependence import image_dependence
    torch.manual_seed(0)
    model = BCModel(BCConfig(image_size=32, horizon=2, stride=2)).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
    live = image_dependence(model, str(lerobot_root), windows=4, start=1)
    with torch.no_grad():
        for m in model.encoder.cnn.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.zero_()                       # every normalised feature becomes its bias: blind
    blind = image_dependence(model, str(lerobot_root), windows=4, start=1)
    assert live["moved_cm_images_swapped"] > 100 * blind["moved_cm_images_swapped"] + 1e-6
    assert blind["moved_cm_images_zeroed"] < 1e-4 and blind["cnn_output_std"] < 1e-5


def test_image_dependence_command_writes_json(lerobot_root, tmp_path, capsys):
    from action_images.baselines.bc import BCConfig, BCModel
    from action_images.baselines.image_dependence import main

    torch.manual_seed(0)
    BCModel(BCConfig(image_size=32, horizon=2, stride=2)).save_pretrained(tmp_path / "bc")
    out = tmp_path / "dep.json"
    assert main(["--checkpoint", str(tmp_path / "bc"), "--data", str(lerobot_root), "--windows", "2",
                 "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed and printed["windows"] == 2


def test_baseline_policy_projects_predicted_rotations_top_down():
    """orientation "topdown": the pose chunk a baseline predicts keeps its positions and gripper, its rotations
    become top-down (the untrained Diffusion Policy predicts tilted ones)."""
    from scipy.spatial.transform import Rotation

    from action_images.sim import make_env

    env = make_env("reach_target", cameras=("front", "left", "right"), image_size=32)
    try:
        obs, _ = env.reset(seed=3)
        chunks = {}
        for mode in ("free", "topdown"):
            policy = BaselinePolicy(dp(camera_names=["right", "left"]), PolicySettings(execute_k=3, sampler_steps=2,
                                                                                       orientation=mode))
            policy.reset(3)
            chunks[mode] = policy.plan(obs, env.cameras)
    finally:
        env.close()
    approach = {m: Rotation.from_quat(c.keyframes[:, 3:7]).as_matrix()[:, :, 2] for m, c in chunks.items()}
    assert (approach["free"][:, 2] > -0.999).any()                                # the free chunk is tilted
    np.testing.assert_allclose(approach["topdown"], np.tile([0.0, 0.0, -1.0], (len(approach["topdown"]), 1)),
                               atol=1e-9)
    np.testing.assert_allclose(chunks["topdown"].keyframes[:, [0, 1, 2, 7]], chunks["free"].keyframes[:, [0, 1, 2, 7]])
