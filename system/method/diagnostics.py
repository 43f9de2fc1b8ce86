"""Feature-space diagnostics (docs/method.md's motivation made measurable): how far apart class centroids sit, for
head and tail classes, before and after stage 1; and the stage-2 head's positive bias. Plain torch/numpy.

Long-tailed training spreads head classes and crowds tail classes: the mean tail-to-tail centroid distance
falls below the head-to-tail one. Uniform prototypes are meant to undo that.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from system.method.heads import ClassMeanAccumulator


def class_centroids(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised class means of normalised features: mu [K, d] (zero rows for absent classes), counts [K]."""
    f = torch.as_tensor(features)  # [N, d]
    acc = ClassMeanAccumulator(num_classes, f.shape[1]).update(f, torch.as_tensor(labels))
    mu = F.normalize(acc.sums, dim=1)  # normalising the sum equals normalising the mean; zero rows stay zero
    return mu.numpy(), acc.counts.numpy()


def centroid_geometry(
    features: np.ndarray,
    labels: np.ndarray,
    train_counts: list[int],
    many_threshold: int,
    few_threshold: int,
) -> dict[str, Any]:
    """`centroid_geometry_from_sums` of features [N, d] and labels [N]."""
    f = torch.as_tensor(features)  # [N, d]
    acc = ClassMeanAccumulator(len(train_counts), f.shape[1]).update(f, torch.as_tensor(labels))
    return centroid_geometry_from_sums(acc, train_counts, many_threshold, few_threshold)


def centroid_geometry_from_sums(
    acc: ClassMeanAccumulator, train_counts: list[int], many_threshold: int, few_threshold: int
) -> dict[str, Any]:
    """Cosine distances (1 - cos) between centred class centroids, by shot group of the pair.

    Keys: `head_tail`, `tail_tail`, `head_head` (mean distance over those pairs, None when a group has too few
    classes), `tail_over_head_tail` (tail_tail / head_tail: below 1 means the tail is crowded),
    `centroid_max_cos`, `centroid_mean_cos` (over all pairs), and `nearest` [K]: each class's distance to its
    nearest other centroid (NaN for classes absent from `labels`).
    """
    k = len(train_counts)
    # normalising the sum equals normalising the mean; zero rows (absent classes) stay zero
    mu, counts = F.normalize(acc.sums, dim=1).numpy(), acc.counts.numpy()
    present = counts > 0
    # Centred on the mean of the class centroids (as in neural-collapse analyses): CLIP-like features share a
    # large common direction that makes every raw centroid cosine close to 1 and hides the class structure.
    mu = np.where(present[:, None], mu - mu[present].mean(axis=0), 0.0)
    mu = mu / np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
    cos = mu @ mu.T  # [K, K]
    dist = 1.0 - cos
    n = np.asarray(train_counts)
    head = (n > many_threshold) & present
    tail = (n < few_threshold) & present

    def mean_pairs(a: np.ndarray, b: np.ndarray) -> float | None:
        mask = np.outer(a, b) & ~np.eye(k, dtype=bool)
        if a is b or np.array_equal(a, b):
            mask = np.triu(mask, 1)
        return float(dist[mask].mean()) if mask.any() else None

    hh, ht, tt = mean_pairs(head, head), mean_pairs(head, tail), mean_pairs(tail, tail)
    off = np.triu(np.outer(present, present), 1)
    masked = np.where(np.outer(present, present) & ~np.eye(k, dtype=bool), dist, np.inf)
    nearest = np.where(present, masked.min(axis=1), np.nan)
    return {
        "head_head": hh,
        "head_tail": ht,
        "tail_tail": tt,
        "tail_over_head_tail": (tt / ht) if (tt is not None and ht) else None,
        "centroid_max_cos": float(cos[off].max()) if off.any() else None,
        "centroid_mean_cos": float(cos[off].mean()) if off.any() else None,
        "nearest": nearest,
    }


def geometry_summary(g: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of `centroid_geometry` (for JSON reports)."""
    return {k: v for k, v in g.items() if k != "nearest"}
