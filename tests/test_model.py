"""World action model: masks of the four tasks, sampler, loss, CFG, save/load (tiny models, CPU)."""

import json

import pytest
import torch

from action_images.data.windows import SyntheticWindows, WindowConfig, collate
from action_images.models import DiT_models, patchify, unpatchify
from action_images.text import NULL, TextConfig, drop_instructions, tokenize
from action_images.wam import ABSENT, GEN, GIVEN, TASKS, WAMConfig, WorldActionModel

torch.set_num_threads(1)


def tiny(**kw) -> WorldActionModel:
    torch.manual_seed(0)
    return WorldActionModel(WAMConfig.from_preset("cpu-tiny", **kw))


def randomize_output(m: WorldActionModel) -> WorldActionModel:
    """The output layer starts at zero (= copy the current frame); perturb it so generation visibly changes."""
    torch.manual_seed(1)
    with torch.no_grad():
        for blk in m.backbone.blocks:
            blk.ada[-1].weight.normal_(std=0.05)
        m.backbone.ada_out[-1].weight.normal_(std=0.05)
        m.backbone.out.weight.normal_(std=0.05)
    return m


def batch(cfg: WAMConfig, B: int = 2, instruction: str = "pick up the red cube") -> dict:
    g = torch.Generator().manual_seed(3)
    V, F, R = cfg.num_views, cfg.frames, cfg.image_size
    return {"rgb": torch.rand(B, V, F, 3, R, R, generator=g) * 2 - 1,
            "act": torch.rand(B, V, F, 3, R, R, generator=g) * 2 - 1,
            "plucker": torch.randn(B, V, 6, R, R, generator=g), "instruction": [instruction] * B}


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 4, 6, 16, 24)
    p = patchify(x, 8)
    assert p.shape == (2, 3, 4, 2, 3, 6 * 64)
    assert torch.equal(unpatchify(p, 8, 6), x)
    assert torch.equal(p[0, 1, 2, 1, 2].reshape(6, 8, 8), x[0, 1, 2, :, 8:16, 16:24])


def test_presets_build_and_tiny_size():
    m = DiT_models["cpu-tiny"]()
    assert sum(p.numel() for p in m.parameters()) < 100_000
    assert tiny().num_parameters() < 150_000


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sample_masks(task, method):
    m = randomize_output(tiny()).eval()
    b = batch(m.config)
    out = m.sample(b, task=task, steps=3, method=method, generator=torch.Generator().manual_seed(0))
    assert out.rgb.shape == b["rgb"].shape and out.act.shape == b["act"].shape
    for s, (name, x_in, x_out) in enumerate([("rgb", b["rgb"], out.rgb), ("act", b["act"], out.act)]):
        for f in range(m.config.frames):
            st = TASKS[task][name][0 if f == 0 else 1]
            assert (out.state[:, :, f, s] == st).all()
            if st == GIVEN:
                assert torch.equal(x_out[:, :, f], x_in[:, :, f]), (task, name, f)
            elif st == GEN:
                assert not torch.allclose(x_out[:, :, f], x_in[:, :, f], atol=1e-3), (task, name, f)
                assert torch.isfinite(x_out[:, :, f]).all()
            else:
                assert st == ABSENT and (x_out[:, :, f] == 0).all()


