"""The paper-scale path on tiny random configs: Wan2.2 VAE latents, UMT5 instructions, local pretrained folders, LoRA,
gradient checkpointing, CPU precision and multi-process runs. Nothing is downloaded; every model is built here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from action_images import checkpointing, train  # noqa: E402
from action_images.data.windows import SyntheticWindows, WindowConfig, collate  # noqa: E402
from action_images.geometry import Camera  # noqa: E402
from action_images.models import PRESETS  # noqa: E402
from action_images.models import latent as lat  # noqa: E402
from action_images.wam import GEN, GIVEN, WAMConfig, WorldActionModel  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = PRESETS["wan-tiny-latent"]["backbone"]
WORDS = ["<pad>", "</s>", "<unk>", "pick", "up", "the", "red", "blue", "green", "cube", "open", "drawer", "push",
         "press", "button", "reach", "target", "close", "stack", "place", "in", "bin"]


# ---- fixtures: a tiny local diffusers pipeline folder and a tiny UMT5 folder, built offline ---------------------------
def make_umt5(folder: Path, d_model: int = 32) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(folder / "tokenizer"))
    torch.manual_seed(7)
    UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=16)
                     ).save_pretrained(str(folder / "text_encoder"))
    return folder


def make_pipeline(folder: Path, vae: bool = True) -> Path:
    """transformer/ (Wan on Z = 6 latent channels, patch 2, the wan-tiny-latent dims) and vae/ (the tiny Wan VAE)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(5)
    z = lat.TINY_VAE["z_dim"]
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=TINY.num_attention_heads,
                               attention_head_dim=TINY.attention_head_dim, in_channels=z, out_channels=z,
                               text_dim=TINY.text_dim, freq_dim=TINY.freq_dim, ffn_dim=TINY.ffn_dim,
                               num_layers=TINY.num_layers)
    tr.save_pretrained(str(folder / "transformer"))
    if vae:
        cfg = dict(lat.TINY_VAE, latents_mean=[0.1 * i for i in range(z)], latents_std=[1.0 + 0.1 * i for i in range(z)])
        AutoencoderKLWan(**cfg).save_pretrained(str(folder / "vae"))
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"pipe": make_pipeline(root / "wan"), "umt5": make_umt5(root / "umt5")}


def batch(cfg: WAMConfig, n: int = 2, seed: int = 0) -> dict:
    ds = SyntheticWindows(WindowConfig.from_model(cfg), seed=seed, num_scenes=n)
    return collate([ds[i] for i in range(n)])


def model(preset: str = "wan-tiny-latent", **backbone) -> WorldActionModel:
    cfg = WAMConfig.from_preset(preset)
    cfg.backbone = {**cfg.backbone, **backbone}
    torch.manual_seed(0)
    return WorldActionModel(cfg)


