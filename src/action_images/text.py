"""Language conditioning: an offline instruction encoder, CFG dropout, and a hook for a pretrained encoder.

Offline by default (no downloads): words are lower-cased, split on non-alphanumerics and hashed (crc32, stable across
processes, unlike Python's ``hash``) into a fixed vocabulary with a learned embedding + position embedding. Token 0 is
padding, token 1 is the learned *null* instruction used for the empty string -- classifier-free guidance trains on
it by dropping the instruction with probability ``p_drop``; sampling mixes ``uncond + s * (cond - uncond)``.

A pretrained encoder plugs in through :class:`ExternalTextEncoder`: give it a callable mapping a list of strings to
``(features [B, L, Dp], mask [B, L])``; it stays frozen and a learned projection maps it to the model width. The
empty instruction still maps to the learned null token, so CFG behaves the same with either encoder.

Wan2.2's own text encoder, UMT5, is the ``"umt5"`` kind (:mod:`action_images.models.umt5`): a local folder
(``train --text-encoder DIR``), frozen, its features cached per dataset.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import nn

PAD, NULL = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class TextConfig:
    kind: str = "hash"          # "hash" (offline), "external" (a user callable) or "umt5" (local folder, path)
    dim: int = 128              # output width (= the backbone's text_dim)
    vocab_size: int = 4096
    max_tokens: int = 16
    external_dim: int = 0       # feature width of the external encoder
    path: str | None = None     # "umt5": the local folder of the encoder and its tokenizer
    layers: int = 0             # "hash": transformer layers over the word tokens (HashTextEncoder; 0 = none)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["path"] is None:   # configs without a folder read and compare as before the field existed
            d.pop("path")
        if not d["layers"]:     # likewise, configs whose words are not contextualised
            d.pop("layers")
        return d


def tokenize(texts: Sequence[str], vocab_size: int = 4096, max_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Strings -> (ids [B, L] long, mask [B, L] bool); the empty string becomes the single NULL token."""
    rows = []
    for s in texts:
        words = _WORD.findall(str(s).lower())[:max_tokens]
        rows.append([2 + zlib.crc32(w.encode()) % (vocab_size - 2) for w in words] or [NULL])
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, ids != PAD


def drop_instructions(texts: Sequence[str], p_drop: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each instruction by "" with probability ``p_drop`` (classifier-free guidance training)."""
    keep = torch.rand(len(texts), generator=generator) >= p_drop
    return [s if k else "" for s, k in zip(texts, keep.tolist())]


MAX_TEXT_LAYERS = 8


class TextLayer(nn.Module):
    """Pre-norm self-attention + MLP over the word tokens, each branch's output projection starting at 0: a layer
    starts as the identity, so layers added to a trained encoder keep its function until they learn."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        heads = max(1, dim // 64)                    # about 64 channels a head, a divisor of the width
        while dim % heads:
            heads -= 1
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        for proj in (self.attn.out_proj, self.mlp[-1]):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class HashTextEncoder(nn.Module):
    """Offline encoder: hashed words -> learned embeddings + positions (-> ``layers`` TextLayers) -> tokens [B, L, dim].

    Without layers each token is its word's embedding plus its position's, so any mean over the tokens (the DiT's
    "adaln" text conditioning) is a bag of words: "stack the red cube on the blue cube" and "stack the blue cube on
    the red cube" pool to the same vector. The layers mix the words with their places, so the pooled instruction
    says which colour is which object."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=PAD)
        self.pos = nn.Embedding(cfg.max_tokens, cfg.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        if cfg.layers:      # absent at 0, so the weights of encoders without layers keep their names
            self.layers = nn.ModuleList(TextLayer(cfg.dim) for _ in range(cfg.layers))

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(texts, self.config.vocab_size, self.config.max_tokens)
        ids, mask = ids.to(self.embed.weight.device), mask.to(self.embed.weight.device)
        pos = torch.arange(ids.shape[1], device=ids.device)
        tok = self.embed(ids) + self.pos(pos)[None]                             # [B, L, dim]
        for layer in getattr(self, "layers", ()):
            tok = layer(tok, mask)
        return tok, mask                                                        # [B, L, dim], [B, L]


class ExternalTextEncoder(nn.Module):
    """Frozen user-supplied encoder + learned projection; "" -> the learned null token."""

    def __init__(self, cfg: TextConfig, fn: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None):
        super().__init__()
        if cfg.external_dim <= 0:
            raise ValueError("TextConfig.external_dim must be the feature width of the external encoder")
        self.config = cfg
        self.fn = fn
        self.proj = nn.Linear(cfg.external_dim, cfg.dim)
        self.null = nn.Embedding(1, cfg.dim)  # an Embedding (not a Parameter) so DDP always sees a gradient path
        nn.init.normal_(self.null.weight, std=0.02)

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fn is None:
            raise RuntimeError("this model uses an external text encoder: pass text_fn=... when loading it")
        dev = self.proj.weight.device
        with torch.no_grad():
            feats, mask = self.fn([s if s else " " for s in texts])             # [B, L, Dp], [B, L]
        tok = self.proj(feats.to(dev).float())
        empty = torch.tensor([not s for s in texts], device=dev)
        null = self.null(torch.zeros_like(mask[:, :1], dtype=torch.long, device=dev)).expand_as(tok)
        tok = torch.where(empty[:, None, None], null, tok)
        mask = mask.to(dev).bool().clone()
        mask[empty] = False
        mask[empty, 0] = True
        return tok, mask


def build_text_encoder(cfg: TextConfig, text_fn: Callable | None = None) -> nn.Module:
    if not (isinstance(cfg.layers, int) and not isinstance(cfg.layers, bool) and 0 <= cfg.layers <= MAX_TEXT_LAYERS):
        raise ValueError(f"text.layers (--text-layers) must be an integer in [0, {MAX_TEXT_LAYERS}]; got "
                         f"{cfg.layers!r}")
    if cfg.layers and cfg.kind != "hash":
        raise ValueError(f"text.layers (--text-layers) applies to the hashed-word encoder only, not {cfg.kind!r} (its "
                         "features are contextual already)")
    if cfg.kind == "hash":
        return HashTextEncoder(cfg)
    if cfg.kind == "external":
        return ExternalTextEncoder(cfg, text_fn)
    if cfg.kind == "umt5":
        from action_images.models.umt5 import UMT5TextEncoder
        return UMT5TextEncoder(cfg)
    raise ValueError(f"unknown text encoder kind {cfg.kind!r}; known: 'hash', 'external', 'umt5'")