def test_sampler_is_seeded_and_generated_parts_ignore_inputs():
    m = randomize_output(tiny()).eval()
    b = batch(m.config)
    b2 = dict(b, rgb=b["rgb"].clone(), act=b["act"].clone())
    b2["rgb"][:, :, 1:] = 0.0  # future frames are not inputs of the policy
    b2["act"][:, :, 1:] = 0.0
    o1 = m.sample(b, "policy", steps=4, generator=torch.Generator().manual_seed(5))
    o2 = m.sample(b2, "policy", steps=4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(o1.rgb, o2.rgb) and torch.equal(o1.act, o2.act)
    o3 = m.sample(b, "policy", steps=4, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(o1.act, o3.act)


def test_fresh_model_predicts_no_motion():
    """Zero-initialised output + prediction relative to the current frame: the untrained policy copies frame 0."""
    m = tiny().eval()
    b = batch(m.config)
    out = m.sample(b, "policy", steps=2)
    ref = b["rgb"][:, :, :1].expand_as(out.rgb)
    assert torch.allclose(out.rgb, ref, atol=1e-5)


def test_loss_only_on_generated_parts():
    m = tiny()
    b = batch(m.config)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = m(b, generator=g(), tasks=["world_model"] * 2)
    # world_model: the action stream is given, so the action loss is zero, RGB loss is not
    assert float(base["loss_act"]) == 0.0 and float(base["loss_rgb"]) > 0.0
    lab = m(b, generator=g(), tasks=["labeler"] * 2)
    assert float(lab["loss_rgb"]) == 0.0 and float(lab["loss_act"]) > 0.0
    vid = m(b, generator=g(), tasks=["video"] * 2)
    assert float(vid["loss_act"]) == 0.0
    # the loss is a deterministic function of (batch, generator)
    with torch.no_grad():
        assert float(m(b, generator=g())["loss"]) == float(m(b, generator=g())["loss"])


def test_loss_decreases_on_tiny_overfit_set():
    torch.manual_seed(0)
    ds = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=4), seed=0, num_scenes=2)
    b = collate([ds[i] for i in range(4)])
    m = tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        out = m(b, generator=torch.Generator().manual_seed(step % 4))  # a fixed set of noise draws
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.5 * first, (first, last)


