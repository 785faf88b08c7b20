"""FSDP for ``action-images train``: PyTorch's ``fully_shard`` (FSDP version 2) applied by the trainer itself.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 8 -m action_images.train ...

``accelerate launch`` with an FSDP config exports its settings as ``ACCELERATE_USE_FSDP`` / ``FSDP_*`` variables.
accelerate's own FSDP plugin is used on GPUs only: on a machine without CUDA it starts one unsharded DDP process
per rank instead (measured with accelerate 1.15.0: ``distributed_type`` stays ``MULTI_CPU``). So the trainer reads
those variables and shards the model with ``torch.distributed.fsdp.fully_shard`` on whatever device the process
has (CUDA with NCCL, or CPU with gloo), and accelerate keeps starting the processes, placing them on devices and
reducing the logged numbers. One code path, so the CPU tests run the same sharding as a GPU run.

What is sharded: every block of each ``nn.ModuleList`` named ``blocks`` (the DiT's and Wan's transformer blocks,
also under a LoRA wrapper) is its own FSDP unit; the rest of the model (embedders, output head, text encoder,
the frozen VAE) is the root unit. Parameters, gradients, AdamW moments and the EMA are all sharded DTensors.

Checkpoints stay the trainer's usual full state dicts: :func:`full_state` gathers every tensor (one at a time, in the
same order on every rank) and only rank 0 keeps a CPU copy, so ``checkpoints/step_N`` and the run's
``model.safetensors`` have the layout of a one-process run and load without FSDP. ``--resume`` reads the full tensors
on every rank, applies them to the unsharded model and then shards (:func:`shard_like`), so a checkpoint written by
any number of processes, with or without FSDP, resumes under FSDP and the other way round.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

SUPPORTED_VERSION = "2"


def requested() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (it exports ``ACCELERATE_USE_FSDP=true``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def check_environment() -> dict[str, Any]:
    """The FSDP settings of the launch; raises ValueError naming a setting this trainer does not support."""
    version = os.environ.get("FSDP_VERSION", "1")
    if version != SUPPORTED_VERSION:
        raise ValueError(f"FSDP version {version} is not supported by this trainer: set fsdp_version: 2 in the "
                         "accelerate config (configs/accelerate/fsdp.yaml; the trainer shards with fully_shard)")
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise ValueError("fsdp_offload_params: true is not supported by this trainer; set it to false "
                         "(configs/accelerate/fsdp.yaml)")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if reshard not in ("true", "false"):
        raise ValueError(f"fsdp_reshard_after_forward: {reshard!r} must be true or false with fsdp_version: 2")
    return {"reshard_after_forward": reshard == "true"}


def shard(model: nn.Module, device: torch.device, reshard_after_forward: bool = True) -> int:
    """Apply ``fully_shard`` in place: each block of every ``*blocks`` ModuleList, then the whole model.
    Needs the default process group (accelerate has started it). Returns the number of FSDP units."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "blocks":
            for block in module:
                fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
                units += 1
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return units + 1


def is_sharded(x: Any) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(x, DTensor)


def full_tensor(x: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), a plain tensor as it is."""
    return x.full_tensor() if is_sharded(x) else x


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: a DTensor with ``like``'s mesh and placements, or ``full`` itself when
    ``like`` is a plain tensor (every rank calls it, in the same order)."""
    if not is_sharded(like):
        return full.to(like.device)
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)


def gather(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Full CPU copies of ``tensors`` where ``keep`` (rank 0), ``{}`` elsewhere; every rank takes part in each
    gather, one tensor at a time in sorted key order, so no rank holds more than one full tensor beyond its shards."""
    out = {}
    for k in sorted(tensors):
        v = full_tensor(tensors[k].detach())
        if keep:
            out[k] = v.cpu().contiguous()
        del v
    return out


def gather_optimizer(opt: torch.optim.Optimizer, keep: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The optimizer state as ``train._optimizer_tensors`` writes it (``"<param index>.<name>"`` -> full tensor),
    gathered as in :func:`gather`."""
    sd = opt.state_dict()
    flat = {f"{i}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
            for i, st in sd["state"].items() for k, v in st.items()}
    return gather(flat, keep), sd["param_groups"]


def shard_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full optimizer tensors (``"<param index>.<name>"``) laid out like the (sharded) parameters they belong to;
    per-parameter scalars such as AdamW's ``step`` stay plain tensors."""
    params = [p for g in opt.param_groups for p in g["params"]]
    out = {}
    for key in sorted(tensors):
        i = int(key.split(".", 1)[0])
        v, p = tensors[key], params[i]
        out[key] = shard_like(v, p) if is_sharded(p) and tuple(v.shape) == tuple(p.shape) else v
    return out


__all__ = ["requested", "check_environment", "shard", "is_sharded", "full_tensor", "shard_like", "gather",
           "gather_optimizer", "shard_optimizer_state"]
