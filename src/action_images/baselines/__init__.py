"""Baselines the action-image method is compared against, trained and evaluated by the same commands on the same data.

    action-images train --method bc --data data/core4h --cameras left,right --out runs/bc --steps 20000
    action-images train --method dp --data data/core4h --cameras left,right --out runs/dp --steps 20000
    action-images train --method tokens --data data/core4h --cameras left,right --out runs/tokens --steps 6652
    action-images eval --checkpoint runs/bc --tasks reach_target,press_button,open_drawer,close_drawer --out DIR

* ``bc`` (:mod:`.bc`): image behaviour cloning, a regression of the chunk of future poses (ACT without its CVAE);
* ``dp`` (:mod:`.diffusion_policy`): multi-view image Diffusion Policy (Chi et al. 2023), flow-matching sampler;
* ``tokens`` (:mod:`.action_tokens`): the world action model's video DiT with the actions as tokens instead of action
  images (the paper's ablation);
* ``wam``: the world action model itself (:mod:`action_images.wam`).

Every model has ``config`` (image_size, num_views, horizon, stride, camera_names, crop, workspace, so
``WindowConfig.from_model`` builds its windows), ``forward(batch, generator) -> {"loss", ...}``,
``save_pretrained`` / ``from_pretrained``; the baselines add ``predict(batch, generator, steps) -> poses [B, H, 8]``.
:func:`load_model` opens any checkpoint by the ``format`` in its ``config.json``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from action_images.baselines.action_tokens import ActionTokensModel, TokensConfig
from action_images.baselines.bc import BCConfig, BCModel
from action_images.baselines.diffusion_policy import DiffusionPolicyModel, DPConfig
from action_images.baselines.policy import BaselinePolicy, make_policy
from action_images.wam import FORMAT as WAM_FORMAT, CheckpointError, read_meta

METHODS = ("wam", "bc", "dp", "tokens")
MODELS: dict[str, type] = {"bc": BCModel, "dp": DiffusionPolicyModel, "tokens": ActionTokensModel}
CONFIGS: dict[str, type] = {"bc": BCConfig, "dp": DPConfig, "tokens": TokensConfig}
# default samples per step (the WAM's come from its preset; tokens: the cpu-small preset's, as its backbone)
BATCH_SIZE = {"bc": 32, "dp": 32, "tokens": 8}
# recipe model fields that shape only the world action model
WAM_ONLY = ("task_mix", "p_drop_text", "t_mean", "action_loss_weight", "act_peak_weight", "loss_target", "refine_channels",
            "stem_channels", "context_channels", "history", "history_gap", "depth", "text_layers")

__all__ = ["METHODS", "BCConfig", "BCModel", "DPConfig", "DiffusionPolicyModel", "TokensConfig", "ActionTokensModel",
           "BaselinePolicy", "make_policy",
           "load_model", "build_config", "build_model", "method_of"]


def method_of(config: Any) -> str:
    """"wam", "bc", "dp" or "tokens" for a model config."""
    for name, cls in CONFIGS.items():
        if isinstance(config, cls):
            return name
    return "wam"


def build_config(recipe: Any, camera_names: list[str] | None = None) -> Any:
    """The baseline config of a training recipe whose ``model.method`` is "bc", "dp" or "tokens": the recipe's data
    shape (image_size, num_views, horizon, stride, crop, workspace) and the WAM settings the config also has (its
    ``RECIPE_FIELDS``: tokens takes t_mean, p_drop_text, action_loss_weight, context_channels and depth) over the
    method's defaults, then the recipe file's ``model.baseline`` object over any config field (e.g. ``{"plucker":
    false, "pool": "avg"}``). The preset and the other world action model settings are ignored, with a warning, so
    a WAM recipe file serves as is."""
    m = recipe.model
    if m.method not in CONFIGS:
        raise ValueError(f"--method: {m.method!r} is not a baseline; choose one of {sorted(CONFIGS)}")
    cls = CONFIGS[m.method]
    shared = getattr(cls, "RECIPE_FIELDS", ())
    wam_only = [k for k in WAM_ONLY if getattr(m, k, None) is not None and k not in shared]
    if wam_only:   # a WAM recipe file reused with a baseline: its data and optimiser apply, these do not
        warnings.warn(f"--method {m.method} ignores the world action model's "
                      f"{', '.join('model.' + k for k in wam_only)} (and model.preset)", stacklevel=2)
    cfg = cls()
    for k in ("image_size", "num_views", "horizon", "stride", "crop", "workspace", *shared):
        if getattr(m, k) is not None:
            setattr(cfg, k, getattr(m, k))
    extra = dict(getattr(m, "baseline", None) or {})
    fixed = {"camera_names", "image_size", "num_views", "horizon", "stride", "crop", "workspace"}
    known = {f for f in cfg.to_dict()} - fixed
    bad = sorted(set(extra) - known)
    if bad:
        raise ValueError(f"model.baseline: unknown keys {bad} for --method {m.method}; known {sorted(known)} (the data "
                         "shape has its own flags)")
    for k, v in extra.items():
        setattr(cfg, k, v)
    cfg.camera_names = list(camera_names or recipe.data.cameras or []) or None
    try:
        cfg.validate()
    except ValueError as e:
        raise ValueError(f"--method {m.method}: {e}") from None
    return cfg


def build_model(config: Any) -> Any:
    """A fresh model for a config (a ``WAMConfig`` builds the world action model)."""
    method = method_of(config)
    if method == "wam":
        from action_images.wam import WorldActionModel
        return WorldActionModel(config)
    return MODELS[method](config)


def load_model(path: str | os.PathLike) -> Any:
    """The model in a checkpoint or run folder, by the ``format`` of its ``config.json``: the world action model,
    :class:`BCModel`, :class:`DiffusionPolicyModel` or :class:`ActionTokensModel`. Raises
    :class:`~action_images.wam.CheckpointError` (a ``ValueError``) naming the file for anything else."""
    file, meta = read_meta(path)
    fmt = meta.get("format")
    if fmt == WAM_FORMAT:
        from action_images.wam import WorldActionModel
        return WorldActionModel.from_pretrained(path)
    for cls in MODELS.values():
        if fmt == cls.FORMAT:
            return cls.from_pretrained(path)
    known = [WAM_FORMAT, *(c.FORMAT for c in MODELS.values())]
    raise CheckpointError(f"{file}: unknown format {fmt!r}; known {known}")