def test_cfg_with_empty_instruction():
    ids, mask = tokenize(["", "Pick up the RED cube!"])
    assert ids[0, 0] == NULL and mask[0].sum() == 1 and mask[1].sum() == 5
    assert drop_instructions(["a", "b"], 1.0) == ["", ""] and drop_instructions(["a"], 0.0) == ["a"]
    m = randomize_output(tiny()).eval()
    b = batch(m.config, instruction="")
    plain = m.sample(b, "policy", steps=3, generator=torch.Generator().manual_seed(0))
    guided = m.sample(b, "policy", steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain.act, guided.act, atol=1e-5)  # cond == uncond when the prompt is empty
    b = batch(m.config, instruction="pick up the red cube")
    with torch.no_grad():  # a trained-in language signal: make the text projection matter
        m.backbone.text_proj.weight.normal_(std=1.0)
    g1 = m.sample(b, "policy", steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    g0 = m.sample(b, "policy", steps=3, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(g1.act).all() and not torch.allclose(g1.act, g0.act, atol=1e-4)


def test_pooled_words_are_a_bag_unless_text_layers_mix_them():
    """Without layers, the mean of the hashed encoder's tokens (the DiT's "adaln" conditioning) cannot tell which
    colour is which object; one layer, trained, can. A layer starts as the identity; the count is checked, and layers
    are refused for encoders whose features are contextual already."""
    from action_images.text import HashTextEncoder, build_text_encoder

    def pooled(enc, texts):
        tok, mask = enc(texts)
        m = mask.float()[..., None]
        return (tok * m).sum(1) / m.sum(1)

    texts = ["stack the red cube on the blue cube", "stack the blue cube on the red cube"]
    torch.manual_seed(0)
    bag = HashTextEncoder(TextConfig(dim=32))
    torch.testing.assert_close(*pooled(bag, texts), atol=1e-6, rtol=0)
    assert not hasattr(bag, "layers") and "layers" not in TextConfig(dim=32).to_dict()
    torch.manual_seed(0)
    enc = HashTextEncoder(TextConfig(dim=32, layers=1))
    assert set(bag.state_dict()) < set(enc.state_dict())
    torch.testing.assert_close(enc(texts)[0], bag(texts)[0], atol=0, rtol=0)           # the identity at first
    opt = torch.optim.Adam(enc.layers.parameters(), lr=1e-2)
    for _ in range(30):                                       # pull the two instructions' pooled vectors apart
        a, b = pooled(enc, texts)
        loss = -torch.nn.functional.mse_loss(a, b).clamp(max=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b = pooled(enc, texts)
    assert (a - b).norm() > 0.1 * a.norm()
    from action_images.text import TextLayer
    x = torch.randn(2, 5, 200)                                # a width with no divisor near 64 a head: 200 / 2 heads
    assert TextLayer(200).attn.num_heads == 2 and TextLayer(200)(x, torch.ones(2, 5, dtype=torch.bool)).shape == x.shape
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ValueError, match="--text-layers"):
            build_text_encoder(TextConfig(dim=32, layers=bad))
    with pytest.raises(ValueError, match="hashed-word encoder only"):
        build_text_encoder(TextConfig(kind="external", dim=32, external_dim=8, layers=1))


def test_cfg_scale_zero_samples_the_empty_instruction_in_one_pass():
    m = randomize_output(tiny()).eval()
    with torch.no_grad():
        m.backbone.text_proj.weight.normal_(std=1.0)
    b = batch(m.config, B=2)
    widths: list[int] = []
    hook = m.backbone.register_forward_pre_hook(lambda mod, args: widths.append(args[0].shape[0]))
    z = m.sample(b, "policy", steps=3, cfg_scale=0.0, generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert widths == [2, 2, 2]                               # one pass of the batch per step, not two
    empty = m.sample(batch(m.config, B=2, instruction=""), "policy", steps=3,
                     generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z.act, empty.act, atol=1e-6)      # uncond + 0 * (cond - uncond) is uncond
    c = m.sample(b, "policy", steps=3, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(z.act, c.act, atol=1e-4)


def test_camera_conditioning_changes_prediction():
    m = randomize_output(tiny()).eval()
    b = batch(m.config)
    o1 = m.sample(b, "policy", steps=2, generator=torch.Generator().manual_seed(0))
    o2 = m.sample(dict(b, plucker=b["plucker"] + 1.0), "policy", steps=2, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(o1.act, o2.act, atol=1e-4)


def test_save_load_roundtrip(tmp_path):
    m = randomize_output(tiny()).eval()
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["preset"] == "cpu-tiny"
    m2 = WorldActionModel.from_pretrained(tmp_path).eval()
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    b = batch(m.config)
    o1 = m.sample(b, "policy", steps=2, generator=torch.Generator().manual_seed(0))
    o2 = m2.sample(b, "policy", steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(o1.act, o2.act)


def test_config_mismatch_is_refused(tmp_path):
    tiny().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    bad = dict(meta, config=dict(meta["config"], unknown_option=1))
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown keys"):
        WorldActionModel.from_pretrained(tmp_path)
    wider = dict(meta, config=dict(meta["config"], backbone=dict(meta["config"]["backbone"], width=64)))
    (tmp_path / "config.json").write_text(json.dumps(wider))
    with pytest.raises(ValueError, match="shape mismatches"):
        WorldActionModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(ValueError, match="format"):
        WorldActionModel.from_pretrained(tmp_path)


def test_external_text_encoder_hook(tmp_path):
    def fn(texts):  # a stand-in "pretrained" encoder: 3 tokens of 10 features
        feats = torch.stack([torch.full((3, 10), float(len(t))) for t in texts])
        return feats, torch.ones(len(texts), 3, dtype=torch.bool)
    torch.manual_seed(0)
    cfg = WAMConfig.from_preset("cpu-tiny")
    cfg.text = TextConfig(kind="external", dim=32, external_dim=10).to_dict()
    m = WorldActionModel(cfg, text_fn=fn)
    b = batch(cfg)
    assert torch.isfinite(m(b)["loss"])
    tok, mask = m.encode_text(["", "abc"])
    assert mask[0].tolist() == [True, False, False] and torch.equal(tok[0, 0], m.text_encoder.null.weight[0])
    m.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="text_fn"):
        WorldActionModel.from_pretrained(tmp_path).encode_text(["x"])
    assert WorldActionModel.from_pretrained(tmp_path, text_fn=fn).encode_text(["x"])[0].shape == (1, 3, 32)


def test_act_peak_weight_scores_blob_pixels_more():
    """The blob weight raises the loss only where the target action image has a blob; 0 is the uniform loss."""
    ds = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=4), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    torch.manual_seed(0)
    m = WorldActionModel(WAMConfig.from_preset("cpu-tiny", act_peak_weight=0.0))
    with torch.no_grad():
        m.backbone.out.bias.fill_(0.1)          # a nonzero error everywhere
    loss = lambda: m(batch, torch.Generator().manual_seed(3), tasks=["labeler"] * 2)["loss"].item()  # noqa: E731
    uniform = loss()
    m.config.act_peak_weight = 10.0
    weighted = loss()
    assert weighted > uniform * 1.05


def test_keypoint_loss_measures_blob_centres_in_blob_widths():
    """The blob centroid of encoded action images sits at the projected point; the keypoint loss is 0 for the true
    images, (shift / σ)² for blobs moved by ``shift`` pixels, and its gradient reaches the pixels."""
    import numpy as np

    from action_images.benchmarks.codec import random_poses, sim_cameras
    from action_images.codec import ActionImageCodec
    from action_images.flow import blob_centroids, keypoint_loss

    codec, cams = ActionImageCodec(), sim_cameras(2, 48)
    poses = random_poses(6, seed=1)
    img = codec.encode(poses, cams)                                               # [V, T, H, W, 3] in [0, 1]
    act = torch.from_numpy(img).permute(0, 1, 4, 2, 3)[None] * 2 - 1              # [1, V, T, 3, H, W]
    c, mass = blob_centroids(act)
    uv, _, cut = codec.peaks(img, return_cut=True)
    whole = torch.from_numpy(~cut)[None]
    assert whole.sum() > 20
    err = (c - torch.from_numpy(uv)[None].float()).norm(dim=-1)[whole]
    assert err.max() < 0.05                                                        # pixels
    gen = torch.ones(*act.shape[:4], 1, 1)
    sigma = codec.sigma(48, 48)
    assert keypoint_loss(act, act, gen, sigma).item() < 1e-6
    moved = torch.roll(act, shifts=1, dims=-1).requires_grad_(True)             # one pixel right
    kp = keypoint_loss(moved, act, gen, sigma)
    assert abs(kp.item() - (1 / sigma) ** 2) < 0.2 * (1 / sigma) ** 2
    kp.backward()
    assert moved.grad.abs().sum() > 0
    assert keypoint_loss(moved, act, torch.zeros_like(gen), sigma).item() == 0.0   # nothing generated, nothing scored


def test_act_keypoint_weight_adds_the_keypoint_loss():
    """The keypoint term joins the loss at its weight; at weight 0 it is still logged as a diagnostic."""
    ds = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=4), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    torch.manual_seed(0)
    m = WorldActionModel(WAMConfig.from_preset("cpu-tiny"))
    # weight 0: reported, not trained on; an untrained model predicts the current action image (nothing moves),
    # whose blobs sit off the future ones
    out = m(batch, torch.Generator().manual_seed(3), tasks=["policy"] * 2)
    assert out["loss_keypoint"].item() > 0
    m.config.act_keypoint_weight = 1.0
    with_kp = m(batch, torch.Generator().manual_seed(3), tasks=["policy"] * 2)
    assert torch.isfinite(with_kp["loss"]) and with_kp["loss_keypoint"].item() == out["loss_keypoint"].item()
    assert with_kp["loss"].item() == pytest.approx(out["loss"].item() + with_kp["loss_keypoint"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="act_keypoint_weight"):
        WAMConfig.from_preset("cpu-tiny", act_keypoint_weight=-1.0).validate()


def test_old_checkpoint_config_without_new_keys_loads(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["config"]["act_peak_weight"], meta["config"]["loss_target"], meta["config"]["act_keypoint_weight"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    cfg = WorldActionModel.from_pretrained(tmp_path).config
    assert cfg.act_peak_weight == 0.0 and cfg.loss_target == "velocity" and cfg.act_keypoint_weight == 0.0


def test_format_v1_config_gets_its_cameras_from_the_run_arguments(tmp_path):
    """A v1 checkpoint does not name its cameras; its run's train_args.json does (the shipped checkpoint's case)."""
    tiny().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["config"]["camera_names"], meta["config"]["crop"]
    (tmp_path / "config.json").write_text(json.dumps(dict(meta, format_version=1)))
    assert WorldActionModel.from_pretrained(tmp_path).config.camera_names is None
    (tmp_path / "train_args.json").write_text(json.dumps({"camera_names": "left,right"}))
    cfg = WorldActionModel.from_pretrained(tmp_path).config
    assert cfg.camera_names == ["left", "right"] and cfg.crop == "center"


def test_huge_config_is_refused_before_allocating(tmp_path):
    """A small config edit cannot make the loader allocate: it is checked against the weights header first."""
    import resource
    tiny().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    bb = dict(meta["config"]["backbone"], width=65536, depth=64, heads=8)
    (tmp_path / "config.json").write_text(json.dumps(dict(meta, config=dict(meta["config"], backbone=bb))))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="model.safetensors: weights do not match"):
        WorldActionModel.from_pretrained(tmp_path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000     # KiB: far below 16 GiB/layer


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:300]),
     "model.safetensors: not a readable safetensors file"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: no such weights file"),
    (lambda d: (d / "config.json").write_text("{oops"), "config.json: not JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json: expected an object"),
    (lambda d: (d / "config.json").write_text(json.dumps(
        dict(json.loads((d / "config.json").read_text()),
             config=dict(json.loads((d / "config.json").read_text())["config"], image_size="big")))),
     "config.json: image_size must be an integer"),
    (lambda d: (d / "config.json").write_text(json.dumps(
        dict(json.loads((d / "config.json").read_text()),
             config=dict(json.loads((d / "config.json").read_text())["config"],
                         backbone={**json.loads((d / "config.json").read_text())["config"]["backbone"],
                                   "width": "wide"})))),
     "config.json: the config does not build a model"),
])
def test_damaged_checkpoints_are_refused_naming_the_file(tmp_path, damage, message):
    tiny().save_pretrained(tmp_path)
    damage(tmp_path)
    with pytest.raises(ValueError) as e:
        WorldActionModel.from_pretrained(tmp_path)
    assert message in str(e.value) and str(tmp_path) in str(e.value)


def test_loss_target_x0_and_velocity():
    """x0: the per-stream loss is the clean-clip MSE; velocity: that MSE over t^2 (larger, since t < 1)."""
    ds = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=4), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    torch.manual_seed(0)
    m = WorldActionModel(WAMConfig.from_preset("cpu-tiny", loss_target="x0"))
    with torch.no_grad():
        m.backbone.out.bias.fill_(0.1)
    out = m(batch, torch.Generator().manual_seed(3))
    assert torch.allclose(out["loss_act"], out["x0_mse_act"]) and torch.allclose(out["loss_rgb"], out["x0_mse_rgb"])
    m.config.loss_target = "velocity"
    vel = m(batch, torch.Generator().manual_seed(3))
    assert vel["loss_act"] > out["loss_act"] and torch.allclose(vel["x0_mse_act"], out["x0_mse_act"])
    with pytest.raises(ValueError, match="loss_target"):
        WorldActionModel(WAMConfig.from_preset("cpu-tiny", loss_target="eps"))


def test_refine_head_starts_as_identity_and_learns():
    """refine_channels > 0: same output as without it at init (zero last conv); its weights get gradients."""
    torch.manual_seed(0)
    a = WorldActionModel(WAMConfig.from_preset("cpu-tiny"))
    cfg = WAMConfig.from_preset("cpu-tiny")
    cfg.backbone = {**cfg.backbone, "refine_channels": 4}
    torch.manual_seed(0)
    b = WorldActionModel(cfg)
    ds = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=4), seed=0, num_scenes=2)
    batch = collate([ds[0], ds[1]])
    with torch.no_grad():
        for m in (a, b):
            m.backbone.out.bias.fill_(0.1)
    la = a(batch, torch.Generator().manual_seed(1))["loss"]
    lb = b(batch, torch.Generator().manual_seed(1))["loss"]
    assert torch.allclose(la, lb)
    lb.backward()
    assert b.backbone.refine[-1].weight.grad.abs().sum() > 0


