"""The world action model: one video model over multi-view RGB + action-image streams, four tasks by masking.

Packing. A sample holds V views x F frames (frame 0 = the current frame, then H future keyframes every ``stride``
control steps) of two streams, RGB and action images, both in [-1, 1]. They are concatenated per pixel into
``x0 [B, V, F, 6, H, W]`` (design §5) and patchified by the backbone, so tokens = V * F * (H/p) * (W/p).

Tasks = masks. Every (view, frame, stream) is GIVEN (clean input), GEN (noised, generated, scored) or ABSENT (zeros,
not scored). One noise level t per sample is shared by all generated parts (UVA-style masking, not UWM's
per-modality noise): simpler, and the state embedding tells the network which parts are clean.

    task         RGB now / future    action now / future
    policy       given / gen         given / gen        joint video + action from the current frame
    world_model  given / gen         given / given      action images -> video
    labeler      given / given       gen   / gen        video -> action images (the current pose is not needed)
    video        given / gen         absent / absent    video only

Flow matching: x_t = (1 - t) x0 + t eps. The network predicts the clean clip *relative to the current frame* of the
same view and stream (x0_hat = x0[frame 0] + out where frame 0 of that stream is given, else out): the zero output
is "nothing moves", the baseline every lesson in design §5 says to start from. Velocity for the ODE:
v_hat = (x_t - x0_hat) / max(t, t_eps). The loss (``loss_target``) is the clean-clip error |x0_hat - x0|^2 ("x0",
the default: every noise level weighted alike) or the velocity error against eps - x0 ("velocity", = the x0 error /
t^2, mostly spent on nearly clean inputs); it is over generated elements only, with the action
stream weighted ``action_loss_weight`` (x4), and within it the pixels of the target's Gaussian blobs weighted up to
``1 + act_peak_weight`` more (the blobs are ~6 % of an action image, yet they are all the decoder reads).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from action_images.models import build_backbone, preset as get_preset
from action_images.text import TextConfig, build_text_encoder, drop_instructions

GIVEN, GEN, ABSENT = 0, 1, 2
STREAMS = ("rgb", "act")
# task -> per stream (current frame state, future frames state)
TASKS: dict[str, dict[str, tuple[int, int]]] = {
    "policy": {"rgb": (GIVEN, GEN), "act": (GIVEN, GEN)},
    "world_model": {"rgb": (GIVEN, GEN), "act": (GIVEN, GIVEN)},
    "labeler": {"rgb": (GIVEN, GIVEN), "act": (GEN, GEN)},
    "video": {"rgb": (GIVEN, GEN), "act": (ABSENT, ABSENT)},
}
TASK_NAMES = tuple(TASKS)
FORMAT = "action-images-wam"
FORMAT_VERSION = 1
# config keys added after format v1 shipped -> the value that reproduces the older behaviour
ADDED_KEYS: dict[str, Any] = {"act_peak_weight": 0.0, "loss_target": "velocity", "camera_names": None,
                              "crop": "center"}
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class WAMConfig:
    preset: str = "cpu-small"
    backbone_kind: str = "dit"
    backbone: dict = field(default_factory=dict)   # DiTConfig fields
    text: dict = field(default_factory=dict)       # TextConfig fields
    image_size: int = 48
    num_views: int = 2
    horizon: int = 4                               # future keyframes H; F = 1 + H frames
    stride: int = 2                                # control steps between keyframes
    task_mix: dict = field(default_factory=lambda: {"policy": 0.85, "world_model": 0.05, "labeler": 0.05,
                                                    "video": 0.05})
    p_drop_text: float = 0.1
    action_loss_weight: float = 4.0
    t_eps: float = 0.05                            # clamp of t when converting x0_hat to velocity
    t_mean: float = 0.0                            # logit-normal training timesteps
    t_std: float = 1.0
    predict: str = "x_rel"                         # "x_rel" (clean clip relative to the current frame) or "x"
    act_peak_weight: float = 10.0                  # extra loss weight on action-image blob pixels (0: uniform)
    loss_target: str = "x0"                        # "x0": |x0_hat - x0|^2; "velocity": |v_hat - (eps - x0)|^2
    camera_names: list | None = None               # cameras trained on (None: any of the dataset's)
    crop: str = "center"                           # evaluation crop of each view before the resize ("center")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "WAMConfig":
        p = get_preset(name)
        bb = p["backbone"].to_dict()
        text = TextConfig(dim=bb["text_dim"], vocab_size=p.get("text_vocab", 4096)).to_dict()
        cfg = cls(preset=name, backbone_kind=p.get("kind", "dit"), backbone=bb, text=text, image_size=p["image_size"],
                  num_views=p["num_views"], horizon=p["horizon"], stride=p["stride"])
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg

    @property
    def frames(self) -> int:
        return 1 + self.horizon

    def tokens_per_sample(self, num_views: int | None = None) -> int:
        p = self.backbone["patch"]
        return (num_views or self.num_views) * self.frames * (self.image_size // p) ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WAMConfig":
        d = {**ADDED_KEYS, **d}   # checkpoints from before a key existed trained with its "off" value
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown or missing:
            raise ValueError(f"checkpoint config does not match this code: unknown keys {unknown}, missing keys "
                             f"{missing}. It was written by a different version of action-images; retrain or "
                             "convert it.")
        return cls(**d)


def task_state(tasks: Sequence[str], V: int, F: int) -> torch.Tensor:
    """Task names [B] -> per-stream states [B, V, F, 2] long (GIVEN / GEN / ABSENT)."""
    out = torch.empty(len(tasks), V, F, len(STREAMS), dtype=torch.long)
    for b, name in enumerate(tasks):
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; choose one of {TASK_NAMES}")
        for s, stream in enumerate(STREAMS):
            now, future = TASKS[name][stream]
            out[b, :, 0, s] = now
            out[b, :, 1:, s] = future
    return out


def _channel_state(state: torch.Tensor) -> torch.Tensor:
    """[B, V, F, 2] -> [B, V, F, 6, 1, 1] (each stream's state repeated over its 3 channels)."""
    return state.repeat_interleave(3, dim=-1)[..., None, None]


@dataclass
class Sample:
    """Sampler output; tensors in [-1, 1]. Given parts equal the inputs exactly; absent parts are 0."""
    rgb: torch.Tensor      # [B, V, F, 3, H, W]
    act: torch.Tensor      # [B, V, F, 3, H, W]
    state: torch.Tensor    # [B, V, F, 2]


class WorldActionModel(nn.Module):
    """Text encoder + video backbone + flow-matching loss and sampler over packed multi-view streams."""

    def __init__(self, config: WAMConfig, text_fn: Callable | None = None):
        super().__init__()
        if config.predict not in ("x_rel", "x"):
            raise ValueError(f"predict must be 'x_rel' or 'x'; got {config.predict!r}")
        if config.loss_target not in ("x0", "velocity"):
            raise ValueError(f"loss_target must be 'x0' or 'velocity'; got {config.loss_target!r}")
        unknown = set(config.task_mix) - set(TASKS)
        if unknown:
            raise ValueError(f"task_mix names unknown tasks {sorted(unknown)}; known: {TASK_NAMES}")
        self.config = config
        self.backbone = build_backbone(config.backbone_kind, config.backbone)
        self.text_encoder = build_text_encoder(TextConfig(**config.text), text_fn)

    # ---- core prediction ---------------------------------------------------------------------------------------------
    def encode_text(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder(list(instructions))                          # [B, L, Dt], [B, L]

    def predict_x0(self, x_in: torch.Tensor, t: torch.Tensor, state: torch.Tensor, plucker: torch.Tensor,
                   text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """x_in [B,V,F,6,H,W] (given parts clean, generated parts noisy, absent 0) -> x0_hat [B,V,F,6,H,W]."""
        out = self.backbone(x_in, t, state, plucker, text, text_mask)
        if self.config.predict == "x":
            return out
        ref = x_in[:, :, :1] * (_channel_state(state[:, :, :1]) == GIVEN)     # [B, V, 1, 6, H, W]
        return ref + out

    @staticmethod
    def noisy_input(x0: torch.Tensor, state: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The network input for clean streams ``x0 [B,V,F,6,H,W]``: given parts clean, generated parts at noise
        level ``t [B]`` (x_t = (1 - t) x0 + t eps), absent parts zero. ``state`` [B,V,F,2] from :func:`task_state`."""
        cs = _channel_state(state)
        tt = t.view(-1, 1, 1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        return torch.where(cs == GIVEN, x0, torch.where(cs == GEN, x_t, torch.zeros_like(x0)))

    def velocity(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x_t - x0_hat) / t.clamp_min(self.config.t_eps).view(-1, 1, 1, 1, 1, 1)

    def sample_tasks(self, B: int, generator: torch.Generator | None) -> list[str]:
        names = list(self.config.task_mix)
        probs = torch.tensor([float(self.config.task_mix[n]) for n in names])
        idx = torch.multinomial(probs / probs.sum(), B, replacement=True, generator=generator)
        return [names[i] for i in idx.tolist()]

    # ---- training loss (forward, so DDP syncs gradients) -------------------------------------------------------------
    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                tasks: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss on the generated parts. ``generator`` (CPU) makes every random draw reproducible."""
        cfg = self.config
        dev = self.backbone.x_in.weight.device
        rgb, act = batch["rgb"].to(dev), batch["act"].to(dev)                 # [B, V, F, 3, H, W] each
        plucker = batch["plucker"].to(dev)                                    # [B, V, 6, H, W]
        x0 = torch.cat([rgb, act], dim=3)                                     # [B, V, F, 6, H, W]
        B, V, Fr = x0.shape[:3]
        tasks = list(tasks) if tasks is not None else self.sample_tasks(B, generator)
        state = task_state(tasks, V, Fr).to(dev)                              # [B, V, F, 2]
        t = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(B, generator=generator)).to(dev)   # [B]
        eps = torch.randn(x0.shape, generator=generator).to(dev)
        instructions = drop_instructions(batch["instruction"], cfg.p_drop_text if self.training else 0.0, generator)

        cs = _channel_state(state)                                            # [B, V, F, 6, 1, 1]
        x_in = self.noisy_input(x0, state, t, eps)
        text, text_mask = self.encode_text(instructions)
        x0_hat = self.predict_x0(x_in, t, state, plucker, text, text_mask)
        if cfg.loss_target == "x0":
            err = (x0_hat - x0).square()                                      # [B, V, F, 6, H, W]
        else:   # = |x0_hat - x0|^2 / max(t, t_eps)^2: most of the weight on nearly clean inputs
            err = (self.velocity(x0_hat, x_in, t) - (eps - x0)).square()

        gen = (cs == GEN).float()
        w = torch.tensor([1.0] * 3 + [cfg.action_loss_weight] * 3, device=dev).view(1, 1, 1, 6, 1, 1)
        if cfg.act_peak_weight:
            heat = (act + 1.0) / 2.0                                          # [B, V, F, 3, H, W] in [0, 1]
            blob = ((heat - 0.25) / 0.75).clamp(0.0, 1.0).amax(dim=3, keepdim=True)   # [B, V, F, 1, H, W]
            w_act = (1.0 + cfg.act_peak_weight * blob).expand(-1, -1, -1, 3, -1, -1)
            w = w * torch.cat([torch.ones_like(w_act), w_act], dim=3)         # [B, V, F, 6, H, W]
        hw = x0.shape[-1] * x0.shape[-2]
        n_gen = (gen.sum() * hw).clamp_min(1.0)
        loss = (err * gen * w).sum() / n_gen
        with torch.no_grad():
            n_rgb = (gen[:, :, :, :3].sum() * hw).clamp_min(1.0)
            n_act = (gen[:, :, :, 3:].sum() * hw).clamp_min(1.0)
            x0_err = (x0_hat - x0).square()
            out = {"loss": loss,
                   "loss_rgb": (err[:, :, :, :3] * gen[:, :, :, :3]).sum() / n_rgb,
                   "loss_act": (err[:, :, :, 3:] * gen[:, :, :, 3:]).sum() / n_act,
                   "x0_mse_rgb": (x0_err[:, :, :, :3] * gen[:, :, :, :3]).sum() / n_rgb,
                   "x0_mse_act": (x0_err[:, :, :, 3:] * gen[:, :, :, 3:]).sum() / n_act}
        return out

    # ---- sampler -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: dict[str, Any], task: str = "policy", steps: int = 10, method: str = "euler",
               cfg_scale: float = 1.0, generator: torch.Generator | None = None, shift: float = 1.0) -> Sample:
        """Integrate the flow ODE from t=1 (noise) to t=0 for the generated parts of ``task``.

        ``batch``: rgb/act [B, V, F, 3, H, W] in [-1, 1] (only the parts the task gives are read; the rest may be
        anything, e.g. zeros), plucker [B, V, 6, H, W], instruction list[str]. ``cfg_scale`` s mixes
        ``uncond + s (cond - uncond)`` against the empty instruction (s = 1: no guidance, one pass per step).
        ``shift`` > 1 spends more steps at high noise (t' = s t / (1 + (s - 1) t)).
        """
        if method not in ("euler", "heun"):
            raise ValueError(f"method must be 'euler' or 'heun'; got {method!r}")
        if steps < 1:
            raise ValueError("steps must be >= 1")
        dev = self.backbone.x_in.weight.device
        x_given = torch.cat([batch["rgb"], batch["act"]], dim=3).to(dev).float()   # [B, V, F, 6, H, W]
        plucker = batch["plucker"].to(dev).float()
        B, V, Fr = x_given.shape[:3]
        state = task_state([task] * B, V, Fr).to(dev)
        cs = _channel_state(state)
        given, gen = cs == GIVEN, cs == GEN
        instructions = list(batch["instruction"])
        guided = cfg_scale != 1.0
        text, text_mask = self.encode_text(instructions + [""] * B if guided else instructions)
        if guided:
            plucker2, state2 = torch.cat([plucker, plucker]), torch.cat([state, state])

        def v_at(x: torch.Tensor, t: float) -> torch.Tensor:
            tb = torch.full((B,), t, device=dev)
            if guided:
                x0 = self.predict_x0(torch.cat([x, x]), torch.cat([tb, tb]), state2, plucker2, text, text_mask)
                x0_c, x0_u = x0.chunk(2)
                x0_hat = x0_u + cfg_scale * (x0_c - x0_u)
            else:
                x0_hat = self.predict_x0(x, tb, state, plucker, text, text_mask)
            return self.velocity(x0_hat, x, tb)

        def clamp_given(x: torch.Tensor) -> torch.Tensor:
            return torch.where(given, x_given, torch.where(gen, x, torch.zeros_like(x)))

        noise = torch.randn(x_given.shape, generator=generator).to(dev)
        x = clamp_given(noise)
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        ts = (shift * ts / (1 + (shift - 1) * ts)).tolist()
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            v = v_at(x, t_cur)
            x_next = clamp_given(x + (t_next - t_cur) * v)
            if method == "heun" and t_next > 0:
                v2 = v_at(x_next, t_next)
                x_next = clamp_given(x + (t_next - t_cur) * 0.5 * (v + v2))
            x = x_next
        x = clamp_given(x)
        return Sample(rgb=x[:, :, :, :3], act=x[:, :, :, 3:], state=state)

    # ---- weights -----------------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write ``model.safetensors`` + ``config.json`` into ``path`` (optionally other weights, e.g. the EMA)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path / WEIGHTS_NAME))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config.to_dict()}
        (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, text_fn: Callable | None = None,
                        map_location: str = "cpu") -> "WorldActionModel":
        """Load a model written by :meth:`save_pretrained` (safetensors only; never pickle).

        Refuses, with the reason, a checkpoint whose format version, config keys or weight names/shapes differ from
        what this code builds.
        """
        path = Path(path)
        if not (path / CONFIG_NAME).exists() or not (path / WEIGHTS_NAME).exists():
            raise FileNotFoundError(f"{path} does not hold {CONFIG_NAME} and {WEIGHTS_NAME}")
        meta = json.loads((path / CONFIG_NAME).read_text())
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')} is not "
                             f"{FORMAT!r} v{FORMAT_VERSION}")
        config = WAMConfig.from_dict(meta["config"])
        if config.backbone.get("pretrained"):   # the weights below replace it: never re-read the original folder
            config.backbone = {**config.backbone, "pretrained": None}
        model = cls(config, text_fn=text_fn)
        sd = load_file(str(path / WEIGHTS_NAME), device=map_location)
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        shapes = [f"{k}: file {tuple(sd[k].shape)} vs code {tuple(own[k].shape)}"
                  for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"{path}: weights do not match config.json / this code: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
        model.load_state_dict(sd)
        return model.to(map_location)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
