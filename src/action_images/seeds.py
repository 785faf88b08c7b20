"""Episode seeds: one derivation for collection and evaluation, with the two in independent streams.

A seed is a ``SeedSequence`` of (base seed; purpose, task, index), so episode k of one task does not depend on which
other tasks run, and evaluation episodes ("eval") come from another stream than collected demonstrations
("collect"): a 32-bit seed can repeat across the streams only by chance (about 1 in 2^32 per pair).
"""

from __future__ import annotations

import zlib

import numpy as np

PURPOSES = ("collect", "eval")


def episode_seed(base_seed: int, task: str, index: int, purpose: str = "eval") -> int:
    """32-bit seed of episode (or collection attempt) ``index`` of ``task`` for ``purpose``."""
    if purpose == "collect":       # (task, index): the key the collected datasets are written with
        key: tuple[int, ...] = (zlib.crc32(task.encode()), int(index))
    elif purpose == "eval":
        key = (zlib.crc32(b"eval"), zlib.crc32(task.encode()), int(index))
    else:
        raise ValueError(f"purpose must be one of {PURPOSES}; got {purpose!r}")
    ss = np.random.SeedSequence(entropy=int(base_seed), spawn_key=key)
    return int(ss.generate_state(1)[0])
