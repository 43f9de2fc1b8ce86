"""Calibrated blending in stage 2: per-branch temperature scaling on val, and the bootstrap of the chosen lambda."""

import numpy as np
import pytest

from system.config import Config, ConfigError, config_from_dict
from system.method.finetune import (
    TEMPERATURE_BOUNDS,
    BranchLogits,
    blended_predictions,
    calibrate,
    fit_temperature,
    lambda_bootstrap,
    lambda_correct,
    select_lambda,
)
from system.reports import sweep as sr
from system.reports.report import lambda_notes


def _known_distribution():
    """Two rows of log-probabilities, each repeated with its labels in exactly the row's proportions."""
    p1, p2 = np.array([0.5, 0.25, 0.25]), np.array([0.1, 0.6, 0.3])
    z = np.vstack([np.tile(np.log(p1), (4, 1)), np.tile(np.log(p2), (10, 1))])  # [14, 3]
    y = np.array([0, 0, 1, 2] + [0] + [1] * 6 + [2] * 3)  # [14]
    return z, y


def test_temperature_recovers_the_scale_of_a_known_distribution():
    # softmax(3 z / T) reproduces the labels' distribution exactly at T = 3, where the NLL's derivative in 1/T,
    # E_softmax[z] - E_labels[z], is 0 on every row.
    z, y = _known_distribution()
    assert fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=1e-6)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=1e-6)
    # scaling the logits by c scales T by c
    assert fit_temperature(30.0 * z, y) == pytest.approx(30.0, rel=1e-6)
    assert fit_temperature(0.3 * z, y) == pytest.approx(0.3, rel=1e-6)
    # a row-constant shift changes no softmax, so no temperature
    assert fit_temperature(3.0 * z + 7.0, y) == pytest.approx(3.0, rel=1e-6)


def test_temperature_edge_cases():
    y = np.array([0, 1])
    # every sample right with a margin: the NLL falls all the way to T -> 0, so T stops at the lower bound
    separable = np.array([[2.0, 0.0], [0.0, 2.0]])
    assert fit_temperature(separable, y) == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)
    # every sample wrong with a margin: the NLL falls toward T -> inf (uniform softmax), the upper bound
    assert fit_temperature(-separable, y) == pytest.approx(TEMPERATURE_BOUNDS[1], rel=1e-3)
    # nothing to fit
    assert fit_temperature(np.full((2, 3), 4.0), y) == 1.0
    assert fit_temperature(np.array([[np.inf, 0.0], [0.0, 1.0]]), y) == 1.0
    with pytest.raises(ValueError, match="do not match"):
        fit_temperature(np.zeros((3, 2)), y)


def test_calibrate_divides_each_branch_and_keeps_its_argmax():
    rng = np.random.default_rng(0)
    head, proto = (rng.normal(size=(50, 7)).astype(np.float32) * s for s in (5, 1))  # [50, 7]
    z = BranchLogits(head, proto, np.zeros(50))
    c = calibrate(z, 2.0, 0.5)
    assert c.head.dtype == np.float32 and c.proto.dtype == np.float32
    np.testing.assert_array_equal(c.head, z.head / 2.0)  # dividing by 2 and multiplying by 2 are exact
    np.testing.assert_array_equal(c.proto, z.proto * 2.0)
    np.testing.assert_array_equal(blended_predictions(c, 0.0), blended_predictions(z, 0.0))
    np.testing.assert_array_equal(blended_predictions(c, 1.0), blended_predictions(z, 1.0))
    with pytest.raises(ValueError, match="positive"):
        calibrate(z, 0.0, 1.0)


