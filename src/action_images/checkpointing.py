"""A training run's checkpoints: ``RUN/checkpoints/step_N/`` written atomically, read back and checked before
anything is applied, and the run-level EMA export refreshed with each one (and read by :func:`init_weights` when
another run starts from it).

A checkpoint folder holds ``config.json`` + ``model.safetensors`` (raw weights), ``ema.safetensors``,
``optimizer.safetensors`` (AdamW moments, flattened by :func:`sharding.optimizer_tensors`), ``rng.safetensors``
(torch's global RNG state), ``train_config.json`` (the recipe) and ``trainer_state.json`` (the step, the number of
processes, numpy's and Python's RNG states, the optimizer's parameter groups), written last: a folder without it is
incomplete and never read. Nothing here unpickles: every file is safetensors or JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from action_images import sharding
from action_images.recipe import RECIPE_NAME, TrainRecipe
from action_images.runfiles import atomic_write_json, atomic_write_text
from action_images.sharding import load_optimizer, restore_rng
from action_images.wam import CONFIG_NAME, WEIGHTS_NAME, WorldActionModel


class NonFiniteError(RuntimeError):
    """The loss or the gradient stopped being finite: the run stops before anything is written."""


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors, groups = sharding.optimizer_tensors(opt)
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, groups


def checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    return sorted(p for p in d.glob("step_*") if (p / "trainer_state.json").exists()) if d.exists() else []


def save_checkpoint(out: Path, step: int, wam: WorldActionModel, ema: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer | None, recipe: TrainRecipe, keep: int, world_size: int = 1,
                    streamed: bool = False) -> Path:
    """Write checkpoints/step_N atomically (temp dir, then rename) and refresh the run's EMA export.

    ``streamed``: the weights, EMA and optimizer files are already in the temp dir (:func:`checkpoint_tmp`), written
    tensor by tensor by the ranks of a sharded (FSDP) run (:func:`sharding.write_checkpoint_tensors`); this writes
    the rest, and the export is copied from those files one tensor at a time. Refuses non-finite weights (raw or
    EMA): a checkpoint or export never holds NaN or inf (a sharded run checks before it streams)."""
    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = checkpoint_tmp(out, step)
    if streamed:
        from action_images.wam import FORMAT, FORMAT_VERSION
        atomic_write_json(tmp / CONFIG_NAME, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                              "config": wam.config.to_dict()})
        groups = opt.state_dict()["param_groups"]
    else:
        weights = wam.state_dict()
        for name, sd in (("weights", weights), ("EMA weights", ema)):
            bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                raise NonFiniteError(f"step {step}: non-finite {name} ({bad[:3]}); nothing was written")
        shutil.rmtree(tmp, ignore_errors=True)
        wam.save_pretrained(tmp, state_dict=weights)                     # config.json + model.safetensors (raw)
        save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        tensors, groups = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    np_state = np.random.get_state()
    state = {"step": step, "recipe": recipe.to_dict(), "world_size": world_size,
             "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "param_groups": groups, "time": time.time()}
    atomic_write_json(tmp / RECIPE_NAME, recipe.to_dict())
    atomic_write_json(tmp / "trainer_state.json", state)                 # written last: marks the folder complete
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    # the run-level export (EMA weights; frozen weights as they are) for from_pretrained(RUN)
    if streamed:
        sharding.merge_safetensors(out / f".{WEIGHTS_NAME}.tmp", [final / WEIGHTS_NAME, final / "ema.safetensors"])
    else:
        export = {**weights, **ema}
        save_file({k: v.detach().contiguous().cpu() for k, v in export.items()}, str(out / f".{WEIGHTS_NAME}.tmp"))
    os.replace(out / f".{WEIGHTS_NAME}.tmp", out / WEIGHTS_NAME)
    atomic_write_text(out / CONFIG_NAME, (final / CONFIG_NAME).read_text())
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_tmp(out: Path, step: int) -> Path:
    """The temp dir checkpoints/step_N is written into before it is renamed."""
    return out / "checkpoints" / f".tmp-step_{step:08d}"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Every file of a checkpoint folder, read and checked before anything is applied (raises on damage)."""
    state = json.loads((path / "trainer_state.json").read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError("trainer_state.json has no integer step")
    return {"state": state, "weights": load_file(str(path / WEIGHTS_NAME)),
            "ema": load_file(str(path / "ema.safetensors")),
            "optimizer": load_file(str(path / "optimizer.safetensors")),
            "rng": load_file(str(path / "rng.safetensors"))["torch"],
            "config": json.loads((path / CONFIG_NAME).read_text())["config"]}


def open_checkpoint(path: Path) -> dict[str, Any]:
    """:func:`read_checkpoint` without reading the weights, EMA and optimizer tensors: those parts are
    :class:`sharding.SafetensorsFile` (headers read and checked, each tensor read when it is asked for); the trainer
    state, config and torch RNG state are read. What FSDP's rank 0 opens to resume."""
    state = json.loads((path / "trainer_state.json").read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError("trainer_state.json has no integer step")
    return {"state": state, "weights": sharding.SafetensorsFile(path / WEIGHTS_NAME),
            "ema": sharding.SafetensorsFile(path / "ema.safetensors"),
            "optimizer": sharding.SafetensorsFile(path / "optimizer.safetensors"),
            "rng": sharding.SafetensorsFile(path / "rng.safetensors")["torch"],
            "config": json.loads((path / CONFIG_NAME).read_text())["config"]}


def latest_intact_checkpoint(out: Path, warn: Any = print, read: Any = read_checkpoint
                             ) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose files all read back (``read``: :func:`read_checkpoint`, or :func:`open_checkpoint`,
    which checks every file's header and reads the tensors later); damaged newer ones are reported and skipped."""
    for path in reversed(checkpoints(out)):
        try:
            return path, read(path)
        except Exception as e:   # truncated safetensors, garbage JSON, missing file: fall back to an older one
            warn(f"action-images train: skipping damaged checkpoint {path} ({type(e).__name__}: {e})")
    return None


def apply_checkpoint(ck: dict[str, Any], wam: WorldActionModel, ema: dict[str, torch.Tensor],
                     opt: torch.optim.Optimizer) -> int:
    state = ck["state"]
    wam.load_state_dict(ck["weights"])
    for k, v in ck["ema"].items():
        ema[k].copy_(v)
    load_optimizer(opt, ck["optimizer"], state["param_groups"])
    restore_rng(state, ck["rng"])
    return int(state["step"])


def saved_recipe(ck: dict[str, Any]) -> dict[str, Any] | None:
    """The defining settings a checkpoint was trained with (None for checkpoints written before recipes)."""
    d = ck["state"].get("recipe")
    if d is None:
        return None
    return TrainRecipe.from_dict(d, "checkpoint recipe").defining()


# config fields the weights do not depend on: a stage may train on other cameras, see more of them per window (view
# slots have embeddings up to max_views), weigh its loss otherwise, draw its training noise levels from another
# logit-normal, work at another resolution (the backbones' position embeddings are computed for any grid of
# patches, and the context encoder is convolutional; a backbone whose weights depend on the grid fails the shape
# check below instead), or space its keyframes otherwise (the stride only says which control steps the windows'
# frames come from: no weight's shape depends on it, and the stage learns what the new spacing means, as it does for
# another resolution)
WEIGHT_FREE_KEYS = frozenset({"camera_names", "action_loss_weight", "act_peak_weight", "act_keypoint_weight",
                              "t_mean", "t_std", "image_size", "num_views", "stride"})


# past frames (WAMConfig.history) may be added by a stage: the context encoder's first convolution gains input
# channels for them, initialised to 0, so the stage starts from the other run's function exactly
HISTORY_KEYS = frozenset({"history", "history_gap"})
CONTEXT_IN = "backbone.context.net.0.weight"
# DiT blocks may be added by a stage: they follow the other run's blocks and keep their initialisation, in which every
# block is the identity (adaLN-Zero gates and text cross-attention outputs at 0, models/dit.py), so the stage again
# starts from the other run's function
DEPTH_KEY, BLOCKS = "backbone.depth", "backbone.blocks."
# the hashed-word text encoder's layers likewise (text.TextLayer starts as the identity); a config without the key has 0
TEXT_LAYERS_KEY, TEXT_LAYERS = "text.layers", "text_encoder.layers."


def init_weights(model: torch.nn.Module, run: str) -> None:
    """Load another run's exported weights (``RUN/model.safetensors``) into ``model`` (``model.init_from``); its
    ``config.json`` must describe the same model but for :data:`WEIGHT_FREE_KEYS` (cameras, views per window, loss
    weights, training noise levels, image size, keyframe stride) and for past frames (:data:`HISTORY_KEYS`), DiT blocks
    (:data:`DEPTH_KEY`) or text encoder layers (:data:`TEXT_LAYERS_KEY`) this model adds."""
    folder = Path(run)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"--init-from {run}: needs {WEIGHTS_NAME} and {CONFIG_NAME} (a run's export)")
    try:
        theirs = json.loads((folder / CONFIG_NAME).read_text())["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--init-from {run}: unreadable {CONFIG_NAME} ({e})") from None
    def flat(d: dict, pre: str = "") -> dict:
        return {k2: v2 for k, v in d.items()
                for k2, v2 in (flat(v, f"{pre}{k}.").items() if isinstance(v, dict) else [(pre + k, v)])}
    ours, theirs = flat(model.config.to_dict()), flat(theirs)
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k not in WEIGHT_FREE_KEYS
                  and k not in HISTORY_KEYS and k not in (DEPTH_KEY, TEXT_LAYERS_KEY))
    if diff:
        raise ValueError(f"--init-from {run}: its model differs from this recipe's in {diff}")
    depths = theirs.get(DEPTH_KEY), ours.get(DEPTH_KEY)
    if depths[0] != depths[1] and not (isinstance(depths[0], int) and isinstance(depths[1], int)
                                       and 0 < depths[0] < depths[1]
                                       and getattr(model.config, "backbone_kind", "") == "dit"):
        raise ValueError(f"--init-from {run}: it has {depths[0]} DiT blocks and this recipe's model {depths[1]} "
                         "(--depth): blocks can be added to a DiT, not taken away")
    layers = theirs.get(TEXT_LAYERS_KEY, 0), ours.get(TEXT_LAYERS_KEY, 0)
    if type(layers[0]) is not int or layers[0] < 0:
        raise ValueError(f"--init-from {run}: its {CONFIG_NAME} gives text.layers {layers[0]!r}, not an integer >= 0")
    if layers[0] > layers[1]:
        raise ValueError(f"--init-from {run}: its text encoder has {layers[0]} layers and this recipe's model "
                         f"{layers[1]} (--text-layers): layers can be added, not taken away")
    added = (tuple(f"{BLOCKS}{i}." for i in range(depths[0] or 0, depths[1] or 0))     # empty at equal depths
             + tuple(f"{TEXT_LAYERS}{i}." for i in range(*layers)))
    had, has = int(theirs.get("history") or 0), int(ours.get("history") or 0)
    if has < had:
        raise ValueError(f"--init-from {run}: it reads {had} past frame(s) and this recipe's model {has}: past frames "
                         "can be added to a model, not taken away")
    gaps = int(theirs.get("history_gap") or 4), int(ours.get("history_gap") or 4)
    if had and gaps[0] != gaps[1]:                  # its past-frame weights were trained on frames that far back
        raise ValueError(f"--init-from {run}: it reads past frames {gaps[0]} steps apart and this recipe's model "
                         f"{gaps[1]} (--history-gap)")
    state = load_file(str(folder / WEIGHTS_NAME))
    if has > had and CONTEXT_IN in state:           # the new frames' input channels start at 0: the same function
        w = state[CONTEXT_IN]
        per_frame = w.shape[1] // (1 + had)
        state[CONTEXT_IN] = torch.cat([w, w.new_zeros(w.shape[0], per_frame * (has - had), *w.shape[2:])], dim=1)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"--init-from {run}: {WEIGHTS_NAME} does not fit the model "
                         f"({str(e).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.startswith(added)]                  # the added blocks and layers
    if missing or unexpected:
        raise ValueError(f"--init-from {run}: {WEIGHTS_NAME} does not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
