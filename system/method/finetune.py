"""Stage 2 on frozen stage-1 features: class-feature prototypes + learnable head, blended with lambda.

Plain torch/numpy. lambda only changes inference, so we keep both branches' logits for the selection and report
splits: the whole lambda curve costs no retraining (docs/method.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from system.config import EvalSection, FinetuneSection
from system.method.heads import blend_logits, lambda_curve, train_head
from system.method.heads import lambda_correct as lambda_correct_matrix
from system.method.linear_probe import ProbeFit, fit_linear_probe, l2_grid
from system.method.metrics import shot_accuracy


@dataclass
class BranchLogits:
    head: np.ndarray  # [N, K] learnable-head logits
    proto: np.ndarray  # [N, K] s_p * cos(f, mu_c)
    labels: np.ndarray  # [N]


def fit_head(
    train: tuple[np.ndarray, np.ndarray],
    select: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    cfg: FinetuneSection,
    seed: int,
    class_counts: list[int] | None = None,
) -> tuple[torch.nn.Module, ProbeFit | None]:
    """The learnable head on train features [N, d] / labels [N], in eval mode, and how the convex head was
    chosen (None for the sgd fit): its L2 strength is chosen on `select` (the selection split), never on the
    report split. `class_counts` [K]: the split's true counts when `train` holds at most
    `cfg.max_per_class` rows of each class, so the class weights are the whole split's."""
    if cfg.head_fit == "convex":
        grid = l2_grid(cfg.l2_min, cfg.l2_max, cfg.l2_points)
        probe = fit_linear_probe(
            train, select, num_classes, grid, cfg.balanced_sampling, cfg.probe_max_iter, class_counts
        )
        return probe.head, probe
    head = train_head(
        torch.from_numpy(train[0]),
        torch.from_numpy(train[1]),
        num_classes,
        head=cfg.head,
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        balanced_sampling=cfg.balanced_sampling,
        seed=seed,
    )
    return head.eval(), None


def logit_adjustment(train_counts: list[int], tau: float) -> torch.Tensor | None:
    """tau * log(prior_c) [K] (Menon et al., post-hoc), subtracted from the head's logits; None when tau = 0.
    Counts are clamped to >= 1, as in system.method.heads.PrototypeGuidedClassifier."""
    if tau <= 0:
        return None
    counts = torch.as_tensor(train_counts, dtype=torch.float64).clamp(min=1.0)  # [K]
    return (tau * (counts / counts.sum()).log()).float()


@torch.no_grad()
def branch_logits(
    head: torch.nn.Module,
    mu: torch.Tensor,
    features: np.ndarray,
    labels: np.ndarray,
    proto_scale: float,
    adjust: torch.Tensor | None = None,
) -> BranchLogits:
    """Both branches' logits; `adjust` [K] (from `logit_adjustment`) is subtracted from the head's only: class
    means carry no class-frequency scale."""
    f = torch.from_numpy(features)
    head.eval()
    head_logits = head(f)  # [N, K]
    if adjust is not None:
        head_logits = head_logits - adjust  # [N, K]
    proto_logits = proto_scale * torch.nn.functional.normalize(f, dim=1) @ mu.T  # [N, K]
    return BranchLogits(head_logits.numpy(), proto_logits.numpy(), labels)


def lambda_candidates(
    points: int, fixed: float | None = None, spec: tuple[str, list[Any]] | None = None
) -> np.ndarray:
    """The lambdas selection may pick from: a fixed value, a space entry's values or range, else [0, 1].

    `spec` is a search-space entry for finetune.blend_weight: grid/choice lists are taken as they are, a range
    (uniform/quniform/loguniform low, high) becomes `points` evenly spaced values inside it.
    """
    if fixed is not None:
        return np.asarray([fixed], dtype=np.float64)
    if spec is not None:
        kind, args = spec
        if kind in ("grid", "choice"):
            return np.unique(np.asarray(args, dtype=np.float64))
        return np.linspace(float(args[0]), float(args[1]), points)
    return np.linspace(0.0, 1.0, points)


