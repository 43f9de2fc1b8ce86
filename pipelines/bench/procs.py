"""The benchmarks' process trees: a command run pinned to a set of cores, its CPU-seconds (also by process role:
driver, Train worker, data pipeline, other Ray actors, Ray's daemons) and peak summed RSS, and the environment
the runs share."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # the repository root: the runs' working directory


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# Roles of the processes of a run's tree, by process title (Ray names a worker `ray::<task or actor>` while it
# runs one): where ours spends the cores besides the training step.
ROLE_PATTERNS = (
    ("train_worker", re.compile(r"TrainWorker")),
    ("data", re.compile(r"ReadShards|MapBatches|MapWorker|SplitCoordinator")),
    ("ray_actors", re.compile(r"^ray::")),  # Train's controller, Data's stats actor, the ledger, agents...
)


def process_role(title: str, is_root: bool) -> str:
    """The role of one process from its title: driver (the run's own process), train_worker, data,
    ray_actors (other Ray actors and tasks), ray_idle (a worker between tasks that never ran one we know), or
    other (Ray's daemons: gcs, raylet, dashboard; a DataLoader's workers)."""
    if is_root:
        return "driver"
    if title.startswith("ray::IDLE"):
        return "ray_idle"
    return next((role for role, pattern in ROLE_PATTERNS if pattern.search(title)), "other")


class TreeMonitor:
    """CPU seconds (user + system, summed over every process of the tree) and peak summed RSS of a process
    and all its descendants (Ray's gcs/raylet/workers, dataloader workers), sampled every `interval` s.
    CPU seconds are also split by process role (`process_role`), each interval's growth going to the role
    the process has at the sample; a worker seen idle keeps the last role it had (a data task's process
    between two tasks is still the data pipeline's)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.by_role: dict[str, float] = {}
        # (wall time, CPU-s by role so far, Ray worker processes alive beside the Train workers) per sample
        self.timeline: list[tuple[float, dict[str, float], int]] = []
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _title(self, p) -> str:
        cmd = p.cmdline()
        return cmd[0] if cmd and cmd[0].startswith("ray::") else p.name()

    def sample(self) -> None:
        """One sample now: every process's CPU growth since the last, by role; the tree's summed RSS."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss, beside = 0, 0
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    rss += p.memory_info().rss
                    title = self._title(p)
                    role = process_role(title, p.pid == self.pid)
            except psutil.Error:
                continue
            # Each Ray worker process wakes 100 times/s, busy or not (`--only idle` measures what that costs);
            # the dashboard's and runtime-env agents are not workers.
            beside += title.startswith("ray::") and "Agent" not in title and role != "train_worker"
            if role == "ray_idle":
                role = self.role.get(p.pid, role)
            self.role[p.pid] = role
            total = t.user + t.system
            grown = max(0.0, total - self.cpu.get(p.pid, 0.0))
            self.by_role[role] = self.by_role.get(role, 0.0) + grown
            self.cpu[p.pid] = max(self.cpu.get(p.pid, 0.0), total)
        self.peak_rss = max(self.peak_rss, rss)
        self.timeline.append((time.time(), dict(self.by_role), beside))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self.sample()  # the last one, after the thread's (two at once would count a growth twice)
        return {
            "cpu_s": round(sum(self.cpu.values()), 1),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "cpu_s_by_role": {k: round(v, 1) for k, v in sorted(self.by_role.items(), key=lambda kv: -kv[1])},
        }


def cores_by_role(
    timeline: list[tuple[float, dict[str, float]]], start: float, end: float
) -> dict[str, Any] | None:
    """Cores each role kept busy between two wall times (CPU-s grown between the first sample at or after
    `start` and the last at or before `end`, over the time between them); None when fewer than two samples
    fall inside (a window shorter than the sampling interval)."""
    inside = [sample for sample in timeline if start <= sample[0] <= end]
    if len(inside) < 2:
        return None
    (t0, first, *_), (t1, last, *_) = inside[0], inside[-1]
    cores = {k: (v - first.get(k, 0.0)) / (t1 - t0) for k, v in last.items()}
    cores = {k: round(v, 3) for k, v in sorted(cores.items(), key=lambda kv: -kv[1]) if v > 0.0005}
    out = {"seconds": round(t1 - t0, 1), "cores": cores, "total": round(sum(cores.values()), 3)}
    counts = [sample[2] for sample in inside if len(sample) > 2]
    if counts:  # Ray worker processes beside the Train workers, mean over the window's samples
        out["ray_processes"] = round(sum(counts) / len(counts), 1)
    return out


def role_line(usage: dict[str, Any]) -> str:
    """`CPU-s by role: train_worker 310.2 (61%), data 120.4 (24%), ...` of a run_tree result."""
    roles = usage.get("cpu_s_by_role") or {}
    total = sum(roles.values()) or 1.0
    return "CPU-s by role: " + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in roles.items())


def cpu_set(cpus: int) -> list[int]:
    avail = sorted(os.sched_getaffinity(0))
    if cpus > len(avail):
        raise ValueError(f"--cpus {cpus}: only {len(avail)} cores are available to this process")
    return avail[:cpus]


def run_tree(
    cmd: list[str],
    env: dict[str, str],
    cpus: list[int],
    log_path: Path,
    echo: bool,
    timeline: list | None = None,
) -> dict:
    """Run `cmd` pinned to `cpus`, output to `log_path` (and stdout with `echo`); wall, CPU seconds (also by
    process role), peak RSS. `timeline` (a list) gets the monitor's samples: (wall time, CPU-s by role)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        mon = TreeMonitor(proc.pid)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
        rc = proc.wait()
        usage = mon.stop()
        if timeline is not None:
            timeline.extend(mon.timeline)
    out = {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1), **usage}
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{cmd[:4]}... exited with {rc} (log {log_path}):\n{tail}")
    return out


def base_env(threads: int | None) -> dict[str, str]:
    """The runs' environment. threads=None leaves thread counts to Ray, which sets OMP_NUM_THREADS of each
    Train worker to its CPUs (only where the variable is unset)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # ours must start its own local Ray on these cores, never join a cluster
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
        if threads is not None:
            env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env
