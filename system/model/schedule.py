"""The stage-1 schedule: how many optimizer steps a run takes and how they fall into epochs.

A recipe written in epochs means different things on 300 and 3 million images (a 323-image dataset at a global
batch of 128 gets 2 steps an epoch). `train.steps` states the run's length in optimizer steps instead (samples
seen = steps x global batch), the same on any dataset; the epochs are then derived, the last one possibly partial.
`train.epochs` keeps the epoch form for recipes sized to one dataset. Plain Python: the driver plans the stream
and the sweep's rungs with it, and the Train workers receive the same object.

A run *reports* (val probe, checkpoint, one Tune iteration: the unit of ASHA's rungs) at every epoch end under
train.epochs, and `train.reports` times, evenly spaced, under train.steps: 100 steps on a 337-image set are 50
epochs, and a report each would cost more than the training; 100,000 steps on ImageNet-LT are 110 epochs, and on a
web-scale set less than one. Reports keep the name "epoch" in the metrics and logs under both forms (report k of
K); `data_epoch` in the metrics is the pass over the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from system.config import TrainSection

# Fewer optimizer steps than this in a whole stage-1 run rarely learn anything; the run goes on, with a warning.
SHORT_RUN_STEPS = 100


@dataclass(frozen=True)
class Schedule:
    global_batch: int  # samples per optimizer step: micro batch x accumulation x workers
    steps_per_epoch: int  # full optimizer steps in one pass over the (resampled) train split
    total_steps: int  # the run's length
    epochs: int  # passes the train stream covers; the last is partial when total_steps is not a multiple
    reports: int  # reports in the run, evenly spaced, the last at total_steps
    # passes the stream is planned with: under train.steps one more than the steps need, so that resampling
    # (which keeps an epoch's size only in expectation) never cuts the run short; the loop stops at total_steps
    stream_epochs: int

    @property
    def samples(self) -> int:
        """Samples the run trains on."""
        return self.total_steps * self.global_batch

    def report_step(self, k: int) -> int:
        """The optimizer step of report k (1-based): ceil(k T / R), so report R is at the last step T."""
        return -(-k * self.total_steps // self.reports)

    def report_of(self, step: int) -> int:
        """The report (1-based) that optimizer step `step` (1-based) counts toward: the first at or after it."""
        return min((step - 1) * self.reports // self.total_steps + 1, self.reports)

    def is_report_step(self, step: int) -> bool:
        return self.report_step(self.report_of(step)) == step

    def epoch_of(self, step: int) -> int:
        """The epoch (1-based) that optimizer step `step` (1-based) belongs to."""
        return min((step - 1) // self.steps_per_epoch + 1, self.epochs)

    def warning(self) -> str | None:
        """A one-line warning when the run is far too short to learn, else None."""
        if self.total_steps >= SHORT_RUN_STEPS:
            return None
        return (
            f"{self.total_steps} optimizer steps in all ({self.steps_per_epoch} per epoch at a global batch of "
            f"{self.global_batch}, {self.epochs} epochs): likely too few to learn; set train.steps (e.g. "
            f"train.steps={SHORT_RUN_STEPS * 5} train.epochs=null), which means the same on any dataset size"
        )


def stage1_schedule(train: TrainSection, rows_per_epoch: int) -> Schedule:
    """The schedule of `train` (train.steps, else train.epochs) on a train split of `rows_per_epoch` rows."""
    if rows_per_epoch < 1:
        raise ValueError(f"the train split has no rows ({rows_per_epoch}); nothing to schedule")
    global_batch = train.micro_batch_size * train.grad_accum * train.num_workers
    per_epoch = max(rows_per_epoch // global_batch, 1)
    if train.steps is not None:
        epochs = math.ceil(train.steps / per_epoch)
        return Schedule(
            global_batch, per_epoch, train.steps, epochs, min(train.reports, train.steps), epochs + 1
        )
    assert train.epochs is not None  # config.py refuses neither set
    return Schedule(
        global_batch, per_epoch, per_epoch * train.epochs, train.epochs, train.epochs, train.epochs
    )
