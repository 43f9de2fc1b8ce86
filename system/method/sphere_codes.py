"""Spherical codes with a known maximum cosine: the exact constructions (simplex ETF, orthoplex) and the binary
quadratic-form (Kerdock-type) code, each rotated into R^d by a seeded Haar frame. system.method.prototypes picks
among them and the optimiser (system.method.prototype_optimizer) by regime.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def seeded_generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def haar_frame(d: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """A seeded Haar-random d x n matrix with orthonormal columns, float64."""
    q, r = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=torch.float64))  # q: [d, n]
    return q * torch.sign(torch.diagonal(r))  # unique (Haar) whatever the QR sign convention


def simplex_vertices(k: int) -> torch.Tensor:
    """The K vertices of a regular simplex in R^(K-1), unit norm, pairwise cosine -1/(K-1); float64 [K, K-1].

    Helmert basis of the subspace orthogonal to the all-ones vector: column m-1 (m = 1..K-1) is
    (1, .., 1, -m, 0, ..) / sqrt(m(m+1)) with m ones. Its rows have norm sqrt((K-1)/K) and inner products -1/K.
    """
    m = torch.arange(1, k, dtype=torch.float64)  # [K-1]
    row = torch.arange(k, dtype=torch.float64)[:, None]  # [K, 1]
    basis = torch.where(row < m, 1.0, torch.where(row == m, -m, 0.0)) / torch.sqrt(m * (m + 1))  # [K, K-1]
    return basis * math.sqrt(k / (k - 1))


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Simplex ETF: K unit vectors in R^d with every pairwise cosine exactly -1/(K-1); needs K <= d+1.

    The simplex vertices, rotated into R^d by a seeded Haar-random orthonormal map. Computed in float64 so the
    cosines are exact to float32 precision. Returns float32 [K, d].
    """
    k, d = int(num_classes), int(dim)
    if k < 1 or d < 1:
        raise ValueError(f"need num_classes >= 1 and dim >= 1, got {k}, {d}")
    if k > d + 1:
        raise ValueError(f"simplex ETF needs num_classes <= dim + 1, got K={k}, d={d}; use optimize_uniform")
    gen = seeded_generator(seed)
    if k == 1:
        v = torch.randn(1, d, generator=gen, dtype=torch.float64)  # [1, d]
        return F.normalize(v, dim=1).float()
    return (simplex_vertices(k) @ haar_frame(d, k - 1, gen).T).float()  # [K, d]


