"""At most N trials of a sweep past their start at once, held by the trials themselves.

Tune applies `max_concurrent_trials` to the trials its searcher suggests. A sweep restored after its driver
died starts every unfinished trial at once, and those that find no room fail their worker-group start. So each
trial takes a slot from a named actor before its Train run and gives it back after stage 2; a trial waiting for
one holds only its 0.01-CPU bundle. Slots are held by trial id: a trial that Tune restarts after its process
died (its `finally` never ran) takes its own slot again, not a second one, and the driver frees the slot of
every trial that ends, however it ends (`FreeSlots`, a Tune callback). The actor lives as long as the sweep's
driver: a restored sweep starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import tune

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class TrialSlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.holders: set[str] = set()
        self._cond: asyncio.Condition | None = None

    def _changed(self) -> asyncio.Condition:
        if self._cond is None:  # made on the actor's event loop, where acquire and release run
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self, trial_id: str) -> None:
        cond = self._changed()
        async with cond:
            await cond.wait_for(lambda: trial_id in self.holders or len(self.holders) < self.size)
            self.holders.add(trial_id)

    async def release(self, trial_id: str) -> None:
        cond = self._changed()
        async with cond:
            self.holders.discard(trial_id)
            cond.notify_all()

    async def held(self) -> list[str]:
        return sorted(self.holders)


def slots_name(experiment: str) -> str:
    """The actor's name for the sweep stored at `experiment` (a path or URL)."""
    return f"uniproto-trial-slots-{hashlib.sha256(experiment.encode()).hexdigest()[:16]}"


def start_slots(experiment: str, size: int) -> ray.actor.ActorHandle:
    """The sweep's slots, fresh (the driver calls this before Tune starts). An actor left under that name by an
    earlier sweep of this driver holds that sweep's trials: it is stopped first, and its name awaited."""
    name = slots_name(experiment)
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:  # none: the usual case
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            break
        time.sleep(0.1)
    return TrialSlots.options(name=name).remote(size)


@contextlib.contextmanager
def slot_of(slots: str | None, trial_id: str) -> Iterator[None]:
    """Hold the trial's slot of the sweep's `TrialSlots` actor (named `slots`) for the block; no slots: no
    limit. A trial whose process dies never releases: the driver's FreeSlots does when the trial ends."""
    if slots is None:
        yield
        return
    actor = ray.get_actor(slots)
    ray.get(actor.acquire.remote(trial_id))
    try:
        yield
    finally:
        ray.get(actor.release.remote(trial_id))


class FreeSlots(tune.Callback):
    """Frees the slot of every trial that ends (completed, stopped by the scheduler or failed). Holds the
    actor's name, not a handle: Tune pickles its callbacks with the experiment, and a restored sweep has a new
    actor under the same name."""

    def __init__(self, experiment: str) -> None:
        self.name = slots_name(experiment)

    def _free(self, trial) -> None:
        try:
            ray.get(ray.get_actor(self.name).release.remote(trial.trial_id), timeout=30)
        except Exception as e:  # the driver's bookkeeping must never stop the sweep
            log.warning("could not free the slot of trial %s: %s", trial.trial_id, e)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._free(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._free(trial)
