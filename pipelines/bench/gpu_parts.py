"""The pieces of `uniproto benchmark gpu` (pipelines.bench.gpu): model FLOPs and utilisation, the nvidia-smi
sampler, one part as a subprocess with a timeout, and the children: environment facts and the bare DeepSpeed
loop.

Model FLOP utilisation (MFU) = samples/s x training FLOPs per sample / the GPU's peak bf16 FLOP/s. Training
FLOPs per sample = 3 x forward (backward costs about twice the forward); the forward is the image tower's,
scaled by (image_size / 224)^2 (its token count; the attention's quadratic term is left out), plus the text
tower's, which the image size does not change. ViT-B-16: 35 GFLOP image + 6 GFLOP text forward at 224 px, 3 x
41 = 123 GFLOP per training sample; one H200 does about 790 TFLOP/s of bf16 matrix work (8192^3 products), so
MFU 100% would be about 6,400 samples/s. An architecture without a known figure gets none (pass
--flops-per-sample).

Stdlib only at import: torch and DeepSpeed are imported inside the child that uses them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

H200_BF16_FLOPS = 790e12
REFERENCE_SIZE = 224
# arch -> (image tower GFLOP, text tower GFLOP) per sample, forward, at REFERENCE_SIZE px
FORWARD_GFLOP = {"ViT-B-16": (35.0, 6.0)}
SMI_QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


def train_flops_per_sample(arch: str, image_size: int) -> float | None:
    """Training FLOPs of one sample (see the module docstring); None for an architecture not in the table."""
    if arch not in FORWARD_GFLOP:
        return None
    image, text = FORWARD_GFLOP[arch]
    return 3e9 * (image * (image_size / REFERENCE_SIZE) ** 2 + text)


def mfu(samples_per_s: float | None, flops_per_sample: float | None, peak_flops: float) -> float | None:
    if not samples_per_s or not flops_per_sample or peak_flops <= 0:
        return None
    return samples_per_s * flops_per_sample / peak_flops


# --------------------------------------------------------------------------------------------- nvidia-smi


def parse_smi_csv(text: str) -> list[tuple[float | None, float | None]]:
    """`utilization.gpu, memory.used` lines (csv, noheader, nounits) -> (util %, MiB) each; [N/A]: None."""

    def number(x: str) -> float | None:
        try:
            return float(x.strip())
        except ValueError:
            return None

    out = []
    for line in text.strip().splitlines():
        cells = line.split(",")
        if len(cells) >= 2:
            out.append((number(cells[0]), number(cells[1])))
    return out


class GpuSampler:
    """nvidia-smi every `interval` s in a thread: (wall time, util %, memory used MiB) of GPU 0. No nvidia-smi
    (a CPU machine): no samples, and every figure from them is None."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float | None, float | None]] = []
        self.available = shutil.which(SMI_QUERY[0]) is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if self.available:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=10).stdout
                gpus = parse_smi_csv(out)
                if gpus:
                    self.samples.append((time.time(), *gpus[0]))
            except (OSError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def gpu_stats(
    samples: list[tuple[float, float | None, float | None]],
    start: float | None = None,
    end: float | None = None,
) -> dict[str, Any]:
    """Utilisation (mean, in the [start, end] window when it holds a sample, else over all) and the most
    memory in use over all samples; every figure None without samples."""
    window = [s for s in samples if start is not None and end is not None and start <= s[0] <= end]
    used = window or samples
    utils = [u for _, u, _ in used if u is not None]
    mems = [m for _, _, m in samples if m is not None]
    return {
        "gpu_util_mean": round(sum(utils) / len(utils), 1) if utils else None,
        "gpu_util_max": max(utils) if utils else None,
        "gpu_util_window": "steady" if window else ("whole part" if samples else None),
        "gpu_mem_used_max_mib": max(mems) if mems else None,
        "gpu_samples": len(samples),
    }


# --------------------------------------------------------------------------------------------- parts


@dataclass
class PartRun:
    """One part's process: exit code (None: killed at its timeout), wall seconds, its log, GPU samples."""

    name: str
    rc: int | None
    wall_s: float
    log: Path
    samples: list = field(default_factory=list)
    error: str | None = None


def run_part(name: str, cmd: list[str], env: dict[str, str], timeout: float, log: Path, cwd: Path) -> PartRun:
    """Run `cmd` in its own session with output to `log`, sampling the GPU meanwhile. At `timeout` the whole
    session is killed (Ray's daemons included); so are processes left behind after a normal exit, so the next
    part starts on an idle GPU."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sampler = GpuSampler()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, env=env, cwd=str(cwd), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            rc = None
        kill_session(proc.pid)
        proc.wait()
    sampler.stop()
    run = PartRun(name, rc, round(time.perf_counter() - t0, 1), log, sampler.samples)
    if rc is None:
        run.error = f"timed out after {timeout:.0f} s; log tail:\n{log_tail(log)}"
    elif rc != 0:
        run.error = f"exited with {rc}; log tail:\n{log_tail(log)}"
    return run


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (a part's child and everything it started, which stays in its
    session unless it made its own)."""
    import psutil

    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                p.send_signal(signal.SIGKILL)
        except (psutil.Error, OSError):
            continue


def log_tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def last_json(log: Path, prefix: str) -> dict[str, Any]:
    """The JSON after `prefix` on the last line of `log` that starts with it."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith(prefix):
            return json.loads(line[len(prefix) :])
    raise ValueError(f"{log}: no line starting with {prefix!r}")


# --------------------------------------------------------------------------------------------- children


def env_facts() -> dict[str, Any]:
    """Versions and the GPU, read in a child process (CUDA is initialised there, not in the orchestrator)."""
    import importlib.metadata as md
    import platform

    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "gpu": None,
        "gpu_capability": None,
        "bf16_supported": None,
    }
    for dist in ("ray", "deepspeed", "open_clip_torch", "webdataset", "numpy", "pyarrow"):
        try:
            facts[dist] = md.version(dist)
        except md.PackageNotFoundError:
            facts[dist] = None
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        facts["bf16_supported"] = torch.cuda.is_bf16_supported()
        facts["cudnn"] = torch.backends.cudnn.version()
    if shutil.which("nvidia-smi"):
        q = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
        out = subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        if out:
            name, driver, total = (c.strip() for c in out[0].split(",")[:3])
            facts.update(smi_gpu=name, driver=driver, gpu_memory_mib=float(total))
    return facts


def bare_engine_loop(
    arch: str,
    image_size: int,
    batch: int,
    steps: int,
    warmup: int,
    num_classes: int,
    precision: str,
    device: str,
    zero_stage: int,
) -> dict[str, Any]:
    """`pipelines.bench.bare.bare_step` inside a real DeepSpeed engine (one process, world size 1, no Ray, no data
    loading): samples/s over `steps` after `warmup`, and the peak memory torch allocated on the GPU."""
    import deepspeed
    import torch

    from pipelines.bench.bare import bare_step
    from system.config import OptimSection, TrainSection
    from system.model.ds_config import deepspeed_config, skip_single_rank_allreduce

    cuda = device.startswith("cuda")
    # A process group of one, as a launcher would describe it (tests/model/test_ds_engine.py does the same on CPU).
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())), ("RANK", "0"),
                       ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):  # fmt: skip
        os.environ.setdefault(key, value)
    deepspeed.init_distributed()
    optim = (
        OptimSection()
    )  # bare_step's AdamW settings are OptimSection's defaults; the engine clips the same
    train = TrainSection(num_workers=1, micro_batch_size=batch, zero_stage=zero_stage, precision=precision)
    engines = []

    def wrap(model, optimizer):
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(train, optim)
        )
        skip_single_rank_allreduce(engine, 1, zero_stage)
        engines.append(engine)
        return engine

    step = bare_step(arch, image_size, batch, num_classes, precision=precision, device=device, wrap=wrap)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t_start, t0 = time.time(), time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - t0
    return {
        "samples_per_s": batch * steps / max(seconds, 1e-9),
        "steps": steps,
        "warmup_steps": warmup,
        "seconds": round(seconds, 3),
        "t_start": t_start,
        "t_end": time.time(),
        "loss": float(loss.detach()) if loss is not None else None,
        "engine": type(engines[0]).__name__ if engines else None,
        "zero_stage": zero_stage,
        "peak_mem_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """The children: `_env` (facts as JSON) and `_bare JSON` (bare_engine_loop's keyword arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_env"]:
        print("[gpu-check] env " + json.dumps(env_facts()), flush=True)
        return 0
    if argv[:1] == ["_bare"]:
        kwargs = json.loads(argv[1])
        print("[gpu-check] bare " + json.dumps(bare_engine_loop(**kwargs)), flush=True)
        return 0
    print("usage: python -m pipelines.bench.gpu_parts {_env | _bare JSON}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