def select_lambda(
    val: BranchLogits, points: int, candidates: np.ndarray | None = None
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Best lambda on the selection split: (lambda, top-1 %, lambda grid, curve); ties go to the smaller lambda.

    The curve always covers [0, 1] at `points` values (for the plots) plus the candidates; the choice is made
    among the candidates only (default: the whole [0, 1] grid).
    """
    full = np.linspace(0.0, 1.0, points)
    # Rounded so that a candidate like 0.3 and the grid's 0.30000000000000004 are one point.
    cand = np.round(full if candidates is None else np.asarray(candidates, dtype=np.float64), 12)
    lams = np.union1d(np.round(full, 12), cand)
    grid, accs = lambda_curve(
        torch.from_numpy(val.head), torch.from_numpy(val.proto), torch.from_numpy(val.labels), lams
    )
    allowed = np.isin(grid, cand)
    best = np.flatnonzero(allowed & (accs == accs[allowed].max()))
    i = int(best[np.argmin(grid[best])])
    return float(grid[i]), float(accs[i]), grid, accs


# log T is searched inside these bounds: wide enough for any logit scale stage 2 produces, and a selection
# split that one branch separates perfectly (its NLL keeps falling as T -> 0) stops at the bound, not at 0.
TEMPERATURE_BOUNDS = (1e-3, 1e3)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The scalar T that minimises the mean cross-entropy of softmax(logits / T) over `labels` (temperature
    scaling, Guo et al. 2017), searched as log T in TEMPERATURE_BOUNDS, in float64.

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded Brent search finds its minimum. Where the
    NLL keeps falling toward a bound (a split one branch gets all right with a margin: T -> 0), it ends flat at
    float64's resolution, and the bound itself is returned. Logits that carry no scale (every row constant) or
    are not all finite give T = 1: there is nothing to fit.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)  # [N, K]
    y = np.asarray(labels, dtype=np.int64).ravel()  # [N]
    if z.ndim != 2 or z.shape[0] != y.size or y.size == 0:
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not match (at least one sample needed)")
    if not np.isfinite(z).all():
        return 1.0
    z = z - z.max(axis=1, keepdims=True)  # [N, K], <= 0, so exp(z / T) cannot overflow at any T
    if not z.any():
        return 1.0
    rows = np.arange(y.size)
    zy = z[rows, y]  # [N]
    top = z.argmax(axis=1)  # [N], where z is 0

    def nll(log_t: float) -> float:
        beta = math.exp(-log_t)
        rest = np.exp(beta * z)  # [N, K]
        rest[rows, top] = 0.0  # logsumexp = log1p(the other terms): precise while they are tiny
        return float(np.mean(np.log1p(rest.sum(axis=1)) - beta * zy))

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-8})
    # Brent never evaluates the bounds; on a tie the bound wins, so a flat end gives the same T every time
    best = min((nll(lo), 0, lo), (nll(hi), 1, hi), (nll(float(res.x)), 2, float(res.x)))
    return float(math.exp(best[2]))


def calibrate(logits: BranchLogits, t_head: float, t_proto: float) -> BranchLogits:
    """Each branch's logits divided by its temperature (in float64, stored in the logits' own dtype). A
    positive scale keeps each branch's ranking of the classes, so only the blend changes."""
    if not (t_head > 0 and t_proto > 0 and math.isfinite(t_head) and math.isfinite(t_proto)):
        raise ValueError(f"temperatures must be positive and finite, got {t_head}, {t_proto}")

    def scaled(z: np.ndarray, t: float) -> np.ndarray:
        return (np.asarray(z, dtype=np.float64) / t).astype(z.dtype)  # [N, K]

    return BranchLogits(scaled(logits.head, t_head), scaled(logits.proto, t_proto), logits.labels)


def _candidate_grid(points: int, candidates: np.ndarray | None) -> np.ndarray:
    """The sorted, distinct lambdas selection picks from, rounded as `select_lambda` rounds them."""
    full = np.linspace(0.0, 1.0, points)
    return np.unique(np.round(full if candidates is None else np.asarray(candidates, dtype=np.float64), 12))


