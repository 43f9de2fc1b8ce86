"""Stage-1 observability on the Ray Train controller: a progress bar drawn on the driver, TensorBoard events,
and the filter that lets Tune see epoch-end reports only; on the sweep's driver, one line per finished trial.

Train V2 runs `UserCallback`s in its controller actor. `ray.experimental.tqdm_ray` bars created there are drawn
by the driver. Sweeps turn the bar off: Tune's trial table is their progress display, and the bar of a trial
that ASHA stops would stay on screen (its controller is killed before it can close it).
"""

from __future__ import annotations

import logging
from typing import Any

from ray import tune
from ray.train import Checkpoint, UserCallback
from ray.tune.integration.ray_train import TuneReportCallback

log = logging.getLogger(__name__)

# Shown in the bar's description, in this order, when present.
_BAR_KEYS = (("loss", "loss {:.3f}"), ("val_ncm_top1", "val {:.1f}%"), ("samples_per_s", "{:.0f} samples/s"))


class TrainMonitor(UserCallback):
    """Progress bar (epochs) plus TensorBoard scalars of every numeric metric, keyed by optimizer step."""

    def __init__(self, name: str, epochs: int, tensorboard_dir: str | None, bar: bool = True) -> None:
        self.name, self.epochs, self.tensorboard_dir, self.bar = name, epochs, tensorboard_dir, bar
        self._bar = None
        self._writer = None
        self._tb_failed = False

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        m = metrics[0]  # rank 0's report; the train loop has already reduced it over ranks
        self._write_scalars(m)
        if m.get("kind") != "epoch" or not self.bar:
            return
        bar = self._progress()
        epoch = int(m.get("epoch", 0))
        if epoch > bar._x:  # a resumed run starts past zero
            bar.update(epoch - bar._x)
        parts = [fmt.format(m[k]) for k, fmt in _BAR_KEYS if isinstance(m.get(k), (int, float))]
        bar.set_description(f"{self.name} " + ", ".join(parts))
        if epoch >= self.epochs:
            bar.close()
            if self._writer is not None:
                self._writer.flush()

    def _progress(self):
        if self._bar is None:
            from ray.experimental.tqdm_ray import tqdm

            self._bar = tqdm(desc=self.name, total=self.epochs, unit="epoch")
        return self._bar

    def _write_scalars(self, m: dict[str, Any]) -> None:
        if not self.tensorboard_dir or self._tb_failed or "step" not in m:
            return
        try:
            if self._writer is None:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(self.tensorboard_dir, flush_secs=10)
            step = int(m["step"])
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step",):
                    self._writer.add_scalar(f"stage1/{k}", v, step)
            self._writer.flush()
        except Exception as e:  # observability must never stop training
            self._tb_failed = True
            log.warning("TensorBoard events disabled for %s: %s", self.name, e)


class EpochReports(TuneReportCallback):
    """TuneReportCallback that forwards epoch-end reports only: mid-epoch checkpoint reports carry no val metric,
    and each Tune iteration must be one epoch for ASHA's rungs."""

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        if metrics and metrics[0].get("kind") == "epoch":
            super().after_report(run_context, metrics, checkpoint)


class TrialLines(tune.Callback):
    """One line on the sweep's driver per trial that ends: its parameters, how it ended, the val top-1 of its
    chosen classifier. With Tune's status table off (not `run.verbose`), these and each trial's epoch lines are
    the sweep's progress."""

    def __init__(self) -> None:
        self.ended = 0

    def _line(self, trial, how: str) -> None:
        self.ended += 1
        params = ", ".join(f"{k}={v}" for k, v in sorted((trial.config or {}).items()))
        val = (trial.last_result or {}).get("val_top1")
        score = f", val top-1 {val:.1f}%" if isinstance(val, (int, float)) else ""
        print(f"[sweep] {trial.trial_id} {how} ({self.ended} ended){score}; {params}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._line(trial, "completed")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._line(trial, "failed")
