"""Uniform prototypes: exact simplex ETF, known spherical codes in 3-D, stats and class assignment."""

import math

import pytest
import torch

from system.prototypes import (
    assign_prototypes,
    optimize_uniform,
    prototype_stats,
    simplex_etf,
    uniform_prototypes,
)


def _offdiag_cos(p: torch.Tensor) -> torch.Tensor:
    g = p.double() @ p.double().T  # [K, K]
    return g[~torch.eye(p.shape[0], dtype=torch.bool)]


@pytest.mark.parametrize("k,d", [(2, 1), (3, 2), (5, 4), (10, 16), (17, 16), (100, 512), (513, 512)])
def test_etf_exact(k, d):
    p = simplex_etf(k, d, seed=1)
    assert p.shape == (k, d) and p.dtype == torch.float32
    assert torch.allclose(p.double().norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6)
    cos = _offdiag_cos(p)
    assert (cos + 1.0 / (k - 1)).abs().max() < 1e-6
    # The best possible: unit vectors have sum_{i != j} cos_ij = |sum p|^2 - K >= -K, so mean cos >= -1/(K-1).
    assert p.double().sum(dim=0).norm() < 1e-5


def test_etf_seed_rotates_but_keeps_gram():
    a, b, a2 = simplex_etf(6, 10, seed=0), simplex_etf(6, 10, seed=1), simplex_etf(6, 10, seed=0)
    assert torch.equal(a, a2)
    assert not torch.allclose(a, b, atol=1e-3)
    assert torch.allclose(a @ a.T, b @ b.T, atol=1e-6)


def test_etf_edge_cases():
    one = simplex_etf(1, 4)
    assert one.shape == (1, 4) and abs(float(one.norm()) - 1.0) < 1e-6
    two = simplex_etf(2, 3)
    assert abs(float(two[0] @ two[1]) + 1.0) < 1e-6  # antipodal
    with pytest.raises(ValueError, match="dim \\+ 1"):
        simplex_etf(6, 4)


@pytest.mark.parametrize(
    "k,best_max_cos,tol",
    [
        (4, -1.0 / 3.0, 2e-3),  # tetrahedron
        (6, 0.0, 1e-3),  # octahedron
        (8, 0.2612, 3e-3),  # square antiprism (Tammes, 74.86 degrees)
        (12, 1.0 / math.sqrt(5.0), 6e-3),  # icosahedron, 0.4472
    ],
)
def test_optimiser_finds_best_codes_in_3d(k, best_max_cos, tol):
    p = optimize_uniform(k, 3, seed=0)
    stats = prototype_stats(p)
    assert best_max_cos - 1e-4 <= stats["max_cos"] <= best_max_cos + tol
    assert torch.allclose(p.norm(dim=1), torch.ones(k), atol=1e-5)


def test_optimiser_octahedron_is_antipodal():
    stats = prototype_stats(optimize_uniform(6, 3, seed=2))
    assert stats["min_cos"] < -0.999
    assert abs(stats["mean_cos"] + 0.2) < 1e-4  # 3 antipodal pairs (-1) and 12 orthogonal pairs: -3/15


def test_optimiser_reaches_cross_polytope_bound():
    # For d+1 < K <= 2d the best max cosine is exactly 0 (Rankin): the cross-polytope +-e_i.
    stats = prototype_stats(optimize_uniform(32, 16, seed=0, steps=600))
    assert -1e-6 <= stats["max_cos"] <= 5e-3


def test_optimiser_deterministic_and_seeded():
    a = optimize_uniform(40, 8, seed=3, steps=150)
    b = optimize_uniform(40, 8, seed=3, steps=150)
    c = optimize_uniform(40, 8, seed=4, steps=150)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_optimiser_validates():
    with pytest.raises(ValueError):
        optimize_uniform(1, 3)
    with pytest.raises(ValueError):
        optimize_uniform(5, 3, temperature=0.0)


def test_uniform_prototypes_dispatch():
    assert torch.equal(uniform_prototypes(9, 8, seed=5), simplex_etf(9, 8, seed=5))
    kw = {"steps": 40, "lr": 0.02}
    assert torch.equal(uniform_prototypes(10, 8, seed=5, **kw), optimize_uniform(10, 8, seed=5, **kw))


def test_stats_hand_computed():
    # pairs: (0,1) 0, (0,2) -1, (1,2) 0; rows need not be unit
    p = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    stats = prototype_stats(p)
    assert stats == pytest.approx({"min_cos": -1.0, "mean_cos": -1.0 / 3.0, "max_cos": 0.0}, abs=1e-12)
    etf = prototype_stats(simplex_etf(7, 6))
    for v in etf.values():
        assert v == pytest.approx(-1.0 / 6.0, abs=1e-6)
    with pytest.raises(ValueError):
        prototype_stats(torch.ones(1, 3))


def test_text_assignment_recovers_known_permutation():
    p = simplex_etf(8, 16, seed=0)
    perm = torch.tensor([3, 0, 7, 5, 1, 6, 2, 4])
    assert torch.equal(assign_prototypes(p, p[perm], method="text"), p[perm])
    # scale and a little noise do not change the matching
    noisy = 3.0 * p[perm] + 0.01 * torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(assign_prototypes(p, noisy, method="text"), p[perm])


def test_text_assignment_maximises_total_cosine():
    # 3 prototypes on the unit circle; class 0's text lies between p1 and p2, slightly nearer p1; class 1's is
    # p0, class 2's is p1. Greedy in class order gives class 0 p1 and class 2 p2 (total 0.58 + 1 - 0.5); the
    # assignment gives up a little on class 0 (p2: 0.42) so class 2 keeps p1 (total 2.42).
    ang = torch.tensor([0.0, 2.0, 4.0]) * math.pi / 3.0
    p = torch.stack([ang.cos(), ang.sin()], dim=1)  # [3, 2]
    e = torch.stack([p[1] + 0.9 * p[2], p[0], p[1]])
    out = assign_prototypes(p, e, method="text")
    assert torch.equal(out, p[[2, 0, 1]])


def test_random_assignment_is_seeded_permutation():
    p = simplex_etf(10, 12)
    a, b, c = (assign_prototypes(p, method="random", seed=s) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a permutation of the rows: each row of a matches exactly one row of p
    match = (a @ p.T) > 0.999  # [K, K]
    assert torch.equal(match.sum(0), torch.ones(10, dtype=torch.long))
    assert torch.equal(match.sum(1), torch.ones(10, dtype=torch.long))


def test_assignment_errors():
    p = simplex_etf(4, 4)
    with pytest.raises(ValueError, match="'nearest'"):
        assign_prototypes(p, p, method="nearest")
    with pytest.raises(ValueError, match="class_embeddings"):
        assign_prototypes(p, None, method="text")
    with pytest.raises(ValueError, match="shape"):
        assign_prototypes(p, torch.ones(4, 3), method="text")
