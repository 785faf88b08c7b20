"""Image behaviour cloning: regress the chunk of H future absolute poses from the current views (ACT without its CVAE).

    action-images train --method bc --data data/core4h --cameras left,right --out runs/bc --minutes 30
    action-images eval --checkpoint runs/bc --tasks reach_target,press_button --episodes 20 --out runs/bc/eval

Why this baseline. It sees exactly what the world action model sees (the same windows, crops, cameras and
instruction) but outputs the poses directly, with no pictures of actions and no generation: the comparison says what
drawing actions as images and predicting video buys. One deterministic prediction per observation is also what makes
it the strongest cheap baseline on unimodal expert data.

Network: :class:`~action_images.baselines.common.ObsEncoder` (per-view GroupNorm CNN, Plücker rays as extra input
channels, spatial-softmax keypoints, view fusion, current pose, instruction) -> MLP -> per keyframe: position offset
from the current position / ``pos_scale``, rotation (6-D or quaternion), gripper logit. Loss: L2 (or L1) on those
numbers with the gripper through a sigmoid; ``loss_pos`` / ``loss_rot`` / ``loss_grip`` are logged beside it, and
``pos_err_cm``, the mean distance of the predicted keyframe positions in centimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from action_images.baselines.common import BaselineConfig, BaselineModel, ObsEncoder, decode_chunk

FORMAT = "action-images-bc"
LOSSES = ("l2", "l1")


@dataclass
class BCConfig(BaselineConfig):
    preset: str = "bc"
    hidden: int = 1024                             # MLP width
    depth: int = 2                                 # hidden layers of the MLP
    loss: str = "l2"                               # "l2" or "l1"
    dropout: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")


class BCModel(BaselineModel):
    """Observation encoder + MLP regressing the chunk; ``forward`` is the training loss, ``predict`` the poses."""

    FORMAT = FORMAT
    CONFIG = BCConfig

    def __init__(self, config: BCConfig):
        super().__init__()
        self.config = config
        self.encoder = ObsEncoder(config)
        layers: list[nn.Module] = []
        width = self.encoder.out_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.LayerNorm(config.hidden), nn.SiLU(),
                       nn.Dropout(config.dropout)]
            width = config.hidden
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.horizon * config.action_dim)
        nn.init.zeros_(self.head.weight)            # starts at "hold still", gripper 0.5
        nn.init.zeros_(self.head.bias)

    def chunk(self, batch: dict[str, Any]) -> torch.Tensor:
        """Network numbers [B, H, action_dim], the gripper already through its sigmoid."""
        cfg = self.config
        out = self.head(self.mlp(self.encoder(batch))).view(-1, cfg.horizon, cfg.action_dim)
        return torch.cat([out[..., :-1], torch.sigmoid(out[..., -1:])], dim=-1)

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Regression loss on one batch of windows (``generator`` is unused: the loss draws nothing)."""
        cfg = self.config
        current, target = self.targets(batch)
        pred = self.chunk(batch)
        err = (pred - target).square() if cfg.loss == "l2" else (pred - target).abs()
        r = 3 + cfg.rot_dim
        parts = {"loss_pos": err[..., :3].mean(), "loss_rot": err[..., 3:r].mean(), "loss_grip": err[..., r:].mean()}
        with torch.no_grad():
            dist = (pred[..., :3] - target[..., :3]).norm(dim=-1).mean() * cfg.pos_scale * 100
        return {"loss": err.mean(), **parts, "pos_err_cm": dist}

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], generator: torch.Generator | None = None, steps: int | None = None
                ) -> torch.Tensor:
        """Absolute keyframe targets [B, H, 8] (float64, unit quaternions, gripper in [0, 1]); ``generator`` and
        ``steps`` are accepted for the shared interface and unused."""
        current = batch["poses"][:, 0].double()
        return decode_chunk(current, self.chunk(batch), self.config)
