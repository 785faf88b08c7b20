"""Flow matching over packed multi-view streams: the job masks, the noising, the loss and the ODE sampler.

This module holds the diffusion math, apart from the network (``models/``) and the checkpoint (``wam.py``).

Jobs are masks. Every (view, frame, stream) is GIVEN (clean input), GEN (noised, generated, scored) or ABSENT (zeros,
not scored). One noise level t per sample is shared by all generated parts (UVA-style masking, not UWM's
per-modality noise): simpler, and the state embedding tells the network which parts are clean.

    job          RGB now / future    action now / future
    policy       given / gen         given / gen        joint video + action from the current frame
    world_model  given / gen         given / given      action images -> video
    labeler      given / given       gen   / gen        video -> action images (the current pose is not needed)
    video        given / gen         absent / absent    video only

Noising: x_t = (1 - t) x0 + t eps, t ~ logit-normal(t_mean, t_std). The network predicts the clean clip x0_hat; the
velocity of the ODE is v_hat = (x_t - x0_hat) / max(t, t_eps), integrated from t = 1 (noise) to t = 0.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

GIVEN, GEN, ABSENT = 0, 1, 2
NUM_STATES = 3                # backbones embed one of these per (view, frame, stream)
STREAMS = ("rgb", "act")
# job -> per stream (current frame state, future frames state)
TASKS: dict[str, dict[str, tuple[int, int]]] = {
    "policy": {"rgb": (GIVEN, GEN), "act": (GIVEN, GEN)},
    "world_model": {"rgb": (GIVEN, GEN), "act": (GIVEN, GIVEN)},
    "labeler": {"rgb": (GIVEN, GIVEN), "act": (GEN, GEN)},
    "video": {"rgb": (GIVEN, GEN), "act": (ABSENT, ABSENT)},
}
TASK_NAMES = tuple(TASKS)
SAMPLERS = ("euler", "heun")


def task_state(tasks: Sequence[str], V: int, F: int) -> torch.Tensor:
    """Job names [B] -> per-stream states [B, V, F, 2] long (GIVEN / GEN / ABSENT)."""
    out = torch.empty(len(tasks), V, F, len(STREAMS), dtype=torch.long)
    for b, name in enumerate(tasks):
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; choose one of {TASK_NAMES}")
        for s, stream in enumerate(STREAMS):
            now, future = TASKS[name][stream]
            out[b, :, 0, s] = now
            out[b, :, 1:, s] = future
    return out


def channel_state(state: torch.Tensor) -> torch.Tensor:
    """[B, V, F, 2] -> [B, V, F, 6, 1, 1] (each stream's state repeated over its 3 channels)."""
    return state.repeat_interleave(3, dim=-1)[..., None, None]


def sample_t(B: int, t_mean: float, t_std: float, generator: torch.Generator | None) -> torch.Tensor:
    """Training noise levels [B]: logit-normal (t_mean > 0 spends more of training at high noise)."""
    return torch.sigmoid(t_mean + t_std * torch.randn(B, generator=generator))


def noisy_input(x0: torch.Tensor, state: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The network input for clean streams ``x0 [B,V,F,6,H,W]``: given parts clean, generated parts at noise level
    ``t [B]`` (x_t = (1 - t) x0 + t eps), absent parts zero. ``state`` [B,V,F,2] from :func:`task_state`."""
    cs = channel_state(state)
    tt = t.view(-1, 1, 1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    return torch.where(cs == GIVEN, x0, torch.where(cs == GEN, x_t, torch.zeros_like(x0)))


def velocity(x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    """The ODE velocity implied by a clean-clip prediction: (x_t - x0_hat) / max(t, t_eps)."""
    return (x_t - x0_hat) / t.clamp_min(t_eps).view(-1, 1, 1, 1, 1, 1)


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """``steps + 1`` noise levels from 1 to 0; ``shift`` > 1 spends more steps at high noise (t' = s t / (1 + (s-1) t))."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * ts / (1 + (shift - 1) * ts)).tolist()


def integrate(v_at: Callable[[torch.Tensor, float], torch.Tensor], x_given: torch.Tensor, state: torch.Tensor,
              noise: torch.Tensor, steps: int, method: str = "euler", shift: float = 1.0) -> torch.Tensor:
    """Integrate the flow ODE for the generated parts from t = 1 to t = 0; given parts stay ``x_given``, absent zero.

    ``v_at(x, t)`` is the velocity at state ``x`` and noise level ``t``; ``method`` "euler" or "heun" (2nd order)."""
    if method not in SAMPLERS:
        raise ValueError(f"method must be one of {SAMPLERS}; got {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    cs = channel_state(state)
    given, gen = cs == GIVEN, cs == GEN

    def clamp_given(x: torch.Tensor) -> torch.Tensor:
        return torch.where(given, x_given, torch.where(gen, x, torch.zeros_like(x)))

    x = clamp_given(noise)
    ts = time_grid(steps, shift)
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        v = v_at(x, t_cur)
        x_next = clamp_given(x + (t_next - t_cur) * v)
        if method == "heun" and t_next > 0:
            v2 = v_at(x_next, t_next)
            x_next = clamp_given(x + (t_next - t_cur) * 0.5 * (v + v2))
        x = x_next
    return clamp_given(x)


def blob_weight(act: torch.Tensor, peak_weight: float) -> torch.Tensor:
    """Per-pixel loss weight of action images ``act [..., 3, H, W]`` in [-1, 1]: 1 on the background, up to
    ``1 + peak_weight`` on the Gaussian blobs (about 6 % of an action image, yet all the decoder reads)."""
    heat = (act + 1.0) / 2.0
    blob = ((heat - 0.25) / 0.75).clamp(0.0, 1.0).amax(dim=-3, keepdim=True)
    return (1.0 + peak_weight * blob).expand_as(act)


BLOB_LEVEL = 0.5              # heat above which a pixel belongs to a blob's core (peak 1; the open-gripper B is 0.25)
FULL_BLOB_MASS = 5.5          # Σ (heat - 0.5)+ over a whole blob: πσ²(1 - ln 2), about 5.5 at σ = 2.4 px (∝ σ²)


def blob_centroids(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid ``[..., 3, 2]`` (u, v in pixels) and mass ``[..., 3]`` of each channel's blob core in action images
    ``act [..., 3, H, W]`` in [-1, 1]: pixels weighted by how far their heat exceeds :data:`BLOB_LEVEL`.
    Differentiable in the pixel values, so a loss on it moves a blob's pixels toward the true centre."""
    H, W = act.shape[-2:]
    core = ((act + 1.0) / 2.0 - BLOB_LEVEL).clamp_min(0.0)
    mass = core.sum(dim=(-1, -2))
    u = (core.sum(-2) * torch.arange(W, dtype=act.dtype, device=act.device)).sum(-1) / mass.clamp_min(1e-6)
    v = (core.sum(-1) * torch.arange(H, dtype=act.dtype, device=act.device)).sum(-1) / mass.clamp_min(1e-6)
    return torch.stack([u, v], dim=-1), mass


def keypoint_loss(act_hat: torch.Tensor, act: torch.Tensor, gen: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Mean squared distance, in blob widths σ, between the predicted and the true blob centroids of the generated
    action frames (``act_hat``, ``act`` ``[B, V, F, 3, H, W]``; ``gen`` ``[B, V, F, 3, 1, 1]`` 1 where generated).
    Only blobs whole in the true image count (a cut blob's centroid is biased), and only where the prediction has a
    blob core at all (else the pixel loss must first draw one). Each blob counts in proportion to its predicted core
    mass, up to a whole blob's: a centroid moves by (pixel position - centroid) / mass per unit of a pixel, so a faint
    core would otherwise take the largest and noisiest gradients."""
    c_hat, m_hat = blob_centroids(act_hat)
    with torch.no_grad():
        c, m = blob_centroids(act)
        full = FULL_BLOB_MASS * (sigma_px / 2.4) ** 2
        use = (gen[..., 0, 0] > 0) & (m > 0.8 * full) & (m_hat > 0.1 * full)          # [B, V, F, 3]
        weight = use * (m_hat / full).clamp(max=1.0)
    d2 = ((c_hat - c) / sigma_px).square().sum(-1)
    return (d2 * weight).sum() / use.sum().clamp_min(1)


def masked_loss(x0_hat: torch.Tensor, x0: torch.Tensor, x_in: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                state: torch.Tensor, *, target: str, t_eps: float, action_weight: float,
                peak_weight: float, keypoint_weight: float | None = None,
                sigma_px: float = 2.4) -> dict[str, torch.Tensor]:
    """The loss over generated elements, and per-stream diagnostics.

    ``target`` "x0": |x0_hat - x0|^2 (every noise level weighted alike); "velocity": |v_hat - (eps - x0)|^2
    (= the x0 error / max(t, t_eps)^2, mostly spent on nearly clean inputs). The action stream is weighted
    ``action_weight`` and its blob pixels up to ``1 + peak_weight`` more (:func:`blob_weight`). ``keypoint_weight``
    adds :func:`keypoint_loss` on x0_hat: the pixel loss barely changes when a blob sits a pixel off, while the
    decoder reads exactly that position; at 0 it is still reported (``loss_keypoint``, a diagnostic of where the
    blobs land), at None (action images in a latent space) not."""
    if target == "x0":
        err = (x0_hat - x0).square()                                          # [B, V, F, 6, H, W]
    elif target == "velocity":
        err = (velocity(x0_hat, x_in, t, t_eps) - (eps - x0)).square()
    else:
        raise ValueError(f"loss target must be 'x0' or 'velocity'; got {target!r}")
    gen = (channel_state(state) == GEN).float()
    w = torch.tensor([1.0] * 3 + [action_weight] * 3, device=x0.device).view(1, 1, 1, 6, 1, 1)
    if peak_weight:
        w_act = blob_weight(x0[:, :, :, 3:], peak_weight)                     # [B, V, F, 3, H, W]
        w = w * torch.cat([torch.ones_like(w_act), w_act], dim=3)
    hw = x0.shape[-1] * x0.shape[-2]
    loss = (err * gen * w).sum() / (gen.sum() * hw).clamp_min(1.0)
    extra = {}
    if keypoint_weight:
        kp = keypoint_loss(x0_hat[:, :, :, 3:], x0[:, :, :, 3:], gen[:, :, :, 3:], sigma_px)
        loss = loss + keypoint_weight * kp
        extra["loss_keypoint"] = kp.detach()
    elif keypoint_weight is not None:
        with torch.no_grad():
            extra["loss_keypoint"] = keypoint_loss(x0_hat[:, :, :, 3:], x0[:, :, :, 3:], gen[:, :, :, 3:], sigma_px)
    with torch.no_grad():
        n_rgb = (gen[:, :, :, :3].sum() * hw).clamp_min(1.0)
        n_act = (gen[:, :, :, 3:].sum() * hw).clamp_min(1.0)
        x0_err = (x0_hat - x0).square()
        return {"loss": loss,
                "loss_rgb": (err[:, :, :, :3] * gen[:, :, :, :3]).sum() / n_rgb,
                "loss_act": (err[:, :, :, 3:] * gen[:, :, :, 3:]).sum() / n_act,
                "x0_mse_rgb": (x0_err[:, :, :, :3] * gen[:, :, :, :3]).sum() / n_rgb,
                "x0_mse_act": (x0_err[:, :, :, 3:] * gen[:, :, :, 3:]).sum() / n_act, **extra}
