"""The convex stage-2 head: class-weighted logistic regression by L-BFGS, L2 strength chosen on val."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from system.config import ConfigError, load_config
from system.method.linear_probe import class_weights, fit_linear_probe, fit_logistic, l2_grid, probe_objective


def _blobs(n_per_class: list[int], dim: int = 8, spread: float = 0.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per_class), dim))
    x = np.concatenate(
        [c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, n_per_class, strict=True)]
    )
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # stage-1 features are unit vectors
    return x.astype(np.float32), y.astype(np.int64)


def test_objective_by_hand():
    # one sample, two classes, W = [[1, 0], [0, 0]], b = 0, x = [1, 0]: logits [1, 0], CE = log(1 + e^-1)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    bias = torch.zeros(2, dtype=torch.float64)
    w = torch.ones(1, dtype=torch.float64)
    value = probe_objective(x, y, w, weight, bias, l2=0.5)
    assert float(value) == pytest.approx(math.log(1 + math.exp(-1)) + 0.25 * 1.0, abs=1e-12)


def test_class_weights_powers():
    y = torch.tensor([0, 0, 0, 0, 1])  # n = [4, 1]
    assert class_weights(y, 2, "none").tolist() == [1.0] * 5
    assert class_weights(y, 2, "sqrt").tolist() == [0.5] * 4 + [1.0]
    assert class_weights(y, 2, "balanced").tolist() == [0.25] * 4 + [1.0]
    with pytest.raises(ValueError, match="balanced_sampling"):
        class_weights(y, 2, "inverse")


def test_solution_is_a_stationary_point_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs([40, 20, 8], dim=6)
    l2 = 1e-2
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y)
    w = class_weights(yt, 3, "sqrt")
    weight, bias, _ = fit_logistic(xt, yt, 3, l2, w, tolerance=1e-10, max_iter=2000)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    probe_objective(xt, yt, w, weight, bias, l2).backward()
    assert weight.grad.abs().max() < 1e-6 and bias.grad.abs().max() < 1e-6
    # scikit-learn minimises 0.5 ||W||^2 + C sum_i w_i CE_i: the same problem for C = 1 / (l2 sum_i w_i)
    ref = LogisticRegression(C=1.0 / (l2 * float(w.sum())), tol=1e-10, max_iter=5000)
    ref.fit(x.astype(np.float64), y, sample_weight=w.numpy())
    assert np.allclose(weight.detach().numpy(), ref.coef_, atol=2e-4)
    # softmax is shift-invariant in the bias; scikit-learn centres it as our zero-initialised fit does
    assert np.allclose(
        bias.detach().numpy() - bias.detach().numpy().mean(),
        ref.intercept_ - ref.intercept_.mean(),
        atol=2e-4,
    )


def test_grid_is_log_spaced_strongest_first():
    assert l2_grid(1e-6, 1e-1, 6) == pytest.approx((1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6))
    assert l2_grid(1e-3, 1e-3, 1) == (1e-3,)


def test_l2_chosen_on_selection_split_and_deterministic():
    x, y = _blobs([60, 25, 10, 4], seed=1)
    xv, yv = _blobs([15, 15, 15, 15], seed=1)  # same centres (seed), balanced
    grid = l2_grid(1e-5, 1e1, 7)
    fit = fit_linear_probe((x, y), (xv, yv), 4, grid, "sqrt")
    assert fit.grid == grid and len(fit.select_top1) == 7
    best = max(fit.select_top1)
    assert fit.l2 == grid[fit.select_top1.index(best)]  # the first (strongest) among the best
    preds = fit.head(torch.from_numpy(xv)).argmax(1).numpy()
    assert (preds == yv).mean() * 100 == pytest.approx(best)
    # a regularisation of 10 on unit features barely moves the weights: worse than the chosen one
    assert fit.select_top1[0] < best
    again = fit_linear_probe((x, y), (xv, yv), 4, grid, "sqrt")
    assert torch.equal(again.head.weight, fit.head.weight) and again.l2 == fit.l2


def test_class_weights_move_the_boundary_toward_the_head():
    # 1-D, two overlapping classes 50:5; balanced weights push predictions toward the rare class
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-0.5, 1.0, 50), rng.normal(0.5, 1.0, 5)])[:, None].astype(np.float32)
    y = np.array([0] * 50 + [1] * 5)
    grid = (1e-3,)
    plain = fit_linear_probe((x, y), (x, y), 2, grid, "none").head
    balanced = fit_linear_probe((x, y), (x, y), 2, grid, "balanced").head
    t = torch.from_numpy(x)
    assert balanced(t).argmax(1).sum() > plain(t).argmax(1).sum()


def test_mismatched_inputs_refused():
    x, y = _blobs([5, 5])
    with pytest.raises(ValueError, match="train features"):
        fit_linear_probe((x, y[:-1]), (x, y), 2, (1e-3,))
    with pytest.raises(ValueError, match="selection features"):
        fit_linear_probe((x, y), (x[:, :3], y), 2, (1e-3,))


def test_config_rules():
    with pytest.raises(ConfigError, match="finetune.head_fit: convex fits a linear head only"):
        load_config(None, ["finetune.head=mlp"])
    load_config(None, ["finetune.head=mlp", "finetune.head_fit=sgd"])
    with pytest.raises(ConfigError, match="finetune.l2_min"):
        load_config(None, ["finetune.l2_min=1.0", "finetune.l2_max=0.1"])
