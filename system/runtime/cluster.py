"""Connecting to Ray: RAY_ADDRESS / ray.address when set (a cluster), otherwise a local Ray for this process."""

from __future__ import annotations

import os
import socket

import ray

from system.config import Config


def init_ray(cfg: Config) -> str:
    """Connect to RAY_ADDRESS / ray.address when set, otherwise start a local Ray. Returns a description."""
    address = os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if ray.is_initialized():
        return "already initialised"
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"connected to {address}"
    os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", str(cfg.ray.no_progress_timeout_s))
    # The dashboard (bound to 127.0.0.1) also serves the State API that Train's placement-group cleaner polls;
    # without it the cleaner logs a warning every second. The cleaner finds the API by auto-detection, which
    # fails when another Ray runs on the machine ("Found multiple active Ray instances"): its thread dies and
    # the placement groups of trials that ASHA stops are never freed, so the next trial waits forever. So the
    # dashboard gets a port chosen here, and every worker of this job is told where it is.
    port = _free_port()
    ray.init(
        num_cpus=cfg.ray.num_cpus,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        log_to_driver=True,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}", **LOCAL_WORKER_ENV}},
        _system_config=local_system_config(cfg),
    )
    return f"local Ray with {cfg.ray.num_cpus} logical CPUs (dashboard http://127.0.0.1:{port})"


# Every Ray worker process, busy or not, wakes its main thread 100 times a second (the task loop's signal check,
# fixed at 10 ms in Ray's core worker). On a small node each such process costs the training threads about 1% of
# their speed (2 cores: ten idle actors slowed a 2-thread torch loop by 13%), so a local Ray keeps no process
# it does not need: no watcher for node preemption (one node cannot be drained; clusters keep Ray's default) ...
LOCAL_WORKER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def local_system_config(cfg: Config) -> dict[str, int]:
    """... and no pool of idle task workers (Ray keeps up to num_cpus of them for ever): a worker idle for
    `ray.idle_worker_ttl_s` exits. A busy pipeline keeps its workers; the next stage starts fresh ones."""
    return {
        "num_workers_soft_limit": 0,
        "idle_worker_killing_time_threshold_ms": 1000 * cfg.ray.idle_worker_ttl_s,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
