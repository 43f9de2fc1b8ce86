"""`uniproto benchmark data`: our Ray Data input pipeline against webdataset + a torch DataLoader, data only.

    uniproto benchmark data --shards SPEC [--cpus N] [--batches B] [--image-size S] [--scale K] [--json]
    uniproto benchmark data --make-shards DIR --samples N      # a photo-sized throughput dataset

Two runs on the same shards, in the same shard order, one after the other, each in its own process tree pinned
to the same N cores (CPU affinity), repeated for `--repeats` rounds (default 2) in alternating order (peer,
ours, ours, peer, ...: a machine whose speed drifts favours neither side; figures are the means, each run's
images/s and each round's ratio are in the JSON), each producing the training's batches (uint8 images
[b, S, S, 3], tokens [b, L], labels [b]) with no model behind them:

* **ours**: `system.runtime.data.train_dataset` exactly as stage 1 builds it (read_webdataset raw bytes -> decode +
  random-resized crop + flip in `map_batches` -> text pairing + tokenization in the TextPairer actor pool), on
  a local Ray started with N logical CPUs, consumed with `iter_torch_batches` at the training micro batch with
  the training's local shuffle buffer.
* **peer**: webdataset's own pipeline: `wds.WebDataset(urls, shardshuffle=False)` over the same epoch-ordered
  shard list -> `.shuffle(buffer)` -> per-sample decode + crop + flip (`--peer-decode same`: our
  `decode_image`, JPEG draft included; `pil`: webdataset's `.decode("pil")` full decode, then the same crop) ->
  `.batched(b)` -> the same TextPairer (choice + tokenizer) -> a torch `DataLoader(num_workers=N)`.

Class resampling is off in both (`data.resample=none`): it changes which rows repeat, not what a row costs, and
keeping it off makes images/s the same quantity on both sides. Throughput is steady state: the first
`--warmup` batches are excluded, and with them everything before them (interpreter and Ray start-up, pipeline
planning, actor and DataLoader worker start). Ray Data keeps decoding while the driver starts up, so the first
batches come out of a buffer: the default windows (30 warm-up + 150 timed batches of 64) keep that buffer a
small share of the timed rows; a short window overstates ours. CPU-seconds per 1,000 images are over the same steady window,
summed over every process of the tree (Ray's gcs, raylet and workers; the DataLoader workers) from psutil
before and after it. Peak RSS is sampled (every 0.5 s) over the whole tree and the whole run; it sums the
processes, so pages they share (Ray's object store) count once per process.

Multi-process pipelines take a larger share of contended cores than their fair one (ours starts more processes
than the peer): images/s under a load average above the core count is noise; CPU-s per 1k images is the
steadier figure. `--set` passes config overrides to both runs (data.decode_cpus, data.filter_actor_cpus,
data.decode_batch_size, data.filter_actors: the knobs of our pipeline, used by training as well).

`--scale K` runs ours again over K times the shard list (each shard K times, in a new order each pass) to the
end, and reports peak RSS at 1x and Kx: a streaming pipeline's memory does not grow with the data.
The last line printed is one JSON object (`ours`, `peer`, `ratio` = ours / peer of the means, `ratio_runs` (per
round), `ours_runs` / `peer_runs`, `cpu_s_per_1k`, `peak_rss_mb`, each run's details and the load average
before and after it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.bench.inputs import resolve
from pipelines.bench.procs import base_env, cpu_set, load_average, run_tree
from pipelines.bench.stats import round_orders, runs_summary

RESULT_PREFIX = "[bench] data "


# --------------------------------------------------------------------------------------------- measuring


def tree_cpu_seconds(pid: int | None = None) -> dict[int, float]:
    """user + system CPU seconds of a process and all its descendants, by pid."""
    import psutil

    root = psutil.Process(pid or os.getpid())
    out: dict[int, float] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots: processes started in between count from zero."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


def steady_state(batches, warmup: int, limit: int | None) -> dict[str, float]:
    """Consume `batches`; time and count images after the first `warmup` ones (all the rest when limit is
    None). CPU seconds of this process tree over the same window: the closing snapshot is taken before the
    iterator is let go, since a DataLoader shuts its workers down (and their CPU times vanish) when it is."""
    n_images = seen = 0
    t0 = t1 = cpu0 = cpu1 = None
    for batch in batches:
        seen += 1
        if seen == warmup:
            t0, cpu0 = time.perf_counter(), tree_cpu_seconds()
        elif t0 is not None:
            n_images += int(batch["label"].shape[0])
            if limit is not None and seen >= warmup + limit:
                t1, cpu1 = time.perf_counter(), tree_cpu_seconds()
                break
    if t0 is None or cpu0 is None or n_images == 0:
        raise RuntimeError(f"the stream ended after {seen} batches, within the {warmup} warm-up batches")
    if t1 is None or cpu1 is None:  # the stream ended first (limit None): workers that exited are not counted
        t1, cpu1 = time.perf_counter(), tree_cpu_seconds()
    cpu = cpu_delta(cpu0, cpu1)
    return {
        "images_per_s": n_images / (t1 - t0),
        "images": n_images,
        "batches": seen - warmup,
        "seconds": t1 - t0,
        "cpu_s": cpu,
        "cpu_s_per_1k": 1000 * cpu / n_images,
    }


# --------------------------------------------------------------------------------------------- the runs


def bench_config(spec: dict[str, Any]):
    """The training config both sides share: dataset, image size, batch, augmentation on, resampling off."""
    from system.config import config_from_dict

    sets = {
        "run.seed": spec["seed"],
        "data.root": spec["root"],
        "data.image_size": spec["image_size"],
        "data.augment": True,
        "data.resample": "none",
        "train.micro_batch_size": spec["batch"],
        "train.epochs": spec["epochs"],
        "ray.num_cpus": spec["cpus"],
        "ray.data_progress_bars": False,
        "sweep.space": None,
        **spec.get("sets", {}),
    }
    return config_from_dict({}, sets)


def _inputs(spec: dict[str, Any]):
    from system.data.dataset_dir import load_manifest
    from system.text.prepare import prepare_text_pools

    cfg = bench_config(spec)
    manifest = load_manifest(cfg.data.root)
    pools, _ = prepare_text_pools(cfg.data, manifest)
    return cfg, manifest, pools


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Our stage-1 stream, consumed the way a Train worker consumes its shard of it."""
    from system.model.schedule import stage1_schedule
    from system.runtime.cluster import init_ray
    from system.runtime.data import configure_data_context, train_batches, train_dataset

    cfg, manifest, pools = _inputs(spec)
    init_ray(cfg)
    configure_data_context(cfg)
    schedule = stage1_schedule(cfg.train, int(sum(manifest.train_counts)))
    ds = train_dataset(cfg, schedule, manifest, spec["paths"], pools)
    return steady_state(train_batches(ds, cfg), spec["warmup"], spec["batches"] or None)


