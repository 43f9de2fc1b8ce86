"""Uniformly distributed class prototypes on the unit sphere (docs/method.md, stage 1).

K unit vectors in R^d with the largest pairwise cosine as small as possible (a spherical code), by regime:

- K <= d+1: the simplex equiangular tight frame, exact (every pairwise cosine -1/(K-1), the best possible).
- d+1 < K <= 2d: an orthogonal sum of K-d regular simplices (K=2d: the cross-polytope +-e_i). Every cosine across
  blocks is 0, which is optimal (Rankin: more than d+1 unit vectors always have a pair at cosine >= 0), and the
  vectors sum to zero, so the mean cosine is also the best possible, -1/(K-1).
- K > 2d: an optimiser (Adam on a smooth maximum of the pairwise cosines with an annealed temperature, rows
  kept on the sphere) from a seeded Gaussian start, compared with a binary quadratic-form code (Kerdock-type
  mutually unbiased bases in the largest power-of-two subspace, max cosine known exactly): the lower wins
  (build_prototypes). The Gram matrix is computed in row strips of its upper triangle with an online
  log-sum-exp, so memory is a strip (at most 2^23 entries, 32 MiB), never K x K; a step costs 1.5 K^2 d
  multiply-adds, on whatever device the caller passes.

Prototypes are saved with the class order (save_prototypes); system.method.prototype_assignment assigns them to
classes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "METHODS",
    "binary_code",
    "binary_code_fits",
    "build_prototypes",
    "class_order_digest",
    "default_steps",
    "load_prototypes",
    "optimize_uniform",
    "orthoplex",
    "prototype_method",
    "prototype_stats",
    "save_prototypes",
    "simplex_etf",
    "uniform_prototypes",
]

_STRIP_ELEMENTS = 1 << 23  # a Gram strip holds at most this many entries (32 MiB in float32)
_SMALL_PROBLEM = 1 << 22  # K^2 d at or below this: one thread
_CUTOFF = 30.0  # softmax weights below exp(-30) of the largest are dropped (no denormals, no effect)
_TINY = 1e-18  # gradient and Adam-moment entries below this are set to 0 (their squares stay float32-normal)


def seeded_generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def _haar_frame(d: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """A seeded Haar-random d x n matrix with orthonormal columns, float64."""
    q, r = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=torch.float64))  # q: [d, n]
    return q * torch.sign(torch.diagonal(r))  # unique (Haar) whatever the QR sign convention


def _simplex_vertices(k: int) -> torch.Tensor:
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
    return (_simplex_vertices(k) @ _haar_frame(d, k - 1, gen).T).float()  # [K, d]


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
        v[row : row + b + 1, col : col + b] = _simplex_vertices(b + 1)
        row, col = row + b + 1, col + b
    gen = seeded_generator(seed)
    rot = _haar_frame(d, d, gen)  # [d, d]
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
    out = code[torch.randperm(k, generator=gen)] @ _haar_frame(d, n, gen).T  # [K, d]
    rank = m if m % 2 == 0 else m - 1
    return out.float(), 2.0 ** (-rank / 2)


# ------------------------------------------------------------------------------------------------- optimiser


def strip_rows(k: int, block_size: int | None) -> int:
    return max(1, min(k, block_size or _STRIP_ELEMENTS // k))


def _upper_strip(p: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Cosines of rows s:e against rows s:K, [e-s, K-s], with the pairs j <= i set to -inf."""
    cos = p[s:e] @ p[s:].T  # [b, K-s]
    lower = torch.ones(e - s, e - s, dtype=torch.bool, device=p.device).tril_()  # [b, b]
    cos[:, : e - s].masked_fill_(lower, -float("inf"))
    return cos


def _weights(cos: torch.Tensor, top: float, temperature: float) -> torch.Tensor:
    """exp((cos - top) / T), zero where below exp(-30) (and where cos is -inf). Clamped before exp: float32
    denormals from exp underflow made steps several times slower."""
    w = ((cos - top) / temperature).clamp_(min=-_CUTOFF).exp_()
    return w.masked_fill_(w < 2.0 * math.exp(-_CUTOFF), 0.0)


