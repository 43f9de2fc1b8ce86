"""The sweep's trial slots (system.runtime.trial_slots) on a real local Ray: at most N holders, a restarted trial
takes its own slot again, a waiting trial gets the slot that is freed, and the driver's callback frees it."""

import time
from types import SimpleNamespace

import pytest
import ray

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_slots_hold_the_limit_per_trial_id():
    from system.runtime.trial_slots import FreeSlots, slots_name, start_slots

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        stale = start_slots("runs/x/ray/x-sweep", 1)
        ray.get(stale.acquire.remote("old"))  # an earlier sweep of this driver, under the same name
        slots = start_slots("runs/x/ray/x-sweep", 2)  # fresh: the stale actor is stopped, its holders gone
        assert ray.get(slots.held.remote()) == []
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(stale.held.remote(), timeout=10)
        assert slots_name("runs/x/ray/x-sweep") != slots_name("runs/y/ray/y-sweep")
        ray.get([slots.acquire.remote("a"), slots.acquire.remote("b")])
        ray.get(slots.acquire.remote("a"), timeout=10)  # "a" restarted: its own slot, no wait
        waiting = slots.acquire.remote("c")
        ready, _ = ray.wait([waiting], timeout=1.0)
        assert not ready and ray.get(slots.held.remote()) == ["a", "b"]  # the third waits
        # the driver's callback frees the slot of a trial that ended: "c" gets it
        FreeSlots("runs/x/ray/x-sweep").on_trial_error(0, [], SimpleNamespace(trial_id="b"))
        ray.get(waiting, timeout=10)
        assert ray.get(slots.held.remote()) == ["a", "c"]
        ray.get(slots.release.remote("a"))
        ray.get(slots.release.remote("a"))  # releasing twice is harmless
        t0 = time.monotonic()
        ray.get(slots.acquire.remote("d"), timeout=10)
        assert time.monotonic() - t0 < 5 and ray.get(slots.held.remote()) == ["c", "d"]
    finally:
        ray.shutdown()