class PeerPairing:
    """The peer's text stage: our TextPairer (caption choice + tokenizer), built once per loader worker."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs, self.pairer = kwargs, None

    def __call__(self, batch):
        import numpy as np

        from system.text.pairing import TextPairer

        if self.pairer is None:
            self.pairer = TextPairer(**self.kwargs)
        images, labels, captions = batch
        out = self.pairer({"image": images, "label": labels, "caption": np.asarray(captions, dtype=object)})
        return out


def peer_sample(size: int, aug):
    """The peer's per-sample map -> (image uint8 [S, S, 3], label, caption). Each row's crop comes from the same
    kind of per-row generator as ours (run seed, shard, key, and this worker's pass over that shard)."""
    from system.data.augment import decode_image, row_rng

    passes: dict[tuple[str, str], int] = {}

    def fn(sample: dict[str, Any]):
        url, key = str(sample.get("__url__", "")), str(sample["__key__"])
        n = passes[url, key] = passes.get((url, key), -1) + 1
        meta = sample["json"]
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta  # raw bytes, or .decode()'s dict
        caption = sample.get("txt", b"")
        caption = caption.decode("utf-8", "replace") if isinstance(caption, bytes) else str(caption)
        image = decode_image(sample["jpg"], size, aug, row_rng(aug.seed, url, key, position=n))
        return image, int(meta["label"]), caption.strip()

    return fn


def _collate(samples):
    import numpy as np

    images, labels, captions = zip(*samples, strict=True)
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(captions)  # [b, S, S, 3], [b], [b]


def run_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """webdataset + DataLoader over the same epoch-ordered shard list, with the same per-row work."""
    import torch
    import webdataset as wds

    from system.runtime.data import epoch_shard_order, train_augment

    cfg, manifest, pools = _inputs(spec)
    torch.set_num_threads(1)
    urls = epoch_shard_order(list(spec["paths"]), cfg.train.epochs, cfg.run.seed)
    aug = train_augment(cfg)
    pairing = PeerPairing(
        {
            "pools": pools,
            "class_names": manifest.class_names,
            "arch": cfg.model.arch,
            "scorer": cfg.data.text_scorer,
            "threshold": cfg.data.filter_threshold,
            "caption_prob": cfg.data.caption_prob,
            "seed": cfg.run.seed,
        }
    )
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    if cfg.data.shuffle_buffer:
        ds = ds.shuffle(cfg.data.shuffle_buffer)
    if spec["peer_decode"] == "pil":
        ds = ds.decode("pil")
    ds = ds.map(peer_sample(cfg.data.image_size, aug))
    ds = ds.batched(cfg.train.micro_batch_size, collation_fn=_collate, partial=False).map(pairing)
    workers = spec["cpus"]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None
    )
    return steady_state(loader, spec["warmup"], spec["batches"] or None)