def test_config_with_nan_is_not_strict_json(tmp_path):
    tiny().save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"t_std": 1.0', '"t_std": NaN')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="config.json: not JSON .*NaN is not strict JSON"):
        WorldActionModel.from_pretrained(tmp_path)


def test_conv_stem_sees_sub_patch_detail_and_trains(tmp_path):
    """stem_channels > 0: a full-resolution conv stem before the patch embedding; its weights get gradients, it
    survives save/load, and one pixel moved inside a patch changes its features where a linear embedding of a
    patch-wise mean would not see it."""
    cfg = WAMConfig.from_preset("cpu-tiny")
    cfg.backbone = {**cfg.backbone, "stem_channels": 4}
    torch.manual_seed(0)
    m = randomize_output(WorldActionModel(cfg))              # zero-initialised outputs pass no gradient back
    assert m.backbone.x_in.in_features == (6 + 4) * 8 * 8
    assert "stem_channels" not in WAMConfig.from_preset("cpu-tiny").to_dict()["backbone"]   # old configs as before
    ds = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=4), seed=0, num_scenes=2)
    b = collate([ds[0], ds[1]])
    loss = m(b, torch.Generator().manual_seed(1))["loss"]
    loss.backward()
    assert m.backbone.stem[0].weight.grad.abs().sum() > 0
    m.save_pretrained(tmp_path / "stem")
    again = WorldActionModel.from_pretrained(tmp_path / "stem")
    assert again.config.backbone["stem_channels"] == 4
    for k, v in m.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    x = torch.zeros(1, 6, 8, 8)
    y = x.clone()
    x[..., 1, 1], y[..., 5, 5] = 1.0, 1.0
    fx, fy = m.backbone.stem(x), m.backbone.stem(y)
    assert not torch.allclose(fx.mean((-2, -1)), fy.mean((-2, -1))) or not torch.allclose(fx, fy)


