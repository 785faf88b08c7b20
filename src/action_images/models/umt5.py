"""Instructions encoded by UMT5 (Wan2.2's text encoder) from a local folder, with a per-dataset feature cache.

    action-images train --preset wan2.2-5b-latent --pretrained /models/Wan2.2-TI2V-5B-Diffusers \\
        --text-encoder /models/Wan2.2-TI2V-5B-Diffusers --data data/demo --out runs/wan5b --steps 20000

``--text-encoder DIR`` is a diffusers pipeline folder (``text_encoder/`` + ``tokenizer/``) or one folder holding both
the model (``config.json`` + ``model.safetensors``) and the tokenizer. The model is ``transformers.UMT5EncoderModel``
loaded with ``local_files_only`` and safetensors only; nothing is downloaded. It is frozen and is **not** part of the
world action model's weights (umT5-XXL alone is 5.7 B parameters): a checkpoint stores the folder's path, and
``WorldActionModel.from_pretrained(run, text_encoder=DIR)`` points it at another copy.

Encoding follows the Wan pipelines: tokens padded to ``max_tokens`` (512), the encoder's last hidden state kept for
the real tokens (end-of-sequence token included) and zeros after them; the mask marks the real tokens. The empty
instruction (classifier-free guidance's unconditional branch) is encoded like any other string, as Wan encodes its
negative prompt: there are no learned parameters here.

**Cache.** Features are cached on disk, one safetensors file per instruction, named by the SHA-256 of the
instruction string, under ``<cache>/umt5-<encoder tag>/`` where the tag hashes the encoder's config, tokenizer files
and weight file sizes, so another encoder never reads these features. ``train`` puts the cache in the first
dataset's folder (``<dataset>/cache/text/``; ``<out>/cache/text`` for synthetic data): each instruction of a dataset
is encoded once, and later runs read it back. Files are written atomically; a file whose stored instruction differs
from the one asked for is recomputed. Before the first step ``train`` has rank 0 alone read or encode every
instruction of the datasets (:meth:`UMT5TextEncoder.features`), free the encoder (:meth:`UMT5TextEncoder.release`)
and send the features to the other ranks (:meth:`UMT5TextEncoder.remember`), so no other rank loads UMT5.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

MAX_TOKENS = 512              # the Wan pipelines' text length


def text_folders(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of ``path``; FileNotFoundError names every missing file in one line."""
    root = Path(path)
    model_dir, tok_dir = (root / "text_encoder", root / "tokenizer") if (root / "text_encoder").is_dir() else (root, root)
    missing = []
    if not (model_dir / "config.json").exists():
        missing.append(str(model_dir / "config.json"))
    if not any((model_dir / f).exists() for f in ("model.safetensors", "model.safetensors.index.json")):
        missing.append(str(model_dir / "model.safetensors"))
    if not (tok_dir / "tokenizer_config.json").exists():
        missing.append(str(tok_dir / "tokenizer_config.json"))
    if missing:
        raise FileNotFoundError(f"--text-encoder {root}: missing {', '.join(missing)} (a local UMT5 folder: "
                                "text_encoder/ + tokenizer/, or both in one folder; nothing is downloaded)")
    return model_dir, tok_dir


def encoder_width(path: str | Path) -> int:
    """``d_model`` of the UMT5 encoder in ``path`` (read from its config.json, no weights loaded)."""
    import json
    model_dir, _ = text_folders(path)
    return int(json.loads((model_dir / "config.json").read_text())["d_model"])


