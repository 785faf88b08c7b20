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

Building and loading (no rank builds a whole model, and no rank reads a whole file): every rank but 0 builds the
modules on PyTorch's ``meta`` device (no storage; of the ``--pretrained`` folder it reads only the ``config.json``
files that size the model) and allocates only its shards after ``fully_shard`` (:func:`materialise`); it never opens
a weights file. Rank 0 builds what it must compute itself and leaves the rest on ``meta`` to be read from its file or
computed when it is sent:

* a fresh run without ``--pretrained``: the build of a one-process run recorded on ``meta``
  (:mod:`action_images.recorded_init`): every operation runs on ``meta``, random ops also on a throwaway CPU tensor
  so the generator advances as in a real build, and each parameter and buffer is computed from the recorded operations
  (with the recorded generator states) when it is sent, bit for bit the seeded init of a one-process run. A build
  with an operation the recorder cannot replay (one that reads data) runs for real instead, with a warning;
* ``--pretrained``: the model as a one-process run builds it (the same seeded init of everything the folder does
  not hold, the same random numbers drawn), except that the diffusers models of the folder are built from their
  config and every tensor of their weights files is read only when it is sent (:func:`pretrained_on_demand`);
* ``--resume``: the modules with parameters on ``meta`` and buffers computed (the rotary tables, the VAE's latent
  statistics: the buffers a state dict leaves out); every weight, EMA and optimizer tensor comes from the
  checkpoint's safetensors files (:class:`SafetensorsFile`), the ``--pretrained`` weights are not opened.

Rank 0 then sends every tensor, one at a time in sorted name order, and each rank keeps its slice
(:func:`load_full_state`, :class:`RankZeroState`, :func:`distribute_from_rank0`); a tensor from a file is read
(``safe_open`` + ``get_tensor``, the file closed again) just before it is sent, so rank 0, too, holds the tensors it
computed itself plus one full tensor in transit, never a whole state dict. The checkpoint's step, trainer state and
tensor shapes go out first as JSON (:func:`broadcast_json`, :func:`checkpoint_header`), and on a fresh run the
other ranks take rank 0's RNG state. So the initial weights are bit for bit those of a one-process (or DDP) run with
the same seed or checkpoint. The full state is not sent with ``torch.distributed.checkpoint``'s
``set_model_state_dict(broadcast_from_rank0=True)``: it works on gloo (tried with torch 2.13), but it sends its
metadata with ``broadcast_object_list`` (pickle) and allocates a whole bucket of full tensors at once.

Checkpoints stay the trainer's usual full state dicts, written tensor by tensor: every rank checks its shards for
NaN and inf (:func:`nonfinite`, one ``all_reduce``), then gathers each tensor in turn, and rank 0 writes its bytes
into the file whose header it wrote first and drops it (:func:`write_checkpoint_tensors`, :func:`write_gathered`,
:func:`write_safetensors`); the run's export is copied from the checkpoint's files one tensor at a time
(:func:`merge_safetensors`). So no rank holds more than its shards and one full tensor, and ``checkpoints/step_N`` and
the run's ``model.safetensors`` have the layout of a one-process run and load without FSDP. A checkpoint written by
any number of processes, with or without FSDP, resumes under FSDP and the other way round.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
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


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank()


def materialise(model: nn.Module, device: torch.device) -> None:
    """Allocate (uninitialised) storage for a model built (wholly or partly) on the ``meta`` device and then sharded:
    each rank gets its shards of the parameters and whole buffers; :func:`load_full_state` fills them. Rank 0 takes
    what it built with storage (:func:`own_tensors`) before this. A model without meta tensors is left as it is."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=device)


def own_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` that has storage, by name, non-persistent buffers included: what rank 0
    computed itself and sends from memory (:class:`RankZeroState`)."""
    return {n: t.detach() for n, t in (*model.named_parameters(), *model.named_buffers()) if not t.is_meta}


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


# ---- safetensors files read one tensor at a time ---------------------------------------------------------------------
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
                "U64": "uint64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


