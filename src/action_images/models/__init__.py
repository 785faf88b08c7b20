"""Video backbones behind one small interface, and the size registry (like DiT's ``DiT_models``).

A preset fixes the backbone *and* the data shape it was sized for (image size, views, keyframes), because on a CPU the
token count (views x frames x (res/patch)^2) is what decides speed (attention cost dominates beyond ~1k tokens; docs/method.md). Override any field when training.
``kind`` names the backbone (:func:`build_backbone`); presets without it are DiTs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from action_images.models.dit import DiT, DiTConfig, VideoBackbone, patchify, unpatchify
from action_images.models.wan import WanBackboneConfig  # importable without diffusers (imported when a model is built)
from action_images.models.latent import TINY_VAE, WAN22_VAE, latent_config  # no diffusers import either

# name -> backbone config + data defaults. Tokens per sample = num_views * (1 + horizon) * (image_size / patch)^2.
PRESETS: dict[str, dict[str, Any]] = {
    # tests: ~0.1 M parameters, 2 x 3 x 16 = 96 tokens
    "cpu-tiny": dict(backbone=DiTConfig(width=32, depth=2, heads=2, patch=8, text_dim=32),
                     image_size=32, num_views=2, horizon=2, stride=4, batch_size=4, text_vocab=512),
    # the default CPU preset: ~1.95 M parameters, 2 views x 5 frames x 36 patches = 360 tokens
    "cpu-small": dict(backbone=DiTConfig(width=128, depth=4, heads=4, patch=8, text_dim=128),
                      image_size=48, num_views=2, horizon=4, stride=2, batch_size=8),
    # bigger CPU model: ~7.5 M parameters, same tokens; ~3x slower per step
    "cpu-base": dict(backbone=DiTConfig(width=256, depth=6, heads=8, patch=8, text_dim=256),
                     image_size=48, num_views=2, horizon=4, stride=2, batch_size=8),
    # GPU sizes (not exercised on CPU): 4 views at 128 px, patch 8 -> 4 x 9 x 256 = 9216 tokens
    "gpu-s": dict(backbone=DiTConfig(width=384, depth=12, heads=6, patch=8, text_dim=384, max_frames=32),
                  image_size=128, num_views=4, horizon=8, stride=2, batch_size=32),
    "gpu-b": dict(backbone=DiTConfig(width=768, depth=12, heads=12, patch=8, text_dim=768, max_frames=32,
                                     text_conditioning="cross"),
                  image_size=128, num_views=4, horizon=8, stride=2, batch_size=32),
    "gpu-l": dict(backbone=DiTConfig(width=1024, depth=24, heads=16, patch=8, text_dim=1024, max_frames=32,
                                     text_conditioning="cross"),
                  image_size=256, num_views=4, horizon=8, stride=2, batch_size=16),
    # diffusers Wan2.2 transformer (models/wan.py, needs the `wan` extra). Tests: ~86 k parameters, 96 tokens.
    "wan-tiny": dict(kind="wan",
                     backbone=WanBackboneConfig(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64,
                                                patch=8, text_dim=32, freq_dim=32),
                     image_size=32, num_views=2, horizon=2, stride=4, batch_size=4, text_vocab=512),
    # the Wan2.2-TI2V-5B transformer dims (dim 3072 = 24 x 128, 30 layers, ffn 14336, umT5-XXL text 4096, freq 256);
    # GPU only, never built on CPU. Load the weights with backbone=WanBackboneConfig.from_pretrained(<local folder>)
    # .to_dict(). Pixel space (no VAE yet): patch 16 at 256 px -> 4 views x 9 frames x 256 = 9216 tokens.
    "wan2.2-5b": dict(kind="wan",
                      backbone=WanBackboneConfig(num_layers=30, num_attention_heads=24, attention_head_dim=128,
                                                 ffn_dim=14336, patch=16, text_dim=4096, freq_dim=256),
                      image_size=256, num_views=4, horizon=8, stride=2, batch_size=2),
    # Wan in the Wan2.2 VAE latent space (models/latent.py): a tiny random VAE (8x spatial, 4x temporal, 6 latent
    # channels) and transformer for tests. 32 px -> 4 x 4 latents, patch 2; H = 4 -> 2 latent frames; 16 tokens.
    "wan-tiny-latent": dict(kind="wan",
                            backbone=WanBackboneConfig(num_layers=2, num_attention_heads=2, attention_head_dim=16,
                                                       ffn_dim=64, patch=2, text_dim=32, freq_dim=32, in_channels=12),
                            latent=latent_config(TINY_VAE), image_size=32, num_views=2, horizon=4, stride=2,
                            batch_size=2, text_vocab=512),
    # the paper's setting: Wan2.2-TI2V-5B transformer (patch 2 on latents) over Wan2.2 VAE latents (48 channels per
    # stream, 16x spatial, 4x temporal). 256 px -> 16 x 16 latents -> 8 x 8 patches; H = 8 -> 3 latent frames;
    # 2 views -> 384 tokens. GPU only; load the weights with --pretrained DIR (docs/scale.md).
    "wan2.2-5b-latent": dict(kind="wan",
                             backbone=WanBackboneConfig(num_layers=30, num_attention_heads=24, attention_head_dim=128,
                                                        ffn_dim=14336, patch=2, text_dim=4096, freq_dim=256,
                                                        in_channels=96),
                             latent=latent_config(WAN22_VAE), image_size=256, num_views=2, horizon=8, stride=2,
                             batch_size=8),
}
CPU_PRESETS = tuple(k for k in PRESETS if k.startswith("cpu-"))


def _factory(name: str) -> Callable[..., DiT]:
    def make(**overrides: Any) -> DiT:
        return DiT(replace(PRESETS[name]["backbone"], **overrides))
    make.__name__ = f"DiT_{name.replace('-', '_')}"
    return make


DiT_models: dict[str, Callable[..., DiT]] = {name: _factory(name) for name in PRESETS
                                             if PRESETS[name].get("kind", "dit") == "dit"}


def build_backbone(kind: str, config: dict[str, Any]) -> VideoBackbone:
    """Build a backbone from its serialised config: ``"dit"`` (:class:`DiT`) or ``"wan"`` (diffusers Wan2.2
    transformer, :class:`~action_images.models.wan.WanBackbone`; needs the ``wan`` extra)."""
    if kind == "dit":
        return DiT(DiTConfig(**config))
    if kind == "wan":
        from action_images.models.wan import WanBackbone
        return WanBackbone(WanBackboneConfig(**config))
    raise ValueError(f"unknown backbone kind {kind!r}; known: 'dit', 'wan'")


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name])


__all__ = ["DiT", "DiTConfig", "WanBackboneConfig", "VideoBackbone", "DiT_models", "PRESETS", "CPU_PRESETS",
           "build_backbone", "preset", "patchify", "unpatchify"]
