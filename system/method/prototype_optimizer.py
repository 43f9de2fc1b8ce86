"""The optimiser behind `optimized` prototypes: K unit vectors in R^d spread by Adam on a smooth maximum of their
pairwise cosines (annealed temperature, rows kept on the sphere). The Gram matrix is computed in row strips of its
upper triangle with an online log-sum-exp, so memory is a strip (at most 2^23 entries, 32 MiB), never K x K; a
step costs 1.5 K^2 d multiply-adds, on whatever device the caller passes.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from system.method.sphere_codes import binary_code, seeded_generator

_STRIP_ELEMENTS = 1 << 23  # a Gram strip holds at most this many entries (32 MiB in float32)
_SMALL_PROBLEM = 1 << 22  # K^2 d at or below this: one thread
_CUTOFF = 30.0  # softmax weights below exp(-30) of the largest are dropped (no denormals, no effect)
_TINY = 1e-18  # gradient and Adam-moment entries below this are set to 0 (their squares stay float32-normal)


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
