"""Wan2.2 (diffusers ``WanTransformer3DModel``) behind the :class:`~action_images.models.dit.VideoBackbone` interface.

How the world action model's inputs are mapped onto one Wan video:

* the V views are packed **side by side along the width**: one clip ``[B, C_in, F, H, V*W]`` (Wan's 3D RoPE then gives
  every view its own width positions; a patch never straddles two views because ``W % patch == 0``);
* ``C_in = in_channels (RGB + action image, 6) + plucker_channels (6, the view's ray map, the same for every frame)
  + streams * 3`` (one-hot per-stream state given / generated / absent of that (view, frame), constant over pixels);
* temporal patch 1, spatial patch ``patch``;
* timestep = ``t * 1000`` (our ``t = 1`` is pure noise, as Wan's flow-matching sigma), one per sample, or with
  ``per_token_timestep`` one per token as Wan2.2 TI2V does for its clean first frame: tokens of a (view, frame) in
  which no stream is generated get timestep 0;
* text: ``encoder_hidden_states = text`` with the padded tokens (``text_mask == False``) set to zero. Wan's
  cross-attention takes no mask; the Wan pipelines pad the umT5 tokens with zeros in the same way, so zero padding is
  what the pretrained model saw. (Zero tokens still take part in the attention softmax, but their content, and so
  whatever sat in the padded slots, no longer matters.);
* output: ``out_channels = in_channels`` (6), unpacked back to ``[B, V, F, 6, H, W]``. The output projection
  (``proj_out``) starts at zero, so at init the backbone predicts 0 = "nothing moves relative to the current frame".

Limitations, plainly:

* The ``wan-tiny`` / ``wan2.2-5b`` presets run Wan in **pixel space**: with ``pretrained`` weights the patch
  embedding and output projection are re-initialised for our pixel channels, so only the transformer blocks (and the
  time / text embedders) carry the pretrained prior. The paper's setting is the **latent** path
  (``wan-tiny-latent`` / ``wan2.2-5b-latent``, :mod:`action_images.models.latent`): the clips are Wan2.2 VAE latents,
  ``in_channels`` = 2 x 48, patch 2, and the RGB latent channels keep the file's patch embedding.
* On a CPU this is only for tests (tiny random configs). The 5B presets are the real TI2V-5B transformer size and
  need a GPU (docs/scale.md).
* ``lora_rank`` > 0 fine-tunes with LoRA through ``peft`` (:mod:`action_images.models.lora`).
* Attention uses diffusers' ``native`` backend (``torch.nn.functional.scaled_dot_product_attention``), the CPU-safe
  default. ``model.set_attention_backend`` is global in diffusers (it sets the active backend of the process).
* Only the text-to-video / TI2V form of the transformer is supported (no CLIP image branch: ``image_dim`` and
  ``added_kv_proj_dim`` must be unset in a pretrained config).

``diffusers`` is an optional dependency (``pip install action-images[wan]``); it is imported only when a
:class:`WanBackbone` is built, so the config and the presets can be used without it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from action_images.flow import GEN, NUM_STATES
from action_images.models.dit import VideoBackbone

GENERATED = GEN  # per-stream state value of a generated (noisy) stream

# WanBackboneConfig field -> WanTransformer3DModel config key, for the fields that fix the pretrained architecture.
_ARCH_KEYS = {
    "num_layers": "num_layers",
    "num_attention_heads": "num_attention_heads",
    "attention_head_dim": "attention_head_dim",
    "ffn_dim": "ffn_dim",
    "text_dim": "text_dim",
    "freq_dim": "freq_dim",
    "qk_norm": "qk_norm",
    "cross_attn_norm": "cross_attn_norm",
    "eps": "eps",
    "rope_max_seq_len": "rope_max_seq_len",
}


@dataclass(frozen=True)
class WanBackboneConfig:
    """Size and wiring of a :class:`WanBackbone` (defaults: a tiny CPU test model)."""

    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 16      # Wan's 3D RoPE splits it into t / h / w parts; keep it >= 8 and even
    ffn_dim: int = 64
    patch: int = 8                    # spatial patch in pixels (temporal patch is 1)
    text_dim: int = 32                # width of the text tokens handed in by the text encoder (umT5-XXL: 4096)
    freq_dim: int = 32                # sinusoidal timestep features
    in_channels: int = 6              # RGB (3) + action image (3) per pixel; also the number of output channels
    streams: int = 2                  # channel groups with their own state (rgb, act)
    plucker_channels: int = 6
    qk_norm: str | None = "rms_norm_across_heads"
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_max_seq_len: int = 1024      # max positions per axis (frames, rows, V * columns of patches)
    per_token_timestep: bool = False  # Wan2.2 TI2V style: timestep 0 on tokens with no generated stream
    gradient_checkpointing: bool = False
    attention_backend: str | None = "native"  # diffusers attention backend; None = leave diffusers' default
    pretrained: str | None = None     # a LOCAL diffusers WanTransformer3DModel folder (or a pipeline folder)
    lora_rank: int = 0                # > 0: LoRA fine-tuning (models/lora.py): only the adapters, the patch
    lora_alpha: float = 0.0           #   embedding and the output projection train; alpha 0 means alpha = rank
    lora_targets: str = "to_q,to_k,to_v,to_out.0,ffn.net.0.proj,ffn.net.2"   # module name suffixes, comma separated

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def cond_channels(self) -> int:
        """Channels of the packed Wan input: x + Plücker + one-hot state maps."""
        return self.in_channels + self.plucker_channels + self.streams * NUM_STATES

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["lora_rank"]:   # without LoRA the dict reads and compares as before the LoRA fields existed
            for k in ("lora_rank", "lora_alpha", "lora_targets"):
                d.pop(k)
        return d

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> "WanBackboneConfig":
        """The config matching a local diffusers transformer folder (architecture fields read from its
        ``config.json``; ``patch`` and our channel counts are ours), with ``pretrained`` set to ``path``."""
        folder = _transformer_folder(Path(path))
        raw = json.loads((folder / "config.json").read_text())
        arch = {ours: raw[theirs] for ours, theirs in _ARCH_KEYS.items() if theirs in raw}
        return replace(cls(**arch), pretrained=str(path), **overrides)


def _transformer_folder(path: Path) -> Path:
    """``path`` itself, or its ``transformer/`` subfolder when ``path`` is a whole diffusers pipeline folder."""
    if (path / "config.json").exists():
        return path
    if (path / "transformer" / "config.json").exists():
        return path / "transformer"
    raise FileNotFoundError(f"{path} holds no diffusers transformer (no config.json, no transformer/config.json); "
                            "`pretrained` must be a local folder, nothing is downloaded")


class WanBackbone(VideoBackbone):
    """``diffusers.WanTransformer3DModel`` over V views packed side by side along the width (module docstring).

    With ``config.pretrained`` the transformer is loaded from that local folder with
    ``WanTransformer3DModel.from_pretrained``; its architecture (layers, heads, widths, norms) must equal this config
    (build the config with :meth:`WanBackboneConfig.from_pretrained` to read it from the folder). The patch embedding
    and the output projection are **replaced and re-initialised** (patch embedding: Xavier-uniform as in Wan, zero
    bias; output projection: zero) when their channel counts or patch size differ from ours (they do for every released
    Wan checkpoint, which works on 16/48-channel VAE latents with patch 2); everything else keeps the file's weights.
    The resulting module has the same parameter names and shapes as one built with ``pretrained=None``, so a trained
    model can be saved and rebuilt without the original folder.
    """

    def __init__(self, cfg: WanBackboneConfig):
        super().__init__()
        try:
            from diffusers import WanTransformer3DModel
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the 'wan' backbone needs diffusers: pip install 'action-images[wan]'") from e
        if cfg.in_channels % cfg.streams:
            raise ValueError("in_channels must split evenly into streams")
        if cfg.patch < 1:
            raise ValueError(f"patch must be >= 1; got {cfg.patch}")
        self.config = cfg
        patch_size = (1, cfg.patch, cfg.patch)
        if cfg.pretrained is None:
            tr = WanTransformer3DModel(
                patch_size=patch_size, num_attention_heads=cfg.num_attention_heads,
                attention_head_dim=cfg.attention_head_dim, in_channels=cfg.cond_channels, out_channels=cfg.in_channels,
                text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                cross_attn_norm=cfg.cross_attn_norm, qk_norm=cfg.qk_norm, eps=cfg.eps,
                rope_max_seq_len=cfg.rope_max_seq_len)
            nn.init.zeros_(tr.proj_out.weight)  # output 0 = "no change from the reference frame" at init
            nn.init.zeros_(tr.proj_out.bias)
        else:
            tr = self._load_pretrained(WanTransformer3DModel, cfg, patch_size)
        if cfg.lora_rank:
            from action_images.models.lora import add_lora
            add_lora(tr, cfg.lora_rank, cfg.lora_alpha or float(cfg.lora_rank), cfg.lora_targets)
        if cfg.gradient_checkpointing:
            tr.enable_gradient_checkpointing()
        if cfg.attention_backend is not None:
            lg = logging.getLogger("diffusers.models.modeling_utils")  # mute its "experimental feature" warning
            level = lg.level
            lg.setLevel(logging.ERROR)
            try:
                tr.set_attention_backend(cfg.attention_backend)
            finally:
                lg.setLevel(level)
        self.transformer = tr

    @staticmethod
    def _load_pretrained(model_cls: Any, cfg: WanBackboneConfig, patch_size: tuple[int, int, int]) -> nn.Module:
        folder = _transformer_folder(Path(cfg.pretrained))
        tr = model_cls.from_pretrained(str(folder))
        have = tr.config
        wrong = [f"{ours}: file {have[theirs]!r} vs config {getattr(cfg, ours)!r}"
                 for ours, theirs in _ARCH_KEYS.items() if have[theirs] != getattr(cfg, ours)]
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if have.get(key) is not None:
                wrong.append(f"{key}: file {have[key]!r}, but only text-to-video / TI2V transformers are supported")
        if wrong:
            raise ValueError(f"{folder}: pretrained transformer does not match WanBackboneConfig: {'; '.join(wrong)}. "
                             "Build the config with WanBackboneConfig.from_pretrained(path).")
        D = tr.config.num_attention_heads * tr.config.attention_head_dim
        pe = tr.patch_embedding
        if pe.in_channels != cfg.cond_channels or tuple(pe.kernel_size) != patch_size:
            new = nn.Conv3d(cfg.cond_channels, D, kernel_size=patch_size, stride=patch_size)
            z = cfg.in_channels // cfg.streams
            if tuple(pe.kernel_size) == patch_size and pe.in_channels == z:
                # latent space (models/latent.py): the file's embedding reads one VAE latent, which is what our RGB
                # stream's channels hold, so they keep it; the action latent, Plücker and state channels start at 0
                # and the pretrained model first sees its own input distribution
                with torch.no_grad():
                    new.weight.zero_()
                    new.weight[:, :z].copy_(pe.weight.to(new.weight.dtype))
                    new.bias.copy_(pe.bias.to(new.bias.dtype))
            else:
                nn.init.xavier_uniform_(new.weight.view(D, -1))
                nn.init.zeros_(new.bias)
            tr.patch_embedding = new.to(device=pe.weight.device, dtype=pe.weight.dtype)
        out_features = cfg.in_channels * math.prod(patch_size)
        po = tr.proj_out
        if tuple(tr.config.patch_size) != patch_size or po.out_features != out_features:
            new = nn.Linear(D, out_features)
            nn.init.zeros_(new.weight)
            nn.init.zeros_(new.bias)
            tr.proj_out = new.to(device=po.weight.device, dtype=po.weight.dtype)
        tr.rope.patch_size = patch_size
        tr.register_to_config(in_channels=cfg.cond_channels, out_channels=cfg.in_channels, patch_size=patch_size)
        return tr

    @property
    def x_in(self) -> nn.Module:
        """The input projection (a module with ``.weight``), for callers that look up the model's device there."""
        return self.transformer.patch_embedding

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor, plucker: torch.Tensor,
                text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        cfg, p = self.config, self.config.patch
        B, V, Fr, C, H, W = x.shape
        S = cfg.streams
        if C != cfg.in_channels:
            raise ValueError(f"x has {C} channels; the config says in_channels={cfg.in_channels}")
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
        if tuple(state.shape) != (B, V, Fr, S):
            raise ValueError(f"state must be [B, V, F, streams] = {(B, V, Fr, S)}; got {tuple(state.shape)}")
        dtype = self.transformer.patch_embedding.weight.dtype
        st = F.one_hot(state.long(), NUM_STATES).to(dtype).reshape(B, V, Fr, S * NUM_STATES, 1, 1)
        cam = plucker.to(dtype)[:, :, None].expand(B, V, Fr, cfg.plucker_channels, H, W)
        inp = torch.cat([x.to(dtype), cam, st.expand(B, V, Fr, S * NUM_STATES, H, W)], dim=3)  # [B,V,F,Cin,H,W]
        inp = inp.permute(0, 3, 2, 4, 1, 5).reshape(B, cfg.cond_channels, Fr, H, V * W)       # views side by side

        ts = t.float().reshape(B) * 1000.0                                                      # [B]
        if cfg.per_token_timestep:
            gen = (state == GENERATED).any(dim=-1)                                             # [B, V, F]
            per = torch.where(gen, ts[:, None, None], torch.zeros_like(ts)[:, None, None])     # [B, V, F]
            h, w = H // p, W // p  # token order of the transformer: (frame, row, packed column = view * w + col)
            ts = per.permute(0, 2, 1)[:, :, None, :, None].expand(B, Fr, h, V, w).reshape(B, Fr * h * V * w)
        txt = (text * text_mask[..., None].to(text.dtype)).to(dtype)                           # padded tokens = 0

        out = self.transformer(inp, timestep=ts, encoder_hidden_states=txt, return_dict=False)[0]  # [B,C,F,H,V*W]
        return out.reshape(B, C, Fr, H, V, W).permute(0, 4, 2, 1, 3, 5).to(x.dtype)             # [B,V,F,C,H,W]


__all__ = ["WanBackbone", "WanBackboneConfig"]