def smooth_max_grad(p: torch.Tensor, temperature: float, block: int) -> tuple[torch.Tensor, float]:
    """Gradient of T * logsumexp_{i<j}(cos_ij / T) wrt the unit rows p [K, d], and the current max cosine.

    The gradient for row i is sum_j w_ij p_j, w the softmax weights over pairs. One strip of rows at a time over
    the upper triangle (rows s:e against columns s:K) with an online log-sum-exp: weights are kept relative to
    the running max and rescaled when a strip raises it. Cost 3 K^2 d / 2 multiply-adds; memory one strip.
    Weights below exp(-30) of the max are dropped (float32 denormals from exp underflow made steps several
    times slower).
    """
    k = p.shape[0]
    if block >= k:  # one strip: the full symmetric matrix, one matmul for the gradient
        cos = p @ p.T  # [K, K]
        cos.fill_diagonal_(-float("inf"))
        top = float(cos.max())
        w = _weights(cos, top, temperature)  # [K, K], zero on the diagonal
        return (w @ p) * (2.0 / w.sum()), top  # w counts each pair twice
    grad = torch.zeros_like(p)  # [K, d]
    total = torch.zeros((), dtype=p.dtype, device=p.device)
    top = -float("inf")
    for s in range(0, k, block):
        e = min(s + block, k)
        cos = _upper_strip(p, s, e)  # [b, K-s]
        strip_top = float(cos.max())
        if strip_top > top:
            scale = math.exp((top - strip_top) / temperature) if top > -float("inf") else 0.0
            if scale < math.exp(-_CUTOFF):
                grad.zero_()
                total.zero_()
            else:
                grad.mul_(scale)
                total.mul_(scale)
            top = strip_top
        w = _weights(cos, top, temperature)  # [b, K-s]
        total += w.sum()
        grad[s:e] += w @ p[s:]
        grad[s:] += w.T @ p[s:e]
    return grad / total, top


def _max_cos(p: torch.Tensor, block: int) -> float:
    k, top = p.shape[0], -float("inf")
    for s in range(0, k, block):
        e = min(s + block, k)
        top = max(top, float(_upper_strip(p, s, e).max()))
    return top


def _adam_loop(
    p: torch.Tensor,
    steps: int,
    lr: float,
    t_start: float,
    t_end: float,
    block: int,
    t0: float,
    max_seconds: float | None,
    patience: int | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """optimize_uniform's loop: returns the best iterate and {steps, stopped_by, start_max_cos, max_cos}."""
    m1, m2 = torch.zeros_like(p), torch.zeros_like(p)  # Adam moments
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    best, best_max, start_max, last_gain = p.clone(), float("inf"), None, 0
    stopped, done = "steps", 0
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            stopped = "time"
            break
        frac = step / max(steps - 1, 1)
        grad, max_cos = smooth_max_grad(p, t_start * (t_end / t_start) ** frac, block)
        start_max = max_cos if start_max is None else start_max
        if max_cos < best_max:  # max_cos belongs to the current, normalised iterate
            if max_cos < best_max - 1e-6:
                last_gain = step
            best_max, best = max_cos, p.clone()
        if patience is not None and step - last_gain >= patience:
            stopped = "patience"
            break
        grad -= (grad * p).sum(dim=1, keepdim=True) * p  # tangent to the sphere
        # Keep every float32 normal: the squares of tiny gradients, and the moments of rows whose weights are
        # all cut (they decay geometrically), would otherwise become denormals, which cost ~100x per operation
        # on CPU threads that torch.set_flush_denormal does not reach.
        grad.masked_fill_(grad.abs() < _TINY, 0.0)
        m1.mul_(beta1).add_(grad, alpha=1 - beta1).masked_fill_(m1.abs() < _TINY, 0.0)
        m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).masked_fill_(m2 < _TINY, 0.0)
        step_lr = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine decay to lr / 100
        denom = (m2 / (1 - beta2 ** (step + 1))).sqrt_().add_(eps)
        p.addcdiv_(m1, denom, value=-step_lr / (1 - beta1 ** (step + 1)))
        p = F.normalize(p, dim=1)
        done = step + 1
    if stopped != "patience":
        final = _max_cos(p, block)
        if final < best_max:
            best_max, best = final, p.clone()
    start_max = best_max if start_max is None else start_max
    trace = {"steps": done, "stopped_by": stopped, "start_max_cos": start_max, "max_cos": best_max}
    return best, trace