def lambda_correct(val: BranchLogits, lams: np.ndarray) -> np.ndarray:
    """correct[i, g]: the blended top-1 of sample i at lams[g] is its label ([N, L] bool): the per-sample view of
    the lambda curve (system.method.heads.lambda_correct), so the rows' mean is that curve at these lambdas."""
    return lambda_correct_matrix(
        torch.from_numpy(val.head),
        torch.from_numpy(val.proto),
        torch.from_numpy(np.asarray(val.labels)),
        lams,
    )


def lambda_bootstrap(
    val: BranchLogits,
    candidates: np.ndarray | None,
    points: int,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """How firmly the selection split picks lambda: resample its samples with replacement `n_boot` times and
    choose the best candidate on each resample as `select_lambda` does (ties: the smaller lambda).

    Returns n_boot, the chosen lambda's mean, std (ddof=1) and 2.5 / 97.5 percentiles (lambda_lo, lambda_hi),
    and the 2.5 / 97.5 percentiles of the chosen lambda's top-1 in % (top1_lo, top1_hi). That top-1 is the
    best of the candidates on each resample, so it leans optimistic, as any accuracy read where it was
    maximised.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    lams = _candidate_grid(points, candidates)  # [L], sorted: the first maximum is the smallest lambda
    correct = lambda_correct(val, lams).astype(np.float64)  # [N, L]
    n = correct.shape[0]
    if n == 0:
        raise ValueError("the selection split has no sample to resample")
    rng = np.random.default_rng(seed)
    chosen = np.empty(n_boot)  # [B]
    top1 = np.empty(n_boot)  # [B]
    for b in range(n_boot):
        # how often each sample is drawn: hits per lambda are then one product, exact in float64
        draws = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)  # [N]
        hits = draws @ correct  # [L]
        i = int(np.argmax(hits))
        chosen[b], top1[b] = lams[i], 100.0 * hits[i] / n
    lam_lo, lam_hi = np.percentile(chosen, [2.5, 97.5])
    acc_lo, acc_hi = np.percentile(top1, [2.5, 97.5])
    return {
        "n_boot": int(n_boot),
        "lambda_mean": float(chosen.mean()),
        "lambda_std": float(chosen.std(ddof=1)) if n_boot > 1 else 0.0,
        "lambda_lo": float(lam_lo),
        "lambda_hi": float(lam_hi),
        "top1_lo": float(acc_lo),
        "top1_hi": float(acc_hi),
    }


def shot_accuracy_at(
    logits: BranchLogits, lam: float, train_counts: list[int], eval_cfg: EvalSection
) -> dict[str, Any]:
    """Top-1 overall and by shot group of the blended classifier at `lam` (docs/method.md's protocol)."""
    preds = blended_predictions(logits, lam)
    return shot_accuracy(preds, logits.labels, train_counts, eval_cfg.many_threshold, eval_cfg.few_threshold)


def blended_predictions(logits: BranchLogits, lam: float) -> np.ndarray:
    """Top-1 class per sample of the blended logits (exactly one branch at lambda 0 or 1)."""
    z = blend_logits(torch.from_numpy(logits.head), torch.from_numpy(logits.proto), lam)  # [N, K]
    return z.argmax(dim=1).numpy()


# A classifier that sends at least this share of a (roughly balanced) split to one class has collapsed: its
# accuracy then says nothing about the features (typically stage 1 or the head trained far too few steps).
COLLAPSE_SHARE = 0.5


def top_class_share(preds: np.ndarray, num_classes: int) -> float:
    """The share of predictions that go to the most-predicted class (1/K for a uniform spread)."""
    if len(preds) == 0:
        return 0.0
    return float(np.bincount(np.asarray(preds, dtype=np.int64), minlength=num_classes).max() / len(preds))


def is_collapsed(share: float, num_classes: int) -> bool:
    """One class takes COLLAPSE_SHARE of the predictions (only meaningful with 4 or more classes)."""
    return num_classes >= 4 and share >= COLLAPSE_SHARE