def test_context_encoder_reads_the_current_frame_and_trains(tmp_path):
    """context_channels > 0: a strided CNN on each view's current frame adds features at the token grid; it gets
    gradients, survives save/load, old configs read as before, and only frame 0 of the input reaches it."""
    cfg = WAMConfig.from_preset("cpu-tiny")
    cfg.backbone = {**cfg.backbone, "context_channels": 4}
    torch.manual_seed(0)
    m = randomize_output(WorldActionModel(cfg))
    assert "context_channels" not in WAMConfig.from_preset("cpu-tiny").to_dict()["backbone"]
    ds = SyntheticWindows(WindowConfig(image_size=32, num_views=2, horizon=2, stride=4), seed=0, num_scenes=2)
    b = collate([ds[0], ds[1]])
    m(b, torch.Generator().manual_seed(1))["loss"].backward()
    assert m.backbone.context.net[0].weight.grad.abs().sum() > 0
    m.save_pretrained(tmp_path / "ctx")
    again = WorldActionModel.from_pretrained(tmp_path / "ctx")
    assert again.config.backbone["context_channels"] == 4
    for k, v in m.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    # the encoder maps a 32 px view to the 4 x 4 token grid at the model width
    feats = m.backbone.context(torch.zeros(3, 6, 32, 32))
    assert feats.shape == (3, 4, 4, cfg.backbone["width"])
    # its input is frame 0 of each view: a change in frame 1 leaves what it reads unchanged
    calls = []
    hook = m.backbone.context.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].clone()))
    B, V, Fr = 1, 2, 3
    x = torch.zeros(B, V, Fr, 6, 32, 32)
    st = torch.zeros(B, V, Fr, 2, dtype=torch.long)
    pl = torch.zeros(B, V, 6, 32, 32)
    text, mask = m.encode_text(["x"])
    y = x.clone()
    y[:, :, 1] = 1.0
    with torch.no_grad():
        m.backbone(x, torch.tensor([0.5]), st, pl, text, mask)
        m.backbone(y, torch.tensor([0.5]), st, pl, text, mask)
    hook.remove()
    torch.testing.assert_close(calls[0], calls[1])
    torch.testing.assert_close(calls[0], x[:, :, 0].reshape(B * V, 6, 32, 32))


