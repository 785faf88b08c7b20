"""The action-token ablation (``--method tokens``): the DiT's default output is unchanged by the extra-token input,
the model fits a fixed batch, samples valid poses, round-trips its checkpoint, trains and resumes through
``action-images train``, runs through ``action-images eval``, and its recipe file loads."""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from action_images import baselines, evaluate, train
from action_images.baselines import ActionTokensModel, BCModel, TokensConfig, load_model
from action_images.baselines.policy import BaselinePolicy, make_policy
from action_images.data.windows import SyntheticWindows, WindowConfig, collate
from action_images.models import PRESETS, DiT
from action_images.policy import PolicySettings
from action_images.wam import CheckpointError

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"width": 32, "depth": 2, "heads": 2, "patch": 8, "text_dim": 32, "text_vocab": 64}
SHAPE = {"image_size": 16, "horizon": 2, "stride": 2}


def tokens(**kw) -> ActionTokensModel:
    torch.manual_seed(0)
    return ActionTokensModel(TokensConfig(**{**SHAPE, **TINY, **kw}))


def windows(cfg, n: int = 4, seed: int = 0) -> dict:
    ds = SyntheticWindows(WindowConfig.from_model(cfg), seed=seed, num_scenes=4)
    return collate([ds[i] for i in range(n)])


# ---- the backbone ----------------------------------------------------------------------------------------------------
def dit_inputs(refine: int):
    """A cpu-tiny DiT with random weights (the zero-initialised output layer would hide everything) and inputs."""
    torch.manual_seed(0)
    m = DiT(replace(PRESETS["cpu-tiny"]["backbone"], refine_channels=refine))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    B, V, F, H = 2, 2, 3, 32
    x = torch.randn(B, V, F, 6, H, H, generator=g)
    t = torch.rand(B, generator=g)
    state = torch.randint(0, 3, (B, V, F, 2), generator=g)
    pl = torch.randn(B, V, 6, H, H, generator=g)
    text = torch.randn(B, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    return m, (x, t, state, pl, text, mask)


# outputs of the code before ``extra_tokens`` existed, same seeds: sum, sum of |.|, every 997th element
DIT_REFERENCE = {
    0: (883.4968488998711, 33816.951862528455, [-0.07332132756710052, -0.4289439618587494, -0.02141287922859192,
                                                -0.2620474100112915, 0.32384446263313293, 0.3164215087890625]),
    4: (-12109.073403663933, 50627.45417065546, [0.1031775176525116, -0.3390596807003021, 0.34571200609207153,
                                                 0.40870237350463867, 1.049631953239441, -1.582132339477539]),
}


@pytest.mark.parametrize("refine", [0, 4])
def test_dit_output_is_unchanged_without_extra_tokens(refine):
    m, args = dit_inputs(refine)
    with torch.no_grad():
        out = m(*args)
        none = m(*args, extra_tokens=None)
        empty, feat0 = m(*args, extra_tokens=torch.zeros(2, 0, 32))
        video, feat = m(*args, extra_tokens=torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(2)))
    total, absolute, some = DIT_REFERENCE[refine]
    assert out.double().sum().item() == pytest.approx(total, rel=1e-5)
    assert out.double().abs().sum().item() == pytest.approx(absolute, rel=1e-5)
    np.testing.assert_allclose(out.flatten()[::997][:6].numpy(), some, rtol=1e-4, atol=1e-5)
    assert torch.equal(out, none) and torch.equal(out, empty) and feat0.shape == (2, 0, 32)
    # the extra tokens join the attention: the video changes, and their features come back
    assert video.shape == out.shape and not torch.allclose(video, out) and feat.shape == (2, 3, 32)


# ---- the model -------------------------------------------------------------------------------------------------------
def test_defaults_are_the_cpu_small_world_action_model():
    cfg, p = TokensConfig(), PRESETS["cpu-small"]
    bb = p["backbone"]
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch, cfg.text_dim, cfg.mlp_ratio) == \
        (bb.width, bb.depth, bb.heads, bb.patch, bb.text_dim, bb.mlp_ratio)
    assert (cfg.image_size, cfg.num_views, cfg.horizon, cfg.stride) == \
        (p["image_size"], p["num_views"], p["horizon"], p["stride"])
    assert cfg.t_mean == 1.5 and cfg.action_dim == 10 and baselines.BATCH_SIZE["tokens"] == p["batch_size"]
    cfg.validate()
    model = ActionTokensModel(cfg)
    assert model.num_parameters() == 1_904_970                      # docs/baselines.md
    assert model.backbone.config.in_channels == 3 and model.backbone.config.streams == 1      # RGB only
    assert cfg.tokens_per_sample() == 2 * 5 * 36 + 5


