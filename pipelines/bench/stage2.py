"""`uniproto benchmark stage2`: the stage-2 feature pass's speed, and the driver's memory at 1x and Kx rows.

    python -m pipelines.bench.stage2 --config pipelines/configs/demo.yaml [--scale 10] [--set key=value ...]

On the config's dataset (`data.root`) and architecture, with freshly initialised weights (speed and memory do not
depend on what the weights learned), the train split is read at 1x and at `--scale` times its shard list:

* **ours**: `system.runtime.features` as stage 2 runs it: the feature pass (Ray Data batch inference, the actor pool
  sized from the cluster) materialized in the object store, then the class sums and the head's mean logits
  streamed over it. Images/s are over the feature pass (rows / its wall time, Ray start excluded).
  The two passes also give the pass's fixed start (actor pool start and model load) and its marginal rate
  (extra rows / extra seconds): `pass_start_s`, `marginal_images_per_s`.
* **gather** (the peer, what stage 2 did before): the same features concatenated in the driver's memory.

A short unmeasured feature pass over two shards runs first (Ray Data's and the stage-2 stack's imports in the
driver). The driver's RSS is sampled every 20 ms; each figure is its peak during the phase minus its value when
the phase started (MiB). A streaming stage 2 keeps `ours` flat from 1x to Kx; `gather` grows with the rows
(`features_mib` is the size of the features themselves). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class PeakRss:
    """The calling process's peak RSS above its value at entry (MiB), sampled in a thread."""

    def __init__(self, every_s: float = 0.02) -> None:
        import psutil

        self.proc, self.every_s = psutil.Process(), every_s
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    with PeakRss() as rss:
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    return out, wall, rss.mib


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="uniproto benchmark stage2", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="pipelines/configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--scale", type=int, default=10, help="the larger run reads the shard list this many times"
    )
    a = p.parse_args(argv)
    if a.scale < 2:
        p.error("--scale: at least 2")

    import ray
    import torch

    from system.config import load_config
    from system.data.dataset_dir import load_manifest
    from system.model.checkpoint import MODEL_FILE
    from system.model.factory import create_clip, embed_dim
    from system.runtime.cluster import init_ray
    from system.runtime.data import configure_data_context
    from system.runtime.features import class_sums, feature_dataset, feature_pool, mean_logits

    cfg = load_config(a.config, a.set)
    manifest = load_manifest(cfg.data.root)
    paths = manifest.shard_paths(cfg.data.root, "train")
    print(f"[bench] {init_ray(cfg)}", file=sys.stderr, flush=True)
    configure_data_context(cfg)
    torch.manual_seed(cfg.run.seed)
    model = create_clip(cfg.model.arch, None, cfg.data.image_size)
    dim, k = embed_dim(model), manifest.num_classes
    head = torch.nn.Linear(dim, k)
    out: dict[str, Any] = {
        "arch": cfg.model.arch,
        "image_size": cfg.data.image_size,
        "pool": vars(feature_pool(cfg, ray.cluster_resources())),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(Path(tmp) / MODEL_FILE)
        torch.save(model.state_dict(), weights)
        # Warm-up, not measured: the driver imports Ray Data's executor and the stage-2 stack once. (Every pass
        # still starts its own actor pool, which loads the model: that cost is in both measured passes.)
        feature_dataset(cfg, manifest, {"train": list(paths)[:2]}, weights).ds.materialize()
        for scale in (1, a.scale):
            run_paths = list(paths) * scale
            print(f"[bench] {scale}x: {len(run_paths)} shards", file=sys.stderr, flush=True)
            ds, feat_s, feat_mib = _measure(
                lambda p=run_paths: feature_dataset(cfg, manifest, {"train": p}, weights).ds.materialize()
            )
            rows = ds.count()
            _, reduce_s, reduce_mib = _measure(lambda ds=ds: (class_sums(ds, k, dim), mean_logits(ds, head)))

            def gather(ds=ds) -> int:
                feats = [b["feature"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
                return int(np.concatenate(feats).nbytes)

            nbytes, gather_s, gather_mib = _measure(gather)
            run = {
                "scale": scale,
                "rows": rows,
                "features_mib": round(nbytes / 2**20, 1),
                "images_per_s": round(rows / feat_s, 1),
                "ours_driver_peak_mib": round(max(feat_mib, reduce_mib), 1),
                "ours_feature_pass_mib": round(feat_mib, 1),
                "ours_reductions_mib": round(reduce_mib, 1),
                "gather_driver_peak_mib": round(gather_mib, 1),
                "feature_pass_s": round(feat_s, 2),
                "reductions_s": round(reduce_s, 2),
                "gather_s": round(gather_s, 2),
            }
            print(f"[bench] {json.dumps(run)}", file=sys.stderr, flush=True)
            out["runs"].append(run)
            del ds
    one, big = out["runs"]
    out["ours_growth_mib"] = round(big["ours_driver_peak_mib"] - one["ours_driver_peak_mib"], 1)
    out["gather_growth_mib"] = round(big["gather_driver_peak_mib"] - one["gather_driver_peak_mib"], 1)
    # A pass costs a fixed start (the pool's actors start and load the model) plus rows / rate: the two passes
    # give both. On a small dataset the fixed part dominates, so images_per_s at 1x understates the rate.
    extra_s = big["feature_pass_s"] - one["feature_pass_s"]
    rate = (big["rows"] - one["rows"]) / extra_s if extra_s > 0 else None
    out["marginal_images_per_s"] = round(rate, 1) if rate else None
    out["pass_start_s"] = round(one["feature_pass_s"] - one["rows"] / rate, 2) if rate else None
    ray.shutdown()
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
