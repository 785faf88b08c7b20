"""Multi-view image Diffusion Policy (Chi et al., 2023), CNN variant, scaled to a CPU and trained by flow matching.

    action-images train --method dp --data data/core4h --cameras left,right --out runs/dp --minutes 30
    action-images eval --checkpoint runs/dp --tasks reach_target,press_button --episodes 20 --sampler-steps 10 \\
        --out runs/dp/eval

Why this baseline. It generates actions, like the world action model, but as a chunk of numbers conditioned on image
features instead of as pictures in a generated video; it keeps the multimodality that regression (``bc.py``) averages
away. Compared with the paper: the observation encoder is one shared GroupNorm CNN with spatial-softmax keypoints
(the paper: a GroupNorm ResNet-18 per camera) with the Plücker rays as extra input channels (camera conditioning, as
in the world action model; ``plucker``), the observation horizon is 1 (the training windows hold only the current
frame), the prediction horizon is H keyframes ``stride`` control steps apart (default 8 x 2 = the paper's 16 steps,
of which the policy executes 8), and the denoiser is the paper's 1-D temporal conv U-Net with FiLM conditioning at
widths 64-128-256 (the paper: 256-512-1024).

Flow matching instead of DDPM: x_t = (1 - t) x0 + t eps with t ~ U(0, 1); the network predicts the clean chunk x0
(``prediction="x0"``, the default: the paper's "sample" prediction type, which learns the observation -> chunk map
as directly as regression does; the loss is the x0 error) or the velocity eps - x0 ("velocity"), and sampling
integrates the velocity (x_t - x0_hat) / t from t = 1 to 0 with ``steps`` Euler steps (10 by default, the step count
of the paper's DDIM sampling; the last step lands on x0_hat). x0 is the chunk in the numbers of
:func:`~action_images.baselines.common.encode_chunk`, the gripper mapped to [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from action_images.baselines.common import BaselineConfig, BaselineModel, ObsEncoder, decode_chunk

FORMAT = "action-images-dp"
PREDICTIONS = ("x0", "velocity")


@dataclass
class DPConfig(BaselineConfig):
    preset: str = "dp"
    horizon: int = 8
    stride: int = 2
    down_dims: list = field(default_factory=lambda: [64, 128, 256])   # U-Net widths, halving the length each level
    kernel: int = 3                                # temporal conv kernel (the paper: 5, over 16 steps)
    cond_dim: int = 256                            # observation + time features -> FiLM input width
    time_dim: int = 64                             # sinusoidal embedding of t
    sampler_steps: int = 10                        # Euler steps when predict() is not told
    prediction: str = "x0"                         # the network predicts the clean chunk ("x0") or "velocity"
    t_eps: float = 0.05                            # clamp of t when an x0 prediction is turned into a velocity

    def validate(self) -> None:
        super().validate()
        if not (isinstance(self.down_dims, list) and 1 <= len(self.down_dims) <= 5 and all(
                isinstance(d, int) and d >= self.groups and d % self.groups == 0 for d in self.down_dims)):
            raise ValueError(f"down_dims must be 1-5 integers divisible by groups={self.groups}; got {self.down_dims}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd; got {self.kernel}")
        if not self.t_eps > 0:
            raise ValueError(f"t_eps must be > 0; got {self.t_eps}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}; got {self.prediction!r}")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t [B] in [0, 1] -> [B, dim] sin/cos features (periods up to 1000 / t-units, as DiT's for t * 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class FiLMBlock(nn.Module):
    """Two temporal convs (GroupNorm, Mish); the condition scales and shifts the first one's output per channel."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout),
                                   nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(cout, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout),
                                   nn.Mish())
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[..., None].chunk(2, dim=1)
        return self.conv2(self.conv1(x) * scale + shift) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """[B, D, L] noisy chunk + condition [B, cond_dim] -> [B, D, L]; L is padded to a multiple of 2^(levels - 1)."""

    def __init__(self, dim: int, down_dims: list[int], cond_dim: int, kernel: int, groups: int):
        super().__init__()
        pairs = list(zip([dim, *down_dims[:-1]], down_dims))
        self.down = nn.ModuleList(nn.ModuleList([FiLMBlock(a, b, cond_dim, kernel, groups),
                                                 FiLMBlock(b, b, cond_dim, kernel, groups),
                                                 nn.Conv1d(b, b, 3, 2, 1) if i < len(pairs) - 1 else nn.Identity()])
                                  for i, (a, b) in enumerate(pairs))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([FiLMBlock(mid, mid, cond_dim, kernel, groups) for _ in range(2)])
        self.up = nn.ModuleList(nn.ModuleList([FiLMBlock(2 * b, a, cond_dim, kernel, groups),
                                               FiLMBlock(a, a, cond_dim, kernel, groups),
                                               nn.ConvTranspose1d(a, a, 4, 2, 1)])
                                for a, b in reversed(pairs[1:]))
        self.out = nn.Sequential(nn.Conv1d(down_dims[0], down_dims[0], kernel, padding=kernel // 2),
                                 nn.GroupNorm(groups, down_dims[0]), nn.Mish(), nn.Conv1d(down_dims[0], dim, 1))
        self.multiple = 2 ** (len(down_dims) - 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        L = x.shape[-1]
        pad = -L % self.multiple
        x = nn.functional.pad(x, (0, pad), mode="replicate") if pad else x
        skips = []
        for block1, block2, down in self.down:
            x = block2(block1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid:
            x = block(x, cond)
        for block1, block2, up in self.up:
            x = up(block2(block1(torch.cat([x, skips.pop()], dim=1), cond), cond))
        return self.out(x)[..., :L]


class DiffusionPolicyModel(BaselineModel):
    """Observation encoder + conditional 1-D U-Net denoiser over the chunk; ``forward`` is the flow-matching loss,
    ``predict`` samples poses."""

    FORMAT = FORMAT
    CONFIG = DPConfig

    def __init__(self, config: DPConfig):
        super().__init__()
        self.config = config
        self.encoder = ObsEncoder(config)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, config.cond_dim), nn.Mish(),
                                      nn.Linear(config.cond_dim, config.cond_dim))
        self.obs_proj = nn.Sequential(nn.Linear(self.encoder.out_dim, config.cond_dim), nn.Mish(),
                                      nn.Linear(config.cond_dim, config.cond_dim))
        self.unet = ConditionalUnet1D(config.action_dim, list(config.down_dims), config.cond_dim, config.kernel,
                                      config.groups)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """x_t [B, H, D], t [B], projected observation features [B, cond_dim] -> the network's output [B, H, D]
        (the clean chunk or the velocity, by ``config.prediction``)."""
        cond = obs + self.time_mlp(timestep_embedding(t, self.config.time_dim))
        return self.unet(x_t.transpose(1, 2), cond).transpose(1, 2)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The ODE velocity eps - x0 at (x_t, t)."""
        out = self.denoise(x_t, t, obs)
        if self.config.prediction == "velocity":
            return out
        return (x_t - out) / t.clamp(min=self.config.t_eps)[:, None, None]

    def clean_chunk(self, batch: dict[str, Any]) -> torch.Tensor:
        """The window's chunk as x0 [B, H, D] (gripper in [-1, 1])."""
        _, x0 = self.targets(batch)
        return torch.cat([x0[..., :-1], 2 * x0[..., -1:] - 1], dim=-1)

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss; ``generator`` (CPU) draws t and the noise, so a step is reproducible."""
        x0 = self.clean_chunk(batch)
        B, dev = x0.shape[0], x0.device
        t = torch.rand(B, generator=generator).to(dev)
        eps = torch.randn(x0.shape, generator=generator).to(dev)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
        target = x0 if self.config.prediction == "x0" else eps - x0
        err = (self.denoise(x_t, t, self.obs_proj(self.encoder(batch))) - target).square()
        r = 3 + self.config.rot_dim
        return {"loss": err.mean(), "loss_pos": err[..., :3].mean(), "loss_rot": err[..., 3:r].mean(),
                "loss_grip": err[..., r:].mean()}

    @torch.no_grad()
    def sample_chunk(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                     steps: int | None = None) -> torch.Tensor:
        """Euler integration of the velocity from t = 1 (noise) to 0 -> x0 [B, H, D] (gripper in [-1, 1])."""
        cfg = self.config
        steps = int(steps or cfg.sampler_steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        obs = self.obs_proj(self.encoder(batch))
        B, dev = obs.shape[0], obs.device
        x = torch.randn((B, cfg.horizon, cfg.action_dim), generator=generator).to(dev)
        ts = torch.linspace(1.0, 0.0, steps + 1)
        for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
            x = x + (t_next - t) * self.velocity(x, torch.full((B,), t, device=dev), obs)
        return x

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], generator: torch.Generator | None = None, steps: int | None = None
                ) -> torch.Tensor:
        """Absolute keyframe targets [B, H, 8] (float64, unit quaternions, gripper in [0, 1]) from one sample."""
        x = self.sample_chunk(batch, generator, steps)
        x = torch.cat([x[..., :-1], (x[..., -1:] + 1) / 2], dim=-1)
        return decode_chunk(batch["poses"][:, 0].double(), x, self.config)
