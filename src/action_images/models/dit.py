"""A small video DiT over multi-view, multi-stream clips (plain PyTorch, CPU-first).

Why this shape: on 2 CPU cores the budget is a few hundred tokens per sample (docs/method.md), so each view/frame is
patchified with large patches (8 px) and RGB + action image share one token (6 channels per pixel). Conditioning:

* timestep t -> adaLN-Zero modulation (DiT), optionally plus mean-pooled language tokens ("adaln" text mode), or
  language by cross-attention ("cross" mode);
* camera -> the per-pixel Plücker ray map [6, H, W] of each view, patchified and added to that view's tokens (so an
  unseen viewpoint is just another ray map, no per-camera id is needed);
* view slot / frame index / 2D patch position embeddings;
* per-stream state (given clean / generated / absent) embeddings per (view, frame), which is how one network serves
  all four tasks (policy, world model, labeler, video).

Optional full-resolution refinement (``refine_channels`` > 0): a linear 8-px patch decoder can place a Gaussian blob
at an arbitrary sub-patch offset only by learning each offset separately. The conv head sees, per (view, frame),
the transformer's output, ``refine_channels`` unpatchified token features, that frame's input and the view's current
frame (where the target object is, to the pixel), and adds a zero-initialised correction from two 3x3 convolutions
(translation-equivariant, so "draw the blob where the object is" is learned once for every position).

Optional full-resolution stem (``stem_channels`` > 0): a linear embedding of an 8-px patch sees where a 2-4 px
object sits inside it only through 384 raw numbers; two 3x3 convolutions per (view, frame) first turn the pixels
into ``stem_channels`` local features (edges, blobs: what a CNN policy sees), patchified beside the raw channels.

Optional context encoder (``context_channels`` > 0): the perception of a CNN policy, on the clean current frame only.
A strided CNN (GroupNorm, stride 2 per stage down to the token grid) reads each view's frame 0 (its RGB and current
action image) and adds its features to every frame's tokens of that view at the same grid cell, the way the Plücker
map is added. It costs two CNN passes per window (one per view), not one per frame as the full-resolution stem does.
With ``context_history`` P > 0 it also reads P past frames of the view (RGB and the action image of the pose then),
stacked on the channels of frame 0, so the tokens carry where the hand and the objects were a moment ago: how fast
and which way they move, which one frame cannot tell.

The interface (:class:`VideoBackbone`) is deliberately small so a pretrained video model (e.g. diffusers Wan2.2) can
be dropped in behind it later: ``forward(x, t, state, plucker, text, text_mask) -> x_out`` with the same shapes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from action_images.flow import NUM_STATES   # per-stream state: given (clean), generated (noisy), absent


@dataclass(frozen=True)
class DiTConfig:
    width: int = 128
    depth: int = 4
    heads: int = 4
    patch: int = 8
    mlp_ratio: float = 4.0
    in_channels: int = 6        # RGB (3) + action image (3) per pixel
    streams: int = 2            # channel groups with their own state (rgb, act)
    plucker_channels: int = 6
    max_views: int = 8
    max_frames: int = 16
    text_dim: int = 128         # width of the text tokens handed in by the text encoder
    text_conditioning: str = "adaln"  # "adaln" (pooled tokens added to the timestep) or "cross" (cross-attention)
    refine_channels: int = 0    # > 0: a full-resolution conv head (see DiT) with this many feature channels
    stem_channels: int = 0      # > 0: a full-resolution conv stem (see DiT) with this many feature channels
    context_channels: int = 0   # > 0: a strided CNN on the current frame (see DiT), first stage this wide
    context_history: int = 0    # past frames the context encoder reads beside the current one (channels stacked)

    def to_dict(self) -> dict:
        return asdict(self)


class VideoBackbone(nn.Module):
    """What :class:`~action_images.wam.WorldActionModel` needs from a backbone (shapes in the docstring of forward)."""

    config: DiTConfig

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor, plucker: torch.Tensor,
                text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """x [B,V,F,C,H,W], t [B] in [0,1], state [B,V,F,S] long, plucker [B,V,6,H,W], text [B,L,Dt],
        text_mask [B,L] bool (True = real token) -> [B,V,F,C,H,W]."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, N..., C, H, W] -> [B, N..., h, w, C*p*p] (h = H/p, w = W/p)."""
    *lead, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
    x = x.reshape(*lead, C, H // p, p, W // p, p)
    n = len(lead)
    x = x.permute(*range(n), n + 1, n + 3, n, n + 2, n + 4)  # [..., h, w, C, p, p]
    return x.reshape(*lead, H // p, W // p, C * p * p)


def unpatchify(x: torch.Tensor, p: int, C: int) -> torch.Tensor:
    """[B, N..., h, w, C*p*p] -> [B, N..., C, H, W]."""
    *lead, h, w, _ = x.shape
    x = x.reshape(*lead, h, w, C, p, p)
    n = len(lead)
    x = x.permute(*range(n), n + 2, n, n + 3, n + 1, n + 4)  # [..., C, h, p, w, p]
    return x.reshape(*lead, C, h * p, w * p)


@lru_cache(maxsize=32)
def _sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """[h, w, dim] fixed 2D sin-cos position embedding (any grid size, so any image size divisible by the patch)."""
    def one(n: int, d: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d // 2))
        ang = pos * omega[None]
        return torch.cat([ang.sin(), ang.cos()], dim=1)  # [n, d]
    d = dim // 2
    rows, cols = one(h, d), one(w, d)
    emb = torch.cat([rows[:, None, :].expand(h, w, d), cols[None, :, :].expand(h, w, d)], dim=-1)
    return emb.float()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t [B] in [0, 1] -> [B, dim] sinusoidal features (t scaled by 1000 as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        B, N, D = x.shape                                   # x [B, N, D]; ctx [B, L, Dk]; mask [B, L] bool
        ctx = x if ctx is None else ctx
        h = self.heads
        q = self.q(x).reshape(B, N, h, D // h).transpose(1, 2)                      # [B, h, N, d]
        k, v = self.kv(ctx).reshape(B, ctx.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)  # 2 x [B, h, L, d]
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)           # [B, h, N, d]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """adaLN-Zero block (self-attention + MLP), optional text cross-attention in between."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.width
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(D, cfg.heads)
        self.cross = None
        if cfg.text_conditioning == "cross":
            self.norm_x = nn.LayerNorm(D, eps=1e-6)
            self.cross = Attention(D, cfg.heads, kv_dim=D)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(D * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)                  # each [B, D]
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        if self.cross is not None:
            x = x + self.cross(self.norm_x(x), text, text_mask)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class ContextEncoder(nn.Module):
    """Strided CNN [N, C, H, W] -> [N, H/p, W/p, D]: a 3x3 conv at full resolution, then one stride-2 stage per
    factor of 2 in the patch size p, doubling the channels (GroupNorm + SiLU, as in the image policies' encoders),
    and a linear map to the token width."""

    def __init__(self, in_channels: int, channels: int, patch: int, width: int):
        super().__init__()
        stages = int(math.log2(patch))
        if 2 ** stages != patch:
            raise ValueError(f"context_channels needs a power-of-two patch size; got {patch}")
        groups = math.gcd(8, channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.GroupNorm(groups, channels),
                                   nn.SiLU()]
        c = channels
        for _ in range(stages):
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(groups, 2 * c), nn.SiLU()]
            c *= 2
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(c, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x).permute(0, 2, 3, 1))


# ----------------------------------------------------------------------------------------------------------------------
# the backbone
# ----------------------------------------------------------------------------------------------------------------------

class DiT(VideoBackbone):
    """Video DiT: tokens = views x frames x (H/p) x (W/p); full attention over all of them."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.width % cfg.heads or cfg.width % 4:
            raise ValueError(f"width {cfg.width} must be divisible by heads {cfg.heads} and by 4")
        if cfg.text_conditioning not in ("adaln", "cross"):
            raise ValueError(f"text_conditioning must be 'adaln' or 'cross'; got {cfg.text_conditioning!r}")
        if cfg.in_channels % cfg.streams:
            raise ValueError("in_channels must split evenly into streams")
        self.config = cfg
        D, p = cfg.width, cfg.patch
        self.stem = None
        if cfg.stem_channels > 0:
            Cs = cfg.stem_channels
            self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, Cs, 3, padding=1), nn.GELU(approximate="tanh"),
                                      nn.Conv2d(Cs, Cs, 3, padding=1), nn.GELU(approximate="tanh"))
        self.context = None
        if cfg.context_channels > 0:
            self.context = ContextEncoder(cfg.in_channels * (1 + cfg.context_history), cfg.context_channels,
                                          cfg.patch, D)
        elif cfg.context_history:
            raise ValueError("context_history needs the context encoder (context_channels > 0)")
        self.x_in = nn.Linear((cfg.in_channels + max(0, cfg.stem_channels)) * p * p, D)
        self.plucker_in = nn.Linear(cfg.plucker_channels * p * p, D)
        self.view_emb = nn.Embedding(cfg.max_views, D)
        self.frame_emb = nn.Embedding(cfg.max_frames, D)
        self.state_emb = nn.Embedding(cfg.streams * NUM_STATES, D)  # row = stream * 3 + state
        self.t_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.text_proj = nn.Linear(cfg.text_dim, D)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.out = nn.Linear(D, cfg.in_channels * p * p)
        self.refine = None
        if cfg.refine_channels > 0:
            C, Cr = cfg.in_channels, cfg.refine_channels
            self.feat_out = nn.Linear(D, Cr * p * p)
            self.refine = nn.Sequential(nn.Conv2d(3 * C + Cr, 2 * Cr, 3, padding=1), nn.GELU(approximate="tanh"),
                                        nn.Conv2d(2 * Cr, C, 3, padding=1))
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.view_emb, self.frame_emb, self.state_emb):
            nn.init.normal_(emb.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
            if blk.cross is not None:    # the text cross-attention has no gate: its output projection starts at 0
                nn.init.zeros_(blk.cross.proj.weight)
                nn.init.zeros_(blk.cross.proj.bias)
        nn.init.zeros_(self.ada_out[-1].weight)
        nn.init.zeros_(self.ada_out[-1].bias)
        nn.init.zeros_(self.out.weight)  # output 0 = "no change from the reference frame" at init
        nn.init.zeros_(self.out.bias)
        if self.refine is not None:
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor, plucker: torch.Tensor,
                text: torch.Tensor, text_mask: torch.Tensor, extra_tokens: torch.Tensor | None = None,
                history: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Shapes as in :meth:`VideoBackbone.forward`. ``extra_tokens`` [B, E, D] (already embedded, width D): more
        tokens that join the sequence after the video's and attend with it (e.g. action tokens); the output is then
        ``(video [B,V,F,C,H,W], their final features [B, E, D])``. Without them, only the video. ``history``
        [B, V, P, C, H, W]: the P past frames the context encoder reads beside the current one (P =
        ``context_history``; required when it is > 0)."""
        cfg, p = self.config, self.config.patch
        B, V, Fr, C, H, W = x.shape
        if V > cfg.max_views or Fr > cfg.max_frames:
            raise ValueError(f"{V} views x {Fr} frames exceeds max_views={cfg.max_views}/max_frames={cfg.max_frames}")
        h, w = H // p, W // p
        dev = x.device
        xs = x
        if self.stem is not None:                                            # local features at full resolution
            feat = self.stem(x.reshape(B * V * Fr, C, H, W)).reshape(B, V, Fr, -1, H, W)
            xs = torch.cat([x, feat], dim=3)
        tok = self.x_in(patchify(xs, p))                                     # [B, V, F, h, w, D]
        cam = self.plucker_in(patchify(plucker, p))                          # [B, V, h, w, D]
        pos = _sincos_2d(h, w, cfg.width).to(dev)                            # [h, w, D]
        view = self.view_emb(torch.arange(V, device=dev))                    # [V, D]
        frame = self.frame_emb(torch.arange(Fr, device=dev))                 # [F, D]
        stream_offset = torch.arange(cfg.streams, device=dev) * NUM_STATES
        st = self.state_emb(state + stream_offset).sum(dim=-2)               # [B, V, F, D]
        tok = (tok + cam[:, :, None] + pos + (view[:, None] + frame[None] + st)[..., None, None, :])
        if self.context is not None:                                         # CNN features of the current frame
            now = x[:, :, 0]                                                     # [B, V, C, H, W]
            if cfg.context_history:
                if history is None or tuple(history.shape) != (B, V, cfg.context_history, C, H, W):
                    raise ValueError(f"history must have shape {(B, V, cfg.context_history, C, H, W)}; got "
                                     f"{None if history is None else tuple(history.shape)}")
                now = torch.cat([now, history.to(now.dtype).reshape(B, V, -1, H, W)], dim=2)
            ctx = self.context(now.reshape(B * V, -1, H, W))                     # [B*V, h, w, D]
            tok = tok + ctx.reshape(B, V, 1, h, w, cfg.width)
        tok = tok.reshape(B, V * Fr * h * w, cfg.width)                      # [B, N, D]
        n_video = tok.shape[1]
        if extra_tokens is not None:
            tok = torch.cat([tok, extra_tokens.to(tok.dtype)], dim=1)        # [B, N + E, D]

        txt = self.text_proj(text)                                           # [B, L, D]
        c = self.t_mlp(timestep_embedding(t, cfg.width))                     # [B, D]
        if cfg.text_conditioning == "adaln":
            m = text_mask.float()[..., None]
            c = c + (txt * m).sum(1) / m.sum(1).clamp_min(1.0)
        for blk in self.blocks:
            tok = blk(tok, c, txt, text_mask)
        sh, sc = self.ada_out(c).chunk(2, dim=-1)
        feat = modulate(self.norm_out(tok), sh, sc)                          # [B, N, D]
        extra = None
        if extra_tokens is not None:
            feat, extra = feat[:, :n_video], feat[:, n_video:]
        out = unpatchify(self.out(feat).reshape(B, V, Fr, h, w, -1), p, C)   # [B, V, F, C, H, W]
        if self.refine is not None:
            fmap = unpatchify(self.feat_out(feat).reshape(B, V, Fr, h, w, -1), p, cfg.refine_channels)
            now = x[:, :, :1].expand(-1, -1, Fr, -1, -1, -1)                 # the view's current frame
            z = torch.cat([out, fmap, x, now], dim=3).reshape(B * V * Fr, -1, H, W)
            out = out + self.refine(z).reshape(B, V, Fr, C, H, W)
        return out if extra is None else (out, extra)
