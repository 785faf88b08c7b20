"""Requests to the policy server planned together: the first samples of requests whose model inputs match are drawn
in one model call (:func:`plan_batch`), each request keeping its own noise, decoding and chunk.

    from action_images.serve.batching import plan_batch
    chunks = plan_batch([(policy_a, obs_a, cameras_a), (policy_b, obs_b, cameras_b)], max_batch=8)
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from action_images.geometry import Camera
from action_images.policy import ActionImagesPolicy, Chunk, sample_frames


def batch_key(batch: dict[str, Any]) -> tuple:
    """What model inputs must share to be sampled in one call: every tensor's shape past the batch axis and dtype."""
    return tuple((k, tuple(v.shape[1:]), str(v.dtype)) for k, v in batch.items() if torch.is_tensor(v))


def _joinable(policy: Any) -> bool:
    """Whether ``policy`` draws its first sample in a shared model call: the world action model in pixel space
    (its starting noise is drawn per request, so the call adds no randomness) drawing one sample per step;
    baselines, latent models, ensembles and episode noise plan alone."""
    return (type(policy).plan is ActionImagesPolicy.plan and getattr(policy.model.config, "latent", None) is None
            and getattr(policy, "ensemble", 1) == 1 and getattr(policy, "noise", "fresh") == "fresh")


def plan_batch(jobs: Sequence[tuple[ActionImagesPolicy, dict[str, Any], Sequence[Camera]]],
               max_batch: int | None = None) -> list[Chunk | Exception]:
    """:meth:`ActionImagesPolicy.plan` for each ``(policy, obs, cameras)``, with the first samples of the requests
    whose model inputs match (:func:`batch_key`, same model and settings) drawn in one model call of at most
    ``max_batch`` requests. Each request keeps its own state: its starting noise comes from its own policy's
    generator, drawn as a batch of 1 would draw it, and decoding, resamples and the chunk are its own. A request
    that fails gets its exception in its place; when a shared call fails, its requests are planned one by one.
    The policies must be distinct objects."""
    out: list[Any] = [None] * len(jobs)
    t0 = time.perf_counter()
    groups: dict[tuple, list[tuple[int, Any]]] = {}
    for i, (policy, obs, cameras) in enumerate(jobs):
        if not _joinable(policy):
            groups[("alone", i)] = [(i, None)]
            continue
        try:
            built = (*policy.build_batch(obs, cameras), policy.current_pose(obs))
        except Exception as e:                      # noqa: BLE001 -- this request's error, the others go on
            out[i] = e
            continue
        key = (id(policy.model), policy.steps, policy.cfg_scale, policy.method, batch_key(built[0]))
        groups.setdefault(key, []).append((i, built))
    t_obs = time.perf_counter() - t0
    for members in groups.values():
        size = max_batch or len(members)
        for s in range(0, len(members), size):
            _plan_group([(i, jobs[i][0], built) for i, built in members[s:s + size]], jobs, out, t0, t_obs)
    return out


def _plan_group(members: list[tuple[int, Any, Any]], jobs: Sequence[Any], out: list[Any], t0: float,
                t_obs: float) -> None:
    """Plan ``members`` (index, policy, built input or None) with one shared model call when there are >= 2."""
    first: Any = None
    if len(members) > 1:
        states = [p.generator.get_state() for _, p, _ in members]
        try:
            noise = []
            for _, p, (batch, *_rest) in members:       # the noise a batch of 1 draws from this request's generator
                rgb, act = batch["rgb"], batch["act"]
                noise.append(torch.randn((*rgb.shape[:3], rgb.shape[3] + act.shape[3], *rgb.shape[4:]),
                                         generator=p.generator))
            joined = {k: torch.cat([b[k] for _, _, (b, *_r) in members]) if torch.is_tensor(v)
                      else [x for _, _, (b, *_r) in members for x in b[k]] for k, v in members[0][2][0].items()}
            p0 = members[0][1]
            t1 = time.perf_counter()
            sample = p0.model.sample(joined, task="policy", steps=p0.steps, cfg_scale=p0.cfg_scale,
                                     method=p0.method, noise=torch.cat(noise))
            dt = time.perf_counter() - t1
            first = [(*sample_frames(sample, j), dt) for j in range(len(members))]
        except Exception:                              # noqa: BLE001 -- plan alone: a bad request fails by itself
            for (_, p, _), state in zip(members, states):
                p.generator.set_state(state)
    for j, (i, policy, built) in enumerate(members):
        try:
            if built is None:
                out[i] = policy.plan(*jobs[i][1:])
            else:
                out[i] = policy._plan_built(*built, t0, t_obs, first=None if first is None else first[j])
                out[i].batch = 1 if first is None else len(members)
        except Exception as e:                          # noqa: BLE001 -- this request's error, the others go on
            out[i] = e
