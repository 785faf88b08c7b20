"""Closed-loop policy for models that predict poses directly (``bc``, ``dp``): observe -> predict -> interpolate.

It is :class:`~action_images.policy.ActionImagesPolicy` with the generate-and-decode step replaced by
``model.predict``: the same view preparation (the training-window code path), the same current pose, the same
keyframe interpolation (``interpolate_chunk``) and ``execute_k``, the same :class:`~action_images.policy.Chunk`
records, so ``action-images eval`` reports the baselines exactly like the world action model.

There is no view disagreement to act on: every finite keyframe is valid and the decision is "execute" (a non-finite
prediction holds the current pose, "hold_invalid"). For the rollout videos, ``future_act`` holds the action images of
the predicted keyframes drawn in the model's cameras and ``future_rgb`` the current frame (nothing is generated).

    model = action_images.baselines.load_model("runs/bc")
    policy = BaselinePolicy(model, PolicySettings(execute_k=4))
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from action_images.geometry import Camera
from action_images.policy import ActionImagesPolicy, Chunk, check_int, interpolate_chunk


class BaselinePolicy(ActionImagesPolicy):
    """Closed loop around a model with ``predict(batch, generator, steps) -> poses [B, H, 8]``; ``settings`` as for
    :class:`ActionImagesPolicy` (``sampler_steps`` is the diffusion policy's step count; ``cfg_scale``, ``method``,
    ``on_disagree``, ``disagree_px`` and ``max_resamples`` do not apply; ``decode_head``, ``ensemble`` > 1,
    ``zoom`` > 1, ``noise`` "episode" and ``position`` "point" are refused; ``orientation`` "topdown" replaces each
    predicted rotation by the nearest top-down one, as the world action model's decoding does)."""

    def __init__(self, model: Any, settings: Any = None, **kwargs: Any):
        if getattr(settings, "decode_head", None) is not None:
            raise ValueError("--decode-head decodes generated action images; this checkpoint predicts poses")
        if getattr(settings, "ensemble", 1) != 1:
            raise ValueError("--ensemble averages generated action images; this checkpoint predicts poses")
        if getattr(settings, "noise", "fresh") != "fresh":
            raise ValueError("--noise episode fixes the world action model's starting noise; this checkpoint predicts "
                             "poses")
        if getattr(settings, "position", "fit") != "fit":
            raise ValueError("--position point reads a triangulated point of generated action images; this "
                             "checkpoint predicts poses")
        if getattr(settings, "zoom", 1.0) != 1.0:
            raise ValueError("--zoom adds virtual views for a model that plans on any number of views; this "
                             "checkpoint predicts poses")
        super().__init__(model, settings, **kwargs)
        check_int("horizon", self.horizon, 1, int(model.config.horizon))    # the model predicts a fixed chunk

    def plan(self, obs: dict[str, Any], cameras: Sequence[Camera]) -> Chunk:
        t0 = time.perf_counter()
        batch, cams, names = self.build_batch(obs, cameras)
        current = self.current_pose(obs)
        t1 = time.perf_counter()
        poses = self.model.predict(batch, generator=self.generator, steps=self.steps)[0, :self.horizon]
        poses = poses.double().cpu().numpy()
        valid = np.isfinite(poses).all(axis=1)
        if self.orientation == "topdown" and valid.any():
            poses[valid] = self.codec.to_topdown(poses[valid])
        t2 = time.perf_counter()
        if valid.any():
            decision = "execute"
            actions = interpolate_chunk(current, poses, valid, self.stride, self.gripper)[:self.execute_k]
        else:
            decision, actions = "hold_invalid", np.repeat(current[None], self.execute_k, axis=0)
        if not np.isfinite(actions).all():                                     # never send NaN to the robot
            decision, actions = "hold_invalid", np.repeat(current[None], max(1, len(actions)), axis=0)
        t3 = time.perf_counter()
        timings = {"observe": t1 - t0, "generate": t2 - t1, "decode": 0.0, "chunk": t3 - t2, "total": t3 - t0}
        # for the videos only (after the timed part): the predicted keyframes drawn as action images
        input_rgb = ((batch["rgb"][0, :, 0].permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        input_rgb = input_rgb.numpy()
        H = len(poses)
        shown = np.where(valid[:, None], poses, current[None])
        future_act = self.codec.encode(shown, cams).astype(np.float32)         # [V, H, R, R, 3]
        chunk = Chunk(actions=actions, keyframes=np.where(valid[:, None], poses, np.nan), valid=valid,
                      disagree=np.zeros(H, dtype=bool), reproj_error=np.zeros((H, 3)), decision=decision,
                      current=current, future_rgb=np.repeat(input_rgb[:, None], H, axis=1), future_act=future_act,
                      input_rgb=input_rgb, cameras=cams, view_names=names, samples=1, timings=timings)
        self.last_chunk = chunk
        self.chunks.append(chunk)
        return chunk


def make_policy(model: Any, settings: Any = None, **kwargs: Any) -> ActionImagesPolicy:
    """The closed-loop policy for ``model``: :class:`BaselinePolicy` when it predicts poses, else
    :class:`ActionImagesPolicy` (the world action model)."""
    cls = BaselinePolicy if callable(getattr(model, "predict", None)) else ActionImagesPolicy
    return cls(model, settings, **kwargs)
