"""What the pose-regression baselines share: the observation encoder, the chunk representation and the checkpoint.

Observation. Each view's *current* frame (the window's frame 0, cropped and resized exactly as for the world action
model) goes through one small CNN with GroupNorm (batch statistics would couple the samples of a batch and drift
between training and closed loop; Diffusion Policy replaces ResNet's BatchNorm the same way). With ``plucker`` on,
the view's Plücker ray map is concatenated as 6 more input channels: the camera is an input, as in the world action
model, so the network knows where each picture was taken from. The feature map is pooled into keypoints (spatial
softmax, robomimic / Diffusion Policy) or averaged, and the views are fused either as a set (mean and max over views
of a per-view MLP: any number and order of views -- the training windows draw the views in random order) or by
concatenation in the given order (ACT / Diffusion Policy style; needs the trained number of views). The current pose
(position, 6-D rotation, gripper) and the mean-pooled instruction embedding (the hash encoder of
:mod:`action_images.text`) are appended.

Chunk. H keyframe targets ``poses[:, 1:]`` of the window (absolute, world frame), represented per keyframe as the
position offset from the current position divided by ``pos_scale``, the rotation as its first two matrix columns
("6d", continuous; Zhou et al. 2019) or a unit quaternion ("quat") minus those of the current rotation, and the
gripper: the zero output holds still and the numbers are O(1).

Checkpoint: ``config.json`` (``format`` names the method, e.g. "action-images-bc") + ``model.safetensors``, checked
against each other before anything is allocated, like :mod:`action_images.wam`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from torch import nn

from action_images.text import HashTextEncoder, TextConfig
from action_images.wam import CheckpointError, load_checked, read_meta, write_checkpoint

FORMAT_VERSION = 1
ROTATIONS = {"6d": 6, "quat": 4}
POOLS = ("spatial_softmax", "avg")
FUSIONS = ("set", "concat")
CROPS = ("center", "workspace")


# ---- config ----------------------------------------------------------------------------------------------------------
class ChunkSizes:
    """What every baseline's config derives from ``horizon`` and ``rotation`` (frames per window, numbers per
    rotation and per keyframe), and the checks of those and of ``crop``, ``workspace`` and ``camera_names``."""

    horizon: int
    rotation: str
    crop: str
    workspace: list | None
    camera_names: list | None

    def check_chunk_fields(self, need) -> None:
        """Check the fields above with ``need(condition, message)`` (the config's own error collector)."""
        need(self.rotation in ROTATIONS, f"rotation must be one of {tuple(ROTATIONS)}; got {self.rotation!r}")
        need(self.crop in CROPS, f"crop must be one of {CROPS}; got {self.crop!r}")
        ws = self.workspace
        need(ws is None or (isinstance(ws, list) and len(ws) == 2 and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(x, (int, float)) and np.isfinite(x) for x in c)
            for c in ws) and all(lo < hi for lo, hi in zip(*ws))),
            f"workspace must be [[x, y, z] low, [x, y, z] high]; got {ws!r}")
        need(self.crop != "workspace" or ws is not None, "crop 'workspace' needs a workspace box")
        need(self.camera_names is None or (isinstance(self.camera_names, list) and len(self.camera_names) >= 1
                                           and all(isinstance(c, str) and c for c in self.camera_names)),
             f"camera_names must be null or a list of names; got {self.camera_names!r}")

    @property
    def frames(self) -> int:
        return 1 + self.horizon

    @property
    def rot_dim(self) -> int:
        return ROTATIONS[self.rotation]

    @property
    def action_dim(self) -> int:
        """Numbers per keyframe: position offset, rotation, gripper."""
        return 3 + self.rot_dim + 1


