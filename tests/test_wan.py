"""Wan2.2 (diffusers WanTransformer3DModel) backbone adapter on tiny random configs (no weights are downloaded)."""

from dataclasses import replace

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import WanTransformer3DModel  # noqa: E402

from action_images.models import PRESETS, build_backbone  # noqa: E402
from action_images.models.wan import WanBackbone, WanBackboneConfig  # noqa: E402
from action_images.wam import GEN, GIVEN, WAMConfig, WorldActionModel  # noqa: E402

torch.set_num_threads(1)

TINY = PRESETS["wan-tiny"]["backbone"]


def tiny(**kw) -> WanBackbone:
    torch.manual_seed(0)
    return WanBackbone(replace(TINY, **kw))


def randomize_output(m: WanBackbone) -> WanBackbone:
    """proj_out starts at zero (= copy the current frame); perturb it so the output depends on the input."""
    torch.manual_seed(1)
    with torch.no_grad():
        m.transformer.proj_out.weight.normal_(std=0.05)
    return m


def inputs(B: int = 2, V: int = 2, F: int = 3, R: int = 32, L: int = 5, text_dim: int = 32, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(B, V, F, 6, R, R, generator=g), "t": torch.rand(B, generator=g),
            "state": torch.randint(0, 3, (B, V, F, 2), generator=g), "plucker": torch.randn(B, V, 6, R, R, generator=g),
            "text": torch.randn(B, L, text_dim, generator=g), "text_mask": torch.ones(B, L, dtype=torch.bool)}


def run(m: WanBackbone, d: dict) -> torch.Tensor:
    return m(d["x"], d["t"], d["state"], d["plucker"], d["text"], d["text_mask"])


def test_forward_shape_and_zero_output_at_init():
    m = tiny()
    d = inputs()
    out = run(m, d)
    assert out.shape == d["x"].shape
    assert torch.count_nonzero(out) == 0  # zero proj_out: "nothing moves" at init
    assert m.transformer.patch_embedding.in_channels == 6 + 6 + 2 * 3
    assert m.transformer.config.out_channels == 6 and tuple(m.transformer.config.patch_size) == (1, 8, 8)
    assert m.x_in.weight is m.transformer.patch_embedding.weight  # what WorldActionModel reads the device from


def test_build_backbone_from_preset_dict():
    m = build_backbone("wan", TINY.to_dict())
    assert isinstance(m, WanBackbone) and m.config == TINY
    assert PRESETS["wan-tiny"]["kind"] == "wan" and PRESETS["wan2.2-5b"]["kind"] == "wan"
    big = PRESETS["wan2.2-5b"]["backbone"]  # the Wan2.2-TI2V-5B transformer dims (never instantiated here)
    assert (big.num_layers, big.num_attention_heads, big.attention_head_dim, big.ffn_dim, big.text_dim,
            big.freq_dim) == (30, 24, 128, 14336, 4096, 256) and big.width == 3072


@pytest.mark.parametrize("V", [1, 2, 3])
def test_variable_views(V):
    m = randomize_output(tiny())
    d = inputs(V=V, F=2)
    out = run(m, d)
    assert out.shape == (2, V, 2, 6, 32, 32) and torch.isfinite(out).all()


def test_views_are_packed_side_by_side():
    """Swap the transformer for "return the x channels of the packed clip": the adapter must give x back exactly, and
    the packed clip must hold view v in columns [v*W, (v+1)*W), the view's Plücker map and its one-hot state."""
    m = tiny()
    seen = {}

    def identity(hidden_states, timestep, encoder_hidden_states, return_dict=False):
        seen.update(inp=hidden_states, t=timestep, txt=encoder_hidden_states)
        return (hidden_states[:, :6],)

    m.transformer.forward = identity
    d = inputs(V=3, F=2, R=16)
    d["text_mask"][:, 3:] = False
    assert torch.equal(run(m, d), d["x"])
    inp, W = seen["inp"], 16                                       # [B, 18, F, H, V*W]
    assert inp.shape == (2, 18, 2, 16, 3 * 16)
    v, f = 1, 1
    view = inp[:, :, f, :, v * W:(v + 1) * W]                      # [B, 18, H, W]
    assert torch.equal(view[:, :6], d["x"][:, v, f])
    assert torch.equal(view[:, 6:12], d["plucker"][:, v])
    onehot = torch.nn.functional.one_hot(d["state"][:, v, f], 3).reshape(2, 6).float()
    assert torch.equal(view[:, 12:], onehot[:, :, None, None].expand(2, 6, 16, 16))
    assert torch.equal(seen["t"], d["t"] * 1000)
    assert torch.count_nonzero(seen["txt"][:, 3:]) == 0 and torch.equal(seen["txt"][:, :3], d["text"][:, :3])


