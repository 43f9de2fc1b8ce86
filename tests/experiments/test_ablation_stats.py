"""The ablation's paired per-class bootstrap: differences of two arms per class, classes resampled (no Ray)."""

import numpy as np
import pytest

from system.experiments import ablation as ab

# many (> 100 train images), medium (20..100), few (< 20): two classes each
COUNTS = [200, 150, 50, 30, 5, 3]
MANY, FEW = 100, 20


def _run(hits: list[int], images: int = 10, shuffle: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One seed's (predictions, labels): `images` test images per class, the first hits[c] of class c right,
    the others predicted as the next class; `shuffle` permutes the samples (stage 2 reads in no fixed order)."""
    k = len(hits)
    labels = np.repeat(np.arange(k), images)  # [K * images]
    preds = np.array([c if i < hits[c] else (c + 1) % k for c in range(k) for i in range(images)])
    if shuffle is not None:
        order = np.random.default_rng(shuffle).permutation(labels.size)
        preds, labels = preds[order], labels[order]
    return preds, labels


def test_a_constant_gain_on_every_class_has_a_zero_width_interval():
    # A is right on 6 of 10 images of every class, B on 5: +0.1 per class, i.e. +10 points, in every resample
    a = [_run([6] * 6), _run([6] * 6, shuffle=1)]
    b = [_run([5] * 6, shuffle=2), _run([5] * 6)]
    out = ab.paired_class_bootstrap(a, b, COUNTS, MANY, FEW)
    for g in ab.GROUPS:
        assert out[g]["diff"] == pytest.approx(10.0)
        assert (out[g]["lo"], out[g]["hi"]) == (pytest.approx(10.0), pytest.approx(10.0))
        assert out[g]["excludes_zero"] is True
    assert out["overall"]["classes"] == 6 and out["few"]["classes"] == 2
    # the other way round: the sign flips
    back = ab.paired_class_bootstrap(b, a, COUNTS, MANY, FEW)
    assert back["overall"]["diff"] == pytest.approx(-10.0) and back["few"]["hi"] == pytest.approx(-10.0)
    assert back["few"]["excludes_zero"] is True


def test_shot_groups_use_their_own_classes():
    # per class, A - B: many +20, +20; medium 0, 0; few -10, -10 (out of 10 images: 2 and 1 images)
    a = [_run([7, 7, 5, 5, 4, 4])]
    b = [_run([5, 5, 5, 5, 5, 5])]
    out = ab.paired_class_bootstrap(a, b, COUNTS, MANY, FEW)
    assert (out["many"]["diff"], out["many"]["lo"], out["many"]["hi"]) == pytest.approx((20.0, 20.0, 20.0))
    assert (out["medium"]["diff"], out["medium"]["lo"], out["medium"]["hi"]) == pytest.approx((0.0, 0.0, 0.0))
    assert out["medium"]["excludes_zero"] is False
    assert (out["few"]["diff"], out["few"]["lo"], out["few"]["hi"]) == pytest.approx((-10.0, -10.0, -10.0))
    # overall over images, 10 per class: (2 * 20 + 2 * 0 - 2 * 10) / 6 = 3.33 points = (32 - 30) / 60 images
    assert out["overall"]["diff"] == pytest.approx(100 * (32 - 30) / 60)
    assert -10.0 <= out["overall"]["lo"] < out["overall"]["diff"] < out["overall"]["hi"] <= 20.0


def test_overall_weighs_classes_by_their_images_and_seeds_are_averaged():
    # class 0 has 30 test images, the others 10; A gains 30 points on class 0 in seed 0 and none in seed 1
    def run(first: int) -> tuple[np.ndarray, np.ndarray]:
        preds, labels = _run([0, 5, 5, 5, 5, 5])
        extra = np.zeros(30, dtype=np.int64)  # class 0's images, `first` of them right
        wrong = np.ones(30 - first, dtype=np.int64)
        return np.concatenate([preds[10:], extra[:first], wrong]), np.concatenate([labels[10:], extra])

    a, b = [run(24), run(15)], [run(15), run(15)]
    out = ab.paired_class_bootstrap(a, b, COUNTS, MANY, FEW)
    # class 0: (80% + 50%) / 2 - 50% = +15 points; the rest 0. Overall over 80 images: 30 * 15 / 80
    assert out["many"]["diff"] == pytest.approx(15.0 / 2)  # the plain mean of the two many-shot classes
    assert out["overall"]["diff"] == pytest.approx(30 * 15.0 / 80)
    # the same as the difference of overall top-1 over images, averaged over the seeds
    top1 = [np.mean(p == y) * 100 for p, y in a + b]
    assert out["overall"]["diff"] == pytest.approx((top1[0] + top1[1]) / 2 - (top1[2] + top1[3]) / 2)


def test_interval_of_two_classes_by_hand():
    # two few-shot classes, differences 0 and +10: a resample's mean is 0, 5 or 10 with chances 1/4, 1/2, 1/4,
    # so with 2000 resamples the 2.5 and 97.5 percentiles are 0 and 10, and the interval touches 0
    counts = [5, 3]
    out = ab.paired_class_bootstrap([_run([6, 5])], [_run([5, 5])], counts, MANY, FEW)
    assert out["few"]["diff"] == pytest.approx(5.0)
    assert (out["few"]["lo"], out["few"]["hi"]) == (pytest.approx(0.0, abs=1e-9), pytest.approx(10.0))
    assert out["few"]["excludes_zero"] is False
    assert out["many"] is None and out["medium"] is None  # no class in those groups


def test_reproducible_with_its_seed():
    a, b = [_run([7, 3, 9, 5, 2, 6])], [_run([5, 5, 5, 5, 5, 5])]
    first = ab.paired_class_bootstrap(a, b, COUNTS, MANY, FEW)
    assert first == ab.paired_class_bootstrap(a, b, COUNTS, MANY, FEW)
    other = ab.paired_class_bootstrap(a, b, COUNTS, MANY, FEW, seed=1)
    interval = [(r["overall"]["lo"], r["overall"]["hi"]) for r in (first, other)]
    assert interval[0] != interval[1]
    assert other["overall"]["diff"] == first["overall"]["diff"]  # the point estimate does not resample


def test_refuses_runs_that_do_not_pair():
    with pytest.raises(ValueError, match="same seeds"):
        ab.paired_class_bootstrap([_run([5] * 6)] * 2, [_run([5] * 6)], COUNTS, MANY, FEW)
    with pytest.raises(ValueError, match="same eval set"):
        ab.paired_class_bootstrap([_run([5] * 6)], [_run([5] * 6, images=9)], COUNTS, MANY, FEW)


def test_markdown_says_whether_the_interval_excludes_zero():
    a, b = [_run([7, 7, 5, 5, 4, 4])], [_run([5] * 6)]
    row = {"variant": "full", "vs": "baseline", **ab.paired_class_bootstrap(a, b, COUNTS, MANY, FEW)}
    md = ab.class_bootstrap_markdown([row], "test")
    assert "| `full` | `baseline` |" in md and "+20.0 [+20.0, +20.0]" in md and "-10.0 [-10.0, -10.0]" in md
    assert "excludes 0 (a real difference) in many, few" in md
    assert "includes 0 (no difference shown) in" in md and "medium" in md.splitlines()[-1]
    assert ab.class_bootstrap_markdown([], "test") == ""


def test_the_ablation_bootstraps_the_ladder_the_baseline_and_full_against_no_text():
    from pipelines.ablate import class_bootstrap

    run = _run([5] * 6)
    preds = {name: {0: run, 1: run} for name in ("baseline", "text_filter", "full", "no_text")}
    preds["full"] = {0: _run([6] * 6), 1: _run([6] * 6)}
    rows = class_bootstrap(preds, COUNTS, MANY, FEW)
    assert [(r["variant"], r["vs"]) for r in rows] == [
        ("text_filter", "baseline"),
        ("full", "text_filter"),
        ("full", "baseline"),
        ("no_text", "baseline"),
        ("full", "no_text"),
    ]
    assert rows[4]["seeds"] == [0, 1] and rows[4]["overall"]["diff"] == pytest.approx(10.0)
    assert rows[0]["overall"]["diff"] == 0.0 and not rows[0]["overall"]["excludes_zero"]
    # without a baseline arm the ladder's one rung and full vs no_text are left
    del preds["baseline"]
    rows = class_bootstrap(preds, COUNTS, MANY, FEW)
    assert [(r["variant"], r["vs"]) for r in rows] == [("full", "text_filter"), ("full", "no_text")]


def test_bootstrap_pairs_cover_each_rung_the_baseline_and_the_text():
    every = ["baseline", "contrastive", "prototypes", "text_filter", "full", "no_text"]
    assert ab.bootstrap_pairs(every) == [
        ("contrastive", "baseline"),
        ("prototypes", "contrastive"),
        ("text_filter", "prototypes"),
        ("full", "text_filter"),
        ("prototypes", "baseline"),
        ("text_filter", "baseline"),
        ("full", "baseline"),
        ("no_text", "baseline"),
        ("full", "no_text"),
    ]
    # a rung that did not run is skipped: the next one is read against the one below it that ran
    assert ab.bootstrap_pairs(["full", "baseline", "prototypes"]) == [
        ("prototypes", "baseline"),
        ("full", "prototypes"),
        ("full", "baseline"),
    ]
    # no baseline: the ladder alone; no no_text: no text pair; one arm: nothing to compare
    assert ab.bootstrap_pairs(["contrastive", "full"]) == [("full", "contrastive")]
    assert ab.bootstrap_pairs(["no_text", "baseline"]) == [("no_text", "baseline")]
    assert ab.bootstrap_pairs(["full"]) == []