def encoder_tag(path: str | Path, max_tokens: int) -> str:
    """A short hash identifying the encoder: its config, tokenizer files, weight file names and sizes, max_tokens."""
    model_dir, tok_dir = text_folders(path)
    h = hashlib.sha256(f"max_tokens={max_tokens}".encode())
    h.update((model_dir / "config.json").read_bytes())
    for f in sorted(tok_dir.glob("*")):
        if f.is_file() and (f.suffix in (".json", ".model") or f.name == "spiece.model"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def instruction_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class UMT5TextEncoder(nn.Module):
    """Frozen UMT5 encoder from a local folder -> ``(features [B, max_tokens, d_model], mask [B, max_tokens])``.

    The model and tokenizer load on first use (never when a checkpoint's skeleton is built) and are held outside the
    module's parameters: nothing of them is saved, trained or synchronised. Outputs are float32 on the device the
    module was moved to."""

    def __init__(self, cfg: Any):
        super().__init__()
        if not cfg.path:
            raise ValueError("the umt5 text encoder needs a local folder (--text-encoder DIR)")
        self.config = cfg
        self.max_tokens = int(cfg.max_tokens)
        self.cache_dir: Path | None = None
        self._loaded: dict[str, Any] = {}
        self._memo: dict[str, torch.Tensor] = {}
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)   # follows .to(device)

    def set_cache_dir(self, path: str | Path | None) -> None:
        """Cache features under ``path`` (see the module docstring); None turns the disk cache off."""
        self.cache_dir = None if path is None else Path(path) / f"umt5-{encoder_tag(self.config.path, self.max_tokens)}"

    def release(self) -> None:
        """Drop the loaded model and tokenizer (cached features still answer known instructions)."""
        self._loaded.clear()

    def _load(self) -> tuple[Any, Any]:
        if not self._loaded:
            from transformers import AutoTokenizer, UMT5EncoderModel
            model_dir, tok_dir = text_folders(self.config.path)
            dev = self._anchor.device
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
            model = UMT5EncoderModel.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True,
                                                     dtype=dtype).to(dev).eval().requires_grad_(False)
            if model.config.d_model != self.config.dim:
                raise ValueError(f"--text-encoder {self.config.path}: d_model {model.config.d_model} != the "
                                 f"backbone's text_dim {self.config.dim}")
            self._loaded = {"model": model, "tokenizer": AutoTokenizer.from_pretrained(str(tok_dir),
                                                                                        local_files_only=True)}
        return self._loaded["model"], self._loaded["tokenizer"]

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        model, tok = self._load()
        enc = tok(texts, padding="max_length", max_length=self.max_tokens, truncation=True, add_special_tokens=True,
                  return_attention_mask=True, return_tensors="pt")
        dev = next(model.parameters()).device
        ids, mask = enc.input_ids.to(dev), enc.attention_mask.to(dev)
        hidden = model(ids, mask).last_hidden_state.float().cpu()                  # [B, L, D]
        return [hidden[i, :int(n)].clone() for i, n in enumerate(mask.sum(dim=1).tolist())]

    def _cached(self, text: str) -> torch.Tensor | None:
        if text in self._memo:
            return self._memo[text]
        if self.cache_dir is None:
            return None
        f = self.cache_dir / f"{instruction_key(text)}.safetensors"
        if not f.exists():
            return None
        from safetensors import safe_open
        try:
            with safe_open(str(f), framework="pt") as fh:
                if (fh.metadata() or {}).get("instruction") != text:
                    return None
                feats = fh.get_tensor("features")
        except Exception:   # a torn or foreign file: recompute and overwrite it
            return None
        self._memo[text] = feats
        return feats

    def _store(self, text: str, feats: torch.Tensor) -> None:
        self._memo[text] = feats
        if self.cache_dir is None:
            return
        from safetensors.torch import save_file
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        f = self.cache_dir / f"{instruction_key(text)}.safetensors"
        tmp = f.with_name(f".{f.name}.{os.getpid()}.partial")
        save_file({"features": feats.contiguous()}, str(tmp), metadata={"instruction": text})
        os.replace(tmp, f)

    def features(self, texts: Sequence[str], batch: int = 8) -> dict[str, torch.Tensor]:
        """``text -> features [real tokens, d_model]`` (float32, CPU) of ``texts``: from memory or the disk cache, the
        rest encoded ``batch`` at a time (the encoder loads only then) and cached."""
        texts = [str(s) for s in texts]
        todo = sorted({s for s in texts if self._cached(s) is None})
        for i in range(0, len(todo), batch):
            for s, feats in zip(todo[i:i + batch], self._encode(todo[i:i + batch])):
                self._store(s, feats)
        return {s: self._memo[s] for s in texts}

    def remember(self, features: dict[str, torch.Tensor]) -> None:
        """Keep features encoded elsewhere (by rank 0 of a multi-process run) in memory: they answer like cached ones,
        and this module loads no encoder for them."""
        for s, feats in features.items():
            self._memo[str(s)] = feats.detach().float().cpu()

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [str(s) for s in texts]
        self.features(texts)
        dev = self._anchor.device
        out = torch.zeros(len(texts), self.max_tokens, self.config.dim)
        mask = torch.zeros(len(texts), self.max_tokens, dtype=torch.bool)
        for i, s in enumerate(texts):
            feats = self._memo[s]
            out[i, :len(feats)] = feats
            mask[i, :len(feats)] = True
        return out.to(dev), mask.to(dev)


__all__ = ["UMT5TextEncoder", "MAX_TOKENS", "text_folders", "encoder_width", "encoder_tag", "instruction_key"]