def test_gradients_reach_the_transformer_blocks():
    m = tiny()
    d = inputs()
    run(m, d).square().sum().backward()
    assert m.transformer.proj_out.weight.grad.abs().sum() == 0  # zero output -> zero loss gradient at the very start
    (run(m, d) * torch.randn(d["x"].shape)).sum().backward()
    assert m.transformer.proj_out.weight.grad.abs().sum() > 0   # ... but the output layer learns from step 0
    m = randomize_output(tiny())
    (run(m, d) * torch.randn(d["x"].shape)).sum().backward()
    for name in ("blocks.0.attn1.to_q.weight", "blocks.1.ffn.net.2.weight", "blocks.0.attn2.to_k.weight",
                 "patch_embedding.weight", "condition_embedder.time_embedder.linear_1.weight"):
        grad = m.transformer.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_padded_text_tokens_are_ignored():
    m = randomize_output(tiny())
    d = inputs(L=6)
    d["text_mask"][:, 4:] = False
    out = run(m, d)
    junk = {**d, "text": d["text"].clone()}
    junk["text"][:, 4:] = 100 * torch.randn(2, 2, 32)
    assert torch.allclose(run(m, junk), out, atol=1e-6)
    real = {**d, "text": d["text"].clone()}
    real["text"][:, 0] += 1.0
    assert not torch.allclose(run(m, real), out)


def test_conditioning_inputs_matter():
    m = randomize_output(tiny())
    d = inputs()
    out = run(m, d)
    for key, new in (("t", d["t"] * 0.5), ("plucker", d["plucker"] + 1.0), ("state", (d["state"] + 1) % 3)):
        assert not torch.allclose(run(m, {**d, key: new}), out), key


def test_per_token_timestep():
    """Wan2.2 TI2V style: tokens of a (view, frame) with no generated stream get timestep 0."""
    m = randomize_output(tiny(per_token_timestep=True))
    d = inputs(V=2, F=3)
    d["state"][:] = GIVEN
    d["state"][:, :, 1:, 0] = GEN           # frames 1.. generated, frame 0 fully given
    out = run(m, d)
    assert out.shape == d["x"].shape
    # changing t still changes the generated frames
    assert not torch.allclose(run(m, {**d, "t": d["t"] * 0.5}), out)
    d["state"][:] = GIVEN                   # nothing generated: every token at timestep 0 -> t is ignored
    out = run(m, d)
    assert torch.allclose(run(m, {**d, "t": d["t"] * 0.5}), out, atol=1e-6)


def test_bad_shapes_are_refused():
    m = tiny()
    d = inputs(R=36)
    with pytest.raises(ValueError, match="divisible"):
        run(m, d)
    d = inputs()
    with pytest.raises(ValueError, match="state"):
        run(m, {**d, "state": d["state"][..., :1]})


def _save_tiny_wan(path, in_channels: int, out_channels: int, patch: int) -> WanTransformer3DModel:
    torch.manual_seed(5)
    src = WanTransformer3DModel(patch_size=(1, patch, patch), num_attention_heads=TINY.num_attention_heads,
                                attention_head_dim=TINY.attention_head_dim, in_channels=in_channels,
                                out_channels=out_channels, text_dim=TINY.text_dim, freq_dim=TINY.freq_dim,
                                ffn_dim=TINY.ffn_dim, num_layers=TINY.num_layers)
    with torch.no_grad():
        src.proj_out.weight.normal_(std=0.1)
    src.save_pretrained(str(path))
    return src


