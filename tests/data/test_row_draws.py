"""Per-row draws (system.data.row_draws): the reference splitmix64, uniformity, ranges and keys."""

import numpy as np
import pytest

from system.data.row_draws import PerClassCap, RowDraws, hash_words, mix64, mix64_array, row_keys


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


def test_mix64_array_is_mix64_on_every_entry():
    xs = [0, 1, 0x9E3779B97F4A7C15, 2**64 - 1, 123456789]
    assert mix64_array(np.array(xs, dtype=np.uint64)).tolist() == [mix64(x) for x in xs]


def test_row_keys_depend_on_the_identity_and_the_seed_only():
    shard, row = np.array([0, 0, 1, 3]), np.array([0, 1, 0, 7])
    k = row_keys(shard, row, seed=5)
    assert k.dtype == np.uint64 and len(set(k.tolist())) == 4
    assert row_keys(shard[::-1], row[::-1], seed=5).tolist() == k[::-1].tolist()  # a row's key is its own
    assert row_keys(shard, row, seed=6).tolist() != k.tolist()
    # the key is two splitmix64 rounds: of the shard position salted by the seed, then xor the ordinal
    salt = (5 * 0x9E3779B97F4A7C15) & (2**64 - 1)
    assert int(k[3]) == mix64(mix64(3 ^ salt) ^ 7)


def _capped(batches, cap):
    c = PerClassCap(cap)
    for f, y, k in batches:
        c.add(f, y, k)
    return c.result()


def test_a_cap_keeps_the_smallest_keys_of_each_class_whatever_the_arrival_order():
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.integers(0, 7, n)
    y[y == 6] = 5  # class 6 has no row; class 5 has about twice the others
    keys = rng.permutation(n).astype(np.uint64)  # distinct keys
    f = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # [n, 3]: a row's index, thrice
    cap = 20
    expect_idx = np.concatenate([np.flatnonzero(y == c)[np.argsort(keys[y == c])][:cap] for c in range(7)])
    for seed in range(3):  # three arrival orders and batchings
        perm = np.random.default_rng(seed).permutation(n)
        cuts = np.sort(np.random.default_rng(seed + 10).choice(np.arange(1, n), 9, replace=False))
        batches = [(f[i], y[i], keys[i]) for i in np.split(perm, cuts)]
        got_f, got_y = _capped(batches, cap)
        assert got_f[:, 0].astype(int).tolist() == expect_idx.tolist()  # by class, then key
        assert got_y.tolist() == y[expect_idx].tolist()
    # a cap above every class's count keeps everything
    got_f, got_y = _capped([(f, y, keys)], n)
    assert sorted(got_f[:, 0].astype(int).tolist()) == list(range(n))
    assert _capped([], 3) is None
    with pytest.raises(ValueError, match="cap must be >= 1"):
        PerClassCap(0)


def test_a_cap_prunes_as_it_goes():
    # 200,000 rows of one class in 2,000-row batches: what it holds stays bounded by the pruning rule.
    c = PerClassCap(10)
    for b in range(100):
        keys = np.arange(b * 2000, (b + 1) * 2000, dtype=np.uint64)[::-1]
        c.add(np.zeros((2000, 1), np.float32), np.zeros(2000, np.int64), keys)
        assert c.held <= 10 + (1 << 16) + 2000
    f, y = c.result()
    assert len(y) == 10
