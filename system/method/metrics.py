"""Evaluation protocol of docs/method.md: top-1 overall and by shot group (many / medium / few training images)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["SHOT_GROUPS", "per_class_accuracy", "shot_accuracy", "shot_group", "topk_accuracy"]

SHOT_GROUPS = ("many", "medium", "few")

ArrayLike = np.ndarray | torch.Tensor | Sequence[int]


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def shot_group(n_train: int, many_threshold: int = 100, few_threshold: int = 20) -> str:
    """'many' if n > many_threshold, 'few' if n < few_threshold, else 'medium' (both thresholds are medium)."""
    if n_train > many_threshold:
        return "many"
    if n_train < few_threshold:
        return "few"
    return "medium"


def per_class_accuracy(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Accuracy in [0, 1] of each class [K]; nan for a class with no eval sample."""
    p, y = _np(preds).astype(np.int64).ravel(), _np(labels).astype(np.int64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"preds {p.shape} and labels {y.shape} differ in length")
    totals = np.bincount(y, minlength=num_classes)[:num_classes]  # [K]
    hits = np.bincount(y[p == y], minlength=num_classes)[:num_classes]  # [K]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)


def shot_accuracy(
    preds: ArrayLike,
    labels: ArrayLike,
    train_counts: ArrayLike,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, Any]:
    """Top-1 in percent: 'overall' over all eval samples; 'many' / 'medium' / 'few' as the mean of the group's
    per-class accuracies over classes that have eval samples (None when there is none: never 0).

    Also 'per_class' (percent, None where a class has no eval sample) and 'group_sizes' (classes per group by
    training count, with or without eval samples). The number of classes is len(train_counts).
    """
    counts = _np(train_counts).astype(np.int64).ravel()  # [K]
    y = _np(labels).astype(np.int64).ravel()
    p = _np(preds).astype(np.int64).ravel()
    if y.size and (y.min() < 0 or y.max() >= counts.size):
        raise ValueError(f"labels must lie in [0, {counts.size}); train_counts gives the number of classes")
    acc = per_class_accuracy(p, y, counts.size) * 100.0  # [K], nan where no eval sample
    groups = np.array([shot_group(int(n), many_threshold, few_threshold) for n in counts])  # [K]
    out: dict[str, Any] = {"overall": float((p == y).mean() * 100.0) if y.size else None}
    for g in SHOT_GROUPS:
        vals = acc[(groups == g) & ~np.isnan(acc)]
        out[g] = float(vals.mean()) if vals.size else None
    out["per_class"] = [None if np.isnan(a) else float(a) for a in acc]
    out["group_sizes"] = {g: int((groups == g).sum()) for g in SHOT_GROUPS}
    return out


def topk_accuracy(logits: torch.Tensor | np.ndarray, labels: ArrayLike, k: int = 1) -> float:
    """Percent of samples whose label is among the k largest logits [N, K]."""
    z = torch.as_tensor(_np(logits))  # [N, K]
    y = torch.as_tensor(_np(labels)).long().ravel()  # [N]
    if z.shape[0] == 0:
        raise ValueError("topk_accuracy needs at least one sample")
    topk = z.topk(min(k, z.shape[1]), dim=1).indices  # [N, k]
    return float((topk == y[:, None]).any(dim=1).double().mean() * 100.0)
