"""LoRA fine-tuning of the Wan backbone through ``peft``: adapters, their safetensors file, and the merged export.

    action-images train --preset wan2.2-5b-latent --pretrained /models/Wan2.2-TI2V-5B-Diffusers --finetune lora \\
        --lora-rank 64 --lora-alpha 64 --data data/demo --out runs/lora --steps 5000
    python -m action_images.models.lora save  runs/lora runs/lora/adapter        # only the trained tensors
    python -m action_images.models.lora merge runs/lora runs/lora-merged         # a plain checkpoint, no peft needed

``lora_rank`` > 0 in the backbone config wraps the transformer blocks' linear layers named by ``lora_targets``
(attention q/k/v/out and both feed-forward layers by default) with rank-r adapters (``B = 0`` at the start, so the
model starts exactly as the base) and freezes every other transformer weight, except the patch embedding and the
output projection: those are re-initialised for our channels (models/wan.py) and must learn. Parameters outside the
backbone (the hash text table) keep training; the VAE and UMT5 are always frozen.

Files: a LoRA run's ``model.safetensors`` holds everything (base + adapters) and loads with
``WorldActionModel.from_pretrained`` like any run. :func:`save_lora` writes only the trained tensors
(``lora.safetensors`` + ``lora.json``, the model config); :func:`load_lora_model` rebuilds the base from the local
``--pretrained`` folder and applies them. :func:`merge_lora` folds ``W + (alpha / r) B A`` into the base weights
and returns a model without adapters, whose checkpoint loads without ``peft``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from action_images.cliflags import Parser

LORA_WEIGHTS, LORA_CONFIG = "lora.safetensors", "lora.json"
FORMAT = "action-images-lora"
ALWAYS_TRAINED = ("patch_embedding.", "proj_out.")     # re-initialised for our channels: they must learn


def add_lora(transformer: nn.Module, rank: int, alpha: float, targets: str) -> None:
    """Wrap ``targets`` (module-name suffixes, comma separated) with rank-``rank`` LoRA adapters in place, and freeze
    every transformer weight but the adapters and :data:`ALWAYS_TRAINED`."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA fine-tuning needs peft: pip install 'action-images[wan]'") from e
    names = [t.strip() for t in targets.split(",") if t.strip()]
    if rank < 1 or not names:
        raise ValueError(f"LoRA needs rank >= 1 and target modules; got rank {rank}, targets {targets!r}")
    inject_adapter_in_model(LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=names,
                                       lora_dropout=0.0, bias="none"), transformer)
    for n, p in transformer.named_parameters():
        p.requires_grad_("lora_" in n or n.startswith(ALWAYS_TRAINED))


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a fine-tuning run changes (``requires_grad`` parameters), by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``lora.safetensors`` (the trained tensors only) and ``lora.json`` (format + the model config)."""
    from safetensors.torch import save_file
    from action_images.runfiles import atomic_write_json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous().cpu() for k, v in trainable_state_dict(model).items()}
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"refusing to save non-finite weights ({bad[:3]}) to {path}")
    tmp = path / f".{LORA_WEIGHTS}.partial"
    save_file(sd, str(tmp))
    os.replace(tmp, path / LORA_WEIGHTS)
    atomic_write_json(path / LORA_CONFIG, {"format": FORMAT, "config": model.config.to_dict()})


def load_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Load the tensors of :func:`save_lora` into ``model`` (built with the same config and base weights); the names
    and shapes must be exactly the model's trainable ones."""
    from safetensors.torch import load_file

    path = Path(path)
    sd = load_file(str(path / LORA_WEIGHTS))
    own = {k: tuple(v.shape) for k, v in trainable_state_dict(model).items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if own != got:
        missing, unexpected = sorted(set(own) - set(got)), sorted(set(got) - set(own))
        shapes = [k for k in set(own) & set(got) if own[k] != got[k]]
        raise ValueError(f"{path / LORA_WEIGHTS}: does not match the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatches {shapes[:5]}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, v in sd.items():
            params[k].copy_(v)


def load_lora_model(path: str | os.PathLike, pretrained: str | os.PathLike | None = None) -> nn.Module:
    """The world action model of a :func:`save_lora` folder: base weights from ``pretrained`` (the local diffusers
    folder it was trained from; default: the path recorded in ``lora.json``), then the saved tensors."""
    from action_images.wam import WAMConfig, WorldActionModel

    path = Path(path)
    meta = json.loads((path / LORA_CONFIG).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / LORA_CONFIG}: not an {FORMAT} file")
    cfg = WAMConfig.from_dict(meta["config"])
    if pretrained is not None:
        cfg.backbone = {**cfg.backbone, "pretrained": str(pretrained)}
        if cfg.latent:
            cfg.latent = {**cfg.latent, "pretrained": str(pretrained)}
    if not cfg.backbone.get("pretrained"):
        raise ValueError(f"{path}: the base weights come from a local --pretrained folder; none is recorded or given")
    model = WorldActionModel(cfg)
    load_lora(model, path)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter folded into its base weight (``W + (alpha / r) B A``) and no LoRA
    left: same outputs, plain parameter names, loadable without ``peft``."""
    from peft.tuners.lora import LoraLayer
    from action_images.wam import WorldActionModel
    import copy

    work = copy.deepcopy(model)
    for m in work.modules():
        if isinstance(m, LoraLayer):
            m.merge()
    sd = {}
    for k, v in work.state_dict().items():
        if "lora_" in k:
            continue
        sd[k.replace(".base_layer.", ".")] = v
    cfg = copy.deepcopy(model.config)
    bb = dict(cfg.backbone)
    for k in ("lora_rank", "lora_alpha", "lora_targets"):
        bb.pop(k, None)
    bb["pretrained"] = None
    cfg.backbone = bb
    if cfg.latent:
        cfg.latent = {**cfg.latent, "pretrained": None}
    merged = WorldActionModel(cfg)
    merged.load_state_dict(sd)
    return merged


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m action_images.models.lora", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("save", "merge"), help="save: the trained tensors only; merge: a plain checkpoint")
    p.add_argument("run", help="a LoRA run (or checkpoint) folder")
    p.add_argument("out", help="output folder")
    a = p.parse_args(argv)
    from action_images.wam import WorldActionModel

    model = WorldActionModel.from_pretrained(a.run)
    if not model.config.backbone.get("lora_rank"):
        print(f"{a.run}: not a LoRA model (backbone lora_rank is 0)", file=sys.stderr)
        return 2
    if a.what == "save":
        save_lora(model, a.out)
    else:
        merge_lora(model).save_pretrained(a.out)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["add_lora", "trainable_state_dict", "save_lora", "load_lora", "load_lora_model", "merge_lora",
           "LORA_WEIGHTS", "LORA_CONFIG"]