def orthoplex(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """d+1 < K <= 2d: an orthogonal sum of K-d regular simplices, rotated by a seeded Haar map. float32 [K, d].

    The d dimensions are split as evenly as possible into K-d blocks; a block of b dimensions holds b+1 simplex
    vertices (cosine -1/b among them). Vectors in different blocks are orthogonal, so the max cosine is 0, the
    optimum for K > d+1, and they sum to zero, so the mean cosine is -1/(K-1), also the optimum. K = 2d gives the
    cross-polytope (every block one dimension: +-e_i).
    """
    k, d = int(num_classes), int(dim)
    if not d + 1 < k <= 2 * d:
        raise ValueError(f"orthoplex needs dim + 1 < num_classes <= 2 * dim, got K={k}, d={d}")
    parts = k - d
    v = torch.zeros(k, d, dtype=torch.float64)  # [K, d]
    row = col = 0
    for i in range(parts):
        b = d // parts + (1 if i < d % parts else 0)  # block dimension
        v[row : row + b + 1, col : col + b] = simplex_vertices(b + 1)
        row, col = row + b + 1, col + b
    gen = seeded_generator(seed)
    rot = haar_frame(d, d, gen)  # [d, d]
    perm = torch.randperm(k, generator=gen)  # which class lands in which block: seeded
    return (v[perm] @ rot.T).float()


# ------------------------------------------------------------------------------------ binary (Kerdock-type) code


def _gf2_rank(rows: list[int]) -> int:
    """Rank over GF(2) of a matrix given as one int bitmask per row."""
    rows, rank = list(rows), 0
    for bit in range(max((r.bit_length() for r in rows), default=0) - 1, -1, -1):
        pivot = next((i for i in range(rank, len(rows)) if rows[i] >> bit & 1), None)
        if pivot is None:
            continue
        rows[rank], rows[pivot] = rows[pivot], rows[rank]
        for i in range(len(rows)):
            if i != rank and rows[i] >> bit & 1:
                rows[i] ^= rows[rank]
        rank += 1
    return rank


def alternating_rank(upper: np.ndarray) -> int:
    """GF(2) rank of the bilinear form U + U^T of the quadratic form x^T U x (U strictly upper triangular)."""
    a = (upper ^ upper.T).astype(np.int64)  # [m, m]
    weights = 1 << np.arange(a.shape[0], dtype=np.int64)
    return _gf2_rank([int(r) for r in a @ weights])


def kerdock_forms(
    m: int, count: int, rng: np.random.Generator, max_tries: int = 20000
) -> list[np.ndarray] | None:
    """count quadratic forms on GF(2)^m (strictly upper triangular bool [m, m]), the zero form first, whose
    pairwise differences have the largest possible rank (m for even m, m-1 for odd m); greedy random search.

    Then the bases {H diag((-1)^q)} are pairwise unbiased up to 2^(-rank/2). None if the search runs out of tries.
    """
    target = m if m % 2 == 0 else m - 1
    forms = [np.zeros((m, m), dtype=bool)]
    for _ in range(max_tries):
        if len(forms) >= count:
            break
        cand = np.triu(rng.random((m, m)) < 0.5, 1)
        if all(alternating_rank(cand ^ f) == target for f in forms):
            forms.append(cand)
    return forms if len(forms) >= count else None


def binary_code(num_classes: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, float] | None:
    """K unit vectors from mutually unbiased bases of R^n, n = 2^m <= d, and their max cosine; None if unfit.

    Bases: the standard basis and H diag((-1)^q) (H the n x n Sylvester-Hadamard matrix over sqrt(n)) for
    quadratic forms q on GF(2)^m whose pairwise differences have rank r (r = m for even m, m-1 for odd m), each
    basis with both signs (a cross-polytope, 2n vectors). Two vectors from different bases have |cosine| 0 or
    2^(-r/2): 1/32 for n=1024, 1/16 for n=512 (odd m costs sqrt 2). This is a Kerdock-type code; its max
    cosine is known exactly. Needs K > 2n (fewer fit one cross-polytope, where orthoplex() is exact). The code is
    mapped into R^d by a seeded Haar frame; which vectors fill the last basis is seeded too.
    Returns (float32 [K, d], max cosine) or None when d < 4, K <= 2n or the form search fails.
    """
    k, d = int(num_classes), int(dim)
    if d < 4:
        return None
    m = int(math.floor(math.log2(d)))
    n = 1 << m
    num_bases = math.ceil(k / (2 * n))
    if num_bases < 2:
        return None
    rng = np.random.default_rng(seed)
    forms = kerdock_forms(m, num_bases - 1, rng)
    if forms is None:
        return None
    bits = (np.arange(n)[:, None] >> np.arange(m)) & 1  # [n, m]: x in GF(2)^m
    hadamard = (1.0 - 2.0 * ((bits @ bits.T) % 2)) / math.sqrt(n)  # [n, n]: row b is (-1)^(b.x) / sqrt(n)
    bases = [np.eye(n)]
    for u in forms:
        q = np.einsum("xi,ij,xj->x", bits, u.astype(np.int64), bits) % 2  # [n]: q(x) = x^T U x
        bases.append(hadamard * (1.0 - 2.0 * q)[None, :])
    full, rest = divmod(k, 2 * n)
    rows = [b for basis in bases[:full] for b in (basis, -basis)]
    if rest:  # part of one more cross-polytope: whole +- pairs first, so the vectors sum to ~0
        last = bases[full][rng.permutation(n)[: (rest + 1) // 2]]
        rows.append(np.concatenate([last, -last])[:rest])
    code = torch.from_numpy(np.concatenate(rows))  # [K, n] float64
    gen = seeded_generator(seed)
    out = code[torch.randperm(k, generator=gen)] @ haar_frame(d, n, gen).T  # [K, d]
    rank = m if m % 2 == 0 else m - 1
    return out.float(), 2.0 ** (-rank / 2)


def binary_code_fits(num_classes: int, dim: int) -> bool:
    """Whether binary_code() applies (d >= 4, K > 2n for n the largest power of two <= d)."""
    return dim >= 4 and num_classes > 2 * (1 << int(math.floor(math.log2(dim))))
