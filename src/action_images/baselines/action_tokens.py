"""The action-token ablation of the world action model: the same video DiT, with actions as tokens, not as images.

    action-images train --method tokens --data data/rig8 --out runs/rig8-tokens --steps 6652
    action-images eval --checkpoint runs/rig8-tokens --tasks reach_target,press_button --episodes 20 \\
        --sampler-steps 10 --out runs/rig8-tokens/eval

Why this baseline. The paper's ablation "the same video backbone predicting low-dimensional action tokens instead of
action images": everything the world action model has -- the DiT of :mod:`action_images.models.dit` at the
``cpu-small`` size, Plücker ray maps per view, the hash text encoder, multi-view RGB video generated jointly with
the actions by flow matching, one noise level per sample -- except that the actions are not drawn in the views. The
comparison isolates what drawing the action as pictures in the cameras adds over handing the same network numbers.

Tokens. The DiT runs on RGB only (3 channels per pixel, one stream: frame 0 given, the H keyframes generated). H + 1
more tokens join its sequence (``DiT.forward(extra_tokens=...)``): token 0 is the current pose, given clean, tokens
1..H the future keyframes, noised. Each is ``Linear(numbers) + keyframe embedding + state embedding`` (given /
generated); token 0 also gets ``Linear(absolute current pose)`` (position, 6-D rotation, gripper), the robot state
the world action model sees as the current action image. The numbers of a keyframe are those of
:func:`~action_images.baselines.common.encode_chunk`: position offset from the current position / ``pos_scale``,
6-D rotation minus the current one, gripper mapped to [-1, 1] (token 0: zeros and the current gripper). A
zero-initialised head maps the DiT's output features of the tokens back to these numbers, so the untrained model
holds still, as the world action model's zero output ("nothing moves") does.

Flow matching as in :mod:`action_images.flow`: x_t = (1 - t) x0 + t eps for every generated part with one t per
sample (logit-normal, ``t_mean`` 1.5 as the rig8 recipes); RGB is predicted relative to the view's current frame
(``WAMConfig.predict = "x_rel"``), the action numbers directly (they are already relative to the current pose). The
loss is the x0 error, ``(mse_rgb + action_loss_weight * mse_act) / 2`` over the generated parts: the world action
model's loss, whose two streams have equally many generated elements, is the same mean. Only the policy job is
trained. ``predict`` integrates the velocity (x_t - x0_hat) / max(t, t_eps) from noise with ``steps`` Euler steps,
the video and the actions together, and returns the keyframes as absolute poses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from action_images.baselines.common import BaselineConfig, BaselineModel, ChunkSizes, decode_chunk, pose_features
from action_images.flow import GEN, GIVEN, NUM_STATES, channel_state, noisy_input, sample_t, time_grid
from action_images.models.dit import DiT, DiTConfig
from action_images.text import HashTextEncoder, TextConfig, drop_instructions

FORMAT = "action-images-tokens"


@dataclass
class TokensConfig(ChunkSizes):
    """Data shape and backbone of the ``cpu-small`` world action model; the fields named as in ``WAMConfig`` and
    ``DiTConfig`` mean the same."""

    # recipe model settings it shares with the world action model
    RECIPE_FIELDS = ("t_mean", "p_drop_text", "action_loss_weight", "context_channels", "depth")
    ADDED_KEYS = {"context_channels": 0}           # keys added after configs were written -> their "off" value
    preset: str = "tokens"
    image_size: int = 48
    num_views: int = 2
    horizon: int = 4                               # future keyframes H
    stride: int = 2                                # control steps between keyframes
    camera_names: list | None = None
    crop: str = "center"
    workspace: list | None = None
    width: int = 128                               # DiT width, depth, heads and patch: the cpu-small backbone
    depth: int = 4
    heads: int = 4
    patch: int = 8
    mlp_ratio: float = 4.0
    max_views: int = 8
    max_frames: int = 16
    text_dim: int = 128
    text_vocab: int = 4096
    context_channels: int = 0                      # the DiT's context encoder on the current frame (0 = off)
    rotation: str = "6d"                           # "6d" (two matrix columns) or "quat"
    pos_scale: float = 0.1                         # metres per unit of a position offset
    action_loss_weight: float = 4.0
    p_drop_text: float = 0.1                       # instruction dropout, as the world action model trains
    t_mean: float = 1.5                            # logit-normal training noise levels
    t_std: float = 1.0
    t_eps: float = 0.05                            # clamp of t when an x0 prediction is turned into a velocity
    sampler_steps: int = 10                        # Euler steps when predict() is not told

    def backbone_config(self) -> DiTConfig:
        """The DiT: RGB only (3 channels, one stream with its own given / generated state)."""
        return DiTConfig(width=self.width, depth=self.depth, heads=self.heads, patch=self.patch,
                         mlp_ratio=self.mlp_ratio, in_channels=3, streams=1, max_views=self.max_views,
                         max_frames=self.max_frames, text_dim=self.text_dim,
                         context_channels=self.context_channels)

    def tokens_per_sample(self, num_views: int | None = None) -> int:
        """Video patches of all frames plus the H + 1 action tokens."""
        return (num_views or self.num_views) * self.frames * (self.image_size // self.patch) ** 2 + self.frames

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokensConfig":
        """The same strict key check as every baseline, after filling keys added since a config was written."""
        return BaselineConfig.from_dict.__func__(cls, {**cls.ADDED_KEYS, **d})

    def validate(self) -> None:
        """Types and ranges of every field (a config read from a file is checked before a model is built)."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)

        for f in fields(self):
            v = getattr(self, f.name)
            is_int = isinstance(v, int) and not isinstance(v, bool)
            if f.name == "context_channels":
                need(is_int and 0 <= v <= 512, f"context_channels must be an integer in [0, 512]; got {v!r}")
            elif f.type in ("int", int):
                need(is_int and v >= 1, f"{f.name} must be an integer >= 1; got {v!r}")
            elif f.type in ("float", float):
                need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                     f"{f.name} must be a finite number; got {v!r}")
        need(8 <= self.image_size <= 1024, f"image_size must be in [8, 1024]; got {self.image_size}")
        need(self.image_size % self.patch == 0, f"image_size {self.image_size} must be divisible by patch {self.patch}")
        need(self.width % self.heads == 0 and self.width % 4 == 0,
             f"width {self.width} must be divisible by heads {self.heads} and by 4")
        need(self.width <= 4096 and self.depth <= 64 and self.text_vocab <= 1 << 20 and self.text_dim <= 4096,
             "width <= 4096, depth <= 64, text_dim <= 4096 and text_vocab <= 2^20")
        need(self.frames <= self.max_frames <= 256, f"horizon + 1 must be <= max_frames <= 256; got {self.horizon} "
                                                    f"and {self.max_frames}")
        need(self.num_views <= self.max_views <= 64, f"num_views must be <= max_views <= 64; got {self.num_views} "
                                                     f"and {self.max_views}")
        need(0 < self.mlp_ratio <= 16, f"mlp_ratio must be in (0, 16]; got {self.mlp_ratio}")
        need(self.pos_scale > 0 and self.t_std > 0 and self.t_eps > 0 and self.action_loss_weight >= 0,
             "pos_scale, t_std and t_eps must be > 0, action_loss_weight >= 0")
        need(0 <= self.p_drop_text <= 1, f"p_drop_text must be in [0, 1]; got {self.p_drop_text}")
        need(self.text_vocab >= 3, f"text_vocab must be >= 3; got {self.text_vocab}")
        self.check_chunk_fields(need)


