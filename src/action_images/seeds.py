"""Episode seeds: one derivation for collection and evaluation, keyed so the two never share an episode.

A seed is a ``SeedSequence`` of (base seed; purpose, task, index), so episode k of one task does not depend on which
other tasks run, and evaluation episodes ("eval") never coincide with collected demonstrations ("collect").
"""

from __future__ import annotations

import zlib

import numpy as np

PURPOSES = ("collect", "eval")


def episode_seed(base_seed: int, task: str, index: int, purpose: str = "eval") -> int:
    """32-bit seed of episode (or collection attempt) ``index`` of ``task`` for ``purpose``."""
    if purpose == "collect":       # the layout every collected dataset so far was written with
        key: tuple[int, ...] = (zlib.crc32(task.encode()), int(index))
    elif purpose == "eval":
        key = (zlib.crc32(b"eval"), zlib.crc32(task.encode()), int(index))
    else:
        raise ValueError(f"purpose must be one of {PURPOSES}; got {purpose!r}")
    ss = np.random.SeedSequence(entropy=int(base_seed), spawn_key=key)
    return int(ss.generate_state(1)[0])
