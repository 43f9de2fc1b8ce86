"""A local Ray keeps no process it does not need (each Ray worker process wakes 100 times a second and slows
the training threads that share its cores); a cluster connection changes nothing of the cluster's settings."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from system.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_local_ray_gets_the_trimming_and_a_cluster_does_not(monkeypatch):
    import ray

    from system.runtime import cluster as ray_cluster

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_cluster.init_ray(load_config(None, {"ray.idle_worker_ttl_s": 7}))
    local = calls[-1]
    assert local["_system_config"] == {
        "num_workers_soft_limit": 0,
        "idle_worker_killing_time_threshold_ms": 7000,
    }
    env = local["runtime_env"]["env_vars"]
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert env["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")

    ray_cluster.init_ray(load_config(None, {"ray.address": "10.0.0.1:6379"}))
    assert calls[-1] == {"address": "10.0.0.1:6379", "log_to_driver": True}


def test_idle_worker_ttl_is_validated():
    from system.config import ConfigError

    with pytest.raises(ConfigError, match="ray.idle_worker_ttl_s"):
        load_config(None, {"ray.idle_worker_ttl_s": 0})


CHILD = textwrap.dedent(
    """
    import time, psutil, ray
    from system.config import load_config
    from system.runtime.cluster import init_ray

    init_ray(load_config(None, {"ray.num_cpus": 4, "ray.idle_worker_ttl_s": 1}))

    @ray.remote(num_cpus=1)
    def work(i):
        time.sleep(0.5)
        return i

    def idle_workers():
        procs = psutil.Process().children(recursive=True)
        return sum(1 for p in procs if (p.cmdline() or [""])[0].startswith("ray::IDLE"))

    ray.get([work.remote(i) for i in range(4)])
    time.sleep(0.3)
    before = idle_workers()
    time.sleep(6)  # the ttl (1 s) plus the raylet's check interval, with room
    print("IDLE", before, idle_workers(), flush=True)
    """
)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_local_rays_idle_task_workers_exit_after_the_ttl():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=REPO, capture_output=True, text=True, timeout=170
    )
    assert r.returncode == 0, r.stderr[-3000:]
    before, after = map(int, next(s for s in r.stdout.splitlines() if s.startswith("IDLE ")).split()[1:])
    assert before >= 1  # the four task workers are idle right after their tasks ...
    assert after == 0  # ... and gone once idle past the ttl (Ray's default keeps up to num_cpus of them)
