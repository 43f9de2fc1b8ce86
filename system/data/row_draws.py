"""Per-row random draws that cost a hash, not a generator.

The data plane draws a few numbers for every row it streams (the resampling coin, the text stage's caption coin
and pool index), each a function of the row's identity so that runs are reproducible whatever the batching,
actor count or process ids. Building a numpy Generator per row (SeedSequence + PCG64 + Generator) costs about
20 us, about as much as the draws' whole share of decoding a small image; these are one BLAKE2b digest of the
row's identity and then splitmix64 steps (about 2 us in all). Plain Python; no numpy state is touched.

The same identity picks which rows a per-class cap keeps (`PerClassCap`): the rows with the smallest keys, so
the choice does not depend on the order in which streamed blocks arrive.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

_MASK = 2**64 - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: consecutive counters land far apart


def mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit integers whose outputs pass BigCrush for counter inputs."""
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def hash_words(*words: int) -> int:
    """A 64-bit digest of integer words (any sign or size up to 64 bits after reduction mod 2**64)."""
    packed = struct.pack(f"<{len(words)}Q", *(w & _MASK for w in words))
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little")


class RowDraws:
    """A counter-based stream of draws from one 64-bit key: the k-th draw is mix64(key + k * golden).

    Duck-types the two numpy Generator methods the text stage uses (`random()`, `integers(n)`), so code that
    takes an optional Generator takes this too."""

    __slots__ = ("key", "count")

    def __init__(self, key: int) -> None:
        self.key, self.count = int(key) & _MASK, 0

    def next64(self) -> int:
        self.count += 1
        return mix64((self.key + self.count * _GOLDEN) & _MASK)

    def random(self) -> float:
        """A uniform float in [0, 1) (53 bits, as numpy's)."""
        return (self.next64() >> 11) * (1.0 / 2**53)

    def integers(self, high: int) -> int:
        """A uniform integer in [0, high): Lemire's multiply-shift (bias below high / 2**64)."""
        if high < 1:
            raise ValueError(f"integers: high must be >= 1, got {high}")
        return (self.next64() * int(high)) >> 64


def mix64_array(x: np.ndarray) -> np.ndarray:
    """`mix64` on every entry of a uint64 array (numpy's unsigned arithmetic wraps mod 2**64, as the masks do)."""
    x = np.asarray(x, dtype=np.uint64) + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_keys(shard: np.ndarray, row: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit key per row [N] from its identity (shard position, ordinal in the shard) and a seed."""
    salt = np.uint64((int(seed) * _GOLDEN) & _MASK)
    s = np.asarray(shard, dtype=np.int64).astype(np.uint64)
    r = np.asarray(row, dtype=np.int64).astype(np.uint64)
    return mix64_array(mix64_array(s ^ salt) ^ r)


class PerClassCap:
    """At most `cap` rows of each class, fed in batches: the rows with the smallest keys (`row_keys`). Which rows
    are kept is a function of the rows' identities and the seed, not of the order batches arrive in; the result
    is ordered by class, then key. Memory: the kept rows plus at most as many pending ones (or 65,536)."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.cap = cap
        self._parts: list[
            tuple[np.ndarray, np.ndarray, np.ndarray]
        ] = []  # (features [n, d], labels [n], keys [n])
        self._kept = self._pending = 0

    def add(self, features: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> None:
        if len(labels):
            self._parts.append((features, labels, keys))
            self._pending += len(labels)
        if self._pending > max(self._kept, 1 << 16):
            self._prune()

    @property
    def held(self) -> int:
        """Rows held now: the kept ones and those not yet pruned."""
        return self._kept + self._pending

    def _prune(self) -> None:
        f = np.concatenate([p[0] for p in self._parts])  # [n, d]
        y = np.concatenate([p[1] for p in self._parts])  # [n]
        k = np.concatenate([p[2] for p in self._parts])  # [n]
        order = np.lexsort((k, y))  # by class, then key
        ys = y[order]
        rank = np.arange(len(ys)) - np.searchsorted(ys, ys, side="left")  # place of each row within its class
        keep = order[rank < self.cap]
        self._parts = [(f[keep], y[keep], k[keep])]
        self._kept, self._pending = len(keep), 0

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(features [M, d], labels [M]) of the kept rows, or None when nothing was added."""
        if not self._parts:
            return None
        self._prune()
        f, y, _ = self._parts[0]
        return f, y
