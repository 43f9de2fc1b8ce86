"""Connecting to Ray: RAY_ADDRESS / ray.address when set (a cluster), otherwise a local Ray for this process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import ray

from system.config import Config
from system.log_levels import VERBOSE_ENV, quiet_third_party_logs, verbose_from_env

RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")  # Ray Data's console at WARNING
WORKER_SETUP_HOOK = "system.runtime.cluster.quiet_worker"


def quiet_logs(verbose: bool | None = None) -> None:
    """`quiet_third_party_logs` (None: UNIPROTO_VERBOSE), plus Ray Data's once-per-process warning that its
    progress bars are off, which `ray.data_progress_bars` does on purpose: marked as already given."""
    quiet_third_party_logs(verbose)
    if not verbose_from_env():
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")


def quiet_worker() -> None:
    """Ray's worker_process_setup_hook on a local Ray: every worker, Ray's own actors included."""
    quiet_logs(None)


def init_ray(cfg: Config) -> str:
    """Connect to RAY_ADDRESS / ray.address when set, otherwise start a local Ray. Returns a description."""
    address = os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if ray.is_initialized():
        return "already initialised"
    quiet_logs(cfg.run.verbose)
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
        runtime_env=local_runtime_env(cfg, port),
        _system_config=local_system_config(cfg),
    )
    quiet_logs(cfg.run.verbose)  # again: the driver's Ray Data console handler exists by now
    return f"local Ray with {cfg.ray.num_cpus} logical CPUs (dashboard http://127.0.0.1:{port})"


# Every Ray worker process, busy or not, wakes its main thread 100 times a second (the task loop's signal check,
# fixed at 10 ms in Ray's core worker). On a small node each such process costs the training threads about 1% of
# their speed (2 cores: ten idle actors slowed a 2-thread torch loop by 13%), so a local Ray keeps no process
# it does not need: no watcher for node preemption (one node cannot be drained; clusters keep Ray's default) ...
LOCAL_WORKER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def local_runtime_env(cfg: Config, dashboard_port: int) -> dict:
    """Every worker of a local Ray: where the dashboard is, the quiet or verbose logs (the setup hook runs first
    in each worker, Ray's own actors included; Ray Data reads its logging config at import)."""
    env = {
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
        VERBOSE_ENV: "1" if cfg.run.verbose else "0",
        **LOCAL_WORKER_ENV,
    }
    if not cfg.run.verbose:
        env["RAY_DATA_LOGGING_CONFIG"] = str(RAY_DATA_LOGGING)
    return {"env_vars": env, "worker_process_setup_hook": WORKER_SETUP_HOOK}


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
