import pytest

from system.data.longtail import longtail_counts


def test_default_profile_has_the_advertised_head_and_tail():
    counts = longtail_counts(24, 300, 100)
    assert len(counts) == 24
    assert counts[0] == 300
    assert counts[-1] == 3
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    # The formula at a middle index: 300 * 100 ** (-12 / 23) = 27.0...
    assert counts[12] == round(300 * 100 ** (-12 / 23)) == 27
    assert sum(counts) == 1639


def test_small_and_degenerate_profiles():
    assert longtail_counts(2, 10, 10) == [10, 1]
    assert longtail_counts(5, 7, 1) == [7] * 5
    assert longtail_counts(1, 9, 50) == [9]
    # Counts never reach 0, even when n_max / imbalance < 1.
    assert longtail_counts(4, 2, 1000) == [2, 1, 1, 1]


@pytest.mark.parametrize(
    ("args", "word"),
    [
        ((0, 10, 10.0), "num_classes"),
        ((2.5, 10, 10.0), "num_classes"),
        ((3, 0, 10.0), "n_max"),
        ((3, 10, 0.5), "imbalance"),
        ((3, 10, float("nan")), "imbalance"),
        ((3, 10, "x"), "imbalance"),
    ],
)
def test_bad_arguments_are_refused_by_name(args, word):
    with pytest.raises(ValueError, match=word):
        longtail_counts(*args)