def test_context_encoder_needs_a_power_of_two_patch():
    from action_images.models.dit import DiT, DiTConfig
    with pytest.raises(ValueError, match="power-of-two patch"):
        DiT(DiTConfig(width=32, depth=1, heads=2, patch=6, text_dim=32, context_channels=4))


def history_model(history: int = 1) -> WorldActionModel:
    cfg = WAMConfig.from_preset("cpu-tiny", history=history, history_gap=3)
    cfg.backbone = {**cfg.backbone, "context_channels": 4}
    cfg.validate()
    torch.manual_seed(0)
    return randomize_output(WorldActionModel(cfg))


def test_history_frames_reach_the_context_encoder_where_the_job_gives_frame_0(tmp_path):
    """history = P > 0: the context encoder reads each view's P past frames beside the current one; a batch without
    them is refused; a stream a job does not give at frame 0 is not given in the past frames either; the config
    survives save/load and configs without past frames keep their old form."""
    m = history_model()
    assert m.backbone.context.net[0].weight.shape[1] == 12
    assert "history" not in WAMConfig.from_preset("cpu-tiny").to_dict()
    ds = SyntheticWindows(WindowConfig.from_model(m.config), seed=0, num_scenes=2)
    b = collate([ds[0], ds[1]])
    assert b["history"].shape == (2, 2, 1, 6, 32, 32)
    m(b, torch.Generator().manual_seed(1))["loss"].backward()
    assert m.backbone.context.net[0].weight.grad[:, 6:].abs().sum() > 0
    with pytest.raises(ValueError, match="history"):
        m({k: v for k, v in b.items() if k != "history"}, torch.Generator().manual_seed(1))
    m.eval()

    def sample(job: str, history: torch.Tensor):
        return m.sample({**b, "history": history}, task=job, steps=2, generator=torch.Generator().manual_seed(2))

    other_act = b["history"].clone()
    other_act[:, :, :, 3:] = -b["history"][:, :, :, 3:]
    other_rgb = b["history"].clone()
    other_rgb[:, :, :, :3] = -b["history"][:, :, :, :3]
    base = sample("policy", b["history"])
    assert not torch.allclose(sample("policy", other_act).act, base.act)      # given: read
    assert not torch.allclose(sample("policy", other_rgb).act, base.act)
    video = sample("video", b["history"])                                      # the video job generates no action
    torch.testing.assert_close(sample("video", other_act).rgb, video.rgb)     # its past action images are not read
    labels = sample("labeler", b["history"])                                   # nor does the labeler see past ones:
    torch.testing.assert_close(sample("labeler", other_act).act, labels.act)  # it generates the current action too
    assert not torch.allclose(sample("labeler", other_rgb).act, labels.act)   # while the past RGB is read
    m.save_pretrained(tmp_path / "h")
    again = WorldActionModel.from_pretrained(tmp_path / "h")
    assert (again.config.history, again.config.history_gap) == (1, 3)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


