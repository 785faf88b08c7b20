"""A fresh model build recorded on the ``meta`` device and replayed one tensor at a time.

Rank 0 of a sharded (FSDP) run that starts without ``--pretrained`` must send every rank the seeded init of a
one-process run without holding the whole model: :func:`build_recorded` runs the build with every operation on
``meta`` (random ops also on a throwaway CPU tensor, so the generator advances as in a real build) and returns, per
parameter and buffer, the :class:`InitRecorder` that computes it, bit for bit, when :mod:`action_images.sharding`
sends it. A build with an operation the recorder cannot replay (one that reads data) runs for real, with a warning.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn


class NotRecordable(RuntimeError):
    """An operation of a model's build that :class:`InitRecorder` cannot replay (it reads data, or draws random
    numbers in a way that depends on values)."""


# random ops whose draws depend only on the shapes: replaying them from the generator state taken before the op gives
# the same numbers, and running them on an uninitialised tensor of the same shape advances the generator as they do
_RANDOM = {"uniform_", "normal_", "randn", "rand", "randint", "random_", "randperm", "exponential_", "log_normal_",
           "cauchy_", "geometric_"}


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _Ref:
    """A recorded tensor: a view (size, stride, offset, dtype) of the storage ``key``; a leaf of pytree maps."""

    def __init__(self, key: int, size: tuple, stride: tuple, offset: int, dtype: torch.dtype):
        self.key, self.size, self.stride, self.offset, self.dtype = key, size, stride, offset, dtype


class _Const:
    """A real tensor the build made from Python data (``torch.tensor([...])``), kept as it is."""

    def __init__(self, value: torch.Tensor):
        self.value = value


class InitRecorder:
    """Records a model's build on the ``meta`` device and computes any of its tensors later, one at a time, exactly as
    the build computed it. While active (``with InitRecorder() as rec: model = build()``) every aten operation runs on
    ``meta`` (factories too, whatever device they name), so the model gets no storage; each operation that creates or
    writes a storage is recorded with its arguments (tensors by storage, size, stride and offset; real tensors the
    build makes from Python data as constants) and, for random ops, the torch generator state before it. Random ops
    also run on an uninitialised CPU tensor of their shape, so the generator advances as in a real build and what the
    build draws afterwards, and the state it leaves, are those of a real build.

    ``rec[name]`` (after :meth:`bind`) replays the operations that created and wrote that tensor's storage, and
    recursively those of their inputs, in their recorded order with the recorded generator states: bit for bit the
    tensor of a real build (the CPU kernels run on the same layouts), holding only that tensor and its inputs. An
    operation the recorder cannot replay raises :class:`NotRecordable` during the build."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        recorder = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return recorder._op(func, args, kwargs or {})

        self._mode = Mode()
        self._entries: list[tuple] = []       # (func, args, kwargs, rng state or None, [(output index, storage)])
        self._writers: dict[int, list[int]] = {}   # storage -> indices of the entries that create or write it
        self._inputs: list[set[int]] = []      # per entry: the storages it reads
        self._alive: list[torch.Tensor] = []   # every meta tensor seen: keeps storage ids unique
        self._sources: dict[str, tuple] = {}

    def __enter__(self) -> "InitRecorder":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)

    # -- recording
    def _desc(self, t: torch.Tensor) -> "_Ref | _Const":
        if t.is_meta:
            key = _storage(t)
            if key not in self._writers:
                raise NotRecordable(f"a meta tensor made outside the recorded build ({tuple(t.shape)})")
            return _Ref(key, tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.dtype)
        return _Const(t.detach().clone())

    def _op(self, func: Any, args: tuple, kwargs: dict) -> Any:
        from torch.utils._pytree import tree_flatten, tree_map
        name = func.overloadpacket.__name__
        random = torch.Tag.nondeterministic_seeded in func.tags
        if random and (name not in _RANDOM or kwargs.get("generator") is not None):
            raise NotRecordable(f"{func} draws random numbers the recorder cannot replay")
        if random and any(torch.is_tensor(a) for a in tree_flatten((args, kwargs))[0][1:]):
            raise NotRecordable(f"{func} with tensor arguments besides the one it fills")
        tensors = [a for a in tree_flatten((args, kwargs))[0] if torch.is_tensor(a)]
        descs = {id(a): self._desc(a) for a in tensors}
        meta = lambda a: (a if a.is_meta else a.detach().to("meta")) if torch.is_tensor(a) else a
        margs, mkwargs = tree_map(meta, (args, kwargs))
        if "device" in mkwargs:
            mkwargs["device"] = torch.device("meta")
        state = None
        if random:                      # advance the generator as the real op does
            state = torch.get_rng_state()
            real = lambda a: torch.empty_strided(a.shape, a.stride(), dtype=a.dtype) if torch.is_tensor(a) else a
            func(*tree_map(real, args), **tree_map(real, kwargs))
        try:
            out = func(*margs, **mkwargs)
        except (NotImplementedError, RuntimeError) as e:
            raise NotRecordable(f"{func} does not run on meta tensors ({e})") from None
        inputs = {d.key for d in descs.values() if isinstance(d, _Ref)}
        written = {descs[id(a)].key for a, arg in self._schema_args(func, args, kwargs)
                   if torch.is_tensor(a) and a.is_meta and arg.alias_info is not None and arg.alias_info.is_write}
        flat_out = tree_flatten(out)[0]
        if any(not torch.is_tensor(o) for o in flat_out if o is not None):
            raise NotRecordable(f"{func} returns data, which a meta build does not have")
        created = []
        for i, o in enumerate(flat_out):
            if torch.is_tensor(o) and _storage(o) not in inputs:
                created.append((i, _storage(o)))
            if torch.is_tensor(o):
                self._alive.append(o)
        self._alive.extend(a for a in tensors if a.is_meta)
        if created or written:
            index = len(self._entries)
            # the build sees meta tensors and may name their device (``device=x.device``): the replay runs on CPU
            enc = lambda a: descs[id(a)] if torch.is_tensor(a) else \
                torch.device("cpu") if isinstance(a, torch.device) and a.type == "meta" else a
            self._entries.append((func, tree_map(enc, args), tree_map(enc, kwargs), state, created))
            self._inputs.append(inputs)
            for key in {k for _, k in created} | written:
                self._writers.setdefault(key, []).append(index)
        return out

    @staticmethod
    def _schema_args(func: Any, args: tuple, kwargs: dict) -> Iterator[tuple[Any, Any]]:
        schema = func._schema.arguments
        for a, arg in zip(args, schema):
            yield a, arg
        for arg in schema:
            if arg.name in kwargs:
                yield kwargs[arg.name], arg

    # -- replay
    def bind(self, model: nn.Module) -> dict[str, tuple["InitRecorder", str]]:
        """name -> (self, name) for every parameter and buffer of ``model`` (non-persistent buffers included), as
        :class:`RankZeroState` takes them; raises :class:`NotRecordable` for one the build did not record."""
        out = {}
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            if not t.is_meta or _storage(t) not in self._writers:
                raise NotRecordable(f"{name} was not built by the recorded operations")
            self._sources[name] = self._desc(t)
            out[name] = (self, name)
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.compute(self._sources[name])

    def compute(self, desc: "_Ref") -> torch.Tensor:
        """The real tensor of a recorded meta tensor."""
        from torch.utils._pytree import tree_flatten, tree_map
        needed, todo, seen = set(), [desc.key], set()
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            for i in self._writers.get(key, ()):
                if i not in needed:
                    needed.add(i)
                    todo.extend(self._inputs[i])
        storages: dict[int, Any] = {}

        def dec(a: Any) -> Any:
            if isinstance(a, _Ref):
                return torch.empty(0, dtype=a.dtype).set_(storages[a.key], a.offset, a.size, a.stride)
            return a.value if isinstance(a, _Const) else a

        saved = torch.get_rng_state()
        try:
            with torch.no_grad():
                for i in sorted(needed):
                    func, args, kwargs, state, created = self._entries[i]
                    if state is not None:
                        torch.set_rng_state(state)
                    out = func(*tree_map(dec, args), **tree_map(dec, kwargs))
                    flat = tree_flatten(out)[0]
                    for j, key in created:
                        storages[key] = flat[j].untyped_storage()
                return dec(desc)
        finally:
            torch.set_rng_state(saved)


def build_recorded(build: Any, warn: Any = print) -> tuple[nn.Module, dict[str, tuple[InitRecorder, str]]]:
    """``build()`` on rank 0 of a fresh FSDP run: the model on ``meta`` and name -> (recorder, name) of every tensor,
    each computed when it is sent (:class:`InitRecorder`, :class:`RankZeroState`), with the values and the generator
    state of a real build. A build the recorder cannot replay runs again for real (``warn`` says why)."""
    state = torch.get_rng_state()
    try:
        with InitRecorder() as rec:
            model = build()
        return model, rec.bind(model)
    except NotRecordable as e:
        warn(f"FSDP: rank 0 builds the whole model ({e})")
        torch.set_rng_state(state)
        return build(), {}
