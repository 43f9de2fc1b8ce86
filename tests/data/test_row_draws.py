"""Per-row draws (system.data.row_draws): the reference splitmix64, uniformity, ranges and keys."""

import numpy as np
import pytest

from system.data.row_draws import RowDraws, hash_words, mix64


def test_mix64_is_splitmix64():
    # splitmix64 seeded with 0: its first two outputs, from the reference implementation (Vigna).
    assert mix64(0) == 0xE220A8397B1DCDAF
    assert mix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_draws_are_uniform_and_in_range():
    # 20,000 keys, one draw each (as the pipeline uses them): the coin and a 10-way index.
    coins = np.array([RowDraws(hash_words(7, k)).random() for k in range(20_000)])
    assert coins.min() >= 0.0 and coins.max() < 1.0
    assert abs(coins.mean() - 0.5) < 4 * np.sqrt(1 / 12 / coins.size)
    idx = np.array([RowDraws(hash_words(8, k)).integers(10) for k in range(20_000)])
    counts = np.bincount(idx, minlength=10)
    assert counts.size == 10
    chi2 = ((counts - 2000) ** 2 / 2000).sum()
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom: p = 0.001


def test_a_stream_is_a_function_of_its_key():
    a, b = RowDraws(123), RowDraws(123)
    assert [a.next64() for _ in range(5)] == [b.next64() for _ in range(5)]
    assert RowDraws(124).next64() != RowDraws(123).next64()
    draws = RowDraws(5)
    assert len({draws.next64() for _ in range(100)}) == 100  # successive draws differ
    assert RowDraws(-1).key == 2**64 - 1  # keys are taken mod 2**64
    with pytest.raises(ValueError, match="high"):
        RowDraws(1).integers(0)


def test_hash_words_separates_streams_and_order():
    assert hash_words(1, 2, 3) == hash_words(1, 2, 3)
    assert len({hash_words(1, 2, 3), hash_words(1, 3, 2), hash_words(2, 2, 3), hash_words(1, 2, 3, 0)}) == 4
    assert hash_words(-1) == hash_words(2**64 - 1)