@pytest.mark.parametrize("bad, message", [({"heads": 3}, "divisible by heads"), ({"patch": 5}, "divisible by patch"),
                                          ({"horizon": 20}, "max_frames"), ({"rotation": "euler"}, "rotation"),
                                          ({"t_std": 0.0}, "t_std"), ({"depth": True}, "depth must be an integer"),
                                          ({"context_channels": -1}, "context_channels"),
                                          ({"context_channels": 1.5}, "context_channels")])
def test_config_is_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        TokensConfig(**bad).validate()


def test_loss_is_finite_and_fits_a_fixed_batch():
    model = tokens()
    batch = windows(model.config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(batch, generator=torch.Generator().manual_seed(0))   # the same t and noise every step
        assert set(out) >= {"loss", "loss_rgb", "loss_act", "loss_pos", "loss_rot", "loss_grip"}
        assert all(torch.isfinite(v) for v in out.values())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append([out[k].item() for k in ("loss", "loss_rgb", "loss_act")])
    first, last = losses[0], losses[-1]
    assert all(b < 0.5 * a for a, b in zip(first, last)), (first, last)      # the video and the actions both fit
    assert model.act_out.weight.grad.abs().sum() > 0 and model.current_in.weight.grad.abs().sum() > 0


def test_predict_gives_valid_poses_and_holds_still_untrained():
    model = tokens().eval()
    batch = windows(model.config, n=3)
    poses = model.predict(batch, generator=torch.Generator().manual_seed(1), steps=3)
    assert poses.shape == (3, 2, 8) and poses.dtype == torch.float64 and torch.isfinite(poses).all()
    np.testing.assert_allclose(poses[..., 3:7].norm(dim=-1), 1.0, atol=1e-9)
    assert ((poses[..., 7] >= 0) & (poses[..., 7] <= 1)).all()
    current = batch["poses"][:, :1]                                    # zero-initialised head: hold the pose
    np.testing.assert_allclose(poses[..., :3], current[..., :3].expand(-1, 2, -1), atol=1e-6)
    assert (poses[..., 3:7] * current[..., 3:7]).sum(-1).abs().min() > 1 - 1e-9
    with torch.no_grad():                                              # a trained head moves: seeded, not constant
        model.act_out.bias.normal_(generator=torch.Generator().manual_seed(3))
        model.act_out.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(4))
    a = model.predict(batch, generator=torch.Generator().manual_seed(1), steps=2)
    b = model.predict(batch, generator=torch.Generator().manual_seed(1), steps=2)
    c = model.predict(batch, generator=torch.Generator().manual_seed(2), steps=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    rgb, act = model.sample(batch, generator=torch.Generator().manual_seed(1), steps=2)
    assert rgb.shape == (3, 2, 3, 3, 16, 16) and act.shape == (3, 3, 10)
    assert torch.equal(rgb[:, :, 0], batch["rgb"][:, :, 0].float())   # the current frame is given, kept exactly
    with pytest.raises(ValueError, match="steps"):
        model.predict(batch, steps=-1)


def test_checkpoint_round_trips_and_is_dispatched(tmp_path):
    model = tokens(camera_names=["left", "right"]).eval()
    with torch.no_grad():
        model.act_out.weight.normal_(std=0.1, generator=torch.Generator().manual_seed(4))
    model.save_pretrained(tmp_path / "tok")
    loaded = load_model(tmp_path / "tok")
    assert type(loaded) is ActionTokensModel and loaded.config == model.config
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["format"] == "action-images-tokens"
    batch = windows(model.config, n=2)
    assert torch.equal(model.predict(batch, torch.Generator().manual_seed(5), 3),
                       loaded.eval().predict(batch, torch.Generator().manual_seed(5), 3))
    with pytest.raises(CheckpointError, match="'action-images-tokens'.*load_model"):
        BCModel.from_pretrained(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    meta["config"]["width"] = 64                                       # config and weights disagree: refused
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(meta))
    (bad / "model.safetensors").write_bytes((tmp_path / "tok" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(bad)


def test_context_encoder_is_shared_with_the_world_action_model(tmp_path):
    """context_channels builds the same context encoder as the world action model's DiT; a recipe gives it to
    both, and a config written before the key existed reads as 'off'."""
    from action_images.baselines import build_config
    from action_images.recipe import TrainRecipe

    recipe = TrainRecipe.from_dict({"model": {"method": "tokens", "context_channels": 4}})
    cfg = build_config(recipe, ["left", "right"])
    assert cfg.context_channels == 4
    model = ActionTokensModel(cfg)
    assert model.backbone.context is not None and model.backbone.context.net[0].out_channels == 4
    model.save_pretrained(tmp_path / "ctx")
    assert load_model(tmp_path / "ctx").config.context_channels == 4
    meta = json.loads((tmp_path / "ctx" / "config.json").read_text())
    del meta["config"]["context_channels"]
    assert TokensConfig.from_dict(meta["config"]).context_channels == 0


def test_policy_runs_it_closed_loop_in_the_sim():
    from action_images.sim import make_env

    model = tokens(camera_names=["left", "right"])
    policy = make_policy(model, PolicySettings(execute_k=2, sampler_steps=2))
    assert isinstance(policy, BaselinePolicy)
    env = make_env("reach_target", cameras=("front", "left", "right"), image_size=32)
    try:
        obs, _ = env.reset(seed=3)
        policy.reset(3)
        for _ in range(3):
            a = policy.act(obs, env.cameras)
            assert a.shape == (8,) and np.isfinite(a).all()
            obs, *_ = env.step(a)
        assert policy.last_chunk.decision == "execute" and policy.last_chunk.view_names == ["left", "right"]
    finally:
        env.close()


# ---- train and eval --------------------------------------------------------------------------------------------------
TINY_TRAIN = ["--data", "synthetic:4", "--batch-size", "2", "--log-every", "1", "--no-progress", "--threads", "1",
              "--warmup", "2", "--seed", "3"]


def train_main(*argv: str) -> int:
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    return train.run(p.parse_args(list(argv)))


def test_train_resumes_bit_for_bit_and_eval_runs_the_checkpoint(tmp_path):
    recipe = tmp_path / "tokens.json"
    recipe.write_text(json.dumps({"model": {"method": "tokens", **SHAPE, "baseline": TINY}}))
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_main("--config", str(recipe), *TINY_TRAIN, "--out", str(a), "--steps", "3") == 0
    assert train_main("--config", str(recipe), *TINY_TRAIN, "--out", str(b), "--steps", "2") == 0
    assert train_main("--config", str(recipe), *TINY_TRAIN, "--out", str(b), "--steps", "3", "--resume") == 0
    la, lb = train.read_log(a / "log.jsonl"), train.read_log(b / "log.jsonl")
    assert [r["step"] for r in la] == [1, 2, 3] and {"loss_rgb", "loss_act"} <= set(la[0])
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    ea, eb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    model = load_model(a)
    assert type(model) is ActionTokensModel and model.config.width == 32 and model.config.camera_names

    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    assert evaluate.run(p.parse_args(["--checkpoint", str(a), "--tasks", "press_button", "--episodes", "1",
                                      "--image-size", "32", "--max-steps", "3", "--sampler-steps", "2", "--videos",
                                      "0", "--no-progress", "--threads", "1", "--out", str(tmp_path / "ev")])) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["overall"]["episodes"] == 1 and metrics["policy"]["model_preset"] == "tokens"
    assert metrics["episodes"][0]["length"] == 3


def test_recipe_file_loads_and_trains_one_step(tmp_path):
    """recipes/rig8-tokens.json: rig8-quick's data and optimiser, method tokens, its step count; one step runs."""
    tok = json.loads((ROOT / "recipes" / "rig8-tokens.json").read_text())
    quick = json.loads((ROOT / "recipes" / "rig8-quick.json").read_text())
    assert tok["model"]["method"] == "tokens" and tok["data"] == quick["data"] and tok["optim"] == quick["optim"]
    assert tok["optim"]["steps"] == 6652 and tok["run"] == quick["run"]
    args = argparse.Namespace(**{"config": str(ROOT / "recipes" / "rig8-tokens.json"), "data.data": "synthetic:2"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # nothing in it is ignored
        cfg = train.build_config(train.recipes.from_args(args))
    assert isinstance(cfg, TokensConfig) and cfg.t_mean == 1.5 and cfg.width == 128
    # the world action model's own recipe with --method tokens: its t_mean applies, loss_target is ignored
    args = argparse.Namespace(**{"config": str(ROOT / "recipes" / "rig8-quick.json"), "model.method": "tokens",
                                 "model.t_mean": "0.5", "data.data": "synthetic"})
    with pytest.warns(UserWarning, match="ignores the world action model's model.loss_target"):
        cfg = train.build_config(train.recipes.from_args(args))
    assert isinstance(cfg, TokensConfig) and cfg.t_mean == 0.5
    out = tmp_path / "r"
    assert train_main("--config", str(ROOT / "recipes" / "rig8-tokens.json"), "--data", "synthetic:2", "--steps", "1",
                      "--batch-size", "2", "--out", str(out), "--no-progress", "--threads", "1") == 0
    assert type(load_model(out)) is ActionTokensModel
