"""`uniproto benchmark gpu` (`make gpu-check`): the one-GPU check as one JSON line, within an 8.5-minute budget
(not yet timed on a GPU).

    python -m pipelines.bench.gpu [--only bare,peer,ours,features,resume] [--workdir DIR] [--out FILE] [--smoke]

Parts, each its own process with its own timeout (a failure or timeout is recorded in the JSON as `error`, and
the next part still runs), within one overall budget (`--budget-s`, default 510 s):

* **env**: torch and CUDA versions, the GPU and its driver, the bundled packages' versions.
* **dataset**: the demo's long-tailed dataset rendered at `--image-size` by every core (`make-demo-data
  --workers`): 50 classes, 500 -> 50 train images per class (9,850), in shards of 100.
* **bare**: `pipelines.bench.bare.bare_step` in a real DeepSpeed engine (ZeRO `--zero-stage`, bf16 autocast over fp32
  master weights through `Stage1Step`), one process, no Ray, no data loading: samples/s after `--warmup`
  steps, and the peak memory torch allocated.
* **peer**: open_clip's own trainer (`open_clip_train`, amp_bf16 = the same autocast) on the same shards,
  arch, global batch and epochs; its own webdataset loader with `--peer-workers` processes.
* **ours**: stage 1 (`pipelines.pretrain`: Ray Data -> Ray Train, one GPU worker, DeepSpeed) on the same
  shards for `--epochs` epochs; samples/s and data-wait share over the epochs after the first, from the Train
  reports.
* **resume**: ours again with the same run name and one more epoch: it must start from ours' checkpoint
  (`resumed_from_step` > 0) and finish.
* **features**: stage 2's feature pass (`pipelines.bench.stage2`: Ray Data batch inference, the actor pool on the
  GPU) over the train split at 1x and 3x: images/s, its fixed start and marginal rate (the figure the operator's
  guide sizes stage 2 with), and the driver's memory growth from 1x to 3x.

GPU utilisation and memory in use are sampled with nvidia-smi every second during each part (utilisation over
the measured steps where the part says when they ran); MFU as in pipelines.bench.gpu_parts; `ratio` = ours / peer.
Goals: ratio >= 1, ours' data-wait < 2%, resume ok. On a machine without a GPU every GPU figure is null:
`--smoke` runs the whole orchestration on the CPU with the tiny architecture at 32 px in a few minutes.

Progress goes to stderr; the last stdout line is the JSON, also written to `--out` (default
<workdir>/gpu-check.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.bench.gpu_parts import (
    H200_BF16_FLOPS,
    gpu_stats,
    last_json,
    mfu,
    run_part,
    train_flops_per_sample,
)
from pipelines.bench.procs import REPO

PARTS = ("bare", "peer", "ours", "features", "resume")  # features before resume: inside the budget first
NEEDS_DATASET = ("peer", "ours", "features", "resume")
GOAL_DATA_WAIT = 0.02

# Defaults of the H200 check and of --smoke (a 2-core CPU machine); an option given on the command line wins.
GPU_PRESET: dict[str, Any] = {
    "arch": "ViT-B-16", "image_size": 224, "batch": 256, "steps": 30, "warmup": 10, "epochs": 3,
    "precision": "bf16", "device": "auto", "classes": 50, "n_max": 500, "samples_per_shard": 100,
    "budget_s": 510.0,
    "budgets": {"env": 30, "dataset": 45, "bare": 60, "peer": 90, "ours": 135, "features": 60, "resume": 90},
    # As pipelines/configs/gpu-node.yaml: the Train worker drives the GPU with 2 CPUs, one read+decode task
    # per logical CPU (Ray gets one per core), 4 batches in flight to ride out a slow decode task.
    "ours_sets": ["train.cpus_per_worker=2", "data.decode_cpus=1.0", "data.prefetch_batches=4"],
    "ray_cpus_per_core": 1,
}  # fmt: skip
SMOKE_PRESET: dict[str, Any] = {
    "arch": "uniproto-tiny-rn", "image_size": 32, "batch": 32, "steps": 4, "warmup": 2, "epochs": 2,
    "precision": "bf16", "device": "cpu", "classes": 6, "n_max": 60, "samples_per_shard": 16,
    "budget_s": 1800.0,
    "budgets": {"env": 120, "dataset": 120, "bare": 240, "peer": 300, "ours": 420, "resume": 300, "features": 300},
    # 2 cores: the demo's convention (the 2-core hang of docs/stack-notes.md), as pipelines.bench.train.ours_overrides sets it
    "ours_sets": [], "ray_cpus_per_core": 2,
}  # fmt: skip
MIN_PART_S = 20.0  # a part is skipped when less than this is left of the budget
MFU_FORMULA = "samples/s x 3 x (image fwd x (size/224)^2 + text fwd) / peak; ViT-B-16: 123 GFLOP/sample"
CONFIG_KEYS = ("arch", "image_size", "batch", "steps", "warmup", "epochs", "precision", "device",
               "zero_stage", "parts", "ours_sets", "budget_s")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="uniproto benchmark gpu", description=__doc__.splitlines()[0].split(": ", 1)[-1]
    )
    p.add_argument("--smoke", action="store_true", help="CPU preset: tiny arch, 32 px, a few steps")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(PARTS)} (resume needs ours)")
    p.add_argument("--arch")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch", type=int, help="global batch of every part (ours: one Train worker)")
    p.add_argument("--steps", type=int, help="bare: timed steps")
    p.add_argument("--warmup", type=int, help="bare: untimed steps first")
    p.add_argument("--epochs", type=int, help="ours and peer (the first is warm-up); resume runs one more")
    p.add_argument("--precision", choices=["bf16", "fp32"])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="auto: cuda where nvidia-smi exists")
    p.add_argument(
        "--zero-stage", type=int, choices=[0, 1, 2, 3], default=0, help="DeepSpeed ZeRO (bare, ours)"
    )
    p.add_argument("--classes", type=int, help="dataset classes")
    p.add_argument("--n-max", type=int, help="train images of the largest class (imbalance 10)")
    p.add_argument("--samples-per-shard", type=int)
    p.add_argument(
        "--peer-workers", type=int, help="open_clip_train loader processes (default cores/2, <= 8)"
    )
    p.add_argument(
        "--peer-site",
        help="a folder holding webdataset 0.2.86, first on the peer's path (offline); default: the cached "
        "peer venv (pipelines.bench.peer, built with pip)",
    )
    p.add_argument(
        "--ours-set", action="append", default=[], metavar="KEY=VALUE", help="extra config for ours"
    )
    p.add_argument("--flops-per-sample", type=float, help="training FLOPs per sample (default: known archs)")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_FLOPS / 1e12, help="GPU bf16 peak")
    p.add_argument("--budget-s", type=float, help="the whole check's time budget")
    p.add_argument("--workdir", default="runs/gpu-check", help="dataset, runs and logs")
    p.add_argument("--out", help="JSON file (default <workdir>/gpu-check.json)")
    a = p.parse_args(argv)
    preset = SMOKE_PRESET if a.smoke else GPU_PRESET
    for key, value in preset.items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    a.budgets = dict(preset["budgets"])
    a.ours_sets = [*preset["ours_sets"], *a.ours_set]
    a.parts = [x.strip() for x in a.only.split(",") if x.strip()] if a.only else list(PARTS)
    unknown = sorted(set(a.parts) - set(PARTS))
    if unknown:
        p.error(f"--only: unknown part(s) {unknown}; choose from {','.join(PARTS)}")
    if "resume" in a.parts and "ours" not in a.parts:
        p.error("--only resume needs ours (it resumes ours' checkpoint)")
    if not 16 <= a.image_size <= 512:
        p.error(f"--image-size must be in [16, 512], got {a.image_size}")
    if a.batch < 4:
        p.error(f"--batch must be >= 4, got {a.batch}")
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first is warm-up)")
    if a.budget_s <= 0:
        p.error("--budget-s must be > 0")
    if a.device == "auto":
        a.device = "cuda" if shutil.which("nvidia-smi") else "cpu"
    from system.config import ConfigError, load_config

    try:  # a bad override is refused now, not after the dataset and two other parts
        load_config(None, a.ours_sets)
    except ConfigError as e:
        p.error(f"--ours-set: {e}")
    return a


def say(msg: str) -> None:
    print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)


def part_env(threads: int | None, device: str, peer_site: str | None = None) -> dict[str, str]:
    from pipelines.bench.procs import base_env

    env = base_env(threads)
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    if peer_site:  # webdataset 0.2.86 first, ours (1.0.2) after it
        env["PYTHONPATH"] = os.pathsep.join([str(Path(peer_site).resolve()), env["PYTHONPATH"]])
    return env


class Check:
    """The parts in order, each within what is left of the budget; `parts` collects each part's figures."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = Path(a.workdir).resolve()
        self.cores = len(os.sched_getaffinity(0))
        self.deadline = time.time() + a.budget_s
        self.parts: dict[str, dict[str, Any]] = {}
        self.data: tuple[str, list[str], int] | None = None

    def run(self, name: str, cmd: list[str], env: dict[str, str]):
        left = self.deadline - time.time()
        if left < MIN_PART_S:
            self.parts[name] = {"error": f"skipped: {left:.0f} s left of the {self.a.budget_s:.0f} s budget"}
            return None
        timeout = min(self.a.budgets[name], left)
        say(f"{name}: starting (timeout {timeout:.0f} s)")
        run = run_part(name, cmd, env, timeout, self.work / "logs" / f"{name}.log", REPO)
        self.parts[name] = {"wall_s": run.wall_s, "error": run.error, "log": str(run.log)}
        if run.error:
            say(f"{name}: FAILED in {run.wall_s} s: {run.error.splitlines()[0]}")
        return run

    def record(self, name: str, run, figures: dict[str, Any], window: tuple | None = None) -> None:
        self.parts[name].update({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
        self.parts[name].update(gpu_stats(run.samples, *(window or (None, None))))
        say(f"{name}: {json.dumps({k: v for k, v in self.parts[name].items() if k != 'log'})}")

    def env(self) -> dict[str, Any]:
        run = self.run(
            "env", [sys.executable, "-m", "pipelines.bench.gpu_parts", "_env"], part_env(None, self.a.device)
        )
        part = self.parts.pop("env")
        try:
            return (
                last_json(run.log, "[gpu-check] env ") if run and not run.error else {"error": part["error"]}
            )
        except ValueError as e:
            return {"error": str(e)}

    def dataset(self) -> None:
        a, root = self.a, self.work / "dataset"
        if not (root / "manifest.json").is_file():
            cmd = [sys.executable, "-m", "pipelines.cli", "make-demo-data", "--out", str(root), "--overwrite",
                   "--classes", str(a.classes), "--n-max", str(a.n_max), "--imbalance", "10",
                   "--val-per-class", "2", "--test-per-class", "2", "--image-size", str(a.image_size),
                   "--samples-per-shard", str(a.samples_per_shard), "--workers", str(self.cores)]  # fmt: skip
            run = self.run("dataset", cmd, part_env(1, a.device))
            if run is None or run.error:
                return
        from pipelines.bench.inputs import resolve

        self.data = resolve(str(root), self.work)
        part = self.parts.setdefault("dataset", {})
        part.update(
            root=str(root), train_samples=self.data[2], shards=len(self.data[1]), image_size=a.image_size
        )

    def bare(self) -> None:
        a = self.a
        kwargs = {"arch": a.arch, "image_size": a.image_size, "batch": a.batch, "steps": a.steps,
                  "warmup": a.warmup, "num_classes": a.classes, "precision": a.precision,
                  "device": a.device, "zero_stage": a.zero_stage}  # fmt: skip
        cmd = [sys.executable, "-m", "pipelines.bench.gpu_parts", "_bare", json.dumps(kwargs)]
        run = self.run("bare", cmd, part_env(self.cores, a.device))
        if run and not run.error:
            r = last_json(run.log, "[gpu-check] bare ")
            self.record("bare", run, r, (r.pop("t_start"), r.pop("t_end")))

    def peer(self) -> None:
        from pipelines.bench.peer import (
            PeerRun,
            ensure_peer_env,
            parse_peer_log,
            peer_command,
            peer_throughput,
        )
        from pipelines.bench.train import CONFIGS_DIR

        a = self.a
        _, shards, samples = self.data
        workers = a.peer_workers or max(1, min(8, self.cores // 2))
        python = sys.executable if a.peer_site else str(ensure_peer_env(log=say))
        precision = "amp_bf16" if a.precision == "bf16" else "fp32"
        run_spec = PeerRun(shards, samples, a.arch, a.image_size, a.batch, workers, a.epochs,
                           str(self.work / "peer-logs"), f"peer-{int(time.time())}",
                           precision=precision, device=a.device)  # fmt: skip
        threads = max(1, min(4, self.cores - workers))
        run = self.run(
            "peer", peer_command(python, run_spec, CONFIGS_DIR), part_env(threads, a.device, a.peer_site)
        )
        if run and not run.error:
            text = run.log.read_text(errors="replace")
            steps = peer_throughput(parse_peer_log(text), a.batch, skip_epochs=1)
            figures = {**steps, "loader_workers": workers, "torch_threads": threads, "precision": precision}
            self.record("peer", run, figures, peer_window(text))

    def ours(self, name: str = "ours") -> None:
        from pipelines.bench.train import ours_overrides, ours_throughput

        a = self.a
        epochs = a.epochs + (name == "resume")
        record = self.work / f"{name}-reports.jsonl"
        record.unlink(missing_ok=True)
        out_dir = self.work / "ours"
        if name == "ours":
            shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run: only `resume` resumes
        sets = ours_overrides(self.data[0], out_dir, a.arch, a.image_size, a.batch, 1, epochs, self.cores,
                              zero_stage=a.zero_stage)  # fmt: skip
        extra = [f"{k}={v}" for k, v in self.ray_run_sets().items()] + a.ours_sets
        sets += [x for kv in extra for x in ("--set", kv)]
        cmd = [
            sys.executable,
            "-m",
            "pipelines.bench.train",
            "_ours",
            str(record),
            "pipelines.pretrain",
            *sets,
        ]
        run = self.run(name, cmd, part_env(None, a.device))
        reports = (
            [json.loads(x) for x in record.read_text().splitlines() if x.strip()] if record.exists() else []
        )
        epochs_seen = [r for r in reports if r.get("kind") == "epoch"]
        if run is None:
            return
        if name == "resume":
            resumed = epochs_seen[0].get("resumed_from_step") if epochs_seen else None
            last = epochs_seen[-1].get("epoch") if epochs_seen else None
            ok = not run.error and bool(resumed) and last == epochs
            self.record(
                name, run, {"resumed_from_step": resumed, "last_epoch": last, "epochs": epochs, "ok": ok}
            )
        elif not run.error:
            figures = ours_throughput(reports, skip_epochs=1)
            window = (epochs_seen[0].get("recorded_at"), epochs_seen[-1].get("recorded_at"))
            self.record(name, run, figures, window)

    def ray_run_sets(self) -> dict[str, Any]:
        """The config both Ray parts (ours, features) run with: the check's precision and device, Ray's CPUs."""
        return {"train.precision": self.a.precision, "train.use_gpu": str(self.a.device == "cuda").lower(),
                "ray.num_cpus": self.a.ray_cpus_per_core * self.cores, "ray.no_progress_timeout_s": 60}  # fmt: skip

    def features(self) -> None:
        """Stage 2's feature pass at 1x and 3x the train split, the actor pool on the GPU (on the CPU under --smoke)."""
        a = self.a
        sets = {"data.root": self.data[0], "model.arch": a.arch, "data.image_size": a.image_size,
                **self.ray_run_sets()}  # fmt: skip
        cmd = [sys.executable, "-m", "pipelines.bench.stage2", "--config", "pipelines/configs/demo.yaml",
               "--scale", "3", *(x for k, v in sets.items() for x in ("--set", f"{k}={v}"))]  # fmt: skip
        run = self.run("features", cmd, part_env(None, a.device))
        if run and not run.error:
            self.record("features", run, stage2_figures(run.log.read_text(errors="replace")))


def peer_window(text: str) -> tuple[float, float] | None:
    """Wall times of the peer's first logged step of epoch 1 and its last step (open_clip_train's log stamps,
    to the second): its measured steps, for the GPU utilisation."""
    import re

    stamps = re.findall(r"^(\d{4}-\d\d-\d\d,\d\d:\d\d:\d\d) \| INFO \| Train Epoch: (\d+)", text, re.M)
    times = [time.mktime(time.strptime(s, "%Y-%m-%d,%H:%M:%S")) for s, epoch in stamps if int(epoch) >= 1]
    return (times[0], times[-1] + 1) if times else None


def stage2_figures(log: str) -> dict[str, Any]:
    """What the check keeps of `pipelines.bench.stage2`'s result (its last line is one JSON object): the feature
    pass's images/s at 1x, its fixed start and marginal rate, the rows, and the driver's growth from 1x to 3x."""
    line = next((x for x in reversed(log.splitlines()) if x.startswith('{"arch"')), None)
    if line is None:
        raise ValueError("no result line from pipelines.bench.stage2")
    r = json.loads(line)
    one = r["runs"][0]
    return {
        "images_per_s": one["images_per_s"],
        "rows": one["rows"],
        "marginal_images_per_s": r["marginal_images_per_s"],
        "pass_start_s": r["pass_start_s"],
        "driver_growth_mib": r["ours_growth_mib"],
        "pool": r["pool"],
    }


def assemble(
    a: argparse.Namespace, env: dict[str, Any], parts: dict[str, dict[str, Any]], total_s: float
) -> dict[str, Any]:
    """The check's JSON: config, env, every part, MFU per part (GPU only), ratio ours/peer, and the goals."""
    flops = a.flops_per_sample or train_flops_per_sample(a.arch, a.image_size)
    peak = a.peak_tflops * 1e12
    on_gpu = a.device == "cuda"
    for name in ("bare", "peer", "ours"):
        if name in parts:
            m = mfu(parts[name].get("samples_per_s"), flops, peak) if on_gpu else None
            parts[name]["mfu"] = round(m, 4) if m is not None else None
    sps = {k: (parts.get(k) or {}).get("samples_per_s") for k in ("bare", "peer", "ours")}
    ratio = round(sps["ours"] / sps["peer"], 3) if sps["ours"] and sps["peer"] else None
    wait = (parts.get("ours") or {}).get("data_wait_fraction")
    resume = parts.get("resume")
    return {
        "config": {k: getattr(a, k) for k in CONFIG_KEYS},
        "env": env,
        "flops_per_sample": flops,
        "peak_flops": peak if on_gpu else None,
        "mfu_formula": MFU_FORMULA,
        **{k: parts.get(k) for k in ("dataset", *PARTS)},
        "ratio": ratio,
        "goals": {
            "ours_at_least_peer": ratio >= 1.0 if ratio is not None else None,
            "data_wait_under_2pct": wait < GOAL_DATA_WAIT if wait is not None else None,
            "resume_ok": resume.get("ok", False) if resume is not None else None,
        },
        "total_s": round(total_s, 1),
    }


def check(a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    c = Check(a)
    c.work.mkdir(parents=True, exist_ok=True)
    say(f"{a.arch} at {a.image_size} px, batch {a.batch}, {a.precision} on {a.device}, parts {a.parts}, "
        f"budget {a.budget_s:.0f} s, workdir {c.work}")  # fmt: skip
    env = c.env()
    say(f"env: {json.dumps(env)}")
    no_gpu = a.device == "cuda" and "cuda_available" in env and not env["cuda_available"]
    steps = {"bare": c.bare, "peer": c.peer, "ours": c.ours, "resume": lambda: c.ours("resume"),
             "features": c.features}  # fmt: skip
    if any(p in a.parts for p in NEEDS_DATASET):
        guarded(c, "dataset", c.dataset)
    for name in a.parts:
        if no_gpu:
            c.parts[name] = {"error": "--device cuda, but torch sees no CUDA device"}
        elif name in NEEDS_DATASET and c.data is None:
            c.parts[name] = {"error": "no dataset (see dataset.error)"}
        elif name == "resume" and (c.parts.get("ours") or {}).get("error"):
            c.parts[name] = {"error": "ours failed: no checkpoint to resume"}
        else:
            guarded(c, name, steps[name])
    return assemble(a, env, c.parts, time.time() - t0)


def guarded(c: Check, name: str, step) -> None:
    """Run one part; an exception (a log that does not parse, a peer env that cannot be built) becomes the
    part's `error`, and the check goes on."""
    try:
        step()
    except Exception as e:  # noqa: BLE001 - recorded, never swallowed silently
        c.parts.setdefault(name, {})["error"] = f"{type(e).__name__}: {e}"
        say(f"{name}: FAILED: {type(e).__name__}: {e}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    result = check(a)
    out = Path(a.out or Path(a.workdir) / "gpu-check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(result, default=float)
    out.write_text(line + "\n")
    say(f"wrote {out}")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
