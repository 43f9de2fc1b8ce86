"""`uniproto benchmark train`: our stage 1 against open_clip's own trainer, and against a bare torch loop.

    uniproto benchmark train [--shards SPEC] [--cpus N] [--epochs E] [--batch B] [--json]

Three runs on the same shards, architecture, image size and global batch, one after the other, each in its own
process tree confined to the same N cores (CPU affinity):

* **ours**: our stage 1 as `uniproto pretrain` runs it, through the `main` of the module the caller names
  (`stage1`, which `uniproto benchmark train` sets to `uniproto pretrain`'s): Ray Data stream with the
  text-filter stage -> Ray Train workers, each a DeepSpeed engine; the class-wise contrastive loss plus the
  prototype loss. Defaults for one CPU node: one Train worker (`--workers`), ZeRO stage 0 (`--zero-stage`),
  torch's fused AdamW (`--unfused-adamw` for the for-loop one). On one node, data parallelism over
  processes costs a gradient exchange and a replicated optimizer step per rank (2 workers x 1 thread: a third
  fewer samples/s than 1 x 2 on 2 cores), and ZeRO's
  partitioning saves accelerator memory but on CPU only adds flatten/copy work (ZeRO-1: 40-50% longer steps, one rank).
  Ray gets 2N logical CPUs (the demo's convention on 2 cores, the 2-core hang of docs/stack-notes.md); each Train worker holds
  N/workers of them, so Ray sets its torch threads (OMP_NUM_THREADS) to that: N compute threads in all; decode
  and the text filter run in Ray Data on the same cores.
* **peer**: `open_clip_train` (its CLIP contrastive loss, AdamW, webdataset loader), one process with
  `--peer-threads` torch threads (default N minus the loader processes) plus `--peer-workers` loader processes
  (default N/2, at least 1) on the same cores, so threads + loaders = N: an OpenMP team sharing its cores with a
  busy loader process stalls at every barrier (measured: the peer's backward spent most of its time in
  libgomp waits with 2 threads + 1 loader on 2 cores). --batch-size is our global batch (micro batch x Train
  workers). It runs in a cached venv with webdataset==0.2.86
  (pipelines.bench.peer).
* **bare**: one process, N torch threads, the same model (`create_clip`), the same loss (`Stage1Loss` with the
  same number of prototypes) and the same AdamW (`system.model.optim.build_adamw`) with gradient clipping, on
  pre-decoded in-memory batches: no data loading, no Ray, no DeepSpeed. The ceiling for this model on these
  cores. It runs `--bare-repeats` times (default 2), first and last, and its figure is their mean: this VM's
  speed drifts by 10-20% within minutes, so one run before the others can misstate the overhead either way.
* **floor**: the same bare loop as the train function of a one-worker Ray Train run on a local Ray started as
  ours is (no Ray Data, no DeepSpeed). Its gap to bare (`floor_overhead`) is what Ray Train's own processes
  cost on these cores (the main thread of every Ray actor wakes every 10 ms, and ours runs seven to ten
  Ray worker processes beside the Train worker, plus raylet, gcs, the dashboard and its agent), a floor
  under `overhead` that no change inside our training loop can remove.
* **idle** (`--only idle`, not in the default set): the bare loop in one process beside a local Ray started as
  ours is, in phases without and with `--idle-actors` idle actors, alternating: what each Ray worker process
  costs the loop (every one wakes its main thread 100 times a second, busy or not). Ours' measured epochs also
  report how many such processes lived beside the Train worker (`steady_cores_by_role.ray_processes`).

**A/B** (`--ab KEY=VALUE`, repeatable, with `--ab-rounds`): ours as configured (A) and with those overrides (B),
one run of each per round, adjacent, the order alternating (A B, B A, ...); `ab` in the JSON has B/A of the means
and each round's own B/A (this VM's drift between two single runs is 10-20%, so only rounds that agree count).

Throughput is steady state: samples over summed step time in the epochs after the first (ours: the per-epoch
`samples` / `epoch_s` of the Train reports, which exclude the between-epoch checkpoint; peer: its per-step log
lines; bare and floor: after `--bare-warmup` steps). ratio = ours / peer; overhead = (bare - ours) / bare;
floor_overhead = (bare - floor) / bare; overhead_above_floor = (floor - ours) / floor.
The last line printed is one JSON object with `ours`, `peer`, `ratio`, `overhead` and the details.
CPU-seconds and peak RSS cover each whole process tree and run (start-up included); RSS is summed over the
processes, so pages they share (Ray's object store) count once per process. CPU-seconds are also split by
process role (`cpu_s_by_role`: driver, train_worker, data, ray_actors, ray_idle, other = Ray's daemons), and
for ours `steady_cores_by_role` gives the cores each role kept busy over the measured epochs alone.
Multi-threaded torch (the bare loop, the peer) collapses when other work shares the cores (10-25x slower here
at a load of 6-20 on 2 cores), while ours runs one thread per process: compare figures taken at a low load
average, which the output reports.

`--shards` takes a dataset directory (manifest.json; its train split is used) or a raw shard spec (a brace
pattern or glob of .tar files, `::`-separated for several): a manifest is then written into the work directory
with the class list scanned from the shards' .json files (`label`, `class_name`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.bench.inputs import resolve
from pipelines.bench.peer import (
    PeerRun,
    ensure_peer_env,
    parse_peer_log,
    peer_command,
    peer_throughput,
)
from pipelines.bench.procs import REPO, base_env, cores_by_role, cpu_set, load_average, role_line, run_tree
from pipelines.bench.stats import ab_summary, last_json, runs_summary

CONFIGS_DIR = REPO / "system" / "model" / "configs"
DEFAULT_SHARDS = "runs/datasets/demo"


# --------------------------------------------------------------------------------------------- ours


def ours_overrides(
    root: str,
    out_dir: Path,
    arch: str,
    image_size: int,
    batch: int,
    workers: int,
    epochs: int,
    cpus: int,
    zero_stage: int = 0,
    fused: bool = True,
) -> list[str]:
    if batch % workers:
        raise ValueError(f"--batch {batch} must be a multiple of --workers {workers}")
    sets = {
        "run.name": "bench-ours",
        "run.output_dir": str(out_dir),
        "data.root": root,
        "data.image_size": image_size,
        "model.arch": arch,
        "train.num_workers": workers,
        "train.cpus_per_worker": float(max(1, cpus // workers)),
        "train.micro_batch_size": batch // workers,
        "train.epochs": epochs,
        "train.zero_stage": zero_stage,
        "optim.fused": fused,
        "train.checkpoint_every_epochs": epochs,  # one checkpoint, at the end (outside the timed epochs anyway)
        "train.keep_checkpoints": 1,
        "eval.stage1_val_samples": 0,  # the per-epoch probe is outside the timed epochs; skip its cost
        "ray.num_cpus": 2 * cpus,
        "ray.data_progress_bars": False,
        "sweep.space": None,
    }
    return [x for k, v in sets.items() for x in ("--set", f"{k}={'null' if v is None else v}")]


def _ours_child(argv: list[str]) -> int:
    """Child process: argv = [JSON-lines file, module of our stage 1, its arguments...]: the module's main with
    every Train report also appended to the file."""
    record_path, stage1, rest = argv[0], argv[1], argv[2:]
    import importlib

    import system.runtime.pretrain as rp

    original = rp.run_stage1

    def run_stage1(cfg, inputs, name, callbacks=None, **kwargs):
        return original(cfg, inputs, name, callbacks=[*(callbacks or []), _recorder(record_path)], **kwargs)

    rp.run_stage1 = run_stage1
    out = importlib.import_module(stage1).main(rest)
    print("[bench] ours summary " + json.dumps(out["summary"]), flush=True)
    return 0


def _recorder(path: str):
    from ray.train import UserCallback

    class ReportRecorder(UserCallback):
        """Appends rank 0's (already reduced) numeric metrics of every report to a JSON-lines file."""

        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(self, run_context, metrics, checkpoint) -> None:
            m = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float, str))}
            m["recorded_at"] = time.time()  # wall clock: the measured epochs' window for CPU by role
            with open(self.path, "a") as f:
                f.write(json.dumps(m) + "\n")

    return ReportRecorder(path)