def test_pretrained_roundtrip_replaces_patch_embedding(tmp_path):
    src = _save_tiny_wan(tmp_path / "transformer", in_channels=4, out_channels=4, patch=2)  # "latent" channels
    cfg = WanBackboneConfig.from_pretrained(tmp_path, patch=8)     # pipeline folder: finds transformer/
    assert cfg.pretrained == str(tmp_path) and cfg.num_layers == TINY.num_layers and cfg.ffn_dim == TINY.ffn_dim
    m = build_backbone("wan", cfg.to_dict())
    own, ref = m.transformer.state_dict(), src.state_dict()
    replaced = {"patch_embedding.weight", "patch_embedding.bias", "proj_out.weight", "proj_out.bias"}
    assert set(own) == set(ref)
    for k in set(ref) - replaced:
        assert torch.equal(own[k], ref[k]), k                       # shared weights are the file's
    assert own["patch_embedding.weight"].shape == (TINY.width, 18, 1, 8, 8)
    assert torch.count_nonzero(own["proj_out.weight"]) == 0 and own["proj_out.weight"].shape == (6 * 64, TINY.width)
    # same names and shapes as a backbone built without the folder, so a trained model reloads without it
    fresh = tiny().transformer.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in fresh.items()}
    d = inputs()
    out = run(m, d)
    assert out.shape == d["x"].shape and torch.count_nonzero(out) == 0


def test_pretrained_with_matching_channels_keeps_everything(tmp_path):
    src = _save_tiny_wan(tmp_path, in_channels=18, out_channels=6, patch=8)
    m = WanBackbone(replace(TINY, pretrained=str(tmp_path)))
    for k, v in src.state_dict().items():
        assert torch.equal(m.transformer.state_dict()[k], v), k


def test_pretrained_architecture_mismatch_is_refused(tmp_path):
    _save_tiny_wan(tmp_path, in_channels=4, out_channels=4, patch=2)
    with pytest.raises(ValueError, match="num_layers"):
        WanBackbone(replace(TINY, num_layers=3, pretrained=str(tmp_path)))
    with pytest.raises(FileNotFoundError):
        WanBackbone(replace(TINY, pretrained=str(tmp_path / "missing")))


def test_world_action_model_with_wan_backbone(tmp_path):
    torch.manual_seed(0)
    cfg = WAMConfig.from_preset("wan-tiny")          # the preset names its backbone kind
    assert cfg.backbone == TINY.to_dict() and cfg.tokens_per_sample() == 2 * 3 * 16
    m = WorldActionModel(cfg)
    randomize_output(m.backbone)
    g = torch.Generator().manual_seed(3)
    V, F, R = cfg.num_views, cfg.frames, cfg.image_size
    b = {"rgb": torch.rand(2, V, F, 3, R, R, generator=g) * 2 - 1,
         "act": torch.rand(2, V, F, 3, R, R, generator=g) * 2 - 1,
         "plucker": torch.randn(2, V, 6, R, R, generator=g), "instruction": ["pick up the red cube"] * 2}
    out = m(b, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and m.backbone.transformer.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    s = m.eval().sample(b, task="policy", steps=2, generator=torch.Generator().manual_seed(0))
    assert s.rgb.shape == b["rgb"].shape
    m.save_pretrained(tmp_path)
    m2 = WorldActionModel.from_pretrained(tmp_path).eval()
    assert m2.config.backbone_kind == "wan"
    for k, v in m.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k


def test_finetuned_wan_reloads_without_the_original_folder(tmp_path):
    import shutil
    _save_tiny_wan(tmp_path / "wan", in_channels=4, out_channels=4, patch=2)
    cfg = WAMConfig.from_preset("wan-tiny")
    cfg.backbone = replace(TINY, pretrained=str(tmp_path / "wan")).to_dict()
    m = WorldActionModel(cfg)
    m.save_pretrained(tmp_path / "run")
    shutil.rmtree(tmp_path / "wan")
    m2 = WorldActionModel.from_pretrained(tmp_path / "run")
    assert m2.config.backbone["pretrained"] is None
    for k, v in m.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k


def test_train_cli_with_the_wan_preset(tmp_path):
    from action_images.train import main as train_main
    assert train_main(["--preset", "wan-tiny", "--data", "synthetic:2", "--out", str(tmp_path / "r"), "--steps", "2",
                       "--batch-size", "2", "--no-progress", "--threads", "1"]) == 0
    assert WorldActionModel.from_pretrained(tmp_path / "r").config.backbone_kind == "wan"
