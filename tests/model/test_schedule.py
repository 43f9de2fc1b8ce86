"""The stage-1 schedule: train.steps or train.epochs, and how steps fall into epochs."""

from __future__ import annotations

import pytest

from system.config import ConfigError, load_config
from system.model.schedule import SHORT_RUN_STEPS, stage1_schedule


def _train(*sets: str):
    return load_config(None, list(sets)).train


def test_steps_mean_the_same_on_any_dataset_size():
    train = _train("train.steps=100", "train.epochs=null", "train.micro_batch_size=64", "train.num_workers=2")
    small, large = stage1_schedule(train, 337), stage1_schedule(train, 3_000_000)
    assert small.global_batch == large.global_batch == 128
    assert small.total_steps == large.total_steps == 100
    assert small.samples == large.samples == 12_800
    # 337 // 128 = 2 steps an epoch -> 50 epochs; 3M // 128 = 23,437 -> one partial epoch
    assert (small.steps_per_epoch, small.epochs, small.stream_epochs) == (2, 50, 51)
    assert (large.steps_per_epoch, large.epochs) == (23_437, 1)


def test_epochs_form_and_partial_last_epoch():
    train = _train("train.epochs=8", "train.micro_batch_size=64", "train.num_workers=2", "train.grad_accum=2")
    s = stage1_schedule(train, 1639)  # global batch 256: 6 steps an epoch
    assert (s.global_batch, s.steps_per_epoch, s.total_steps, s.epochs, s.stream_epochs) == (256, 6, 48, 8, 8)
    partial = stage1_schedule(_train("train.steps=100", "train.epochs=null"), 1639)  # 12 an epoch
    assert (partial.steps_per_epoch, partial.epochs) == (12, 9)  # 8 full epochs and 4 steps of a ninth
    assert [partial.epoch_of(s) for s in (1, 12, 13, 96, 97, 100)] == [1, 1, 2, 8, 9, 9]


def test_tiny_split_still_steps_and_empty_split_refused():
    s = stage1_schedule(_train("train.steps=10", "train.epochs=null"), 5)  # fewer rows than one batch
    assert (s.steps_per_epoch, s.epochs) == (1, 10)
    with pytest.raises(ValueError, match="no rows"):
        stage1_schedule(_train(), 0)


def test_short_run_warning_names_the_fix():
    short = stage1_schedule(
        _train("train.epochs=8"), 323
    )  # the demo's old recipe on a 323-image set: 16 steps
    assert short.total_steps == 16
    assert "16 optimizer steps" in short.warning() and "train.steps" in short.warning()
    ok = stage1_schedule(_train(f"train.steps={SHORT_RUN_STEPS}", "train.epochs=null"), 323)
    assert ok.warning() is None


@pytest.mark.parametrize(
    "sets",
    [["train.steps=100"], ["train.epochs=null"]],  # both set (epochs defaults to 6) / neither set
)
def test_exactly_one_of_steps_and_epochs(sets):
    with pytest.raises(ConfigError, match=r"train\.steps: set either"):
        load_config(None, sets)


def test_asha_grace_checked_against_reports():
    with pytest.raises(ConfigError, match=r"asha_grace_epochs: must be <= the run's 3 reports"):
        load_config(None, ["sweep.scheduler=asha", "sweep.asha_grace_epochs=9", "train.epochs=3"])
    steps = ["sweep.scheduler=asha", "train.steps=50", "train.epochs=null", "train.reports=5"]
    with pytest.raises(ConfigError, match=r"asha_grace_epochs: must be <= the run's 5 reports"):
        load_config(None, [*steps, "sweep.asha_grace_epochs=6"])
    load_config(None, [*steps, "sweep.asha_grace_epochs=5"])


def test_reports_under_steps_are_evenly_spaced():
    s = stage1_schedule(_train("train.steps=100", "train.epochs=null", "train.reports=8"), 337)
    assert s.reports == 8  # report k at ceil(100 k / 8)
    assert [t for t in range(1, 101) if s.is_report_step(t)] == [13, 25, 38, 50, 63, 75, 88, 100]
    assert [s.report_of(t) for t in (1, 13, 14, 88, 89, 100)] == [1, 1, 2, 7, 8, 8]
    odd = stage1_schedule(_train("train.steps=10", "train.epochs=null", "train.reports=6"), 337)
    assert [t for t in range(1, 11) if odd.is_report_step(t)] == [2, 4, 5, 7, 9, 10]  # exactly 6
    few = stage1_schedule(_train("train.steps=3", "train.epochs=null", "train.reports=10"), 337)
    assert few.reports == 3 and all(few.is_report_step(t) for t in (1, 2, 3))  # never more reports than steps
    epochs = stage1_schedule(_train("train.epochs=4"), 1000)  # 7 steps an epoch at the default batch 128
    assert epochs.reports == 4
    assert [t for t in range(1, 29) if epochs.is_report_step(t)] == [7, 14, 21, 28]  # every epoch end