def ours_throughput(reports: list[dict[str, Any]], skip_epochs: int = 1) -> dict[str, float]:
    """Steady state over epoch reports with epoch > skip_epochs (1-based): summed samples / summed epoch_s."""
    kept = [r for r in reports if r.get("kind") == "epoch" and r.get("epoch", 0) > skip_epochs]
    if not kept:
        raise ValueError(f"no epoch reports after epoch {skip_epochs} (got {len(reports)} reports)")
    samples = sum(r["samples"] for r in kept)
    seconds = sum(r["epoch_s"] for r in kept)
    waited = sum(r["data_wait_fraction"] * r["epoch_s"] for r in kept)
    return {
        "samples_per_s": samples / seconds,
        "epochs": len(kept),
        "samples": samples,
        "seconds": seconds,
        "data_wait_fraction": waited / seconds,
    }


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="uniproto benchmark train",
        description="Our stage 1 vs open_clip_train (samples/s, ratio) and vs a bare torch loop (overhead). "
        "Last line: one JSON object.",
    )
    p.add_argument("--shards", default=DEFAULT_SHARDS, help="dataset dir (manifest.json) or shard spec/glob")
    p.add_argument("--arch", default="uniproto-tiny-rn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128, help="global batch (ours: micro batch x --workers)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="our Ray Train workers (default 1: on one CPU node, one worker with every core as a thread "
        "beats data parallelism over processes)",
    )
    p.add_argument("--cpus", type=int, default=None, help="cores for every run (default: all available)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of ours and the peer; the first is warm-up")
    p.add_argument(
        "--peer-workers", type=int, default=None, help="peer dataloader processes (default cpus/2)"
    )
    p.add_argument(
        "--peer-threads",
        type=int,
        default=None,
        help="peer torch threads (default cpus - peer workers, >= 1)",
    )
    p.add_argument(
        "--zero-stage",
        type=int,
        choices=[0, 1, 2, 3],
        default=0,
        help="our DeepSpeed ZeRO stage (default 0: partitioning saves accelerator memory; on CPU it only "
        "adds flatten/copy work per step)",
    )
    p.add_argument(
        "--unfused-adamw",
        action="store_true",
        help="ours and bare use torch's for-loop AdamW instead of the fused kernel (optim.fused=false)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for our run (repeatable), applied after the benchmark's own",
    )
    p.add_argument("--bare-steps", type=int, default=60)
    p.add_argument("--bare-warmup", type=int, default=5)
    p.add_argument(
        "--bare-repeats",
        type=int,
        default=2,
        help="bare-loop runs, spread over the benchmark (first and last); overhead uses their mean",
    )
    p.add_argument(
        "--only",
        choices=["ours", "peer", "bare", "floor", "idle"],
        action="append",
        help="run a subset (idle: not in the default set; what idle Ray actors cost the bare loop)",
    )
    p.add_argument(
        "--idle-actors", type=int, default=10, help="idle Ray actors beside the loop (--only idle)"
    )
    p.add_argument(
        "--ab",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A/B of ours: run it as configured (A) and with these overrides (B, repeatable), --ab-rounds "
        "times each, adjacent and in alternating order; prints B/A of the means and of every round",
    )
    p.add_argument("--ab-rounds", type=int, default=2, help="A/B rounds (one A and one B run each)")
    p.add_argument("--workdir", help="keep logs and runs here (default: a temporary dir, removed)")
    p.add_argument("--verbose", action="store_true", help="echo the runs' own output")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is warm-up)")
    if a.bare_repeats < 1:
        p.error("--bare-repeats must be >= 1")
    if a.ab_rounds < 1:
        p.error("--ab-rounds must be >= 1")
    if a.ab and a.only and "ours" not in a.only:
        p.error("--ab compares runs of ours: add --only ours")
    from system.config import ConfigError, load_config

    try:  # a bad override (no KEY=VALUE, unknown key, wrong type) is refused now, not inside the first run
        load_config(None, [*a.sets, *a.ab])
    except ConfigError as e:
        p.error(f"--set/--ab: {e}")
    return a


