"""The stage-2 linear head as a convex fit: class-weighted multinomial logistic regression on frozen features.

A head trained by SGD for `finetune.epochs` epochs gets 3 steps an epoch on a 300-image dataset and thousands on
ImageNet-LT: one recipe cannot serve both. The linear head's objective is convex, so we solve it instead: full
batch, L-BFGS in float64 to a gradient tolerance, for each L2 strength of a log-spaced grid, and keep the one
with the best top-1 on the selection split (val). This is CLIP's linear-probe protocol (there: scikit-learn's
L-BFGS logistic regression, the regularisation searched on val), with class weights n_c^-q standing in for the
resampling of the SGD head (q = 0, 1/2, 1 for finetune.balanced_sampling none, sqrt, balanced).

Objective, for weights W [K, d] and bias b [K] (the bias is not regularised):

    L(W, b) = sum_i w_i CE(W x_i + b, y_i) / sum_i w_i + (l2 / 2) ||W||_F^2,    w_i = n_{y_i}^-q
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASS_WEIGHT_POWER = {"none": 0.0, "sqrt": 0.5, "balanced": 1.0}


@dataclass(frozen=True)
class ProbeFit:
    """The chosen head and how it was chosen."""

    head: nn.Linear  # float32, eval mode, on CPU
    l2: float  # the chosen L2 strength
    grid: tuple[float, ...]  # every L2 strength tried, strongest first
    select_top1: tuple[float, ...]  # top-1 (%) on the selection split at each grid point
    iterations: tuple[int, ...]  # L-BFGS iterations used at each grid point


def class_weights(
    labels: torch.Tensor, num_classes: int, balanced_sampling: str, class_counts: list[int] | None = None
) -> torch.Tensor:
    """Per-sample weight n_{y_i}^-q [N] (float64); q from CLASS_WEIGHT_POWER. With `class_counts` (the true
    counts n_c of a split that `labels`, m_c rows per class, subsamples): n_{y_i}^(1-q) / m_{y_i}, which gives
    each class the total weight it has in the whole split (and equals n^-q when m = n)."""
    if balanced_sampling not in CLASS_WEIGHT_POWER:
        raise ValueError(
            f"unknown balanced_sampling {balanced_sampling!r}; choose from {sorted(CLASS_WEIGHT_POWER)}"
        )
    q = CLASS_WEIGHT_POWER[balanced_sampling]
    seen = torch.bincount(labels, minlength=num_classes).double().clamp(min=1.0)  # [K] m_c
    if class_counts is None:
        return seen.pow(-q)[labels]  # [N]
    n = torch.as_tensor(class_counts, dtype=torch.float64).clamp(min=1.0)  # [K] n_c
    return (n.pow(1.0 - q) / seen)[labels]  # [N]


def probe_objective(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, l2: float
) -> torch.Tensor:
    """L(W, b) of the module docstring: x [N, d], y [N], w [N] sample weights, weight [K, d], bias [K]."""
    ce = F.cross_entropy(x @ weight.T + bias, y, reduction="none")  # [N]
    return (w * ce).sum() / w.sum() + 0.5 * l2 * weight.pow(2).sum()


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    sample_weights: torch.Tensor | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 500,
    tolerance: float = 1e-7,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise L(W, b) with L-BFGS (strong-Wolfe line search) in float64: (W [K, d], b [K], iterations).

    Deterministic: full batch, no sampling. `init` warm-starts from a neighbouring grid point's solution.
    """
    x = x.double()  # [N, d]
    w = (
        torch.ones(x.shape[0], dtype=torch.float64) if sample_weights is None else sample_weights.double()
    )  # [N]
    if init is None:
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)  # [K, d]
        bias = torch.zeros(num_classes, dtype=torch.float64)  # [K]
    else:
        weight, bias = init[0].detach().double().clone(), init[1].detach().double().clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = probe_objective(x, y, w, weight, bias, l2)
        loss.backward()
        return loss

    opt.step(closure)
    iterations = int(opt.state[opt._params[0]].get("n_iter", 0))
    return weight.detach(), bias.detach(), iterations


def l2_grid(low: float, high: float, points: int) -> tuple[float, ...]:
    """Log-spaced L2 strengths, strongest first (each fit warm-starts from the previous, smoother one)."""
    if points == 1:
        return (float(high),)
    return tuple(float(v) for v in np.geomspace(high, low, points))


@torch.no_grad()
def _top1(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    return float(((x.double() @ weight.T + bias).argmax(dim=1) == y).double().mean() * 100.0)


def fit_linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    select: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    grid: tuple[float, ...],
    balanced_sampling: str = "sqrt",
    max_iter: int = 500,
    class_counts: list[int] | None = None,
) -> ProbeFit:
    """Fit the head at every L2 strength of `grid` on `train` and keep the best on `select` (features [N, d] and
    labels [N] each). Ties go to the stronger regularisation (earlier in the grid). `class_counts`: see
    `class_weights`."""
    x = torch.as_tensor(train[0]).double()  # [N, d]
    y = torch.as_tensor(train[1]).long().ravel()  # [N]
    xs = torch.as_tensor(select[0]).double()  # [M, d]
    ys = torch.as_tensor(select[1]).long().ravel()  # [M]
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"train features {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    if xs.ndim != 2 or xs.shape[0] != ys.shape[0] or xs.shape[0] == 0 or xs.shape[1] != x.shape[1]:
        raise ValueError(f"selection features {tuple(xs.shape)} and labels {tuple(ys.shape)} do not fit")
    w = class_weights(y, num_classes, balanced_sampling, class_counts)  # [N]
    fits, accs, iters = [], [], []
    init = None
    for l2 in grid:
        weight, bias, n = fit_logistic(x, y, num_classes, l2, w, init=init, max_iter=max_iter)
        init = (weight, bias)
        fits.append(init)
        accs.append(_top1(xs, ys, weight, bias))
        iters.append(n)
    best = int(np.argmax(accs))  # the first maximum: the strongest regularisation among ties
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(fits[best][0].float())
        head.bias.copy_(fits[best][1].float())
    return ProbeFit(head.eval(), float(grid[best]), tuple(grid), tuple(accs), tuple(iters))
