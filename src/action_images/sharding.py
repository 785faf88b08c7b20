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

Building and loading (no rank but rank 0 holds or reads a full model): rank 0 builds the model as a one-process run
does (the same seeded init, or the ``--pretrained`` folder's weights) and reads the ``--resume`` checkpoint; every
other rank builds the same modules on PyTorch's ``meta`` device (no storage; of the ``--pretrained`` folder it reads
only the ``config.json`` files that size the model) and allocates only its shards after ``fully_shard``
(:func:`materialise`); it never opens the checkpoint. Rank 0 then
sends every tensor, one at a time in sorted key order, and each rank keeps its slice (:func:`load_full_state`,
:func:`distribute_from_rank0`); the checkpoint's step, trainer state and tensor shapes go out first as JSON
(:func:`broadcast_json`), and the other ranks take rank 0's RNG state. So a non-zero rank never holds more than one
full tensor beyond its shards, and the initial weights are bit for bit those of a one-process (or DDP) run with the
same seed. The full state is not sent
with ``torch.distributed.checkpoint``'s ``set_model_state_dict(broadcast_from_rank0=True)``: it works on gloo (tried
with torch 2.13), but it sends its metadata with ``broadcast_object_list`` (pickle) and allocates a whole bucket of
full tensors at once.

Checkpoints stay the trainer's usual full state dicts: :func:`gather` gathers every tensor (one at a time, in the
same order on every rank) and only rank 0 keeps a CPU copy, so ``checkpoints/step_N`` and the run's
``model.safetensors`` have the layout of a one-process run and load without FSDP. A checkpoint written by any number
of processes, with or without FSDP, resumes under FSDP and the other way round.
"""

from __future__ import annotations

import json
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


# ---- building on meta, loading on rank 0 --------------------------------------------------------------------------------
def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank()


def materialise(model: nn.Module, device: torch.device) -> None:
    """Allocate (uninitialised) storage for a model built on the ``meta`` device and then sharded: each rank gets its
    shards of the parameters and whole buffers; :func:`load_full_state` fills them. A model with real storage (rank
    0's) is left as it is."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=device)


def broadcast_json(obj: Any, device: torch.device) -> Any:
    """Rank 0's ``obj`` (JSON-serialisable) on every rank: its UTF-8 JSON text as a byte tensor (no pickle)."""
    import torch.distributed as dist
    main = _rank() == 0
    data = json.dumps(obj).encode() if main else b""
    n = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(n, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if main
           else torch.empty(int(n.item()), dtype=torch.uint8, device=device))
    dist.broadcast(buf, 0)
    return obj if main else json.loads(buf.cpu().numpy().tobytes().decode())


def specs(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    """``name -> [shape, dtype name]`` of ``tensors``, for :func:`broadcast_json`."""
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in tensors.items()}


def broadcast_full(full: torch.Tensor | None, shape: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Rank 0's ``full`` (cast to ``dtype``) on every rank, on ``device``; every rank passes the ``shape`` and ``dtype``,
    the others None for ``full``. Sent as raw bytes, so any dtype (bool, bfloat16) goes over gloo and NCCL alike.
    The shapes must agree (checked by the caller on every rank beforehand: an error on rank 0 alone would leave the
    others waiting)."""
    import torch.distributed as dist
    if _rank() == 0:
        if tuple(full.shape) != tuple(shape):
            raise ValueError(f"rank 0 sends a {tuple(full.shape)} tensor where {tuple(shape)} is expected")
        t = full.detach().to(device, dtype).contiguous()
    else:
        t = torch.empty(tuple(shape), dtype=dtype, device=device)
    dist.broadcast(t.reshape(-1).view(torch.uint8), 0)
    return t


def local_part(full: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``full`` laid out as ``like`` from a copy every rank already holds (no communication): a DTensor with
    ``like``'s mesh and placements, or a plain tensor when ``like`` is one; dtype ``dtype`` (default ``like``'s)."""
    full = full.to(like.device, dtype or like.dtype)
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def distribute_from_rank0(full: torch.Tensor | None, like: torch.Tensor, device: torch.device,
                          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rank 0's ``full`` laid out as ``like`` on every rank, as dtype ``dtype`` (default ``like``'s): a collective, every
    rank calls it in the same order; the other ranks pass None."""
    dtype = dtype or like.dtype
    return local_part(broadcast_full(full, like.shape, dtype, device), like, dtype)


def load_full_state(model: nn.Module, full: dict[str, torch.Tensor] | None, device: torch.device) -> None:
    """Fill a sharded model from rank 0: ``full`` (rank 0; the other ranks pass None) maps every key of
    ``model.state_dict()`` to its full tensor and is consumed (each entry is dropped once sent). Buffers outside the
    state dict (non-persistent: rotary tables, VAE normalisation) are sent from rank 0's own model. One tensor at a
    time, in sorted name order; each rank copies its slice into its shard."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name in sorted({**params, **buffers}):
            local = params[name] if name in params else buffers[name]
            src = None
            if full is not None:
                src = full.pop(name) if name in full else local
            t = broadcast_full(src, local.shape, local.dtype, device)
            if is_sharded(local):
                local.to_local().copy_(local_part(t, local).to_local())
            else:
                local.copy_(t)
            del t, src


__all__ = ["requested", "check_environment", "shard", "is_sharded", "full_tensor", "gather", "gather_optimizer",
           "materialise", "broadcast_json", "specs", "broadcast_full", "local_part", "distribute_from_rank0",
           "load_full_state"]
