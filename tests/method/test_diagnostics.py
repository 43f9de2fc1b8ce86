"""Feature-space diagnostics on hand-placed class centroids."""

import math

import numpy as np
import pytest

from system.method.diagnostics import centroid_geometry, class_centroids, geometry_summary

COUNTS = [200, 150, 5, 4]  # classes 0, 1 many-shot; 2, 3 few-shot (thresholds 100 / 20)


def _crowded(a=0.1):
    """Heads 0 and 1 opposite each other; tails 2 and 3 only `a` radians apart. Class 0 has two samples."""
    v = np.array([[1, 0], [-1, 0], [0, 1], [math.sin(a), math.cos(a)]], dtype=np.float64)
    return np.concatenate([v[:1], v]), np.array([0, 0, 1, 2, 3]), v


def test_centroids_are_normalised_means():
    mu, counts = class_centroids(np.array([[3, 0], [0, 1]]), np.array([0, 0]), 3)
    assert counts.tolist() == [2, 0, 0]
    assert mu[0] == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])  # mean of unit vectors, renormalised
    assert not mu[1:].any()  # absent classes stay zero


def test_distances_of_centred_centroids():
    f, y, v = _crowded()
    g = centroid_geometry(f, y, COUNTS, many_threshold=100, few_threshold=20)
    c = v - v.mean(axis=0)  # centred on the mean centroid, then normalised
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    d = 1 - c @ c.T
    assert g["head_head"] == pytest.approx(d[0, 1])
    assert g["head_tail"] == pytest.approx((d[0, 2] + d[0, 3] + d[1, 2] + d[1, 3]) / 4)
    assert g["tail_tail"] == pytest.approx(d[2, 3])
    assert g["nearest"] == pytest.approx(
        [
            min(d[0, 1], d[0, 2], d[0, 3]),
            min(d[1, 0], d[1, 2], d[1, 3]),
            min(d[2, 0], d[2, 1], d[2, 3]),
            min(d[3, 0], d[3, 1], d[3, 2]),
        ]
    )
    # the crowded tail shows: tail-tail is a small fraction of head-tail
    assert (
        g["tail_over_head_tail"] == pytest.approx(g["tail_tail"] / g["head_tail"])
        and g["tail_over_head_tail"] < 0.1
    )
    assert "nearest" not in geometry_summary(g)


def test_square_layout_and_a_shared_component():
    # Four classes on a square: heads opposite, tails opposite, every head-tail pair orthogonal.
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float64)
    y = np.arange(4)
    plain = centroid_geometry(v, y, COUNTS, 100, 20)
    assert (plain["head_head"], plain["head_tail"], plain["tail_tail"]) == pytest.approx((2.0, 1.0, 2.0))
    assert plain["centroid_max_cos"] == pytest.approx(0.0, abs=1e-12)
    # A large common direction (the cone effect) makes raw centroid cosines ~1; centring removes it exactly.
    cone = centroid_geometry(v + np.array([0.0, 0.0, 10.0]), y, COUNTS, 100, 20)
    for key in ("head_head", "head_tail", "tail_tail", "centroid_max_cos"):
        assert cone[key] == pytest.approx(plain[key], abs=1e-9)


def test_missing_groups_and_classes():
    f, y, _ = _crowded()
    g = centroid_geometry(f, y, [50, 50, 50, 50], many_threshold=100, few_threshold=20)
    assert g["head_tail"] is None and g["tail_tail"] is None and g["tail_over_head_tail"] is None
    g = centroid_geometry(f[:4], y[:4], COUNTS, 100, 20)  # class 3 has no sample here
    assert math.isnan(g["nearest"][3]) and g["tail_tail"] is None
