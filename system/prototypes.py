"""Uniformly distributed class prototypes on the unit sphere (METHOD.md, stage 1).

K <= d+1: the simplex equiangular tight frame, exact. K > d+1: Adam on a smooth maximum (log-sum-exp) of the
pairwise cosines, rows re-normalised after every step. Prototypes are then assigned to classes, by a linear
assignment to the classes' text embeddings or at random.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = [
    "ASSIGNERS",
    "assign_prototypes",
    "optimize_uniform",
    "prototype_stats",
    "simplex_etf",
    "uniform_prototypes",
]


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Simplex ETF: K unit vectors in R^d with every pairwise cosine exactly -1/(K-1); needs K <= d+1.

    Built from the Helmert basis of the (K-1)-dim subspace orthogonal to the all-ones vector (whose rows, scaled to
    unit norm, are the simplex vertices), then rotated into R^d by a seeded random orthonormal map.
    Computed in float64 so the cosines are exact to float32 precision. Returns float32 [K, d].
    """
    k, d = int(num_classes), int(dim)
    if k < 1 or d < 1:
        raise ValueError(f"need num_classes >= 1 and dim >= 1, got {k}, {d}")
    if k > d + 1:
        raise ValueError(f"simplex ETF needs num_classes <= dim + 1, got K={k}, d={d}; use optimize_uniform")
    gen = _generator(seed)
    if k == 1:
        v = torch.randn(1, d, generator=gen, dtype=torch.float64)  # [1, d]
        return F.normalize(v, dim=1).float()
    # Helmert basis: column m-1 (m = 1..K-1) is (1, .., 1, -m, 0, ..) / sqrt(m(m+1)), with m ones.
    m = torch.arange(1, k, dtype=torch.float64)  # [K-1]
    row = torch.arange(k, dtype=torch.float64)[:, None]  # [K, 1]
    basis = torch.where(row < m, 1.0, torch.where(row == m, -m, 0.0)) / torch.sqrt(m * (m + 1))  # [K, K-1]
    # Rows of the basis have norm sqrt((K-1)/K) and inner products -1/K: rescaled they are the simplex.
    vertices = basis * np.sqrt(k / (k - 1))  # [K, K-1]
    q, r = torch.linalg.qr(torch.randn(d, k - 1, generator=gen, dtype=torch.float64))  # q: [d, K-1]
    q = q * torch.sign(torch.diagonal(r))  # unique (Haar) rotation, independent of the QR sign convention
    return (vertices @ q.T).float()  # [K, d]