def test_history_needs_the_context_encoder():
    cfg = WAMConfig.from_preset("cpu-tiny", history=1)
    with pytest.raises(ValueError, match="context encoder"):
        cfg.validate()
    cfg.backbone = {**cfg.backbone, "context_channels": 4}
    cfg.validate()
    for bad in (-1, 5, 1.5, True):
        cfg.history = bad
        with pytest.raises(ValueError, match="history must be"):
            cfg.validate()
    cfg.history, cfg.history_gap = 1, 0
    with pytest.raises(ValueError, match="history_gap"):
        cfg.validate()
    cfg.history_gap, cfg.backbone = 4, {**cfg.backbone, "context_history": 1}   # set from history, not by hand
    with pytest.raises(ValueError, match="context_history"):
        cfg.validate()


@pytest.mark.parametrize("task", list(TASKS))
def test_a_moved_current_action_image_replaces_the_given_frame_0_only(task, monkeypatch):
    """``act_in0`` (training windows with data.current_noise) is what the network is given as frame 0's action
    image wherever the job gives it (and the clean-clip prediction is made relative to it); where the job generates
    frame 0's action (the labeler) or leaves it out (video), the input is as without it, and the loss target is
    always the batch's ``act``."""
    m = tiny()
    b = batch(m.config)
    moved = torch.rand(b["act"][:, :, 0].shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    seen = []
    predict = WorldActionModel.predict_x0

    def noting(self, x_in, *args, **kw):
        seen.append(x_in.clone())
        return predict(self, x_in, *args, **kw)

    monkeypatch.setattr(WorldActionModel, "predict_x0", noting)
    m(b, generator=torch.Generator().manual_seed(0), tasks=[task] * 2)
    m({**b, "act_in0": moved}, generator=torch.Generator().manual_seed(0), tasks=[task] * 2)
    plain, given = seen
    assert torch.equal(plain[:, :, 1:], given[:, :, 1:]) and torch.equal(plain[:, :, 0, :3], given[:, :, 0, :3])
    if TASKS[task]["act"][0] == GIVEN:      # the action stream's frame 0 is given
        assert torch.equal(given[:, :, 0, 3:], moved) and torch.equal(plain[:, :, 0, 3:], b["act"][:, :, 0])
    else:
        assert torch.equal(given[:, :, 0, 3:], plain[:, :, 0, 3:])
