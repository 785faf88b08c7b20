"""The Wan2.2 VAE latent space of the world action model (``WAMConfig.latent``), as in the paper.

Every view's RGB clip and action-image clip is encoded by the Wan2.2 causal video VAE
(``diffusers.AutoencoderKLWan``, frozen); the transformer denoises those latents with the same job masks as in pixel
space, conditioned on Plücker ray maps computed at the **latent** resolution (one ray per latent pixel: the camera's
``K`` scaled to the latent grid with :meth:`~action_images.geometry.Camera.resized`); the sampler decodes the latents
back to pixels, and the action images are then decoded to poses by the codec as before.

    action-images train --preset wan-tiny-latent --data synthetic:4 --out runs/latent --steps 2     # CPU, seconds
    action-images train --preset wan2.2-5b-latent --pretrained /models/Wan2.2-TI2V-5B-Diffusers \\
        --text-encoder /models/Wan2.2-TI2V-5B-Diffusers --data data/demo --out runs/wan5b --steps 20000  # GPU

**Frames.** Wan's causal VAE maps ``1 + 4k`` frames to ``1 + k`` latent frames: latent frame 0 is pixel frame 0
alone, latent frame j >= 1 holds pixel frames 4j-3 .. 4j. A window has F = 1 + H frames (the current frame and H
keyframes), so the latent path **requires H = 4k** (H = 4 -> 2 latent frames, H = 8 -> 3): latent frame 0 is the
current frame, the others hold the keyframes four at a time. Every job's mask is "current frame" vs "future frames"
per stream (``flow.TASKS``), so it maps onto latent frames exactly. Because the encoder is causal, the latent of the
current frame depends on that frame only; what the future frames hold cannot leak into it.

**Layout.** A stream's latent ``[Z, h, w]`` is viewed as ``[3, Z/3 * h, w]`` (:func:`fold`), so the two streams
fill the six "channels" that the masks, the noising, the loss and the sampler of :mod:`action_images.flow` work on,
unchanged; the backbone sees the latents unfolded again, ``[2Z, h, w]`` per (view, frame). This needs ``Z % 3 == 0``
(Wan2.2: Z = 48). The latents are normalised with the VAE's ``latents_mean`` / ``latents_std`` as the Wan pipelines
do, and encoded with the posterior mean (deterministic).

**Weights.** ``--pretrained DIR`` reads a local diffusers pipeline folder (``transformer/``, ``vae/``; safetensors
only, nothing is downloaded); :func:`check_pretrained_folder` names every missing file in one line. The VAE is frozen
and saved inside the model's ``model.safetensors``, so a trained run reloads without the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

# The Wan2.2 VAE architecture (diffusers AutoencoderKLWan config): 48 latent channels, 16x spatial (8x from three
# down stages, 2x from the input patchify), 4x temporal. ``latents_mean`` / ``latents_std`` here are placeholders
# (0 / 1): the real ones are read from the pretrained folder's vae/config.json, which always replaces this config.
WAN22_VAE: dict[str, Any] = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
                                 in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
                                 scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
# A tiny random VAE of the same family for tests: 8x spatial (two down stages x patchify 2), 4x temporal, Z = 6.
TINY_VAE: dict[str, Any] = dict(base_dim=8, decoder_base_dim=8, z_dim=6, dim_mult=[1, 1, 1], num_res_blocks=1,
                                attn_scales=[], temperal_downsample=[True, True], dropout=0.0, is_residual=True,
                                in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
                                scale_factor_spatial=8, latents_mean=[0.0] * 6, latents_std=[1.0] * 6)

TEMPORAL = 4                  # AutoencoderKLWan encodes 1 + 4k frames (its encode loop is written for 4)
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def latent_config(vae: dict[str, Any], pretrained: str | None = None) -> dict[str, Any]:
    """The ``WAMConfig.latent`` entry: the VAE's constructor config and, while training, the local folder it is
    loaded from (cleared when a checkpoint is read: the VAE's weights are in the checkpoint)."""
    return {"vae": dict(vae), "pretrained": pretrained}


def factors(vae: dict[str, Any]) -> tuple[int, int]:
    """(spatial, temporal) compression of a VAE config, from its architecture (not from its scale_factor fields)."""
    spatial = 2 ** (len(vae["dim_mult"]) - 1) * int(vae.get("patch_size") or 1)
    temporal = 2 ** sum(bool(t) for t in vae["temperal_downsample"])
    return spatial, temporal


def latent_frames(frames: int) -> int:
    """Latent frames of a ``1 + 4k``-frame clip; anything else is refused (see the module docstring)."""
    if frames < 1 or (frames - 1) % TEMPORAL:
        raise ValueError(f"the Wan VAE encodes 1 + 4k frames; a window has 1 + horizon = {frames} frames, so the "
                         f"latent path needs horizon = 4k (4, 8, ...)")
    return 1 + (frames - 1) // TEMPORAL


def check(latent: dict[str, Any], image_size: int, horizon: int, patch: int) -> None:
    """Raise ValueError when a latent config cannot serve windows of this size (messages name the setting)."""
    vae = latent.get("vae")
    if not isinstance(vae, dict) or not {"z_dim", "dim_mult", "temperal_downsample"} <= set(vae):
        raise ValueError("latent.vae must be an AutoencoderKLWan config (z_dim, dim_mult, temperal_downsample, ...)")
    spatial, temporal = factors(vae)
    if temporal != TEMPORAL:
        raise ValueError(f"latent: the VAE compresses time {temporal}x; the Wan VAE's encoder needs 4x")
    if vae["z_dim"] % 3:
        raise ValueError(f"latent: z_dim {vae['z_dim']} must be divisible by 3 (each stream's latent is folded into "
                         "3 mask channels)")
    latent_frames(1 + horizon)
    if image_size % (spatial * patch):
        raise ValueError(f"image_size {image_size} must be divisible by the VAE's {spatial}x times the patch {patch}")


def fold(z: torch.Tensor, streams: int = 2) -> torch.Tensor:
    """``[B, V, F, S*Z, h, w]`` -> ``[B, V, F, 3*S, Z/3*h, w]``: each stream's Z channels become 3 mask channels
    (channel c -> channel c // (Z/3), rows (c % (Z/3))*h ...), so flow.py's per-stream masks apply unchanged."""
    B, V, Fr, C, h, w = z.shape
    g = C // streams // 3
    return z.reshape(B, V, Fr, 3 * streams, g * h, w)


def unfold(x: torch.Tensor, h: int) -> torch.Tensor:
    """The inverse of :func:`fold` for latents of height ``h``."""
    B, V, Fr, C3, gh, w = x.shape
    return x.reshape(B, V, Fr, C3 * (gh // h), h, w)


class FrozenVAE(nn.Module):
    """``AutoencoderKLWan`` (frozen, ``requires_grad`` off) with per-stream encode / decode in the WAM's layout."""

    def __init__(self, latent: dict[str, Any]):
        super().__init__()
        try:
            from diffusers import AutoencoderKLWan
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the latent path needs diffusers: pip install 'action-images[wan]'") from e
        vae = dict(latent["vae"])
        if latent.get("pretrained"):
            folder = Path(latent["pretrained"])
            folder = folder / "vae" if (folder / "vae").is_dir() else folder
            self.vae = AutoencoderKLWan.from_pretrained(str(folder), use_safetensors=True, local_files_only=True)
        else:
            self.vae = AutoencoderKLWan(**vae)
        self.vae.requires_grad_(False)
        cfg = self.vae.config
        self.z_dim = int(cfg.z_dim)
        self.spatial, self.temporal = factors(dict(cfg))
        self.register_buffer("mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1),
                             persistent=False)

    def train(self, mode: bool = True) -> "FrozenVAE":
        return super().train(False)                 # frozen: always in eval mode

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """One stream ``[B, V, F, 3, H, W]`` in [-1, 1] -> normalised latents ``[B, V, F', Z, h, w]`` (posterior mean)."""
        B, V, Fr, C, H, W = x.shape
        latent_frames(Fr)
        dtype = next(self.vae.parameters()).dtype
        clip = x.reshape(B * V, Fr, C, H, W).permute(0, 2, 1, 3, 4).to(dtype)          # [BV, 3, F, H, W]
        mu = self.vae.encode(clip).latent_dist.mode().float()                         # [BV, Z, F', h, w]
        z = (mu - self.mean) / self.std
        return z.permute(0, 2, 1, 3, 4).reshape(B, V, z.shape[2], self.z_dim, *z.shape[-2:])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, V, F', Z, h, w]`` -> one stream ``[B, V, 1 + 4(F'-1), 3, H, W]`` in [-1, 1]."""
        B, V, Fl, Z, h, w = z.shape
        dtype = next(self.vae.parameters()).dtype
        lat = z.reshape(B * V, Fl, Z, h, w).permute(0, 2, 1, 3, 4).float() * self.std + self.mean
        x = self.vae.decode(lat.to(dtype)).sample.float()                             # [BV, 3, F, H, W]
        return x.permute(0, 2, 1, 3, 4).reshape(B, V, x.shape[2], 3, *x.shape[-2:])


def latent_plucker(K: torch.Tensor, T_cam_world: torch.Tensor, size: tuple[int, int],
                   latent_size: tuple[int, int]) -> torch.Tensor:
    """Plücker ray maps at the latent resolution: ``K [B, V, 3, 3]`` of ``size = (H, W)`` images and
    ``T_cam_world [B, V, 4, 4]`` -> ``[B, V, 6, h, w]``, one ray through the centre of each latent pixel (the camera
    resized to the latent grid, so the rays are exact, not a pooled pixel map)."""
    from action_images.geometry import Camera

    H, W = size
    h, w = latent_size
    Kn, Tn = K.detach().cpu().double().numpy(), T_cam_world.detach().cpu().double().numpy()
    maps = [[Camera(K=Kn[b, v], T_cam_world=Tn[b, v], width=W, height=H).resized(w, h).plucker()
             for v in range(Kn.shape[1])] for b in range(Kn.shape[0])]
    return torch.from_numpy(np.asarray(maps, dtype=np.float32)).permute(0, 1, 4, 2, 3).contiguous()


# ---- local pretrained folders ---------------------------------------------------------------------------------------
def missing_files(path: str | Path, parts: Iterable[str]) -> list[str]:
    """The files a diffusers pipeline folder lacks for ``parts`` (e.g. ``("transformer", "vae")``): each part needs
    ``config.json`` and safetensors weights (one file or a sharded index); ``text_encoder`` needs ``config.json`` and
    ``model.safetensors`` (or its index), ``tokenizer`` a ``tokenizer_config.json``."""
    root = Path(path)
    out = []
    for part in parts:
        d = root / part
        if part == "tokenizer":
            if not (d / "tokenizer_config.json").exists():
                out.append(str(d / "tokenizer_config.json"))
            continue
        weights = ("model.safetensors", "model.safetensors.index.json") if part == "text_encoder" else WEIGHT_FILES
        if not (d / "config.json").exists():
            out.append(str(d / "config.json"))
        if not any((d / f).exists() for f in weights):
            out.append(str(d / weights[0]))
    return out


def check_pretrained_folder(path: str | Path, parts: Iterable[str]) -> None:
    """Raise FileNotFoundError, naming every missing file in one line, when ``path`` is not a complete local
    diffusers folder for ``parts``. Nothing is ever downloaded: ``--pretrained`` is a folder on disk."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"--pretrained {root}: no such folder (a local diffusers pipeline folder is needed; "
                                "nothing is downloaded)")
    missing = missing_files(root, parts)
    if missing:
        raise FileNotFoundError(f"--pretrained {root}: missing {', '.join(missing)} (a local diffusers pipeline "
                                "folder with safetensors weights; nothing is downloaded)")


def vae_config_from_folder(path: str | Path) -> dict[str, Any]:
    """The AutoencoderKLWan constructor config of a local folder (``vae/config.json``; diffusers' own keys, such as
    ``_class_name``, dropped)."""
    folder = Path(path)
    folder = folder / "vae" if (folder / "vae").is_dir() else folder
    raw = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


__all__ = ["WAN22_VAE", "TINY_VAE", "FrozenVAE", "latent_config", "factors", "latent_frames", "check", "fold",
           "unfold", "latent_plucker", "missing_files", "check_pretrained_folder", "vae_config_from_folder"]
