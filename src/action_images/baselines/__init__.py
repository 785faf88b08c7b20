"""Baselines the action-image method is compared against, trained and evaluated by the same commands on the same data.

    action-images train --method bc --data data/core4h --cameras left,right --out runs/bc --steps 20000
    action-images train --method dp --data data/core4h --cameras left,right --out runs/dp --steps 20000
    action-images eval --checkpoint runs/bc --tasks reach_target,press_button,open_drawer,close_drawer --out DIR

* ``bc`` (:mod:`.bc`): image behaviour cloning, a regression of the chunk of future poses (ACT without its CVAE);
* ``dp`` (:mod:`.diffusion_policy`): multi-view image Diffusion Policy (Chi et al. 2023), flow-matching sampler;
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

from action_images.baselines.bc import BCConfig, BCModel
from action_images.baselines.diffusion_policy import DiffusionPolicyModel, DPConfig
from action_images.baselines.policy import BaselinePolicy, make_policy
from action_images.wam import FORMAT as WAM_FORMAT, CheckpointError, read_meta

METHODS = ("wam", "bc", "dp")
MODELS: dict[str, type] = {"bc": BCModel, "dp": DiffusionPolicyModel}
CONFIGS: dict[str, type] = {"bc": BCConfig, "dp": DPConfig}
BATCH_SIZE = {"bc": 32, "dp": 32}              # default samples per step (the WAM's come from its preset)
# recipe model fields that shape only the world action model
WAM_ONLY = ("task_mix", "p_drop_text", "t_mean", "act_peak_weight", "loss_target", "refine_channels")

__all__ = ["METHODS", "BCConfig", "BCModel", "DPConfig", "DiffusionPolicyModel", "BaselinePolicy", "make_policy",
           "load_model", "build_config", "build_model", "method_of"]


def method_of(config: Any) -> str:
    """"wam", "bc" or "dp" for a model config."""
    for name, cls in CONFIGS.items():
        if isinstance(config, cls):
            return name
    return "wam"


def build_config(recipe: Any, camera_names: list[str] | None = None) -> Any:
    """The baseline config of a training recipe whose ``model.method`` is "bc" or "dp": the recipe's data shape
    (image_size, num_views, horizon, stride, crop, workspace) over the method's defaults, then the recipe file's
    ``model.baseline`` object over any config field (e.g. ``{"plucker": false, "pool": "avg"}``). The preset and
    the world action model's own settings are ignored, with a warning, so a WAM recipe file serves as is."""
    m = recipe.model
    if m.method not in CONFIGS:
        raise ValueError(f"--method: {m.method!r} is not a baseline; choose one of {sorted(CONFIGS)}")
    wam_only = [k for k in WAM_ONLY if getattr(m, k, None) is not None]
    if wam_only:   # a WAM recipe file reused with --method bc|dp: its data and optimiser apply, these do not
        warnings.warn(f"--method {m.method} ignores the world action model's "
                      f"{', '.join('model.' + k for k in wam_only)} (and model.preset)", stacklevel=2)
    cls = CONFIGS[m.method]
    cfg = cls()
    for k in ("image_size", "num_views", "horizon", "stride", "crop", "workspace"):
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
    :class:`BCModel` or :class:`DiffusionPolicyModel`. Raises :class:`~action_images.wam.CheckpointError` (a
    ``ValueError``) naming the file for anything else."""
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