RUNNERS = {"ours": run_ours, "peer": run_peer}


def _child(argv: list[str]) -> int:
    """Child process: one run, its figures printed as one prefixed JSON line."""
    which, spec = argv[0], json.loads(argv[1])
    out = RUNNERS[which](spec)
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------------------------- driver


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="uniproto benchmark data",
        description="Our Ray Data input pipeline vs webdataset + DataLoader (images/s, ratio, CPU-s per 1k "
        "images, peak RSS). Last line: one JSON object.",
    )
    p.add_argument("--shards", help="dataset dir (manifest.json; its train split) or shard spec/glob")
    p.add_argument("--cpus", type=int, default=None, help="cores for both runs (default: all available)")
    p.add_argument("--batches", type=int, default=150, help="timed batches after the warm-up")
    p.add_argument(
        "--warmup", type=int, default=30, help="batches excluded (start-up, and the rows buffered meanwhile)"
    )
    p.add_argument("--batch", type=int, default=None, help="batch size (default: train.micro_batch_size)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=None, help="also run ours over K x the shards: peak RSS")
    p.add_argument("--peer-decode", choices=["same", "pil"], default="same")
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="rounds of both runs, alternating their order (peer, ours, ours, peer, ...); figures are means",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        help="a config override for both runs (data.decode_batch_size=256, data.filter_actors=2, ...)",
    )
    p.add_argument("--only", choices=sorted(RUNNERS), action="append", help="run a subset")
    p.add_argument("--workdir", help="keep logs here (default: a temporary dir, removed)")
    p.add_argument("--verbose", action="store_true", help="echo the runs' own output")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--make-shards", metavar="DIR", help="write a photo-sized throughput dataset and exit")
    p.add_argument("--samples", type=int, default=2000, help="--make-shards: number of images")
    p.add_argument("--sizes", default="256,384", help="--make-shards: min,max image side in px")
    p.add_argument("--per-shard", type=int, default=125, help="--make-shards: images per shard")
    a = p.parse_args(argv)
    if not a.make_shards and not a.shards:
        p.error("one of --shards or --make-shards is required")
    if a.warmup < 1 or a.batches < 1 or a.repeats < 1:
        p.error("--warmup, --batches and --repeats must be >= 1")
    return a


def _overrides(sets: list[str]) -> dict[str, Any]:
    from system.config import parse_override

    return {".".join(k): v for k, v in map(parse_override, sets)}