class ActionTokensModel(BaselineModel):
    """Hash text encoder + RGB-only video DiT whose sequence also holds H + 1 action tokens; ``forward`` is the
    flow-matching loss, ``predict`` samples video and actions together and returns the poses."""

    FORMAT = FORMAT
    CONFIG = TokensConfig

    def __init__(self, config: TokensConfig):
        super().__init__()
        self.config = config
        D, A = config.width, config.action_dim
        self.backbone = DiT(config.backbone_config())
        self.text_encoder = HashTextEncoder(TextConfig(dim=config.text_dim, vocab_size=config.text_vocab))
        self.act_in = nn.Linear(A, D)
        self.current_in = nn.Linear(10, D)                  # the absolute current pose, on token 0
        self.key_emb = nn.Embedding(config.max_frames, D)   # keyframe index of a token (0 = now)
        self.act_state_emb = nn.Embedding(NUM_STATES, D)    # given / generated
        self.act_out = nn.Linear(D, A)
        for m in (self.act_in, self.current_in):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        for emb in (self.key_emb, self.act_state_emb):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.zeros_(self.act_out.weight)                 # output 0 = hold the current pose
        nn.init.zeros_(self.act_out.bias)

    # ---- numbers -----------------------------------------------------------------------------------------------------
    def clean_actions(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(current pose [B, 8], x0 of the action tokens [B, 1 + H, action_dim]): token 0 is zeros and the current
        gripper, tokens 1..H the window's keyframes; grippers in [-1, 1]."""
        current, chunk = self.targets(batch)
        now = torch.zeros_like(chunk[:, :1])
        now[..., -1] = current[:, None, 7].clamp(0, 1)
        a0 = torch.cat([now, chunk], dim=1)
        return current, torch.cat([a0[..., :-1], 2 * a0[..., -1:] - 1], dim=-1)

    def policy_state(self, B: int, V: int, dev: torch.device) -> torch.Tensor:
        """RGB states [B, V, F, 1]: frame 0 given, the keyframes generated."""
        state = torch.full((B, V, self.config.frames, 1), GEN, dtype=torch.long, device=dev)
        state[:, :, 0] = GIVEN
        return state

    # ---- the network -------------------------------------------------------------------------------------------------
    def denoise(self, x_in: torch.Tensor, a_in: torch.Tensor, t: torch.Tensor, state: torch.Tensor,
                plucker: torch.Tensor, current: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_in [B, V, F, 3, R, R] (frame 0 clean, the rest noisy), a_in [B, 1 + H, A] (token 0 clean) ->
        (RGB x0_hat, action x0_hat [B, 1 + H, A])."""
        F_ = a_in.shape[1]
        dev = a_in.device
        a_state = torch.full((F_,), GEN, dtype=torch.long, device=dev)
        a_state[0] = GIVEN
        tok = (self.act_in(a_in) + self.key_emb(torch.arange(F_, device=dev)) + self.act_state_emb(a_state))
        now = self.current_in(pose_features(current))[:, None]                  # [B, 1, D]
        tok = torch.cat([tok[:, :1] + now, tok[:, 1:]], dim=1)
        out, feat = self.backbone(x_in, t, state, plucker, text, text_mask, extra_tokens=tok)
        ref = x_in[:, :, :1] * (channel_state(state[:, :, :1]) == GIVEN)         # x0 relative to the current frame
        return ref + out, self.act_out(feat)

    def velocity(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x_t - x0_hat) / t.clamp_min(self.config.t_eps).view(-1, *[1] * (x_t.ndim - 1))

    # ---- training loss -----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching x0 loss of the policy job; ``generator`` (CPU) draws t, the noise and the text dropout."""
        cfg = self.config
        current, a0 = self.clean_actions(batch)
        dev = a0.device
        rgb = batch["rgb"][:, :, :cfg.frames].to(dev).float()                   # [B, V, F, 3, R, R]
        plucker = batch["plucker"].to(dev).float()
        B, V = rgb.shape[:2]
        if rgb.shape[2] != cfg.frames:
            raise ValueError(f"the window has {rgb.shape[2]} frames; the model generates {cfg.frames}")
        state = self.policy_state(B, V, dev)
        t = sample_t(B, cfg.t_mean, cfg.t_std, generator).to(dev)
        eps = torch.randn(rgb.shape, generator=generator).to(dev)
        eps_a = torch.randn(a0.shape, generator=generator).to(dev)
        instructions = drop_instructions(batch["instruction"], cfg.p_drop_text if self.training else 0.0, generator)
        x_in = noisy_input(rgb, state, t, eps)
        tt = t.view(-1, 1, 1)
        a_in = torch.cat([a0[:, :1], (1 - tt) * a0[:, 1:] + tt * eps_a[:, 1:]], dim=1)
        text, text_mask = self.text_encoder(list(instructions))
        rgb_hat, a_hat = self.denoise(x_in, a_in, t, state, plucker, current, text, text_mask)
        loss_rgb = (rgb_hat[:, :, 1:] - rgb[:, :, 1:]).square().mean()
        err = (a_hat[:, 1:] - a0[:, 1:]).square()                               # [B, H, A]
        loss_act = err.mean()
        r = 3 + cfg.rot_dim
        return {"loss": (loss_rgb + cfg.action_loss_weight * loss_act) / 2, "loss_rgb": loss_rgb.detach(),
                "loss_act": loss_act.detach(), "loss_pos": err[..., :3].mean().detach(),
                "loss_rot": err[..., 3:r].mean().detach(), "loss_grip": err[..., r:].mean().detach()}

    # ---- sampler -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: dict[str, Any], generator: torch.Generator | None = None, steps: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler integration from t = 1 (noise) to 0 of the video and the actions of the policy job ->
        (RGB [B, V, F, 3, R, R] in [-1, 1], frame 0 the input's; action numbers [B, 1 + H, A], grippers in [-1, 1]).
        Only frame 0 of ``batch["rgb"]`` and ``batch["poses"]`` is read."""
        cfg = self.config
        steps = int(steps or cfg.sampler_steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        dev = self.act_out.weight.device
        now = batch["rgb"][:, :, :1].to(dev).float()                             # [B, V, 1, 3, R, R]
        plucker = batch["plucker"].to(dev).float()
        current = batch["poses"][:, 0].to(dev).float()
        B, V = now.shape[:2]
        state = self.policy_state(B, V, dev)
        a_now = torch.zeros(B, 1, cfg.action_dim, device=dev)
        a_now[..., -1] = 2 * current[:, None, 7].clamp(0, 1) - 1
        noise = torch.randn((B, V, cfg.frames, *now.shape[3:]), generator=generator).to(dev)
        noise_a = torch.randn((B, cfg.horizon, cfg.action_dim), generator=generator).to(dev)
        x = torch.cat([now, noise[:, :, 1:]], dim=2)
        a = torch.cat([a_now, noise_a], dim=1)
        text, text_mask = self.text_encoder(list(batch["instruction"]))
        ts = time_grid(steps)
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            tb = torch.full((B,), t_cur, device=dev)
            rgb_hat, a_hat = self.denoise(x, a, tb, state, plucker, current, text, text_mask)
            x = x + (t_next - t_cur) * self.velocity(rgb_hat, x, tb)
            a = a + (t_next - t_cur) * self.velocity(a_hat, a, tb)
            x, a = torch.cat([now, x[:, :, 1:]], dim=2), torch.cat([a_now, a[:, 1:]], dim=1)   # given parts stay
        return x, a

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], generator: torch.Generator | None = None, steps: int | None = None
                ) -> torch.Tensor:
        """Absolute keyframe targets [B, H, 8] (float64, unit quaternions, gripper in [0, 1]) from one sample."""
        _, a = self.sample(batch, generator, steps)
        a = a[:, 1:]
        a = torch.cat([a[..., :-1], (a[..., -1:] + 1) / 2], dim=-1)
        return decode_chunk(batch["poses"][:, 0].double(), a, self.config)
