"""LPIPS and FVD from *local* weights only (no downloads). Without weights the metrics are reported as ``null``.

LPIPS (Zhang et al. 2018, AlexNet variant, v0.1), written out here so no extra package is needed. ``--lpips-weights``
is one file (``.safetensors``, or ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``) holding

* the AlexNet feature layers under torchvision's names ``features.{0,3,6,8,10}.{weight,bias}``, and
* the LPIPS linear heads under the ``lpips`` package's names ``lin{0..4}.model.1.weight``

(i.e. torchvision's ``alexnet`` ``features.*`` merged with ``lpips/weights/v0.1/alex.pth``).

FVD (Unterthiner et al. 2019): Fréchet distance between I3D features of real and generated clips.
``--i3d-weights`` is the TorchScript I3D used by StyleGAN-V / common FVD code (``i3d_torchscript.pt``), called as
``net(videos [B,3,T,H,W] in [-1,1], rescale=False, resize=True, return_features=True)``. It is loaded with
``torch.jit.load``, which runs the code stored in the file, so :class:`I3DFeatures` refuses it unless the caller
passes ``trust_torchscript=True`` (``--trust-i3d-torchscript`` on the command line). The tests cover the Fréchet
distance, not the real I3D file (it is not shipped). With few clips FVD is strongly biased: read it as a relative
number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import nn

_ALEX = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
_TORCHVISION_IDX = (0, 3, 6, 8, 10)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a weights-only torch file (never arbitrary pickle)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:    # safetensors' and the weights-only unpickler's many error types: one clear line
        raise ValueError(f"{path}: not a {'safetensors' if path.suffix == '.safetensors' else 'weights-only torch'} "
                         f"weights file ({type(e).__name__})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return sd


class LPIPS(nn.Module):
    """AlexNet LPIPS: distance between two image batches [B, 3, H, W] in [-1, 1] -> [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in _ALEX])
        self.lins = nn.ModuleList([nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in _ALEX])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    @classmethod
    def from_file(cls, path: str | Path) -> "LPIPS":
        sd = load_state(path)
        net = cls()
        own = {}
        for j, t in enumerate(_TORCHVISION_IDX):
            own[f"convs.{j}.weight"] = sd.get(f"features.{t}.weight")
            own[f"convs.{j}.bias"] = sd.get(f"features.{t}.bias")
            own[f"lins.{j}.weight"] = sd.get(f"lin{j}.model.1.weight")
        missing = [k for k, v in own.items() if v is None]
        if missing:
            raise ValueError(f"{path}: not an LPIPS-AlexNet file (missing {missing[:4]}...); see action_images."
                             "perceptual for the expected keys")
        net.load_state_dict(own, strict=False)          # shift/scale are constants, not in the file
        return net.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        feats = []
        for j, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            feats.append(x)
            if j in (0, 1):
                x = torch.nn.functional.max_pool2d(x, 3, 2)
        return feats

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = 0.0
        for fa, fb, lin in zip(self.features(a), self.features(b), self.lins):
            fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
            fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
            d = d + lin((fa - fb) ** 2).mean(dim=(2, 3))[:, 0]
        return d


def check_lpips_file(path: str | Path, flag: str = "--lpips-weights") -> None:
    """Reads an LPIPS weights file once, so that a wrong file fails before any other work; ValueError naming
    ``flag``."""
    try:
        LPIPS.from_file(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{flag}: {e}") from None


def lpips_uint8(net: LPIPS, a: np.ndarray, b: np.ndarray) -> float:
    """Mean LPIPS over frames of uint8 [..., H, W, 3] arrays (images smaller than 32 px are upsampled)."""
    ta = torch.from_numpy(a.reshape(-1, *a.shape[-3:])).permute(0, 3, 1, 2).float() / 127.5 - 1
    tb = torch.from_numpy(b.reshape(-1, *b.shape[-3:])).permute(0, 3, 1, 2).float() / 127.5 - 1
    if min(ta.shape[-2:]) < 32:
        ta = torch.nn.functional.interpolate(ta, size=(32, 32), mode="bilinear", align_corners=False)
        tb = torch.nn.functional.interpolate(tb, size=(32, 32), mode="bilinear", align_corners=False)
    return float(net(ta, tb).mean())


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``[N, D]`` feature sets (as in FID/FVD)."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    ca, cb = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(np.atleast_2d(ca) @ np.atleast_2d(cb))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(np.atleast_2d(ca) + np.atleast_2d(cb) - 2 * covmean))


class I3DFeatures:
    """TorchScript I3D feature extractor (see the module docstring for the expected file). Loading runs code from
    the file, so ``trust_torchscript`` must be True."""

    def __init__(self, path: str | Path, trust_torchscript: bool = False):
        if not trust_torchscript:
            raise ValueError(f"{path}: TorchScript runs code from the file when loaded; pass trust_torchscript=True "
                             "(--trust-i3d-torchscript) only for a file you trust")
        if not Path(path).exists():
            raise FileNotFoundError(f"I3D weights {path} do not exist")
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def __call__(self, videos_u8: np.ndarray) -> np.ndarray:
        """uint8 [N, T, H, W, 3] -> features [N, D]."""
        x = torch.from_numpy(videos_u8).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        return self.net(x, rescale=False, resize=True, return_features=True).cpu().numpy()


def fvd(extractor: I3DFeatures, real_u8: np.ndarray, fake_u8: np.ndarray) -> float:
    return frechet_distance(extractor(real_u8), extractor(fake_u8))