@dataclass
class BaselineConfig(ChunkSizes):
    """Fields every baseline has; the data-shape ones (image_size ... workspace) mean what they mean in ``WAMConfig``
    so that ``WindowConfig.from_model`` and the closed-loop policy read them alike."""

    preset: str = "default"                        # the size this config came from (reported by eval)
    image_size: int = 64
    num_views: int = 2
    horizon: int = 8                               # future keyframes predicted
    stride: int = 1                                # control steps between keyframes
    camera_names: list | None = None
    crop: str = "center"
    workspace: list | None = None
    plucker: bool = True                           # camera conditioning: ray map as 6 extra input channels
    channels: list = field(default_factory=lambda: [32, 64, 128])   # CNN widths at full, 1/2, 1/4 ... resolution
    groups: int = 8                                # GroupNorm groups
    pool: str = "spatial_softmax"                  # "spatial_softmax" (keypoints) or "avg"
    keypoints: int = 32                            # spatial-softmax keypoints per view
    view_dim: int = 256                            # per-view feature width after its MLP
    fusion: str = "set"                            # "set" (mean + max over views) or "concat" (in view order)
    text_dim: int = 64
    text_vocab: int = 4096
    rotation: str = "6d"                           # "6d" (two matrix columns) or "quat"
    pos_scale: float = 0.1                         # metres per unit of the predicted position offset

    def tokens_per_sample(self, num_views: int | None = None) -> int:
        """8-px patches of the input frames (comparable with the WAM's throughput log, which counts all frames)."""
        return (num_views or self.num_views) * (self.image_size // 8) ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BaselineConfig":
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown or missing:
            raise ValueError(f"config does not match this code: unknown keys {unknown}, missing keys {missing}")
        return cls(**d)

    def validate(self) -> None:
        """Types and ranges of every field (a config read from a file is checked before a model is built)."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int):
                need(is_int(v) and v >= 1, f"{f.name} must be an integer >= 1; got {v!r}")
            elif f.type in ("float", float):
                need(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0,
                     f"{f.name} must be a finite number >= 0; got {v!r}")
            elif f.type in ("bool", bool):
                need(isinstance(v, bool), f"{f.name} must be true or false; got {v!r}")
        need(8 <= self.image_size <= 1024, f"image_size must be in [8, 1024]; got {self.image_size}")
        need(self.horizon <= 64, f"horizon must be <= 64; got {self.horizon}")
        need(self.pos_scale > 0, f"pos_scale must be > 0; got {self.pos_scale}")
        need(isinstance(self.channels, list) and 1 <= len(self.channels) <= 6
             and all(is_int(c) and c >= 1 and c % self.groups == 0 for c in self.channels),
             f"channels must be 1-6 integers divisible by groups={self.groups}; got {self.channels!r}")
        need(self.pool in POOLS, f"pool must be one of {POOLS}; got {self.pool!r}")
        need(self.fusion in FUSIONS, f"fusion must be one of {FUSIONS}; got {self.fusion!r}")
        self.check_chunk_fields(need)
        need(self.text_vocab >= 3, f"text_vocab must be >= 3; got {self.text_vocab}")


# ---- poses <-> network numbers ---------------------------------------------------------------------------------------
def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Scalar-last quaternions [..., 4] (any norm) -> rotation matrices [..., 3, 3]."""
    x, y, z, w = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).view(*q.shape[:-1], 3, 3)


def rot6d_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """[..., 6] (two columns, any scale) -> rotation matrices [..., 3, 3] by Gram-Schmidt."""
    a, b = r[..., :3], r[..., 3:]
    c1 = F.normalize(a, dim=-1)
    c2 = F.normalize(b - (c1 * b).sum(-1, keepdim=True) * c1, dim=-1)
    return torch.stack([c1, c2, torch.cross(c1, c2, dim=-1)], dim=-1)


