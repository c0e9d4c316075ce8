"""The run's seed, and the independent seeds every random stream of a run derives from it.

One top-level ``seed`` decides a run: weight initialisation, the training order,
the loader workers, MixUp, dropout and token corruption, and the eval runner's
sampling. Each stream gets its own seed, derived from the run's seed and the
stream's name (and epoch, step or rank), so that streams never share draws and a
stream can be recreated at any point of a run from those numbers alone. That is
what makes a resumed run repeat an uninterrupted one exactly.

Nothing here touches torch's or numpy's global random state.
"""

from __future__ import annotations

import secrets
import zlib

import numpy as np

# A seed drawn for `seed: null` fits in 31 bits, so that it reads well in config.yaml.
DRAWN_SEED_BOUND = 2**31


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 63-bit seed for the stream named by ``keys`` (names, epochs, ranks), from the run's seed.

    Equal inputs give equal seeds in every process and on every machine (strings are
    hashed with CRC-32, not Python's per-process ``hash``).
    """
    words = [seed % 2**64]
    for key in keys:
        words.append(zlib.crc32(key.encode()) if isinstance(key, str) else int(key) % 2**64)
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def draw_seed() -> int:
    """A fresh seed from the operating system, for ``seed: null``."""
    return secrets.randbelow(DRAWN_SEED_BOUND)


def agreed_seed(trainer, seed: int) -> int:
    """Rank zero's ``seed`` on every rank of a Lightning ``trainer`` (a drawn seed differs between processes)."""
    return trainer.strategy.broadcast(seed, src=0) if trainer.world_size > 1 else seed