class SafetensorsFile:
    """A safetensors file read one tensor at a time. Construction reads only the header (names, shapes, dtypes:
    :attr:`specs`) and raises on a truncated or damaged file as ``load_file`` does; ``file[name]`` opens the file,
    copies out that one tensor and closes the file again, so nothing of it stays in memory between reads."""

    def __init__(self, path: str | os.PathLike):
        import safetensors
        self.path = str(path)
        self.specs: dict[str, list] = {}
        with safetensors.safe_open(self.path, framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                if sl.get_dtype() not in _DTYPE_NAMES:
                    raise ValueError(f"{self.path}: tensor {k!r} has dtype {sl.get_dtype()}, which this trainer "
                                     "does not read")
                self.specs[k] = [list(sl.get_shape()), _DTYPE_NAMES[sl.get_dtype()]]

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def keys(self):
        return self.specs.keys()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.specs:
            raise KeyError(f"{self.path} holds no tensor {name!r}")
        import safetensors
        with safetensors.safe_open(self.path, framework="pt") as f:
            return f.get_tensor(name)


class RankZeroState:
    """What rank 0 sends to fill a sharded model (:func:`load_full_state`): tensors it holds (``own``: name -> tensor,
    each dropped once sent) and tensors of safetensors files (``files``: name -> (file, name in the file), each read
    when it is sent). A name in both is read from the file: a resumed checkpoint's weights replace the buffers rank 0
    computed while it built the model."""

    def __init__(self, own: dict[str, torch.Tensor] | None = None,
                 files: dict[str, tuple[SafetensorsFile, str]] | None = None):
        self.own, self.files = dict(own or {}), dict(files or {})

    def __contains__(self, name: object) -> bool:
        return name in self.files or name in self.own

    def pop(self, name: str) -> torch.Tensor:
        own = self.own.pop(name, None)
        if name in self.files:
            f, key = self.files.pop(name)
            return f[key]
        if own is None:
            raise KeyError(name)
        return own


def load_full_state(model: nn.Module, full: RankZeroState | dict[str, torch.Tensor] | None,
                    device: torch.device) -> None:
    """Fill a sharded model from rank 0: ``full`` (rank 0; the other ranks pass None) gives every parameter and buffer
    of ``model`` (non-persistent buffers included: :func:`own_tensors`) by name, a :class:`RankZeroState` or a dict;
    entries are dropped (or read from their file) as they are sent. One tensor at a time, in sorted name order; each
    rank copies its slice into its shard. A name rank 0 cannot give stops every rank with the same message."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    names = sorted({**params, **buffers})
    missing = broadcast_json([n for n in names if n not in full] if full is not None else None, device)
    if missing:
        raise ValueError(f"rank 0 has no value to send for {len(missing)} tensor(s) of the model: {missing[:5]}")
    with torch.no_grad():
        for name in names:
            local = params[name] if name in params else buffers[name]
            src = full.pop(name) if full is not None else None
            t = broadcast_full(src, local.shape, local.dtype, device)
            if is_sharded(local):
                local.to_local().copy_(local_part(t, local).to_local())
            else:
                local.copy_(t)
            del t, src



# ---- --pretrained on rank 0: diffusers models whose weights are read when they are sent ---------------------------
# WanBackbone builds its input and output layers from the file's (models/wan.py copies the patch embedding into a
# wider one and replaces the output projection): rank 0 reads these small tensors while it builds the model
READ_AT_BUILD = ("patch_embedding.", "proj_out.")
WEIGHTS_FILE, WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"


def weight_files(folder: Path) -> dict[str, tuple[SafetensorsFile, str]]:
    """name -> (file, name in the file) of a diffusers model folder's weights (one file, or the shards of an index)."""
    if (folder / WEIGHTS_INDEX).exists():
        from action_images.data.lerobot_format import resolve_inside
        index = folder / WEIGHTS_INDEX
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not a safetensors index with a 'weight_map' object ({e})") from None
        if not all(isinstance(fn, str) for fn in names):
            raise ValueError(f"{index}: weight_map values must be file names")
        # the index names its shards: each must lie inside the folder it describes
        files = {fn: SafetensorsFile(resolve_inside(folder, fn, index, "weight_map")) for fn in names}
        return {k: (files[fn], k) for k, fn in weight_map.items()}
    if (folder / WEIGHTS_FILE).exists():
        f = SafetensorsFile(folder / WEIGHTS_FILE)
        return {k: (f, k) for k in f}
    raise FileNotFoundError(f"{folder}: missing {folder / WEIGHTS_FILE} (safetensors only; nothing is downloaded)")


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> torch.Tensor:
    """Put ``value`` in place of the parameter (keeping its ``requires_grad``) or buffer ``name``; returns it."""
    path, _, attr = name.rpartition(".")
    mod = model.get_submodule(path)
    if attr in mod._parameters:
        new = nn.Parameter(value, requires_grad=mod._parameters[attr].requires_grad)
        mod._parameters[attr] = new
        return new
    mod._buffers[attr] = value
    return value


def _empty_from_config(cls: Any, folder: Path) -> nn.Module:
    """The model of a diffusers folder's config, built as diffusers' ``from_pretrained`` builds it before it reads the
    weights: parameters on ``meta`` (the same random numbers drawn), buffers computed."""
    from accelerate import init_empty_weights
    try:
        from diffusers.models.modeling_utils import no_init_weights
    except ImportError:                               # pragma: no cover - depends on the diffusers version
        no_init_weights = contextlib.nullcontext
    config = cls.load_config(str(folder), local_files_only=True)
    with no_init_weights(), init_empty_weights():
        return cls.from_config(config)


@contextlib.contextmanager
def pretrained_on_demand() -> Iterator[dict[int, tuple[torch.Tensor, SafetensorsFile, str]]]:
    """While active, every diffusers model's ``from_pretrained`` builds the model as diffusers does (from the
    folder's config, parameters first on ``meta``, so the same random numbers are drawn) and checks the weights file's
    names and shapes against it, but reads no weight: each parameter becomes a placeholder without storage (one
    element, expanded), which :func:`defer_to_files` turns into a tensor read from its file when it is sent. Persistent
    buffers and :data:`READ_AT_BUILD` are read at once (small). Yields the placeholders: id -> (placeholder, file,
    name in the file). Rank 0 of an FSDP run builds its ``--pretrained`` model inside this."""
    from diffusers import ModelMixin
    original = ModelMixin.__dict__["from_pretrained"]
    placeholders: dict[int, tuple[torch.Tensor, SafetensorsFile, str]] = {}

    def from_pretrained(cls: Any, path: str | os.PathLike, **kwargs: Any) -> nn.Module:
        for k in ("use_safetensors", "local_files_only"):
            kwargs.pop(k, None)
        if kwargs:
            raise ValueError(f"{cls.__name__}.from_pretrained({str(path)!r}): {sorted(kwargs)} are not supported "
                             "while rank 0 reads the weights one tensor at a time")
        folder = Path(path)
        model = _empty_from_config(cls, folder)
        files = weight_files(folder)
        own = model.state_dict(keep_vars=True)
        bad = sorted(set(own) ^ set(files)) + sorted(
            k for k in set(own) & set(files) if list(own[k].shape) != files[k][0].specs[files[k][1]][0])
        if bad:
            raise ValueError(f"{folder}: the weights file does not fit {cls.__name__} built from its config.json "
                             f"({bad[:5]})")
        for name, t in own.items():
            f, key = files[name]
            if isinstance(t, nn.Parameter) and t.numel() > 1 and not name.startswith(READ_AT_BUILD):
                new = _set_tensor(model, name, torch.zeros((), dtype=t.dtype).expand(t.shape))
                placeholders[id(new)] = (new, f, key)
            else:
                _set_tensor(model, name, f[key].to(t.dtype))
        model.register_to_config(_name_or_path=str(path))
        return model.eval()

    ModelMixin.from_pretrained = classmethod(from_pretrained)
    try:
        yield placeholders
    finally:
        ModelMixin.from_pretrained = original


def defer_to_files(model: nn.Module, placeholders: dict[int, tuple[torch.Tensor, SafetensorsFile, str]]
                   ) -> dict[str, tuple[SafetensorsFile, str]]:
    """After a build inside :func:`pretrained_on_demand`: every placeholder of ``model`` put back on ``meta``, and
    name -> (file, name in the file) of each, for :class:`RankZeroState`. Raises when the build replaced or copied a
    placeholder (its value would be lost)."""
    out: dict[str, tuple[SafetensorsFile, str]] = {}
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        hit = placeholders.get(id(t))
        if hit is not None and hit[0] is t:
            out[name] = hit[1:]
            _set_tensor(model, name, torch.empty(t.shape, dtype=t.dtype, device="meta"))
        elif t.numel() > 1 and not t.is_meta and not any(t.stride()):
            raise RuntimeError(f"{name}: built from a pretrained weight that rank 0 has not read yet")
    if len(out) != len(placeholders):
        raise RuntimeError(f"{len(placeholders) - len(out)} pretrained weight(s) were replaced while the model was "
                           "built, so rank 0 cannot read them when it sends them")
    placeholders.clear()
    return out


# ---- the checkpoint of a sharded run --------------------------------------------------------------------------------
def _specs_of(part: SafetensorsFile | dict[str, torch.Tensor]) -> dict[str, list]:
    return dict(part.specs) if isinstance(part, SafetensorsFile) else specs(part)


def checkpoint_header(found: tuple[Path, dict[str, Any]] | None) -> dict[str, Any] | None:
    """What the other FSDP ranks need of the checkpoint rank 0 opened: its path, trainer state, config and the shapes
    and dtypes of its tensors (JSON; the tensors follow one at a time). The weights, EMA and optimizer parts are
    :class:`SafetensorsFile` (only their headers are read here) or dicts of tensors."""
    if found is None:
        return None
    path, ck = found
    return {"path": str(path), "state": ck["state"], "config": ck["config"],
            **{part: _specs_of(ck[part]) for part in ("weights", "ema", "optimizer")},
            "rng": specs({"torch": ck["rng"]})["torch"]}


def check_checkpoint_shapes(head: dict[str, Any], model: nn.Module, out: Path) -> None:
    """Raise on every FSDP rank alike when the checkpoint's weights do not fit the model (names or shapes), before
    any tensor is sent: the check a one-process ``load_state_dict`` makes."""
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    have = {k: shape for k, (shape, _) in head["weights"].items()}
    if own != have:
        bad = sorted(set(own) ^ set(have)) + sorted(k for k in set(own) & set(have) if own[k] != have[k])
        raise ValueError(f"--resume {out}: the checkpoint's weights do not fit the model ({bad[:5]})")


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """The optimizer state as a checkpoint stores it (``"<param index>.<name>"`` -> tensor, and the param groups)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def restore_rng(state: dict[str, Any], rng: torch.Tensor) -> None:
    """The torch, numpy and Python RNG states of a checkpoint (``rng``: its torch state)."""
    torch.set_rng_state(rng)
    s = state["numpy_rng"]
    np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    p = state["python_rng"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def load_sharded_checkpoint(ck: dict[str, Any] | None, head: dict[str, Any], ema: dict[str, torch.Tensor],
                            opt: torch.optim.Optimizer, sd: dict[str, torch.Tensor], device: torch.device) -> None:
    """A checkpoint's EMA, optimizer and RNG state for an FSDP run whose weights are already loaded: rank 0 (``ck``:
    the checkpoint it opened; None elsewhere) reads and sends the EMA, optimizer and RNG tensors one at a time and
    every rank keeps its shards. The EMA and the AdamW moments are laid out like their parameters; per-parameter
    scalars (``step``) stay plain."""
    for k in sorted(head["ema"]):
        ema[k] = distribute_from_rank0(ck["ema"][k] if ck else None, sd[k], device, torch.float32)
    params = [p for g in opt.param_groups for p in g["params"]]
    tensors = {}
    for key in sorted(head["optimizer"]):
        shape, dtype = head["optimizer"][key]
        p = params[int(key.split(".", 1)[0])]
        v = ck["optimizer"][key] if ck else None
        if is_sharded(p) and shape == list(p.shape):
            tensors[key] = distribute_from_rank0(v, p, device)
        else:
            tensors[key] = broadcast_full(v, shape, getattr(torch, dtype), device).cpu()
        del v
    load_optimizer(opt, tensors, head["state"]["param_groups"])
    shape, dtype = head["rng"]
    rng = broadcast_full(ck["rng"] if ck else None, shape, getattr(torch, dtype), device).cpu()
    restore_rng(head["state"], rng)



# ---- the checkpoint of a sharded run, written tensor by tensor ----------------------------------------------------
_SAFETENSORS_DTYPE = {name: code for code, name in _DTYPE_NAMES.items()}


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def write_order(tensor_specs: dict[str, list]) -> list[str]:
    """The order in which :func:`write_safetensors` lays tensors out: wider dtypes first, then by name (as
    ``save_file`` does), so every tensor starts at a multiple of its element size."""
    return sorted(tensor_specs, key=lambda k: (-_itemsize(tensor_specs[k][1]), k))


def write_safetensors(path: str | os.PathLike, tensor_specs: dict[str, list], get: Any,
                      metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of the tensors ``tensor_specs`` names (name -> [shape, dtype name], as :func:`specs`), written
    one tensor at a time: the header first (every offset follows from the shapes and dtypes), then the bytes of
    ``get(name)`` for each name in :func:`write_order`, so the writer holds one tensor at a time. The file reads back with
    ``load_file`` and ``safe_open`` as one written by ``save_file``; a tensor whose shape or dtype is not the one
    announced raises (the file is then incomplete: callers write into a temporary folder)."""
    names = write_order(tensor_specs)
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for k in names:
        shape, dtype = tensor_specs[k]
        size = int(np.prod(shape, dtype=np.int64)) * _itemsize(dtype)
        header[k] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)                     # the 8-byte alignment save_file keeps
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for k in names:
            t = get(k)
            shape, dtype = tensor_specs[k]
            if list(t.shape) != list(shape) or t.dtype != getattr(torch, dtype):
                raise ValueError(f"{path}: {k} is {list(t.shape)} {t.dtype}, announced as {shape} {dtype}")
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del t