def _two_informative_branches(n=600, k=8):
    """A head with a large logit scale and weaker prototypes, each right on 40-50% of the samples."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, k, n)
    head = rng.normal(size=(n, k)) * 4.0
    proto = rng.normal(size=(n, k))
    head[np.arange(n), y] += 4.0
    proto[np.arange(n), y] += 1.2
    return BranchLogits(head.astype(np.float32), proto.astype(np.float32), y)


def _chosen_lambda(val: BranchLogits, calibrated: bool) -> float:
    if calibrated:
        val = calibrate(val, fit_temperature(val.head, val.labels), fit_temperature(val.proto, val.labels))
    return select_lambda(val, 101)[0]


def test_calibrated_lambda_does_not_depend_on_a_branch_scale():
    val = _two_informative_branches()
    louder = BranchLogits(val.head * 10.0, val.proto, val.labels)
    # raw blending: a head 10x louder needs a lambda 10x more in favour of the prototypes, lam' / (1 - lam') =
    # 10 lam / (1 - lam), so the choice moves
    raw, raw_louder = _chosen_lambda(val, False), _chosen_lambda(louder, False)
    assert 0.0 < raw < 1.0
    assert raw_louder > raw
    assert raw_louder / (1 - raw_louder) == pytest.approx(10 * raw / (1 - raw), rel=0.5)
    # calibrated: the head's temperature grows 10x and absorbs the scale
    assert _chosen_lambda(louder, True) == _chosen_lambda(val, True)
    t, t_louder = fit_temperature(val.head, val.labels), fit_temperature(louder.head, louder.labels)
    assert t_louder == pytest.approx(10 * t, rel=1e-5)


def _one_lambda_right():
    """label 0 on every sample: the head says 1, the prototypes say 2, their midpoint says 0."""
    head = np.tile([1.0, 2.0, -10.0], (5, 1))  # [5, 3]
    proto = np.tile([1.0, -10.0, 2.0], (5, 1))  # [5, 3]; at lambda 0.5: [1, -4, -4]
    return BranchLogits(head, proto, np.zeros(5, dtype=np.int64))


def test_lambda_correct_matches_a_naive_loop():
    # hand-made: only the midpoint is right
    correct = lambda_correct(_one_lambda_right(), np.array([0.0, 0.5, 1.0]))
    assert correct.tolist() == [[False, True, False]] * 5
    # random float64 logits (no ties) against a per-sample, per-lambda loop
    rng = np.random.default_rng(1)
    val = BranchLogits(rng.normal(size=(40, 5)), rng.normal(size=(40, 5)), rng.integers(0, 5, 40))
    lams = np.linspace(0.0, 1.0, 11)
    naive = np.array(
        [
            [np.argmax((1 - lam) * val.head[i] + lam * val.proto[i]) == val.labels[i] for lam in lams]
            for i in range(40)
        ]
    )
    np.testing.assert_array_equal(lambda_correct(val, lams), naive)
    # and its column means are the lambda curve that select_lambda reads
    _, _, grid, curve = select_lambda(val, 11)
    np.testing.assert_allclose(100.0 * lambda_correct(val, grid).mean(axis=0), curve)


def test_bootstrap_collapses_onto_a_clearly_best_lambda():
    boot = lambda_bootstrap(_one_lambda_right(), None, points=3, n_boot=50, seed=0)
    assert boot == {
        "n_boot": 50,
        "lambda_mean": 0.5,
        "lambda_std": 0.0,
        "lambda_lo": 0.5,
        "lambda_hi": 0.5,
        "top1_lo": 100.0,
        "top1_hi": 100.0,
    }
    # only one candidate: that one, at each resample's top-1 of it (0% here)
    boot = lambda_bootstrap(_one_lambda_right(), np.array([1.0]), points=3, n_boot=10, seed=0)
    assert (boot["lambda_lo"], boot["lambda_hi"], boot["top1_hi"]) == (1.0, 1.0, 0.0)


def test_bootstrap_ties_go_to_the_smaller_lambda():
    # the same logits in both branches: every lambda is equally right on every resample
    val = _one_lambda_right()
    same = BranchLogits(val.head, val.head.copy(), np.array([1, 1, 1, 0, 0]))
    boot = lambda_bootstrap(same, np.array([0.2, 0.7]), points=3, n_boot=20, seed=0)
    assert boot["lambda_lo"] == boot["lambda_hi"] == 0.2


def test_bootstrap_is_reproducible_and_seeded():
    val = _two_informative_branches(n=200)
    a = lambda_bootstrap(val, None, points=21, n_boot=30, seed=7)
    assert a == lambda_bootstrap(val, None, points=21, n_boot=30, seed=7)
    assert a != lambda_bootstrap(val, None, points=21, n_boot=30, seed=8)
    assert a["lambda_lo"] <= a["lambda_mean"] <= a["lambda_hi"] and a["top1_lo"] <= a["top1_hi"]
    with pytest.raises(ValueError, match="n_boot"):
        lambda_bootstrap(val, None, points=21, n_boot=0)


def test_config_knobs():
    base = Config().to_dict()
    cfg = config_from_dict(base)
    assert cfg.finetune.calibrate is True and cfg.finetune.bootstrap == 200
    assert config_from_dict(base, {"finetune.bootstrap": 0}).finetune.bootstrap == 0  # 0: off
    with pytest.raises(ConfigError, match=r"finetune\.bootstrap: must be >= 0"):
        config_from_dict(base, {"finetune.bootstrap": -1})
    with pytest.raises(ConfigError, match=r"finetune\.calibrate: expected true/false"):
        config_from_dict(base, {"finetune.calibrate": 1})


def test_reports_show_the_temperatures_and_the_bootstrap():
    trial = {
        "best_lambda": 0.4,
        "temperature_head": 2.5,
        "temperature_proto": 0.125,
        "lambda_bootstrap": {
            "n_boot": 200,
            "lambda_mean": 0.41,
            "lambda_std": 0.05,
            "lambda_lo": 0.3,
            "lambda_hi": 0.5,
            "top1_lo": 80.0,
            "top1_hi": 90.0,
        },
    }
    assert sr.lambda_cell(trial) == "0.40 [0.30, 0.50]"
    assert sr.lambda_cell({"best_lambda": 0.4, "lambda_bootstrap": None}) == "0.40"
    row = sr.results_rows([{"trial_id": "a", "status": "completed", **trial}])[0]
    assert row["temperature_head"] == 2.5 and row["temperature_proto"] == 0.125
    assert (row["lambda_boot_lambda_lo"], row["lambda_boot_top1_hi"]) == (0.3, 90.0)
    notes = lambda_notes(trial)
    assert "T = 2.5 for the head, 0.125 for the prototypes" in notes
    assert "0.41 ± 0.05 (95% within [0.30, 0.50])" in notes and "[80.0, 90.0]%" in notes
    assert lambda_notes({"temperature_head": None, "temperature_proto": None, "lambda_bootstrap": None}) == ""
