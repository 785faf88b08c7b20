"""The world action model: one video model over multi-view RGB + action-image streams, four tasks by masking.

Packing. A sample holds V views x F frames (frame 0 = the current frame, then H future keyframes every ``stride``
control steps) of two streams, RGB and action images, both in [-1, 1]. They are concatenated per pixel into
``x0 [B, V, F, 6, H, W]`` (one token carries both streams of a patch) and patchified by the backbone, so tokens = V * F * (H/p) * (W/p).

The four jobs (policy, world model, labeler, video) are masks over the streams, and the diffusion math -- noising,
loss, ODE sampler -- lives in :mod:`action_images.flow`. This module composes the text encoder and the backbone,
and reads and writes checkpoints.

The network predicts the clean clip *relative to the current frame* of the same view and stream (x0_hat = x0[frame
0] + out where frame 0 of that stream is given, else out): the zero output is "nothing moves", the baseline a small
model must first beat. The loss (``loss_target``) is the clean-clip error ("x0", the default) or the velocity error
("velocity"), over generated elements only, with the action stream weighted ``action_loss_weight`` (x4) and its
blob pixels weighted up to ``1 + act_peak_weight`` more.

Checkpoint: ``config.json`` (format, version, :class:`WAMConfig`) + ``model.safetensors``. Loading checks the config
against the weights file's header (names and shapes, read without loading a tensor) before building anything, so a
hostile or damaged config cannot allocate more than the weights it names.
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
from action_images.codec import ActionImageCodec
from action_images.runfiles import atomic_write_json, loads
from action_images.text import TextConfig, build_text_encoder, drop_instructions

from action_images.flow import (ABSENT, GEN, GIVEN, STREAMS, TASK_NAMES, TASKS, channel_state, integrate,
                                masked_loss, noisy_input, sample_t, task_state, velocity)

# the job masks and states are defined in flow.py; re-exported here for callers that import them with the model
__all__ = ["WAMConfig", "WorldActionModel", "Sample", "CheckpointError", "read_config", "weights_header",
           "GIVEN", "GEN", "ABSENT", "STREAMS", "TASKS", "TASK_NAMES", "task_state", "channel_state"]
FORMAT = "action-images-wam"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)                     # v1: no camera_names / crop in the config
MAX_HISTORY = 4                                # past frames a model may read (WAMConfig.history)
# config keys added after format v1 shipped -> the value that reproduces the older behaviour
ADDED_KEYS: dict[str, Any] = {"act_peak_weight": 0.0, "loss_target": "velocity", "camera_names": None,
                              "crop": "center", "workspace": None, "latent": None, "act_keypoint_weight": 0.0,
                              "history": 0, "history_gap": 4}
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
    act_keypoint_weight: float = 0.0               # loss weight of the blob centroids' error in σ² (flow.keypoint_loss)
    camera_names: list | None = None               # cameras trained on (None: any of the dataset's)
    crop: str = "center"                           # crop of each view before the resize: "center" or "workspace"
    workspace: list | None = None                  # [[x, y, z] low, [x, y, z] high] world box of crop="workspace"
    latent: dict | None = None                     # Wan VAE latent space (models/latent.py); None = pixel space
    history: int = 0                               # past frames the context encoder reads beside the current one
    history_gap: int = 4                           # control steps between the current frame and each past one

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "WAMConfig":
        p = get_preset(name)
        bb = p["backbone"].to_dict()
        text = TextConfig(dim=bb["text_dim"], vocab_size=p.get("text_vocab", 4096)).to_dict()
        cfg = cls(preset=name, backbone_kind=p.get("kind", "dit"), backbone=bb, text=text, image_size=p["image_size"],
                  num_views=p["num_views"], horizon=p["horizon"], stride=p["stride"])
        if p.get("latent") is not None:    # the blob weight is defined on action-image pixels, not on latents
            cfg.latent, cfg.act_peak_weight = dict(p["latent"]), 0.0
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        return cfg

    @property
    def frames(self) -> int:
        return 1 + self.horizon

    def tokens_per_sample(self, num_views: int | None = None) -> int:
        p = self.backbone["patch"]
        if self.latent:
            from action_images.models.latent import factors, latent_frames
            side = self.image_size // factors(self.latent["vae"])[0] // p
            return (num_views or self.num_views) * latent_frames(self.frames) * side ** 2
        return (num_views or self.num_views) * self.frames * (self.image_size // p) ** 2

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["latent"] is None:   # pixel-space configs read and compare as before the field existed
            d.pop("latent")
        if not d["history"]:      # likewise, configs without past frames
            d.pop("history")
            d.pop("history_gap")
        for key in ("stem_channels", "context_channels", "context_history"):   # likewise, for configs from before them
            if self.backbone_kind == "dit" and not d["backbone"].get(key, 1):
                d["backbone"] = {k: v for k, v in d["backbone"].items() if k != key}
        return d

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

    def validate(self) -> None:
        """Types and ranges of every field (a config read from a file is checked before a model is built)."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)
        num = (int, float)
        for k in ("image_size", "num_views", "horizon", "stride", "history_gap"):
            v = getattr(self, k)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{k} must be an integer >= 1; got {v!r}")
        h = self.history
        need(isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= MAX_HISTORY,
             f"history must be an integer in [0, {MAX_HISTORY}]; got {h!r}")
        need(not h or (self.backbone_kind == "dit" and self.latent is None
                       and int(self.backbone.get("context_channels", 0) or 0) > 0),
             "history (--history) needs the DiT's context encoder (--context-channels > 0, pixel space): the past "
             "frames are read by it")
        need(not self.backbone.get("context_history"),
             "backbone.context_history is set from history (--history); leave it out of the backbone")
        need(8 <= self.image_size <= 4096, f"image_size must be in [8, 4096]; got {self.image_size}")
        for k in ("p_drop_text", "action_loss_weight", "t_eps", "t_mean", "t_std", "act_peak_weight",
                  "act_keypoint_weight"):
            v = getattr(self, k)
            need(isinstance(v, num) and not isinstance(v, bool) and v == v and abs(v) != float("inf"),
                 f"{k} must be a finite number; got {v!r}")
        need(self.act_keypoint_weight >= 0, f"act_keypoint_weight must be >= 0; got {self.act_keypoint_weight!r}")
        need(isinstance(self.backbone, dict) and isinstance(self.text, dict), "backbone and text must be objects")
        need(self.predict in ("x_rel", "x"), f"predict must be 'x_rel' or 'x'; got {self.predict!r}")
        need(self.loss_target in ("x0", "velocity"), f"loss_target must be 'x0' or 'velocity'; got {self.loss_target!r}")
        need(self.crop in ("center", "workspace"), f"crop must be 'center' or 'workspace'; got {self.crop!r}")
        ws = self.workspace
        need(ws is None or (isinstance(ws, list) and len(ws) == 2 and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(x, num) and not isinstance(x, bool)
                                                        and abs(x) < float("inf") for x in c) for c in ws)
            and all(lo < hi for lo, hi in zip(*ws))), f"workspace must be [[x, y, z] low, [x, y, z] high]; got {ws!r}")
        need(self.crop != "workspace" or ws is not None, "crop 'workspace' needs a workspace box")
        need(isinstance(self.task_mix, dict) and set(self.task_mix) <= set(TASK_NAMES) and bool(self.task_mix)
             and all(isinstance(v, num) and not isinstance(v, bool) and 0 <= v < float("inf")
                     for v in self.task_mix.values()) and sum(self.task_mix.values()) > 0,
             f"task_mix must map jobs {TASK_NAMES} to finite weights >= 0, not all 0; got {self.task_mix!r}")
        need(self.camera_names is None or (isinstance(self.camera_names, list) and len(self.camera_names) >= 1
                                           and all(isinstance(c, str) and c for c in self.camera_names)),
             f"camera_names must be null or a list of names; got {self.camera_names!r}")
        if self.latent is not None:
            from action_images.models.latent import check
            need(isinstance(self.latent, dict), f"latent must be null or an object; got {self.latent!r}")
            need(self.backbone_kind == "wan", "latent space needs the wan backbone")
            need(self.act_peak_weight == 0 and self.act_keypoint_weight == 0,
                 "act_peak_weight and act_keypoint_weight must be 0 in latent space (both are defined on action-image "
                 "pixels)")
            check(self.latent, self.image_size, self.horizon, self.backbone["patch"])


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
        backbone = config.backbone
        if config.history:                             # the context encoder reads the past frames (WAMConfig.history)
            backbone = {**backbone, "context_history": int(config.history)}
        self.backbone = build_backbone(config.backbone_kind, backbone)
        self.text_encoder = build_text_encoder(TextConfig(**config.text), text_fn)
        if config.latent is not None:
            from action_images.models.latent import FrozenVAE, check
            check(config.latent, config.image_size, config.horizon, config.backbone["patch"])
            self.vae = FrozenVAE(config.latent)

    # ---- core prediction ---------------------------------------------------------------------------------------------
    def encode_text(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder(list(instructions))                          # [B, L, Dt], [B, L]

    def predict_x0(self, x_in: torch.Tensor, t: torch.Tensor, state: torch.Tensor, plucker: torch.Tensor,
                   text: torch.Tensor, text_mask: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """x_in [B,V,F,6,H,W] (given parts clean, generated parts noisy, absent 0) -> x0_hat [B,V,F,6,H,W].
        In latent space these are folded latents (models/latent.py) and ``plucker`` is at the latent resolution.
        ``history`` [B,V,P,6,H,W] (``config.history`` = P > 0): the past frames, each stream given where the job
        gives it at frame 0 (a job that generates the current action does not see past ones)."""
        if self.config.latent is not None:
            from action_images.models.latent import fold, unfold
            h = plucker.shape[-2]
            out = fold(self.backbone(unfold(x_in, h), t, state, plucker, text, text_mask))
        elif self.config.history:
            if history is None:
                raise ValueError(f"this model reads {self.config.history} past frame(s) per view: the batch needs "
                                 "'history' [B, V, P, 6, H, W]")
            history = history.to(x_in) * (channel_state(state[:, :, :1]) == GIVEN)
            out = self.backbone(x_in, t, state, plucker, text, text_mask, history=history)
        else:
            out = self.backbone(x_in, t, state, plucker, text, text_mask)
        if self.config.predict == "x":
            return out
        ref = x_in[:, :, :1] * (channel_state(state[:, :, :1]) == GIVEN)      # [B, V, 1, 6, H, W]
        return ref + out

    noisy_input = staticmethod(noisy_input)

    # ---- latent space (models/latent.py) -----------------------------------------------------------------------------
    def to_latent(self, batch: dict[str, Any], streams: Sequence[bool] = (True, True)
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels -> (folded latents [B, V, F', 6, Z/3*h, w], Plücker at the latent resolution [B, V, 6, h, w]).
        ``streams``: which of (rgb, act) to encode; the others are zeros."""
        from action_images.models.latent import fold, latent_frames, latent_plucker
        dev = self.backbone.x_in.weight.device
        rgb = batch["rgb"]
        B, V, Fr, _, H, W = rgb.shape
        s = self.vae.spatial
        h, w, Fl, Z = H // s, W // s, latent_frames(Fr), self.vae.z_dim
        parts = [self.vae.encode(batch[k].to(dev).float()) if on else torch.zeros(B, V, Fl, Z, h, w, device=dev)
                 for k, on in zip(("rgb", "act"), streams)]
        if "plucker_latent" in batch:
            plucker = batch["plucker_latent"].to(dev).float()
        else:
            plucker = latent_plucker(batch["K"], batch["T_cam_world"], (H, W), (h, w)).to(dev)
        return fold(torch.cat(parts, dim=3)), plucker

    def velocity(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return velocity(x0_hat, x_t, t, self.config.t_eps)

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
        if cfg.latent is not None:                                            # folded VAE latents, latent rays
            x0, plucker = self.to_latent(batch)
        else:
            rgb, act = batch["rgb"].to(dev), batch["act"].to(dev)             # [B, V, F, 3, H, W] each
            plucker = batch["plucker"].to(dev)                                # [B, V, 6, H, W]
            x0 = torch.cat([rgb, act], dim=3)                                 # [B, V, F, 6, H, W]
        B, V, Fr = x0.shape[:3]
        tasks = list(tasks) if tasks is not None else self.sample_tasks(B, generator)
        state = task_state(tasks, V, Fr).to(dev)                              # [B, V, F, 2]
        t = sample_t(B, cfg.t_mean, cfg.t_std, generator).to(dev)             # [B]
        eps = torch.randn(x0.shape, generator=generator).to(dev)
        instructions = drop_instructions(batch["instruction"], cfg.p_drop_text if self.training else 0.0, generator)
        x_in = noisy_input(x0, state, t, eps)
        if "act_in0" in batch:       # training windows whose drawn current pose is moved (WindowConfig.current_noise)
            if cfg.latent is not None:
                raise ValueError("act_in0 (data.current_noise) draws pixel action images; a latent model has none")
            given = channel_state(state[:, :, :1])[:, :, 0, 3:] == GIVEN                # [B, V, 3, 1, 1]
            x_in = x_in.clone()
            x_in[:, :, 0, 3:] = torch.where(given, batch["act_in0"].to(x_in), x_in[:, :, 0, 3:])
        text, text_mask = self.encode_text(instructions)
        x0_hat = self.predict_x0(x_in, t, state, plucker, text, text_mask, history=batch.get("history"))
        return masked_loss(x0_hat, x0, x_in, eps, t, state, target=cfg.loss_target, t_eps=cfg.t_eps,
                           action_weight=cfg.action_loss_weight, peak_weight=cfg.act_peak_weight,
                           keypoint_weight=cfg.act_keypoint_weight if cfg.latent is None else None,
                           sigma_px=ActionImageCodec().sigma(*x0.shape[-2:]))

    # ---- sampler -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: dict[str, Any], task: str = "policy", steps: int = 10, method: str = "euler",
               cfg_scale: float = 1.0, generator: torch.Generator | None = None, shift: float = 1.0,
               noise: torch.Tensor | None = None) -> Sample:
        """Integrate the flow ODE from t=1 (noise) to t=0 for the generated parts of ``task``.

        ``batch``: rgb/act [B, V, F, 3, H, W] in [-1, 1] (only the parts the task gives are read; the rest may be
        anything, e.g. zeros), plucker [B, V, 6, H, W], instruction list[str]. ``cfg_scale`` s mixes
        ``uncond + s (cond - uncond)`` against the empty instruction (s = 1: no guidance, one pass per step; s = 0: the
        empty instruction alone, one pass per step).
        ``shift`` > 1 spends more steps at high noise (t' = s t / (1 + (s - 1) t)). ``noise`` [B, V, F, 6, H, W]: the
        starting noise (default: drawn from ``generator``), so a caller can make each sample independent of the batch.
        """
        dev = self.backbone.x_in.weight.device
        if self.config.latent is not None:
            return self._sample_latent(batch, task, steps, method, cfg_scale, generator, shift, noise)
        x_given = torch.cat([batch["rgb"], batch["act"]], dim=3).to(dev).float()   # [B, V, F, 6, H, W]
        plucker = batch["plucker"].to(dev).float()
        B, V, Fr = x_given.shape[:3]
        state = task_state([task] * B, V, Fr).to(dev)
        x = self._integrate(x_given, plucker, state, batch, steps, method, cfg_scale, generator, shift, noise)
        return Sample(rgb=x[:, :, :, :3], act=x[:, :, :, 3:], state=state)

    def _sample_latent(self, batch: dict[str, Any], task: str, steps: int, method: str, cfg_scale: float,
                       generator: torch.Generator | None, shift: float, noise: torch.Tensor | None) -> Sample:
        """The sampler in latent space: encode the streams the job gives, integrate on latents, decode to pixels.
        The given pixels are then put back exactly (a VAE round trip is not the identity) and absent parts are 0,
        so the result keeps :meth:`sample`'s contract. ``noise`` is in the folded latent layout."""
        dev = self.backbone.x_in.weight.device
        B, V, Fr = batch["rgb"].shape[:3]
        pixel_state = task_state([task] * B, V, Fr).to(dev)                   # [B, V, F, 2]
        given = [bool((pixel_state[..., s] == GIVEN).any()) for s in range(len(STREAMS))]
        x_given, plucker = self.to_latent(batch, streams=given)               # [B, V, F', 6, Z/3*h, w]
        state = task_state([task] * B, V, x_given.shape[2]).to(dev)
        z = self._integrate(x_given, plucker, state, batch, steps, method, cfg_scale, generator, shift, noise)
        from action_images.models.latent import unfold
        z = unfold(z, plucker.shape[-2])                                      # [B, V, F', 2Z, h, w]
        Z = self.vae.z_dim
        out = []
        for s, key in enumerate(("rgb", "act")):
            px = self.vae.decode(z[:, :, :, s * Z:(s + 1) * Z])              # [B, V, F, 3, H, W]
            st = pixel_state[..., s][..., None, None, None]
            out.append(torch.where(st == GIVEN, batch[key].to(dev).float(),
                                   torch.where(st == GEN, px, torch.zeros_like(px))))
        return Sample(rgb=out[0], act=out[1], state=pixel_state)

    def _integrate(self, x_given: torch.Tensor, plucker: torch.Tensor, state: torch.Tensor, batch: dict[str, Any],
                   steps: int, method: str, cfg_scale: float, generator: torch.Generator | None, shift: float,
                   noise: torch.Tensor | None) -> torch.Tensor:
        dev = x_given.device
        B = x_given.shape[0]
        instructions = list(batch["instruction"])
        if cfg_scale == 0.0:                 # uncond + 0 * (cond - uncond): the empty instruction alone, one pass
            instructions = [""] * B
        guided = cfg_scale not in (0.0, 1.0)
        text, text_mask = self.encode_text(instructions + [""] * B if guided else instructions)
        history = batch.get("history") if self.config.history else None
        if history is not None:
            history = history.to(dev).float()
        history2 = None
        if guided:
            plucker2, state2 = torch.cat([plucker, plucker]), torch.cat([state, state])
            history2 = None if history is None else torch.cat([history, history])

        def v_at(x: torch.Tensor, t: float) -> torch.Tensor:
            tb = torch.full((B,), t, device=dev)
            if guided:
                x0 = self.predict_x0(torch.cat([x, x]), torch.cat([tb, tb]), state2, plucker2, text, text_mask,
                                     history=history2)
                x0_c, x0_u = x0.chunk(2)
                x0_hat = x0_u + cfg_scale * (x0_c - x0_u)
            else:
                x0_hat = self.predict_x0(x, tb, state, plucker, text, text_mask, history=history)
            return self.velocity(x0_hat, x, tb)

        if noise is None:
            noise = torch.randn(x_given.shape, generator=generator)
        elif tuple(noise.shape) != tuple(x_given.shape):
            raise ValueError(f"noise must have shape {tuple(x_given.shape)}; got {tuple(noise.shape)}")
        noise = noise.to(dev).float()
        return integrate(v_at, x_given, state, noise, steps, method, shift)

    # ---- weights -----------------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write ``model.safetensors`` + ``config.json`` into ``path`` (optionally other weights, e.g. the EMA)."""
        write_checkpoint(path, state_dict if state_dict is not None else self.state_dict(),
                         {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config.to_dict()})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, text_fn: Callable | None = None,
                        map_location: str = "cpu", text_encoder: str | os.PathLike | None = None
                        ) -> "WorldActionModel":
        """Load a model written by :meth:`save_pretrained` (safetensors only; never pickle).

        ``text_encoder``: the local UMT5 folder of a model trained with ``--text-encoder`` when it is not where the
        checkpoint says (the encoder's weights are never part of the checkpoint).

        Refuses, naming the file, a checkpoint whose config is not valid JSON or does not match this code, or whose
        weights file is damaged or holds other names/shapes than the config builds -- all checked before any weight
        is allocated (the model is first built on the ``meta`` device).
        """
        path = Path(path)
        config = read_config(path)
        if text_encoder is not None:
            if config.text.get("kind") != "umt5":
                raise CheckpointError(f"{path}: text_encoder= applies to models trained with a UMT5 text encoder")
            config.text = {**config.text, "path": str(text_encoder)}
        return load_checked(path, lambda: cls(config, text_fn=text_fn), map_location)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


def write_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """``model.safetensors`` + ``config.json`` (``meta``) into ``path``: non-finite weights are refused, and the
    weights are written to a temp file and renamed, so a crash never leaves torn weights beside a config."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for k, v in state_dict.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"refusing to save non-finite weights ({k}) to {path}")
    tmp = path / f".{WEIGHTS_NAME}.partial"
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, path / WEIGHTS_NAME)
    atomic_write_json(path / CONFIG_NAME, meta)


def load_checked(path: Path, build: Callable[[], nn.Module], map_location: str = "cpu") -> Any:
    """The model ``build()`` makes, with the weights of ``path``: the names and shapes in the weights file's header are
    checked against a ``meta``-device build first, so a config cannot make the loader allocate beyond the file."""
    header = weights_header(path / WEIGHTS_NAME)
    with torch.device("meta"):
        try:
            skeleton = build()
        except (TypeError, ValueError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"{path / CONFIG_NAME}: the config does not build a model ({e})") from None
    own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    del skeleton
    missing, unexpected = sorted(set(own) - set(header)), sorted(set(header) - set(own))
    shapes = [f"{k}: file {header[k]} vs config {own[k]}" for k in sorted(set(header) & set(own))
              if header[k] != own[k]]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path / WEIGHTS_NAME}: weights do not match {CONFIG_NAME}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model = build()
    try:
        sd = load_file(str(path / WEIGHTS_NAME), device=map_location)
    except Exception as e:   # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path / WEIGHTS_NAME}: cannot read the weights ({e})") from None
    model.load_state_dict(sd)
    return model.to(map_location)


def weights_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header only (no tensor is read)."""
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:   # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def read_meta(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(file, contents) of a checkpoint folder's ``config.json``: strict JSON, an object with a ``config`` object;
    anything else is a :class:`CheckpointError` naming the file. Every model kind reads its config through this."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{path} does not hold {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = loads(file.read_text())
    except ValueError as e:             # not JSON, not text, or NaN / Infinity (not strict JSON)
        raise CheckpointError(f"{file}: not JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{file}: expected an object with a 'config' object")
    return file, meta


def read_config(path: Path) -> WAMConfig:
    """The :class:`WAMConfig` of a checkpoint folder, migrated from older format versions; errors name the file.

    Version 1 configs do not name their cameras: the cameras come from the run's ``train_config.json`` or
    ``train_args.json`` beside them when present (``None`` otherwise)."""
    file, meta = read_meta(path)
    if meta.get("format") != FORMAT or meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{file}: format {meta.get('format')!r} v{meta.get('format_version')} is not "
                              f"{FORMAT!r} v{'/'.join(map(str, READABLE_VERSIONS))}")
    d = dict(meta["config"])
    if meta["format_version"] == 1 and "camera_names" not in d:
        d["camera_names"] = _cameras_from_run_args(path)
    try:
        config = WAMConfig.from_dict(d)
        config.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from None
    if config.backbone.get("pretrained"):   # the weights replace it: never re-read the original folder
        config.backbone = {**config.backbone, "pretrained": None}
    if config.latent and config.latent.get("pretrained"):                   # the VAE's weights are in the file too
        config.latent = {**config.latent, "pretrained": None}
    return config


def _cameras_from_run_args(path: Path) -> list[str] | None:
    for name, keys in (("train_config.json", ("data", "cameras")), ("train_args.json", ("camera_names",))):
        try:
            d = json.loads((path / name).read_text())
            for k in keys:
                d = d[k]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        names = d.split(",") if isinstance(d, str) else d
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return names
    return None