def write_gathered(path: str | os.PathLike | None, tensors: dict[str, torch.Tensor]) -> None:
    """``tensors`` (DTensors or plain tensors) as one safetensors file of full tensors, written by rank 0 (``path``;
    the other ranks pass None). A collective: every rank gathers each tensor in sorted name order, rank 0 writes its
    bytes and drops it before the next one (:func:`write_safetensors`), so no rank holds more than its shards and one
    full tensor."""
    tensors = {k: v.detach() for k, v in tensors.items()}
    if path is None:
        for k in write_order(specs(tensors)):
            full_tensor(tensors[k])
        return
    write_safetensors(path, specs(tensors), lambda k: full_tensor(tensors[k]))


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The optimizer state as a checkpoint stores it (``"<param index>.<name>"`` -> tensor, DTensors as they are)
    and the param groups; nothing is gathered or copied."""
    sd = opt.state_dict()
    flat = {f"{i}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
            for i, st in sd["state"].items() for k, v in st.items()}
    return flat, sd["param_groups"]


def nonfinite(tensors: dict[str, torch.Tensor], device: torch.device) -> list[str]:
    """The names of the floating-point tensors of ``tensors`` that hold a NaN or inf on any rank, on every rank
    alike: each rank checks its own shards, and one ``all_reduce`` of the flags joins them (nothing is gathered)."""
    import torch.distributed as dist
    names = sorted(k for k, v in tensors.items() if v.is_floating_point())
    local = lambda t: t.to_local() if is_sharded(t) else t
    flags = torch.tensor([0.0 if torch.isfinite(local(tensors[k].detach())).all() else 1.0 for k in names],
                         dtype=torch.float32, device=device)
    if dist.is_initialized() and flags.numel():
        dist.all_reduce(flags)
    return [k for k, f in zip(names, flags.tolist()) if f > 0]


CHECKPOINT_TENSOR_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


def write_checkpoint_tensors(folder: Path | None, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                             opt: torch.optim.Optimizer) -> None:
    """The weights, EMA and optimizer files of a checkpoint of a sharded run (:data:`CHECKPOINT_TENSOR_FILES`), in
    the layout of a one-process run: a collective, rank 0 (``folder``, created empty; None elsewhere) streams each
    gathered tensor into its file (:func:`write_gathered`), so it never holds a whole state dict."""
    if folder is not None:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    flat, _ = optimizer_tensors(opt)
    for name, part in zip(CHECKPOINT_TENSOR_FILES, (weights, ema, flat)):
        write_gathered(folder / name if folder is not None else None, part)


def merge_safetensors(path: str | os.PathLike, parts: list[str | os.PathLike]) -> None:
    """One safetensors file of the tensors of ``parts`` (files), a later part's tensor replacing an earlier one of the
    same name, copied one tensor at a time (:class:`SafetensorsFile`, :func:`write_safetensors`)."""
    source: dict[str, SafetensorsFile] = {}
    for p in parts:
        f = SafetensorsFile(p)
        source.update({k: f for k in f})
    write_safetensors(path, {k: f.specs[k] for k, f in source.items()}, lambda k: source[k][k])


__all__ = ["requested", "check_environment", "shard", "is_sharded", "full_tensor", "materialise", "own_tensors",
           "broadcast_json", "specs", "broadcast_full", "local_part", "distribute_from_rank0", "SafetensorsFile",
           "RankZeroState", "load_full_state", "READ_AT_BUILD", "weight_files", "pretrained_on_demand",
           "defer_to_files", "checkpoint_header", "check_checkpoint_shapes", "load_optimizer", "restore_rng",
           "load_sharded_checkpoint", "write_order", "write_safetensors", "write_gathered", "optimizer_tensors",
           "nonfinite", "CHECKPOINT_TENSOR_FILES", "write_checkpoint_tensors", "merge_safetensors"]