def default_steps(num_classes: int, dim: int) -> int:
    """Deterministic step budget: 3.4e12 / (K^2 d) steps (a step costs 1.5 K^2 d multiply-adds), between 10 and
    2000, so a default run stays near two to three minutes on an idle 2-core CPU: 2000 steps up to K=1000,
    d=512; 100 at K=8142, d=512 (about 1.2 s a step); 50 at K=8142, d=1024."""
    return int(min(2000, max(10, 3.4e12 // (num_classes * num_classes * max(dim, 16)))))


def optimize_uniform(
    num_classes: int,
    dim: int,
    seed: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    temperature: float = 2e-4,
    start_temperature: float | None = None,
    init: str | torch.Tensor = "gaussian",
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    patience: int | None = None,
    block_size: int | None = None,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """K unit vectors in R^d spread out by minimising the smooth maximum of their pairwise cosines.

    Loss T * logsumexp_{i<j}(p_i.p_j / T); Adam on the gradient projected onto the sphere's tangent space, rows
    re-normalised after each step. T anneals geometrically from start_temperature to temperature: a warm start
    spreads all pairs before the cold end works on the closest ones, which avoids the local optima a cold start
    falls into (K=12 in 3-D). The learning rate decays on a cosine to lr/100, so the vectors settle.

    init: "gaussian" (seeded; defaults lr 0.01, start_temperature 0.1), "code" (binary_code(), falling back to
    "gaussian" when there is none) or a [K, d] tensor; these two are refined: defaults lr 0.001, start 0.01.
    steps: None = default_steps(K, d). Stops early after `patience` steps without a better max cosine, or
    after max_seconds (the only stop that depends on the machine's speed; off by default).
    Returns the iterate with the lowest max pairwise cosine, float32 [K, d] on CPU, never worse than the start;
    with return_info also a dict (init, steps run, stop reason, start and final max cosine, seconds).
    Deterministic for a given seed, device and thread count (no max_seconds). Memory: one Gram strip plus
    a few [K, d] tensors.
    """
    t0 = time.perf_counter()
    k, d = int(num_classes), int(dim)
    steps = default_steps(k, d) if steps is None else int(steps)
    if k < 2 or d < 1 or steps < 0:
        raise ValueError(f"need num_classes >= 2, dim >= 1, steps >= 0, got {k}, {d}, {steps}")
    init_name = "tensor" if isinstance(init, torch.Tensor) else str(init)
    start: torch.Tensor | None = None
    if isinstance(init, torch.Tensor):
        if tuple(init.shape) != (k, d):
            raise ValueError(f"init shape {tuple(init.shape)} must be ({k}, {d})")
        start = init.detach().float().cpu()
    elif init == "code":
        code = binary_code(k, d, seed=seed)
        if code is None:
            init_name = "gaussian"
        else:
            start = code[0]
    elif init != "gaussian":
        raise ValueError(f"init must be 'gaussian', 'code' or a tensor, got {init!r}")
    if start is None:
        start = torch.randn(
            k, d, generator=seeded_generator(seed), dtype=torch.float32
        )  # [K, d], seeded on CPU
    refine = init_name != "gaussian"
    lr = float(lr if lr is not None else (1e-3 if refine else 1e-2))
    t_end = float(temperature)
    t_start = float(start_temperature) if start_temperature is not None else (1e-2 if refine else 0.1)
    if t_end <= 0 or t_start <= 0 or lr <= 0:
        raise ValueError(f"temperatures and lr must be > 0, got {t_start} -> {t_end}, lr {lr}")

    block = strip_rows(k, block_size)
    p = F.normalize(start.to(device), dim=1)  # [K, d]
    # Denormals: see _adam_loop; flushing them covers the calling thread. Small problems run on one thread:
    # their matmuls gain nothing from more, and on a busy machine the thread handoffs of thousands of tiny
    # steps cost seconds.
    flush, threads = torch.set_flush_denormal(True), torch.get_num_threads()
    if k * k * d <= _SMALL_PROBLEM:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            best, trace = _adam_loop(p, steps, lr, t_start, t_end, block, t0, max_seconds, patience)
    finally:
        torch.set_num_threads(threads)
        if flush:
            torch.set_flush_denormal(False)
    out = best.float().cpu()
    if not return_info:
        return out
    info = {
        "init": init_name,
        **trace,
        "planned_steps": steps,
        "lr": lr,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
    }
    return out, info


# ------------------------------------------------------------------------------------------------- dispatch

METHODS = ("auto", "simplex_etf", "orthoplex", "optimized")


def prototype_method(num_classes: int, dim: int) -> str:
    """The exact construction when there is one: 'simplex_etf' (K <= d+1), 'orthoplex' (K <= 2d), else
    'optimized'."""
    if num_classes <= dim + 1:
        return "simplex_etf"
    return "orthoplex" if num_classes <= 2 * dim else "optimized"


def build_prototypes(
    num_classes: int, dim: int, seed: int = 0, method: str = "auto", **opt_kwargs: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Uniform prototypes [K, d] and how they were made ({"method": ..., "seconds": ..., optimiser info}).

    method "auto" picks prototype_method(K, d); "optimized" forces the optimiser (opt_kwargs go to it). Its init
    defaults to "auto": optimise from a Gaussian start, and return the binary code instead when one exists for
    (K, d) and has the lower max cosine (info then says init "code"; both values are in info).
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown prototype method {method!r}; choose from {METHODS}")
    if method == "auto":
        method = prototype_method(num_classes, dim)
    if method != "optimized" and opt_kwargs:
        raise ValueError(
            f"optimiser options {sorted(opt_kwargs)} only apply to method 'optimized', not {method!r}"
        )
    info: dict[str, Any] = {"method": method}
    if method == "simplex_etf":
        protos = simplex_etf(num_classes, dim, seed=seed)
    elif method == "orthoplex":
        protos = orthoplex(num_classes, dim, seed=seed)
    else:
        auto = opt_kwargs.get("init", "auto") == "auto"
        if auto:
            opt_kwargs["init"] = "gaussian"
        protos, opt_info = optimize_uniform(num_classes, dim, seed=seed, return_info=True, **opt_kwargs)
        info.update(opt_info)
        code = binary_code(num_classes, dim, seed=seed) if auto else None
        if code is not None:
            # Best of both: the optimiser from a Gaussian start wins where it has the steps (K=8142, d=512:
            # 0.053 in 120 steps against the code's 0.0625), the code where it is the tighter (d=1024: 1/32).
            info["optimized_max_cos"], info["code_max_cos"] = opt_info["max_cos"], code[1]
            if code[1] < opt_info["max_cos"]:
                protos = code[0]
                info.update(init="code", max_cos=code[1], picked="code")
    info["seconds"] = time.perf_counter() - t0
    return protos, info


def binary_code_fits(num_classes: int, dim: int) -> bool:
    """Whether binary_code() applies (d >= 4, K > 2n for n the largest power of two <= d)."""
    return dim >= 4 and num_classes > 2 * (1 << int(math.floor(math.log2(dim))))


def uniform_prototypes(num_classes: int, dim: int, seed: int = 0, **kwargs: Any) -> torch.Tensor:
    """Uniform prototypes [K, d]: build_prototypes(...) without the info."""
    return build_prototypes(num_classes, dim, seed=seed, **kwargs)[0]


def prototype_stats(prototypes: torch.Tensor, block_size: int | None = None) -> dict[str, float]:
    """min / mean / max cosine over distinct pairs (i < j) of the rows of P [K, d], in float64, one strip of the
    upper triangle at a time (memory a strip, not K x K)."""
    k = prototypes.shape[0]
    if k < 2:
        raise ValueError("prototype_stats needs at least 2 prototypes")
    p = F.normalize(prototypes.detach().double(), dim=1)  # [K, d]
    block = strip_rows(k, block_size)
    lo, hi, total = float("inf"), -float("inf"), 0.0
    for s in range(0, k, block):
        e = min(s + block, k)
        cos = p[s:e] @ p[s:].T  # [b, K-s]
        keep = torch.ones_like(cos, dtype=torch.bool)
        keep[:, : e - s] = torch.ones(e - s, e - s, dtype=torch.bool).triu_(diagonal=1)
        vals = cos[keep]
        if vals.numel():
            lo, hi, total = min(lo, float(vals.min())), max(hi, float(vals.max())), total + float(vals.sum())
    return {"min_cos": lo, "mean_cos": total / (k * (k - 1) / 2), "max_cos": hi}


# --------------------------------------------------------------------------------------------------- saving


def class_order_digest(class_names: Sequence[str]) -> str:
    """sha256 of the class names joined by newlines: a short fingerprint of the class order."""
    return hashlib.sha256("\n".join(class_names).encode("utf-8")).hexdigest()


def save_prototypes(
    path: str | Path,
    prototypes: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write P [K, d] (row c = class c) as float32 .npy at path (.npy appended if missing), and beside it the
    sidecar .json (same stem) with the class order.

    The sidecar holds num_classes, dim, class_names (row c's class; None means the classes are 0..K-1 in
    order), their sha256 and meta (seed, method, stats, ...). Returns the sidecar's path.
    """
    path = _npy(path)
    arr = np.asarray(prototypes.detach().cpu() if isinstance(prototypes, torch.Tensor) else prototypes)
    arr = arr.astype(np.float32)
    if arr.ndim != 2:
        raise ValueError(f"prototypes must be [K, d], got shape {arr.shape}")
    if class_names is not None and len(class_names) != arr.shape[0]:
        raise ValueError(f"{len(class_names)} class names for {arr.shape[0]} prototypes")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    names = None if class_names is None else [str(n) for n in class_names]
    sidecar = {
        "num_classes": int(arr.shape[0]),
        "dim": int(arr.shape[1]),
        "class_order": "row c is the prototype of class_names[c]" if names else "row c is class index c",
        "class_names": names,
        "class_names_sha256": None if names is None else class_order_digest(names),
        **(meta or {}),
    }
    side = path.with_suffix(".json")
    side.write_text(json.dumps(sidecar, indent=1) + "\n")
    return side


def load_prototypes(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(P [K, d] float32, sidecar dict) as written by save_prototypes; the sidecar is {} when missing."""
    path = _npy(path)
    side = path.with_suffix(".json")
    return np.load(path), (json.loads(side.read_text()) if side.exists() else {})


def _npy(path: str | Path) -> Path:
    """path with the .npy suffix np.save gives it anyway."""
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")
