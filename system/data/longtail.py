"""Long-tailed class counts: the exponential profile used by CIFAR-LT / ImageNet-LT style benchmarks."""

from __future__ import annotations


def longtail_counts(num_classes: int, n_max: int, imbalance: float) -> list[int]:
    """Training images per class, n_i = round(n_max * imbalance ** (-i / (C - 1))), at least 1.

    Class 0 is the most frequent (n_max) and class C-1 the rarest (about n_max / imbalance), so the imbalance
    factor is n_0 / n_{C-1}, the number papers quote as "IF".
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    try:
        imbalance = float(imbalance)
    except (TypeError, ValueError):
        raise ValueError(f"imbalance must be a number >= 1, got {imbalance!r}") from None
    # NaN fails every comparison, so test for the valid range rather than the invalid one.
    if not (1.0 <= imbalance < float("inf")):
        raise ValueError(f"imbalance must be a finite number >= 1, got {imbalance!r}")
    if num_classes == 1:
        return [n_max]
    last = num_classes - 1
    return [max(1, round(n_max * imbalance ** (-i / last))) for i in range(num_classes)]