def perturb_output(m: WorldActionModel) -> None:
    """proj_out starts at zero ("nothing moves"); make the output depend on the input."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = m.backbone.transformer.proj_out
        w = getattr(w, "base_layer", w)
        w.weight.copy_(torch.randn(w.weight.shape, generator=g) * 0.05)


# ---- 1. latent space ---------------------------------------------------------------------------------------------------
def test_keyframes_map_to_latent_frames():
    assert [lat.latent_frames(1 + h) for h in (4, 8, 12)] == [2, 3, 4]
    for h in (1, 2, 3, 5, 6):
        with pytest.raises(ValueError, match="horizon = 4k"):
            lat.latent_frames(1 + h)
    cfg = WAMConfig.from_preset("wan-tiny-latent", horizon=2)
    with pytest.raises(ValueError, match="horizon = 4k"):
        cfg.validate()
    cfg = WAMConfig.from_preset("wan-tiny-latent")
    assert cfg.latent is not None and cfg.act_peak_weight == 0.0
    assert cfg.tokens_per_sample() == 2 * 2 * (32 // 8 // 2) ** 2          # V x latent frames x patches
    assert WAMConfig.from_preset("wan-tiny").latent is None                 # the pixel presets are unchanged
    big = WAMConfig.from_preset("wan2.2-5b-latent")
    big.validate()
    assert lat.factors(big.latent["vae"]) == (16, 4) and big.backbone["in_channels"] == 96
    assert big.tokens_per_sample() == 2 * 3 * 8 * 8


def test_vae_is_causal_and_fold_is_exact():
    vae = lat.FrozenVAE(lat.latent_config(lat.TINY_VAE))
    assert not any(p.requires_grad for p in vae.parameters())
    x = torch.rand(2, 3, 5, 3, 32, 32) * 2 - 1                               # [B, V, F = 1 + 4, 3, H, W]
    z = vae.encode(x)
    assert z.shape == (2, 3, 2, 6, 4, 4)
    y = x.clone()
    y[:, :, 1:] = torch.rand_like(y[:, :, 1:])                             # change only the keyframes
    z2 = vae.encode(y)
    assert torch.equal(z2[:, :, 0], z[:, :, 0]) and not torch.equal(z2[:, :, 1], z[:, :, 1])
    assert vae.decode(z).shape == x.shape
    both = torch.randn(2, 3, 2, 12, 4, 4)
    folded = lat.fold(both)
    assert folded.shape == (2, 3, 2, 6, 8, 4) and torch.equal(lat.unfold(folded, 4), both)
    assert torch.equal(folded[:, :, :, :3].reshape(2, 3, 2, 6, 4, 4), both[:, :, :, :6])   # stream 0 -> channels 0-2


def test_latent_rays_go_through_the_latent_pixel_centres():
    K = np.array([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]])
    T = np.eye(4)
    T[:3, 3] = [0.1, -0.2, 1.0]
    cam = Camera(K=K, T_cam_world=T, width=64, height=64)
    rays = lat.latent_plucker(torch.tensor(K)[None, None], torch.tensor(T)[None, None], (64, 64), (4, 4))[0, 0]
    assert rays.shape == (6, 4, 4)
    assert np.allclose(rays.permute(1, 2, 0).numpy(), cam.resized(4, 4).plucker(), atol=1e-6)
    o = -T[:3, :3].T @ T[:3, 3]                                             # camera centre in the world
    for i, j in ((0, 0), (1, 2), (3, 3)):
        d = rays[:3, i, j].double().numpy()
        p = K @ (T[:3, :3] @ (o + d) + T[:3, 3])
        uv = p[:2] / p[2]
        assert np.allclose(uv, [(j + 0.5) * 16 - 0.5, (i + 0.5) * 16 - 0.5], atol=1e-6)   # latent pixel centre
        assert np.allclose(rays[3:, i, j].double().numpy(), np.cross(o, d), atol=1e-5)


def test_latent_model_trains_and_samples_with_exact_given_parts():
    m = model()
    perturb_output(m)
    b = batch(m.config)
    seen = {}
    inner = m.backbone.forward

    def spy(x, t, state, plucker, text, text_mask):
        seen.update(x=x, state=state, plucker=plucker)
        return inner(x, t, state, plucker, text, text_mask)

    m.backbone.forward = spy
    out = m(b, generator=torch.Generator().manual_seed(0), tasks=["policy", "world_model"])
    assert seen["x"].shape == (2, 2, 2, 12, 4, 4) and seen["plucker"].shape == (2, 2, 6, 4, 4)
    assert seen["state"][0, :, 0].eq(GIVEN).all() and seen["state"][0, :, 1].eq(GEN).all()
    assert seen["state"][1, :, 1, 1].eq(GIVEN).all()                        # world model: future actions given
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert m.backbone.transformer.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.vae.parameters())
    s = m.eval().sample(b, task="policy", steps=2, generator=torch.Generator().manual_seed(0))
    assert s.rgb.shape == b["rgb"].shape and s.state.shape == (2, 2, 5, 2)
    assert torch.equal(s.rgb[:, :, 0], b["rgb"][:, :, 0]) and torch.equal(s.act[:, :, 0], b["act"][:, :, 0])
    assert not torch.equal(s.act[:, :, 1:], b["act"][:, :, 1:]) and s.act.abs().max() <= 1
    v = m.sample(b, task="video", steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(v.act) == 0                                  # absent stream: zeros


def test_pretrained_folder_keeps_rgb_patch_embedding(assets):
    from diffusers import WanTransformer3DModel
    from action_images.models.wan import WanBackbone, WanBackboneConfig

    src = WanTransformer3DModel.from_pretrained(str(assets["pipe"] / "transformer"))
    cfg = WanBackboneConfig.from_pretrained(assets["pipe"], patch=2, in_channels=12)
    pe = WanBackbone(cfg).transformer.patch_embedding
    assert pe.in_channels == 12 + 6 + 6
    assert torch.equal(pe.weight[:, :6], src.patch_embedding.weight) and torch.equal(pe.bias, src.patch_embedding.bias)
    assert torch.count_nonzero(pe.weight[:, 6:]) == 0
    vae = lat.FrozenVAE(lat.latent_config(lat.vae_config_from_folder(assets["pipe"]), str(assets["pipe"])))
    assert torch.allclose(vae.mean.flatten(), torch.tensor([0.1 * i for i in range(6)]))


# ---- 3. local folders: one-line errors ---------------------------------------------------------------------------------
def _train(tmp, *extra, out="r") -> tuple[int, str]:
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train.main(["--preset", "wan-tiny-latent", "--data", "synthetic:2", "--out", str(tmp / out),
                         "--batch-size", "2", "--no-progress", "--threads", "1", *extra])
    return rc, err.getvalue()


def test_missing_pretrained_files_are_named_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    rc, err = _train(tmp_path, "--steps", "1", "--pretrained", str(tmp_path / "empty"))
    line = [ln for ln in err.splitlines() if "missing" in ln]
    assert rc == 2 and len(line) == 1
    for f in ("transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
              "vae/diffusion_pytorch_model.safetensors"):
        assert str(tmp_path / "empty" / f) in line[0], f
    make_pipeline(tmp_path / "novae", vae=False)
    rc, err = _train(tmp_path, "--steps", "1", "--pretrained", str(tmp_path / "novae"), out="r2")
    line = [ln for ln in err.splitlines() if "missing" in ln]
    assert rc == 2 and len(line) == 1 and "vae/config.json" in line[0] and "transformer/" not in line[0]
    rc, err = _train(tmp_path, "--steps", "1", "--text-encoder", str(tmp_path / "empty"), out="r3")
    assert rc == 2 and "text_encoder/config.json" not in err and "model.safetensors" in err
    rc, err = _train(tmp_path, "--steps", "1", "--pretrained", str(tmp_path / "nowhere"), out="r4")
    assert rc == 2 and "no such folder" in err


# ---- 2. UMT5 ----------------------------------------------------------------------------------------------------------
def test_umt5_features_match_the_encoder_and_are_cached(assets, tmp_path):
    from transformers import AutoTokenizer, UMT5EncoderModel
    from action_images.models.umt5 import UMT5TextEncoder, instruction_key
    from action_images.text import TextConfig, build_text_encoder

    cfg = TextConfig(kind="umt5", dim=32, max_tokens=12, path=str(assets["umt5"]))
    enc = build_text_encoder(cfg)
    assert isinstance(enc, UMT5TextEncoder) and len(list(enc.parameters())) == 0 and enc.state_dict() == {}
    enc.set_cache_dir(tmp_path / "cache")
    texts = ["pick up the red cube", "", "open the drawer"]
    feats, mask = enc(texts)
    assert feats.shape == (3, 12, 32) and mask.sum(1).tolist() == [6, 1, 4]          # words + </s>
    assert torch.count_nonzero(feats[~mask]) == 0
    tok = AutoTokenizer.from_pretrained(str(assets["umt5"] / "tokenizer"))
    ref = UMT5EncoderModel.from_pretrained(str(assets["umt5"] / "text_encoder"))
    ids = tok(["pick up the red cube"], return_tensors="pt")
    want = ref(ids.input_ids, ids.attention_mask).last_hidden_state[0]
    assert torch.allclose(feats[0, :6], want, atol=1e-6)
    files = sorted(p.name for p in (enc.cache_dir).glob("*.safetensors"))
    assert files == sorted(f"{instruction_key(s)}.safetensors" for s in texts)
    again = build_text_encoder(cfg)                                         # a new process: reads the cache only
    again.set_cache_dir(tmp_path / "cache")
    f2, m2 = again(["open the drawer", "pick up the red cube"])
    assert not again._loaded and torch.equal(f2[1], feats[0]) and torch.equal(m2[0], mask[2])
    other = TextConfig(kind="umt5", dim=32, max_tokens=8, path=str(assets["umt5"]))   # another encoder setting
    third = build_text_encoder(other)
    third.set_cache_dir(tmp_path / "cache")
    assert third.cache_dir != enc.cache_dir


# ---- 4. LoRA ----------------------------------------------------------------------------------------------------------
def test_lora_trains_only_adapters_and_merges_exactly(assets, tmp_path):
    from action_images.models.lora import load_lora_model, merge_lora, save_lora

    cfg = WAMConfig.from_preset("wan-tiny-latent")
    cfg.backbone = {**cfg.backbone, "pretrained": str(assets["pipe"]), "lora_rank": 4, "lora_alpha": 8.0,
                    "lora_targets": "to_q,to_k,to_v,to_out.0,ffn.net.0.proj,ffn.net.2"}
    cfg.latent = lat.latent_config(lat.vae_config_from_folder(assets["pipe"]), str(assets["pipe"]))
    torch.manual_seed(0)
    m = WorldActionModel(cfg)
    train_names = {n for n, p in m.named_parameters() if p.requires_grad}
    bb = {n for n in train_names if n.startswith("backbone.")}
    assert bb and all("lora_" in n or ".patch_embedding." in n or ".proj_out." in n for n in bb)
    assert not any(n.startswith("vae.") for n in train_names)
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad and n.startswith("backbone.")]
    assert any("attn1.to_q.base_layer" in n for n in frozen)
    b = batch(cfg)
    base = WorldActionModel(WAMConfig.from_dict({**cfg.to_dict(), "backbone": {
        k: v for k, v in cfg.backbone.items() if not k.startswith("lora_")}}))
    base.load_state_dict({k.replace(".base_layer.", "."): v for k, v in m.state_dict().items() if "lora_" not in k})
    perturb_output(m), perturb_output(base)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(m.eval().sample(b, steps=1, generator=g()).act, base.eval().sample(b, steps=1, generator=g()).act)
    with torch.no_grad():                                                   # B = 0 at the start; give it a value
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    s_lora = m.sample(b, steps=2, generator=g())
    assert not torch.equal(s_lora.act, base.sample(b, steps=2, generator=g()).act)
    merged = merge_lora(m).eval()
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    assert torch.allclose(merged.sample(b, steps=2, generator=g()).act, s_lora.act, atol=1e-5)
    save_lora(m, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "lora.safetensors").exists()
    back = load_lora_model(tmp_path / "adapter").eval()                     # base from the recorded local folder
    assert torch.equal(back.sample(b, steps=2, generator=g()).act, s_lora.act)


# ---- 6. end to end: two steps, save, load, sample a policy chunk, decode to poses --------------------------------------
def test_end_to_end_lora_umt5_latent(assets, tmp_path):
    from action_images.codec import ActionImageCodec

    rc, err = _train(tmp_path, "--steps", "2", "--pretrained", str(assets["pipe"]), "--text-encoder",
                     str(assets["umt5"]), "--finetune", "lora", "--lora-rank", "4", "--gradient-checkpointing",
                     "--mixed-precision", "bf16", "--checkpoint-every", "1")
    assert rc == 0, err
    assert "stays fp32" in err
    run = tmp_path / "r"
    rows = train.read_log(run / "log.jsonl")
    assert [r["step"] for r in rows] == [2] and np.isfinite(rows[0]["loss"])
    assert len(list((run / "cache" / "text").glob("umt5-*/*.safetensors"))) >= 1   # synthetic data: cache in --out
    m = WorldActionModel.from_pretrained(run).eval()
    cfg = m.config
    assert cfg.text["kind"] == "umt5" and cfg.backbone["lora_rank"] == 4 and cfg.backbone["gradient_checkpointing"]
    assert cfg.backbone["pretrained"] is None and cfg.latent["pretrained"] is None
    ck = checkpointing.read_checkpoint(run / "checkpoints" / "step_00000002")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(ck["ema"]) <= set(m.state_dict()) and not any(k.startswith("vae.") for k in ck["ema"])
    assert {k for k in ck["ema"] if "lora_" in k} == {k for k in trainable if "lora_" in k}
    b = batch(cfg, n=1, seed=3)
    s = m.sample(b, task="policy", steps=2, generator=torch.Generator().manual_seed(0))
    assert s.act.shape == (1, 2, 5, 3, 32, 32) and torch.isfinite(s.act).all()
    cams = [Camera(K=b["K"][0, v].numpy(), T_cam_world=b["T_cam_world"][0, v].numpy(), width=32, height=32)
            for v in range(2)]
    act = ((s.act[0, :, 1:].clamp(-1, 1) + 1) * 0.5).permute(0, 1, 3, 4, 2).numpy()     # [V, H, R, R, 3]
    dec = ActionImageCodec().decode(act, cams)
    assert dec.poses.shape == (4, 8)
    merged = tmp_path / "merged"
    assert subprocess.run([sys.executable, "-m", "action_images.models.lora", "merge", str(run), str(merged)],
                          capture_output=True, text=True, timeout=120).returncode == 0
    mm = WorldActionModel.from_pretrained(merged).eval()
    assert "lora_rank" not in mm.config.backbone
    s2 = mm.sample(b, task="policy", steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s2.act, s.act, atol=1e-4)


def test_cpu_run_stays_fp32_with_bf16_requested(tmp_path):
    losses = []
    for mp, out in (("no", "a"), ("bf16", "b")):
        rc, err = _train(tmp_path, "--steps", "2", "--log-every", "1", "--mixed-precision", mp, out=out)
        assert rc == 0, err
        losses.append([r["loss"] for r in train.read_log(tmp_path / out / "log.jsonl")])
    assert losses[0] == losses[1]                                           # bit for bit: no CPU autocast


# ---- 5. processes ----------------------------------------------------------------------------------------------------
def test_resume_with_another_world_size_must_be_allowed(tmp_path):
    rc, err = _train(tmp_path, "--steps", "2", "--checkpoint-every", "2")
    assert rc == 0, err
    state_file = tmp_path / "r" / "checkpoints" / "step_00000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["world_size"] == 1
    state["world_size"] = 2                                                 # as if written by a 2-process run
    state_file.write_text(json.dumps(state))
    rc, err = _train(tmp_path, "--steps", "3", "--resume")
    assert rc == 2 and "2 process(es)" in err and "--allow-world-size-change" in err
    rc, err = _train(tmp_path, "--steps", "3", "--resume", "--allow-world-size-change")
    assert rc == 0, err
    assert "another data order" in err
    assert [r["step"] for r in train.read_log(tmp_path / "r" / "log.jsonl")][-1] == 3


def _launch(config: str, out: Path, *extra: str, procs: int = 2) -> subprocess.CompletedProcess:
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--config_file", str(REPO / "configs" / "accelerate" / config), "--num_processes",
           str(procs), "-m", "action_images.train", "--preset", "wan-tiny-latent", "--data", "synthetic:4",
           "--batch-size", "1", "--no-progress", "--threads", "1", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def test_two_process_ddp_latent_then_resume_on_one(tmp_path):
    run = tmp_path / "ddp"
    proc = _launch("ddp.yaml", run, "--steps", "2", "--finetune", "lora", "--lora-rank", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = train.read_log(run / "log.jsonl")
    assert rows[-1]["step"] == 2 and rows[-1]["world_size"] == 2
    state = json.loads((run / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    rc, err = train.main(["--preset", "wan-tiny-latent", "--data", "synthetic:4", "--batch-size", "1", "--no-progress",
                          "--threads", "1", "--out", str(run), "--steps", "3", "--resume", "--finetune", "lora",
                          "--lora-rank", "2", "--allow-world-size-change"]), None
    assert rc == 0
    assert train.read_log(run / "log.jsonl")[-1]["world_size"] == 1