def make_shards(a: argparse.Namespace, say=print) -> dict[str, Any]:
    from pipelines.bench.shards import make_bench_shards

    lo, hi = (int(x) for x in a.sizes.split(","))
    t0 = time.perf_counter()
    m = make_bench_shards(
        a.make_shards, a.samples, sizes=(lo, hi), samples_per_shard=a.per_shard, seed=a.seed
    )
    shards = m.shard_paths(a.make_shards, "train")
    size = sum(os.path.getsize(s) for s in shards)
    out = {"dir": str(Path(a.make_shards).resolve()), "samples": m.splits["train"].num_samples,
           "shards": len(shards), "mb": round(size / 2**20, 1), "classes": m.num_classes,
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    say(f"[bench] wrote {out['samples']} images ({lo}-{hi} px JPEG, {out['mb']} MB) in {out['shards']} shards "
        f"to {out['dir']} in {out['seconds']} s")  # fmt: skip
    return out


def _run(which: str, spec: dict[str, Any], cpus: list[int], work: Path, tag: str, verbose: bool) -> dict:
    cmd = [sys.executable, "-m", "pipelines.bench.data", "_child", which, json.dumps(spec)]
    log = work / f"{tag}.log"
    load = load_average()
    usage = run_tree(cmd, base_env(1), cpus, log, verbose)
    text = log.read_text()
    line = next((x for x in reversed(text.splitlines()) if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"{tag}: no result line in {log}")
    return {
        **json.loads(line[len(RESULT_PREFIX) :]),
        **usage,
        "load_before": load,
        "load_after": load_average(),
    }


def benchmark(a: argparse.Namespace, say=print) -> dict[str, Any]:
    cpus = cpu_set(a.cpus or len(os.sched_getaffinity(0)))
    n = len(cpus)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="uniproto-bench-data-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root, paths, num_samples = resolve(a.shards, work)
    sets = _overrides(a.set)
    batch = (
        a.batch
        or int(sets.get("train.micro_batch_size", 0))
        or bench_config(
            {"seed": 0, "root": root, "image_size": a.image_size, "batch": 64, "epochs": 1, "cpus": n}
        ).train.micro_batch_size
    )
    # Passes over the shards: every worker still has rows when the timed window closes (a worker that has run
    # dry exits, and its CPU time would leave the after-snapshot).
    needed = 2 * (a.warmup + a.batches + 4 * n) * batch
    spec = {
        "root": root,
        "paths": paths,
        "seed": a.seed,
        "image_size": a.image_size,
        "batch": batch,
        "cpus": n,
        "epochs": max(1, math.ceil(needed / max(num_samples, 1))),  # passes over the shards: enough rows
        "warmup": a.warmup,
        "batches": a.batches,
        "peer_decode": a.peer_decode,
        "sets": sets,
    }
    bench_config(spec)  # a bad --set fails here, before any run
    result: dict[str, Any] = {
        "ours": None,
        "peer": None,
        "ratio": None,
        "cpu_s_per_1k": {},
        "peak_rss_mb": {},
        "cpus": n,
        "batch": batch,
        "image_size": a.image_size,
        "train_samples": num_samples,
        "shards": len(paths),
        "passes": spec["epochs"],
        "warmup_batches": a.warmup,
        "timed_batches": a.batches,
        "peer_decode": a.peer_decode,
        "sets": sets,
        "repeats": a.repeats,
        "load_before": load_average(),
    }
    say(f"[bench] data: {n} cores {cpus}, {num_samples} samples in {len(paths)} shards x {spec['epochs']} "
        f"passes, {a.image_size} px, batch {batch}, {a.warmup} warm-up + {a.batches} timed batches, "
        f"load {result['load_before']}")  # fmt: skip
    labels = {
        "ours": f"ours (Ray Data, {n} logical CPUs: read -> decode+augment -> TextPairer pool)",
        "peer": f"peer (webdataset + DataLoader, {n} workers, decode {a.peer_decode})",
    }
    sides = [w for w in ("peer", "ours") if w in (a.only or RUNNERS)]
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in sides}
    for r, order in enumerate(round_orders(a.repeats, sides)):
        for which in order:
            tag = which if a.repeats == 1 else f"{which}-{r + 1}"
            run = _run(which, spec, cpus, work, tag, a.verbose)
            runs[which].append(run)
            say(f"[bench] {labels[which]}{f' (round {r + 1}/{a.repeats})' if a.repeats > 1 else ''}: "
                f"{run['images_per_s']:.1f} images/s ({run['images']} images in {run['seconds']:.1f} s), "
                f"{run['cpu_s_per_1k']:.2f} CPU-s per 1k images, peak RSS {run['peak_rss_mb']} MB, run "
                f"{run['wall_s']} s / {run['cpu_s']} CPU-s in all, load {run['load_before']} -> "
                f"{run['load_after']}")  # fmt: skip
    result.update(combine_rounds(runs))
    if a.scale and a.scale > 1:
        result["memory"] = memory_scaling(spec, a.scale, cpus, work, a.verbose, num_samples, say)
    result["load_after"] = load_average()
    if not a.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    rounds = f", per round {result['ratio_runs']}" if a.repeats > 1 and result["ratio_runs"] else ""
    say(f"[bench] data: ours {result['ours']} / peer {result['peer']} images/s: ratio {result['ratio']}{rounds} "
        f"(goal >= 1.0 at 2 CPUs); load {result['load_after']} (figures under load are noisy)")  # fmt: skip
    return result


def combine_rounds(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each side's figures over its rounds: mean images/s and CPU-s per 1k images, the largest peak RSS, each
    run's images/s with their spread; the ratio of the means, and each round's own ratio."""
    out: dict[str, Any] = {"cpu_s_per_1k": {}, "peak_rss_mb": {}, "ratio": None, "ratio_runs": []}
    for side, side_runs in runs.items():
        speed = runs_summary([r["images_per_s"] for r in side_runs])
        out[side] = round(speed["mean"], 1)
        out[f"{side}_runs"] = [round(r["images_per_s"], 1) for r in side_runs]
        out[f"{side}_spread"] = round(speed["spread"], 3)
        out["cpu_s_per_1k"][side] = round(sum(r["cpu_s_per_1k"] for r in side_runs) / len(side_runs), 2)
        out["peak_rss_mb"][side] = max(r["peak_rss_mb"] for r in side_runs)
        out[f"{side}_detail"] = side_runs
    if out.get("ours") and out.get("peer"):
        out["ratio"] = round(out["ours"] / out["peer"], 3)
        pairs = zip(runs["ours"], runs["peer"], strict=True)
        out["ratio_runs"] = [round(o["images_per_s"] / p["images_per_s"], 3) for o, p in pairs]
    return out


def memory_scaling(
    spec: dict[str, Any], scale: int, cpus: list[int], work: Path, verbose: bool, num_samples: int, say=print
) -> dict[str, Any]:
    """Ours over the whole shard list once and `scale` times, to the end: peak RSS of each."""
    out: dict[str, Any] = {"scale": scale}
    for k in (1, scale):
        run = {**spec, "epochs": k, "batches": 0, "warmup": 1}
        r = _run("ours", run, cpus, work, f"ours-x{k}", verbose)
        out[f"x{k}"] = {"images": r["images"] + spec["batch"], "peak_rss_mb": r["peak_rss_mb"],
                        "images_per_s": round(r["images_per_s"], 1), "wall_s": r["wall_s"]}  # fmt: skip
        say(f"[bench] memory: ours over {k} x {num_samples} samples: peak RSS {r['peak_rss_mb']} MB "
            f"({r['images'] + spec['batch']} images, {r['wall_s']} s)")  # fmt: skip
    out["rss_growth"] = round(out[f"x{scale}"]["peak_rss_mb"] / max(out["x1"]["peak_rss_mb"], 1e-9), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_child":
        return _child(argv[1:])
    a = parse_args(argv)
    say = (lambda *_a, **_k: None) if a.json else (lambda s: print(s, flush=True))
    result = make_shards(a, say) if a.make_shards else benchmark(a, say)
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
