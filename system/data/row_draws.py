"""Per-row random draws that cost a hash, not a generator.

The data plane draws a few numbers for every row it streams (the resampling coin, the text stage's caption coin
and pool index), each a function of the row's identity so that runs are reproducible whatever the batching,
actor count or process ids. Building a numpy Generator per row (SeedSequence + PCG64 + Generator) costs about
20 us, about as much as the draws' whole share of decoding a small image; these are one BLAKE2b digest of the
row's identity and then splitmix64 steps (about 2 us in all). Plain Python; no numpy state is touched.
"""

from __future__ import annotations

import hashlib
import struct

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