def _smooth_max_grad(p: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """Gradient of T * logsumexp_{i != j}(cos_ij / T) wrt unit rows p, and the current max cosine.

    The loss is symmetric in (i, j), so its gradient is 2 W p with W the softmax weights over off-diagonal pairs;
    written out by hand it costs two matmuls and no autograd graph.
    """
    cos = p @ p.T  # [K, K]
    cos.fill_diagonal_(-float("inf"))
    max_cos = float(cos.max())
    # Shift by the max for stability; clamp at -30 because smaller weights do not matter, and float32 denormals
    # (from exp underflow, then squared in Adam's state) slowed each step several times over.
    w = torch.exp(((cos - max_cos) / temperature).clamp_(min=-30.0))  # [K, K]
    w.fill_diagonal_(0.0)
    w /= w.sum()
    return 2.0 * (w @ p), max_cos  # [K, d]


def _max_cos(p: torch.Tensor) -> float:
    cos = p @ p.T  # [K, K]
    return float(cos.fill_diagonal_(-float("inf")).max())


def optimize_uniform(
    num_classes: int,
    dim: int,
    seed: int = 0,
    steps: int = 1000,
    lr: float = 0.01,
    temperature: float = 0.002,
    start_temperature: float | None = 0.1,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """K unit vectors in R^d spread out by minimising the smooth maximum of their pairwise cosines.

    Loss T * logsumexp_{i != j}(p_i.p_j / T), Adam steps, rows re-normalised after each step, seeded Gaussian
    start. T anneals geometrically from start_temperature to temperature (None: constant): a warm start spreads
    all pairs before the cold end works on the closest ones, which avoids the local optima a cold start falls
    into (K=12 in 3-D). The learning rate decays on a cosine to lr/100, so the vectors settle instead of
    jittering by about lr. Returns the iterate with the lowest max pairwise cosine, float32 [K, d] on CPU.
    Deterministic for a given seed, device and thread count. Cost: 2 matmuls of K*K*d per step.
    """
    k, d, steps = int(num_classes), int(dim), int(steps)
    if k < 2 or d < 1 or steps < 1:
        raise ValueError(f"need num_classes >= 2, dim >= 1, steps >= 1, got {k}, {d}, {steps}")
    t_end = float(temperature)
    t_start = t_end if start_temperature is None else float(start_temperature)
    if t_end <= 0 or t_start <= 0:
        raise ValueError(f"temperatures must be > 0, got {start_temperature} -> {temperature}")
    start = torch.randn(k, d, generator=_generator(seed), dtype=torch.float32)  # [K, d], seeded on CPU
    param = torch.nn.Parameter(F.normalize(start.to(device), dim=1))  # [K, d]
    opt = torch.optim.Adam([param], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.01)
    best, best_max = param.data.clone(), float("inf")
    with torch.no_grad():
        for step in range(steps):
            temp = t_start * (t_end / t_start) ** (step / max(steps - 1, 1))
            grad, max_cos = _smooth_max_grad(param.data, temp)
            if max_cos < best_max:  # max_cos belongs to the current, normalised iterate
                best_max, best = max_cos, param.data.clone()
            param.grad = grad
            opt.step()
            sched.step()
            param.data = F.normalize(param.data, dim=1)
        if _max_cos(param.data) < best_max:
            best = param.data.clone()
    return best.float().cpu()


def prototype_method(num_classes: int, dim: int) -> str:
    """'simplex_etf' when K <= d+1 (exact optimum), else 'optimized'."""
    return "simplex_etf" if num_classes <= dim + 1 else "optimized"


def uniform_prototypes(num_classes: int, dim: int, seed: int = 0, **opt_kwargs) -> torch.Tensor:
    """Uniform prototypes [K, d]: the exact simplex ETF when K <= d+1, otherwise optimize_uniform(**opt_kwargs)."""
    if prototype_method(num_classes, dim) == "simplex_etf":
        return simplex_etf(num_classes, dim, seed=seed)
    return optimize_uniform(num_classes, dim, seed=seed, **opt_kwargs)


def prototype_stats(prototypes: torch.Tensor) -> dict[str, float]:
    """min / mean / max cosine over distinct pairs (i < j) of the rows of P [K, d]."""
    if prototypes.shape[0] < 2:
        raise ValueError("prototype_stats needs at least 2 prototypes")
    p = F.normalize(prototypes.double(), dim=1)  # [K, d]
    cos = p @ p.T  # [K, K]
    i, j = torch.triu_indices(p.shape[0], p.shape[0], offset=1)
    pairs = cos[i, j]  # [K(K-1)/2]
    return {"min_cos": float(pairs.min()), "mean_cos": float(pairs.mean()), "max_cos": float(pairs.max())}


def _assign_random(
    prototypes: torch.Tensor, class_embeddings: torch.Tensor | None, seed: int
) -> torch.Tensor:
    return torch.randperm(prototypes.shape[0], generator=_generator(seed))  # [K]


def _assign_text(prototypes: torch.Tensor, class_embeddings: torch.Tensor | None, seed: int) -> torch.Tensor:
    if class_embeddings is None:
        raise ValueError("assignment method 'text' needs class_embeddings [K, d]")
    if class_embeddings.shape != prototypes.shape:
        raise ValueError(
            f"class_embeddings shape {tuple(class_embeddings.shape)} must equal prototypes shape "
            f"{tuple(prototypes.shape)}"
        )
    e = F.normalize(class_embeddings.detach().double().cpu(), dim=1)  # [K, d]
    p = F.normalize(prototypes.detach().double().cpu(), dim=1)  # [K, d]
    sim = (e @ p.T).numpy()  # [K classes, K prototypes]
    rows, cols = linear_sum_assignment(sim, maximize=True)
    order = np.empty_like(cols)
    order[rows] = cols  # class rows[i] gets prototype cols[i]
    return torch.from_numpy(order).long()  # [K]


# name -> fn(prototypes, class_embeddings, seed) -> LongTensor [K]: the prototype index of each class
ASSIGNERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor]] = {
    "random": _assign_random,
    "text": _assign_text,
}


def assign_prototypes(
    prototypes: torch.Tensor,
    class_embeddings: torch.Tensor | None = None,
    method: str = "random",
    seed: int = 0,
) -> torch.Tensor:
    """P with rows permuted so that row c is class c's prototype.

    "text": linear assignment maximising the total cosine between class_embeddings [K, d] and the prototypes, so
    classes with similar text get nearby prototypes. "random": a seeded permutation.
    """
    if method not in ASSIGNERS:
        raise ValueError(f"unknown prototype assignment method {method!r}; choose from {sorted(ASSIGNERS)}")
    order = ASSIGNERS[method](prototypes, class_embeddings, seed)  # [K]
    return prototypes[order.to(prototypes.device)]  # [K, d]
