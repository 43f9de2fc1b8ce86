"""Uniform prototypes: exact constructions (simplex ETF, orthogonal simplices, binary code), the optimiser against
the known optima of the Tammes problem in 3-D, stats, class assignment and saving with the class order."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from system.method.prototype_assignment import (
    align_to_text,
    alignment_cosine,
    assign_prototypes,
    assignment_order,
    linear_assignment_order,
    procrustes,
)
from system.method.prototype_optimizer import optimize_uniform, smooth_max_grad, strip_rows
from system.method.prototypes import (
    build_prototypes,
    load_prototypes,
    prototype_method,
    prototype_stats,
    save_prototypes,
    uniform_prototypes,
)
from system.method.sphere_codes import alternating_rank, binary_code, kerdock_forms, orthoplex, simplex_etf


def _offdiag_cos(p: torch.Tensor) -> torch.Tensor:
    g = p.double() @ p.double().T  # [K, K]
    return g[~torch.eye(p.shape[0], dtype=torch.bool)]


# ------------------------------------------------------------------------------------------------ simplex ETF


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


# ---------------------------------------------------------------------------------- orthoplex (d+1 < K <= 2d)


@pytest.mark.parametrize("k,d", [(5, 3), (6, 3), (7, 4), (10, 6), (12, 6), (40, 20), (1000, 512)])
def test_orthoplex_is_optimal(k, d):
    # Rankin: more than d+1 unit vectors always have a pair at cosine >= 0, so max cos 0 is the optimum; and the
    # vectors sum to zero, so the mean cosine reaches its bound -1/(K-1) too. K=1000, d=512 is the issue's
    # "max cos <= 0.03" case: the construction gives 0.
    p = orthoplex(k, d, seed=3)
    assert p.shape == (k, d) and p.dtype == torch.float32
    assert torch.allclose(p.double().norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6)
    stats = prototype_stats(p)
    assert abs(stats["max_cos"]) < 1e-6
    assert stats["mean_cos"] == pytest.approx(-1.0 / (k - 1), abs=1e-7)
    # every cosine is 0 (other block) or -1/b (same block of b dimensions, b = d // (K-d) or one more)
    cos = _offdiag_cos(p)
    parts = k - d
    allowed = torch.tensor([0.0, -1.0 / (d // parts), -1.0 / (d // parts + 1)], dtype=torch.float64)
    assert (cos[:, None] - allowed[None]).abs().min(dim=1).values.max() < 1e-6
    assert torch.equal(p, orthoplex(k, d, seed=3))
    with pytest.raises(ValueError, match="orthoplex"):
        orthoplex(2 * d + 1, d)


def test_dispatch_by_regime():
    assert [prototype_method(k, 8) for k in (9, 10, 16, 17)] == [
        "simplex_etf",
        "orthoplex",
        "orthoplex",
        "optimized",
    ]
    assert torch.equal(uniform_prototypes(9, 8, seed=5), simplex_etf(9, 8, seed=5))
    assert torch.equal(uniform_prototypes(12, 8, seed=5), orthoplex(12, 8, seed=5))
    # K > 2d: the optimiser from a Gaussian start, or the binary code when that is the lower
    for steps, picked in ((3, "code"), (400, "gaussian")):
        p, info = build_prototypes(40, 8, seed=5, steps=steps)
        assert info["method"] == "optimized" and info["init"] == picked and info["steps"] == steps
        assert info["code_max_cos"] == 0.5  # d=8: 2^(-(3-1)/2)
        assert info["max_cos"] == min(info["code_max_cos"], info["optimized_max_cos"])
        assert prototype_stats(p)["max_cos"] == pytest.approx(info["max_cos"], abs=1e-6)
        want = (
            binary_code(40, 8, seed=5)[0]
            if picked == "code"
            else optimize_uniform(40, 8, seed=5, steps=steps)
        )
        assert torch.equal(p, want)
    p, info = build_prototypes(7, 3, seed=5, steps=20)  # d < 4: no binary code, Gaussian start
    assert info["init"] == "gaussian"
    _, info = build_prototypes(10, 8, seed=5, method="optimized", steps=5)  # forced optimiser
    assert info["method"] == "optimized" and info["steps"] == 5
    with pytest.raises(ValueError, match="only apply"):
        build_prototypes(9, 8, steps=5)
    with pytest.raises(ValueError, match="unknown prototype method"):
        build_prototypes(9, 8, method="lattice")


# ---------------------------------------------------------------------------------------------- binary code


@pytest.mark.parametrize("k,d,expect", [(100, 16, 0.25), (300, 32, 0.25), (700, 64, 0.125), (100, 20, 0.25)])
def test_binary_code_max_cos_is_known(k, d, expect):
    # Mutually unbiased bases from quadratic forms on GF(2)^m, n = 2^m <= d: |cos| across bases is 2^(-r/2),
    # r = m (even m) or m-1 (odd m); within a basis 0 or -1. d=20 uses the 16-dim subspace.
    p, max_cos = binary_code(k, d, seed=1)
    assert max_cos == expect
    assert p.shape == (k, d)
    stats = prototype_stats(p)
    assert stats["max_cos"] == pytest.approx(expect, abs=1e-6)
    # |cos| is 0 or 1 (same basis), 1/sqrt(n) (the standard basis against the others) or 2^(-r/2)
    n = 1 << int(math.log2(d))
    allowed = torch.tensor([0.0, 1.0, n**-0.5, expect], dtype=torch.float64)
    cos = _offdiag_cos(p).abs()
    assert (cos[:, None] - allowed[None]).abs().min(dim=1).values.max() < 1e-6
    if k % 2 == 0:  # whole +- pairs: the vectors sum to zero and the mean cosine is optimal
        assert stats["mean_cos"] == pytest.approx(-1.0 / (k - 1), abs=1e-7)
    assert torch.equal(p, binary_code(k, d, seed=1)[0])


def test_binary_code_forms_and_limits():
    rng = np.random.default_rng(0)
    for m in (4, 5, 6, 7):
        forms = kerdock_forms(m, 6, rng)
        target = m if m % 2 == 0 else m - 1
        assert len(forms) == 6 and not forms[0].any()
        for a, b in itertools.combinations(forms, 2):
            assert alternating_rank(a ^ b) == target
    assert binary_code(30, 16) is None  # K <= 2n: one cross-polytope; orthoplex() is exact there
    assert binary_code(40, 3) is None  # d < 4


def test_code_start_is_never_made_worse():
    p, info = optimize_uniform(200, 16, seed=0, steps=60, init="code", return_info=True)
    assert info["init"] == "code" and info["start_max_cos"] == pytest.approx(0.25, abs=1e-6)
    assert prototype_stats(p)["max_cos"] <= 0.25 + 1e-6


# ------------------------------------------------------------------------------------------------ optimiser


def _tammes_24() -> float:
    # The snub cube (Robinson 1961): with edge 1 its circumradius is R = sqrt((3 - t) / (4 (2 - t))), t the
    # tribonacci constant (real root of t^3 = t^2 + t + 1); neighbours are at cos = 1 - 1 / (2 R^2).
    t = 2.0
    for _ in range(100):
        t -= (t**3 - t**2 - t - 1) / (3 * t**2 - 2 * t - 1)
    r2 = (3 - t) / (4 * (2 - t))
    return 1 - 1 / (2 * r2)


_C80 = math.cos(4 * math.pi / 9)
# Tammes problem: the proven optimal max cosine of K points on the sphere S^2 (Fejes Toth 1943; Schutte and
# van der Waerden 1951; Danzer 1963; Robinson 1961; values as in OEIS A383859, A340918, A105199).
TAMMES = {
    4: -1.0 / 3.0,  # tetrahedron
    5: 0.0,  # 90 degrees (triangular bipyramid)
    6: 0.0,  # octahedron
    7: _C80 / (1.0 - _C80),  # 77.87 degrees
    8: (2.0 * math.sqrt(2.0) - 1.0) / 7.0,  # square antiprism, 74.86 degrees
    9: 1.0 / 3.0,  # 70.53 degrees
    10: math.cos(math.atan(math.sqrt(4 / math.sqrt(3) * math.cos(math.atan(math.sqrt(687) / 9) / 3) + 3))),
    11: 1.0 / math.sqrt(5.0),  # as for 12 (an icosahedron less one vertex)
    12: 1.0 / math.sqrt(5.0),  # icosahedron, 63.43 degrees
    24: _tammes_24(),  # snub cube, 43.69 degrees
}


def test_tammes_values():
    assert math.degrees(math.acos(TAMMES[7])) == pytest.approx(77.8695, abs=1e-4)
    assert math.degrees(math.acos(TAMMES[8])) == pytest.approx(74.8585, abs=1e-4)
    assert math.acos(TAMMES[10]) == pytest.approx(1.1544798334192707, abs=1e-12)
    assert math.degrees(math.acos(TAMMES[24])) == pytest.approx(43.6908, abs=1e-4)


@pytest.mark.parametrize("k", sorted(TAMMES))
def test_optimiser_finds_tammes_optima(k):
    p = optimize_uniform(k, 3, seed=0)
    assert torch.allclose(p.norm(dim=1), torch.ones(k), atol=1e-5)
    # never below a proven optimum (that would be a bug here or in the yardstick), and within 2e-4 of it: the
    # smooth max at the default end temperature 2e-4 sits about that far above the true minimax
    assert TAMMES[k] - 1e-6 <= prototype_stats(p)["max_cos"] <= TAMMES[k] + 2e-4


@pytest.mark.parametrize("k", [7, 8, 24])
def test_optimiser_cold_end_is_tighter(k):
    p = optimize_uniform(k, 3, seed=1, temperature=2e-5)
    assert TAMMES[k] - 1e-6 <= prototype_stats(p)["max_cos"] <= TAMMES[k] + 2e-5


def test_optimiser_octahedron_is_antipodal():
    stats = prototype_stats(optimize_uniform(6, 3, seed=2))
    assert stats["min_cos"] < -0.999
    assert abs(stats["mean_cos"] + 0.2) < 1e-4  # 3 antipodal pairs (-1) and 12 orthogonal pairs: -3/15


def test_optimiser_k1000_d512():
    # The yardstick for the optimiser itself (auto picks the exact orthoplex here): from a Gaussian
    # start, whose max cosine is about 0.22, to <= 0.03 in a few seconds.
    p, info = optimize_uniform(1000, 512, seed=0, steps=100, return_info=True)
    assert info["start_max_cos"] > 0.2
    assert prototype_stats(p)["max_cos"] <= 0.03


def test_strip_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(50, 6, generator=gen, dtype=torch.float64), dim=1)
    q = p.clone().requires_grad_()
    i, j = torch.triu_indices(50, 50, offset=1)
    temp = 0.05
    (temp * torch.logsumexp((q @ q.T)[i, j] / temp, dim=0)).backward()
    for block in (50, 7, 1):
        grad, top = smooth_max_grad(p, temp, block)
        assert torch.allclose(grad, q.grad, atol=1e-10)
        assert top == pytest.approx(float((p @ p.T)[i, j].max()), abs=1e-12)


def test_strips_bound_memory():
    # the largest temporary is one strip of the Gram matrix: <= 2^23 entries (32 MiB in float32) at any K
    for k in (10, 2896, 8142, 100_000):
        assert strip_rows(k, None) * k <= max(1 << 23, k)
    assert strip_rows(8142, None) == 1030


def test_optimiser_deterministic_and_seeded():
    a = optimize_uniform(80, 8, seed=3, steps=150, block_size=16)
    b = optimize_uniform(80, 8, seed=3, steps=150, block_size=16)
    c = optimize_uniform(80, 8, seed=4, steps=150, block_size=16)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the strip size changes only rounding
    full = optimize_uniform(80, 8, seed=3, steps=150)
    assert prototype_stats(full)["max_cos"] == pytest.approx(prototype_stats(a)["max_cos"], abs=2e-3)


def test_optimiser_budgets():
    _, info = optimize_uniform(30, 4, seed=0, steps=50, return_info=True)
    assert info["steps"] == 50 and info["stopped_by"] == "steps"
    _, info = optimize_uniform(30, 4, seed=0, steps=10_000, max_seconds=0.0, return_info=True)
    assert info["stopped_by"] == "time" and info["steps"] == 0
    _, info = optimize_uniform(30, 4, seed=0, steps=10_000, patience=30, return_info=True)
    assert info["stopped_by"] == "patience" and info["steps"] < 10_000
    p, info = optimize_uniform(6, 3, seed=0, steps=0, return_info=True)  # no steps: the normalised start
    assert info["steps"] == 0 and info["max_cos"] == pytest.approx(prototype_stats(p)["max_cos"], abs=1e-6)


def test_optimiser_validates():
    with pytest.raises(ValueError):
        optimize_uniform(1, 3)
    with pytest.raises(ValueError):
        optimize_uniform(5, 3, temperature=0.0)
    with pytest.raises(ValueError, match="init"):
        optimize_uniform(5, 3, init="sobol")
    with pytest.raises(ValueError, match="init shape"):
        optimize_uniform(5, 3, init=torch.ones(4, 3))


def test_optimiser_refines_a_given_start():
    start = simplex_etf(8, 7, seed=0)[:, :3] + 0.01  # a poor start in 3-D
    p, info = optimize_uniform(8, 3, init=start, steps=300, return_info=True)
    assert info["init"] == "tensor" and info["max_cos"] < info["start_max_cos"]


# -------------------------------------------------------------------------------------------------- stats


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


def test_stats_strips_match_dense():
    p = torch.randn(37, 5, generator=torch.Generator().manual_seed(1))
    dense = _offdiag_cos(torch.nn.functional.normalize(p.double(), dim=1))
    want = {"min_cos": float(dense.min()), "mean_cos": float(dense.mean()), "max_cos": float(dense.max())}
    for block in (None, 1, 6, 36):
        assert prototype_stats(p, block_size=block) == pytest.approx(want, abs=1e-12)


# --------------------------------------------------------------------------------------------- assignment


def test_linear_assignment_recovers_known_permutation():
    p = simplex_etf(8, 16, seed=0)
    perm = torch.tensor([3, 0, 7, 5, 1, 6, 2, 4])
    assert torch.equal(linear_assignment_order(p, p[perm]), perm)
    # scale and a little noise do not change the matching
    noisy = 3.0 * p[perm] + 0.01 * torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(linear_assignment_order(p, noisy), perm)


def test_linear_assignment_maximises_total_cosine():
    # 3 prototypes on the unit circle; class 0's text lies between p1 and p2, slightly nearer p1; class 1's is
    # p0, class 2's is p1. Greedy in class order gives class 0 p1 and class 2 p2 (total 0.58 + 1 - 0.5); the
    # assignment gives up a little on class 0 (p2: 0.42) so class 2 keeps p1 (total 2.42).
    ang = torch.tensor([0.0, 2.0, 4.0]) * math.pi / 3.0
    p = torch.stack([ang.cos(), ang.sin()], dim=1)  # [3, 2]
    e = torch.stack([p[1] + 0.9 * p[2], p[0], p[1]])
    assert torch.equal(linear_assignment_order(p, e), torch.tensor([2, 0, 1]))


def test_linear_assignment_is_the_brute_force_optimum():
    gen = torch.Generator().manual_seed(2)
    p, e = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    pn, en = (torch.nn.functional.normalize(x.double(), dim=1) for x in (p, e))
    sim = en @ pn.T  # [classes, prototypes]
    best = max(sum(float(sim[c, perm[c]]) for c in range(6)) for perm in itertools.permutations(range(6)))
    order = linear_assignment_order(p, e)
    assert sum(float(sim[c, order[c]]) for c in range(6)) == pytest.approx(best, abs=1e-12)


def test_procrustes_recovers_a_rotation_by_hand():
    # targets are the sources turned by 30 degrees: R = [[cos, sin], [-sin, cos]] maps row vectors x -> x R
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    rot = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(procrustes(x, x @ rot), rot, atol=1e-12)
    # a non-square map: 3-d sources onto 2-d targets, orthonormal columns
    r = procrustes(
        torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), x.repeat(3, 1)[:7]
    )
    assert r.shape == (3, 2) and torch.allclose(r.T @ r, torch.eye(2, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("text_dim", [3, 5])
def test_text_alignment_recovers_a_rotated_shuffled_code(seed, text_dim):
    # Class embeddings = a random code, shuffled, then turned by an orthogonal map (into 5-d for text_dim 5):
    # the alignment finds both the shuffle and the map (mean cosine 1); matching without the rotation cannot.
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.functional.normalize(torch.randn(6, 3, generator=gen), dim=1)  # [6, 3]
    perm = torch.randperm(6, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(text_dim, 3, generator=gen, dtype=torch.float64))  # [e, 3]
    e = (p.double()[perm] @ q.T).float()  # [6, e]
    order, rotation, mean_cos = align_to_text(p, e, seed=0)
    assert torch.equal(order, perm)
    assert mean_cos == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(rotation.double(), q, atol=1e-5)
    assert torch.equal(assignment_order(p, e, method="text"), perm)
    assert alignment_cosine(p[perm], e) == pytest.approx(1.0, abs=1e-6)


def test_text_alignment_beats_plain_matching_and_random():
    gen = torch.Generator().manual_seed(3)
    p = build_prototypes(40, 8, seed=0)[0]  # K > 2d: an optimised code with nearer and farther pairs
    e = torch.randn(40, 8, generator=gen)
    order, _, mean_cos = align_to_text(p, e, seed=0)
    plain = alignment_cosine(p[linear_assignment_order(p, e)], e)
    shuffled = alignment_cosine(p[torch.randperm(40, generator=gen)], e)
    assert mean_cos >= plain - 1e-9 and mean_cos > shuffled


def test_text_alignment_on_a_simplex_etf_cannot_prefer_an_assignment():
    # Every pair of an ETF is equidistant: each permutation is a rotation of the code, so with the rotation free
    # the aligned and a random assignment fit the text equally well.
    p = simplex_etf(5, 8, seed=0)
    e = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    order, _, mean_cos = align_to_text(p, e, seed=0)
    for s in range(3):
        shuffled = assign_prototypes(p, method="random", seed=s)
        assert alignment_cosine(shuffled, e) == pytest.approx(mean_cos, abs=1e-6)


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
        assign_prototypes(p, torch.ones(3, 4), method="text")  # 3 rows for 4 prototypes
    with pytest.raises(ValueError, match="shape"):
        linear_assignment_order(p, torch.ones(4, 3))  # plain matching needs the prototypes' space


# ------------------------------------------------------------------------------------------------- saving


def test_save_and_load_with_class_order(tmp_path):
    p = orthoplex(5, 3, seed=0)
    side = save_prototypes(
        tmp_path / "p.npy", p, class_names=["cat", "dog", "eel", "fox", "gnu"], meta={"seed": 0}
    )
    assert side == tmp_path / "p.json"
    arr, meta = load_prototypes(tmp_path / "p.npy")
    assert arr.dtype == np.float32 and np.array_equal(arr, p.numpy())
    assert meta["class_names"] == ["cat", "dog", "eel", "fox", "gnu"] and meta["seed"] == 0
    assert meta["num_classes"] == 5 and meta["dim"] == 3 and len(meta["class_names_sha256"]) == 64
    assert save_prototypes(tmp_path / "q", p) == tmp_path / "q.json"  # np.save appends .npy; so do we
    _, meta = load_prototypes(tmp_path / "q")
    assert meta["class_names"] is None and meta["class_order"] == "row c is class index c"
    with pytest.raises(ValueError, match="class names"):
        save_prototypes(tmp_path / "r.npy", p, class_names=["a"])


def test_make_class_prototypes_saves_class_order(tmp_path):
    from system.config import load_config
    from system.method.class_prototypes import make_class_prototypes

    cfg = load_config(None, {"run.output_dir": str(tmp_path), "run.name": "r"})
    names = [f"class {i}" for i in range(5)]
    arr, stats = make_class_prototypes(cfg, names)
    assert arr.shape[0] == 5 and stats["method"] == "simplex_etf" and stats["num_classes"] == 5
    saved, meta = load_prototypes(stats["path"])
    assert np.array_equal(saved, arr) and meta["class_names"] == names
    assert meta["class_names_sha256"] == stats["class_names_sha256"] and meta["stats"]["assign"] == "random"
    assert json.loads(json.dumps(stats)) == stats  # goes into run summaries as is


def test_cli_prints_json_last_and_saves_order(tmp_path, capsys):
    from pipelines.cli import main

    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(20)))
    out = tmp_path / "p.npy"
    assert (
        main(["prototypes", "--class-names", str(names), "--dim", "4", "--steps", "50", "--out", str(out)])
        == 0
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"min_cos", "mean_cos", "max_cos", "seconds"} <= set(last)
    assert last["num_classes"] == 20 and last["method"] == "optimized" and last["steps"] == 50
    arr, meta = load_prototypes(out)
    assert arr.shape == (20, 4) and meta["class_names"][3] == "c3"
    assert meta["max_cos"] == pytest.approx(prototype_stats(torch.from_numpy(arr))["max_cos"], abs=1e-9)