def benchmark(a: argparse.Namespace, say=print, stage1: str | None = None) -> dict[str, Any]:
    """The runs `a` asks for; `stage1` is the module whose `main(argv)` runs ours (needed when ours runs)."""
    cpus = cpu_set(a.cpus or len(os.sched_getaffinity(0)))
    n = len(cpus)
    which = set(a.only or ["ours", "peer", "bare", "floor"])
    if "ours" in which and not stage1:
        raise ValueError(
            "benchmark train: ours needs the module of our stage 1 (uniproto benchmark train passes it); "
            "without it run --only peer/bare/floor/idle"
        )
    work = Path(a.workdir or tempfile.mkdtemp(prefix="uniproto-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root, shards, num_samples = resolve(a.shards, work)
    from system.data.dataset_dir import load_manifest

    num_classes = load_manifest(root).num_classes
    result: dict[str, Any] = {
        "ours": None,
        "peer": None,
        "ratio": None,
        "overhead": None,
        "bare": None,
        "floor": None,
        "floor_overhead": None,
        "overhead_above_floor": None,
        "ours_sets": list(a.sets),
        "cpus": n,
        "global_batch": a.batch,
        "arch": a.arch,
        "image_size": a.image_size,
        "epochs": a.epochs,
        "measured_epochs": a.epochs - 1,
        "train_samples_per_epoch": num_samples,
        "shards": len(shards),
        "load_before": load_average(),
    }
    say(f"[bench] {n} cores {cpus}, {a.arch} at {a.image_size} px, global batch {a.batch}, {num_samples} "
        f"samples x {a.epochs} epochs ({len(shards)} shards), load {result['load_before']}")  # fmt: skip

    loop_args = ["--arch", a.arch, "--image-size", str(a.image_size), "--batch", str(a.batch),
                 "--steps", str(a.bare_steps), "--warmup", str(a.bare_warmup), "--classes", str(num_classes),
                 "--threads", str(n), *(["--unfused-adamw"] if a.unfused_adamw else [])]  # fmt: skip
    bare_runs: list[dict[str, Any]] = []

    def run_bare() -> None:
        i = len(bare_runs)
        cmd = [sys.executable, "-m", "pipelines.bench.bare", "bare", *loop_args]
        usage = run_tree(cmd, base_env(n), cpus, work / f"bare-{i}.log", a.verbose)
        bare = last_json((work / f"bare-{i}.log").read_text(), "[bench] bare ")
        bare_runs.append({**bare, **usage, "load": load_average()})
        say(f"[bench] bare torch loop, run {i + 1}/{a.bare_repeats}: {bare['samples_per_s']:.1f} samples/s "
            f"({bare['steps']} steps, {bare['threads']} threads), load {bare_runs[-1]['load']}")  # fmt: skip

    if "bare" in which:
        run_bare()

    if "floor" in which:
        out = work / "floor.json"
        cmd = [sys.executable, "-m", "pipelines.bench.bare", "floor", *loop_args, "--out", str(out)]
        usage = run_tree(cmd, base_env(None), cpus, work / "floor.log", a.verbose)
        floor = json.loads(out.read_text())
        result["floor"] = round(floor["samples_per_s"], 2)
        result["floor_detail"] = {**floor, **usage, "load": load_average()}
        say(f"[bench] the bare loop inside a 1-worker Ray Train run (no Ray Data, no DeepSpeed): "
            f"{floor['samples_per_s']:.1f} samples/s, load {result['floor_detail']['load']}")  # fmt: skip
        say(f"[bench] floor's {role_line(usage)}")

    if "idle" in which:
        cmd = [sys.executable, "-m", "pipelines.bench.bare", "idle", *loop_args,
               "--actors", str(a.idle_actors), "--rounds", str(2 * a.bare_repeats)]  # fmt: skip
        usage = run_tree(cmd, base_env(n), cpus, work / "idle.log", a.verbose)
        idle = last_json((work / "idle.log").read_text(), "[bench] idle ")
        result["idle_actor_cost"] = {**idle, **usage, "load": load_average()}
        say(f"[bench] the bare loop beside a local Ray: {idle['without']:.1f} samples/s alone, {idle['with']:.1f} "
            f"with {idle['actors']} idle Ray actors: {100 * idle['slowdown']:.1f}% slower, "
            f"{100 * idle['slowdown_per_actor']:.2f}% per actor")  # fmt: skip

    if "peer" in which:
        python = ensure_peer_env(log=say)
        run = PeerRun(
            shards=shards,
            num_samples=num_samples,
            arch=a.arch,
            image_size=a.image_size,
            batch_size=a.batch,
            workers=a.peer_workers or max(1, n // 2),
            epochs=a.epochs,
            logs=str(work / "peer-logs"),
            name=f"peer-{os.getpid()}-{int(time.time())}",
        )
        threads = a.peer_threads or max(1, n - run.workers)  # compute threads + loader processes <= cores
        usage = run_tree(
            peer_command(python, run, CONFIGS_DIR), base_env(threads), cpus, work / "peer.log", a.verbose
        )
        steps = parse_peer_log((work / "peer.log").read_text())
        peer = peer_throughput(steps, a.batch, skip_epochs=1)
        result["peer"] = round(peer["samples_per_s"], 2)
        result["peer_detail"] = {**peer, **usage, "loader_workers": run.workers, "torch_threads": threads,
                                 "load": load_average()}  # fmt: skip
        say(f"[bench] peer open_clip_train: {peer['samples_per_s']:.1f} samples/s ({peer['steps']} steps, "
            f"data-wait {100 * peer['data_wait_fraction']:.0f}%), {usage['cpu_s']} CPU-s, peak RSS "
            f"{usage['peak_rss_mb']} MB, wall {usage['wall_s']} s, load {result['peer_detail']['load']}")  # fmt: skip

    def run_ours(extra: list[str], tag: str = "") -> dict[str, Any]:
        """One run of ours with the benchmark's overrides, then --set, then `extra`; its figures and usage."""
        name = f"ours{tag}"
        record = work / f"{name}-reports.jsonl"
        record.unlink(missing_ok=True)
        sets = ours_overrides(
            root, work / name, a.arch, a.image_size, a.batch, a.workers, a.epochs, n,
            zero_stage=a.zero_stage, fused=not a.unfused_adamw,
        )  # fmt: skip
        sets += [x for kv in [*a.sets, *extra] for x in ("--set", kv)]
        cmd = [sys.executable, "-m", "pipelines.bench.train", "_ours", str(record), stage1, *sets]
        timeline: list = []
        usage = run_tree(cmd, base_env(None), cpus, work / f"{name}.log", a.verbose, timeline)
        reports = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        ours = ours_throughput(reports, skip_epochs=1)
        # Where the cores went while the measured epochs ran (from the end of epoch 1 to the last report).
        epochs = [r for r in reports if r.get("kind") == "epoch" and "recorded_at" in r]
        if len(epochs) >= 2:
            usage["steady_cores_by_role"] = cores_by_role(
                timeline, epochs[0]["recorded_at"], epochs[-1]["recorded_at"]
            )
        ours["steps"] = int(ours["samples"]) // a.batch
        detail = {
            **ours,
            **usage,
            "train_workers": a.workers,
            "ray_logical_cpus": 2 * n,
            "load": load_average(),
        }
        adamw = "for-loop" if a.unfused_adamw else "fused"
        say(f"[bench] ours{' ' + ' '.join(extra) if extra else ''} (Ray Data + text filter -> Ray Train "
            f"x{a.workers} + DeepSpeed ZeRO-{a.zero_stage}, {adamw} AdamW, proto loss): "
            f"{ours['samples_per_s']:.1f} samples/s ({ours['epochs']} epochs, data-wait "
            f"{100 * ours['data_wait_fraction']:.0f}%), {usage['cpu_s']} CPU-s, peak RSS {usage['peak_rss_mb']} MB, "
            f"wall {usage['wall_s']} s, load {detail['load']}")  # fmt: skip
        say(f"[bench] ours' {role_line(usage)}")
        steady = usage.get("steady_cores_by_role")
        if steady:
            say(
                f"[bench] ours' cores by role over the measured epochs ({steady['seconds']} s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in steady["cores"].items())
                + f"; total {steady['total']:.2f}; Ray worker processes beside the Train worker(s): "
                + f"{steady.get('ray_processes')}"
            )
        return detail

    if "ours" in which and not a.ab:
        detail = run_ours([])
        result["ours"] = round(detail["samples_per_s"], 2)
        result["ours_detail"] = detail
    elif "ours" in which:
        # A/B: ours as configured (A) and with the --ab overrides (B), adjacent in every round, the order
        # alternating (A B, B A, ...) so that the VM's drift favours neither side.
        runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        for r in range(a.ab_rounds):
            for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                runs[side].append(run_ours(list(a.ab) if side == "b" else [], tag=f"-{side}{r}"))
        ab = ab_summary([d["samples_per_s"] for d in runs["a"]], [d["samples_per_s"] for d in runs["b"]])
        result["ab"] = {**ab, "sets": list(a.ab), "a_detail": runs["a"], "b_detail": runs["b"]}
        result["ours"] = round(ab["a"], 2)
        result["ours_detail"] = runs["a"][-1]
        per_round = ", ".join(f"{x:.3f}" for x in ab["round_ratios"])
        say(f"[bench] A/B over {a.ab_rounds} rounds: ours {ab['a']:.1f}, with {' '.join(a.ab)} {ab['b']:.1f} "
            f"samples/s (B/A {ab['ratio']:.3f}; per round {per_round})")  # fmt: skip

    while "bare" in which and len(bare_runs) < a.bare_repeats:
        run_bare()  # after ours: the mean brackets the other runs in time
    if bare_runs:
        summary = runs_summary([r["samples_per_s"] for r in bare_runs])
        result["bare"] = round(summary["mean"], 2)
        result["bare_detail"] = {**summary, "spread": round(summary["spread"], 3), "each": bare_runs}
    if result["ours"] and result["peer"]:
        result["ratio"] = round(result["ours"] / result["peer"], 3)
    if result["ours"] and result["bare"]:
        result["overhead"] = round((result["bare"] - result["ours"]) / result["bare"], 3)
    if result["floor"] and result["bare"]:
        # What Ray Train's own processes cost the same loop on these cores: a floor under `overhead`.
        result["floor_overhead"] = round((result["bare"] - result["floor"]) / result["bare"], 3)
    if result["ours"] and result["floor"]:
        # What our stack (Ray Data feed, DeepSpeed, text filter, our loop) costs on top of Ray Train's floor.
        result["overhead_above_floor"] = round((result["floor"] - result["ours"]) / result["floor"], 3)
    result["load_after"] = load_average()
    result["workdir"] = str(work) if a.workdir else None
    if not a.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    say(f"[bench] ours {result['ours']} / peer {result['peer']} samples/s: ratio {result['ratio']} (goal >= 1.0); "
        f"bare {result['bare']} (spread {(result.get('bare_detail') or {}).get('spread')}): overhead "
        f"{result['overhead']} (goal <= 0.10), Ray Train's floor {result['floor_overhead']}, ours above the floor "
        f"{result['overhead_above_floor']}; "
        f"load {result['load_after']}")  # fmt: skip
    return result


def main(argv: list[str] | None = None, stage1: str | None = None) -> int:
    """`uniproto benchmark train`, or its child run of ours (argv[0] `_ours`; the bare loop's children are
    `pipelines.bench.bare`'s).
    `stage1`: the module whose `main(argv)` runs our stage 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_ours":
        return _ours_child(argv[1:])
    a = parse_args(argv)
    result = benchmark(
        a, say=(lambda *_a, **_k: None) if a.json else (lambda s: print(s, flush=True)), stage1=stage1
    )
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
