"""Connecting to Ray: RAY_ADDRESS / ray.address when set (a cluster), otherwise a local Ray for this process."""

from __future__ import annotations

import os

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
    # without it the cleaner logs a warning every second.
    ray.init(num_cpus=cfg.ray.num_cpus, dashboard_host="127.0.0.1", log_to_driver=True)
    return f"local Ray with {cfg.ray.num_cpus} logical CPUs"