def canonical_quat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions with w >= 0 (q and -q are the same rotation)."""
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., 3:] < 0, -q, q)


def pose_features(pose: torch.Tensor) -> torch.Tensor:
    """Current poses [B, 8] -> [B, 10]: position, 6-D rotation, gripper (the network's view of the robot state)."""
    R = quat_to_matrix(pose[..., 3:7])
    return torch.cat([pose[..., :3], R[..., :, 0], R[..., :, 1], pose[..., 7:]], dim=-1)


def rotation_numbers(quat: torch.Tensor, rotation: str, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Quaternions [..., 4] -> "6d" (first two matrix columns) or "quat" (unit, sign chosen to agree with
    ``reference`` [..., 4] when given, else w >= 0: a top-down gripper sits at w ~ 0, where a fixed sign rule flips)."""
    if rotation == "6d":
        R = quat_to_matrix(quat)
        return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)
    q = F.normalize(quat, dim=-1)
    if reference is None:
        return canonical_quat(q)
    return torch.where((q * reference).sum(-1, keepdim=True) < 0, -q, q)


def encode_chunk(current: torch.Tensor, targets: torch.Tensor, cfg: BaselineConfig) -> torch.Tensor:
    """current [B, 8], targets [B, H, 8] -> [B, H, action_dim]: position offset / pos_scale, rotation numbers minus
    the current pose's, gripper in [0, 1]. The zero chunk (gripper aside) holds the current pose."""
    pos = (targets[..., :3] - current[:, None, :3]) / cfg.pos_scale
    ref = rotation_numbers(current[:, 3:7], cfg.rotation)[:, None]
    rot = rotation_numbers(targets[..., 3:7], cfg.rotation, ref.expand(*targets.shape[:-1], -1)
                           if cfg.rotation == "quat" else None) - ref
    return torch.cat([pos, rot, targets[..., 7:].clamp(0, 1)], dim=-1)


def decode_chunk(current: torch.Tensor, x: torch.Tensor, cfg: BaselineConfig) -> torch.Tensor:
    """Inverse of :func:`encode_chunk` (network numbers -> absolute poses [B, H, 8] float64, unit quaternions).

    The gripper number is clipped to [0, 1]; the rotation is projected onto the nearest valid one."""
    x, current = x.detach().double().cpu(), current.detach().double().cpu()
    pos = current[:, None, :3] + cfg.pos_scale * x[..., :3]
    rot = x[..., 3:3 + cfg.rot_dim] + rotation_numbers(current[:, 3:7], cfg.rotation)[:, None]
    if cfg.rotation == "6d":
        quat = Rotation.from_matrix(rot6d_to_matrix(rot).reshape(-1, 3, 3).numpy()).as_quat(canonical=True)
        quat = torch.from_numpy(quat).view(*rot.shape[:-1], 4)
    else:
        quat = canonical_quat(rot)
    return torch.cat([pos, quat, x[..., -1:].clamp(0, 1)], dim=-1)


# ---- the observation encoder -----------------------------------------------------------------------------------------
class SpatialSoftmax(nn.Module):
    """Feature map [N, C, h, w] -> K keypoints [N, 2K]: the expected (x, y) in [-1, 1] of a softmax per map."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        heat = self.proj(f)
        N, K, h, w = heat.shape
        prob = heat.flatten(2).softmax(-1).view(N, K, h, w)
        ys = torch.linspace(-1, 1, h, device=f.device, dtype=f.dtype)
        xs = torch.linspace(-1, 1, w, device=f.device, dtype=f.dtype)
        return torch.cat([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


def conv_block(cin: int, cout: int, groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class ObsEncoder(nn.Module):
    """Current frames (+ Plücker rays) of V views, current pose, instruction -> one feature vector [B, out_dim]."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        self.config = cfg
        cin = 3 + (6 if cfg.plucker else 0)
        c0 = cfg.channels[0]                   # one full-resolution conv, then two convs per halving
        blocks: list[nn.Module] = [nn.Conv2d(cin, c0, 3, padding=1), nn.GroupNorm(cfg.groups, c0), nn.SiLU()]
        prev = c0
        for c in cfg.channels[1:]:
            blocks.append(conv_block(prev, c, cfg.groups, stride=2))
            prev = c
        self.cnn = nn.Sequential(*blocks)
        if cfg.pool == "spatial_softmax":
            self.pool, pooled = SpatialSoftmax(prev, cfg.keypoints), 2 * cfg.keypoints
        else:
            self.pool, pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), prev
        self.view_mlp = nn.Sequential(nn.Linear(pooled, cfg.view_dim), nn.SiLU(), nn.Linear(cfg.view_dim, cfg.view_dim))
        views_dim = 2 * cfg.view_dim if cfg.fusion == "set" else cfg.num_views * cfg.view_dim
        self.text = HashTextEncoder(TextConfig(dim=cfg.text_dim, vocab_size=cfg.text_vocab))
        self.out_dim = views_dim + 10 + cfg.text_dim

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        cfg = self.config
        dev = self.view_mlp[0].weight.device
        x = batch["rgb"][:, :, 0].to(dev).float()                              # [B, V, 3, R, R], frame 0 = now
        if cfg.plucker:
            x = torch.cat([x, batch["plucker"].to(dev).float()], dim=2)       # [B, V, 9, R, R]
        B, V = x.shape[:2]
        if cfg.fusion == "concat" and V != cfg.num_views:
            raise ValueError(f"fusion 'concat' needs the trained {cfg.num_views} views; got {V}")
        f = self.view_mlp(self.pool(self.cnn(x.flatten(0, 1)))).view(B, V, -1)
        views = torch.cat([f.mean(1), f.amax(1)], -1) if cfg.fusion == "set" else f.flatten(1)
        tok, mask = self.text(list(batch["instruction"]))
        m = mask.to(tok.dtype)[..., None]
        text = (tok * m).sum(1) / m.sum(1).clamp(min=1)
        pose = pose_features(batch["poses"][:, 0].to(dev).float())
        return torch.cat([views, pose, text], dim=-1)


# ---- checkpoint ------------------------------------------------------------------------------------------------------
class BaselineModel(nn.Module):
    """Checkpoint reading and writing for a baseline; subclasses set ``FORMAT`` and ``CONFIG``."""

    FORMAT = ""
    CONFIG: type = BaselineConfig

    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(current pose [B, 8], chunk in network numbers [B, H, action_dim]) of a training window."""
        dev = next(self.parameters()).device
        poses = batch["poses"].to(dev).float()
        H = self.config.horizon
        if poses.shape[1] < 1 + H:
            raise ValueError(f"the window has {poses.shape[1] - 1} keyframes; the model predicts {H}")
        return poses[:, 0], encode_chunk(poses[:, 0], poses[:, 1:1 + H], self.config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write ``model.safetensors`` + ``config.json`` (format, version, config) into ``path``."""
        write_checkpoint(path, state_dict if state_dict is not None else self.state_dict(),
                         {"format": self.FORMAT, "format_version": FORMAT_VERSION, "config": self.config.to_dict()})

    @classmethod
    def read_config(cls, path: str | os.PathLike) -> BaselineConfig:
        """The config of a checkpoint folder written by this class; errors name the file and what is wrong."""
        file, meta = read_meta(path)
        if meta.get("format") != cls.FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{file}: format {meta.get('format')!r} v{meta.get('format_version')} is not "
                                  f"{cls.FORMAT!r} v{FORMAT_VERSION} ({cls.__name__}); action_images.baselines."
                                  "load_model(path) loads any kind")
        try:
            config = cls.CONFIG.from_dict(meta["config"])
            config.validate()
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{file}: {e}") from None
        return config

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str = "cpu") -> "BaselineModel":
        """Load a model written by :meth:`save_pretrained` (safetensors only). The weights file's names and shapes
        are checked against the config on the ``meta`` device before anything is allocated."""
        path = Path(path)
        config = cls.read_config(path)
        return load_checked(path, lambda: cls(config), map_location)
