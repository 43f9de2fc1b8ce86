"""`uniproto` console script: one entry point, a subcommand per job (registry, not an if-chain)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable

from system.config import ConfigError
from system.data.dataset_dir import DatasetError


def _make_demo_data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="uniproto make-demo-data", description="Render the embedded long-tailed dataset."
    )
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--imbalance", type=float, default=100.0, help="n_max / n_min")
    p.add_argument("--n-max", type=int, default=300, help="train images of the most frequent class")
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, default=30)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--samples-per-shard", type=int, default=100, help="small shards: Ray reads one shard per task"
    )
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    from system.data.demo_data import make_demo_dataset

    t0 = time.perf_counter()
    m = make_demo_dataset(
        a.out,
        num_classes=a.classes,
        imbalance=a.imbalance,
        n_max=a.n_max,
        val_per_class=a.val_per_class,
        test_per_class=a.test_per_class,
        image_size=a.image_size,
        seed=a.seed,
        overwrite=a.overwrite,
        samples_per_shard=a.samples_per_shard,
    )
    summary = {s: i.num_samples for s, i in m.splits.items()}
    print(
        json.dumps(
            {
                "out": a.out,
                "classes": m.num_classes,
                "splits": summary,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0


def _pipeline(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        importlib.import_module(f"pipelines.{module}").main(argv)
        return 0

    return run


def _prototypes(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="uniproto prototypes",
        description="Uniform class prototypes on the sphere; last line is JSON stats.",
    )
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps (only used when K > d+1)")
    p.add_argument("--out", help="write the [K, d] float32 array here (.npy); row c is class c's prototype")
    a = p.parse_args(argv)
    import numpy as np

    from system.prototypes import prototype_method, prototype_stats, uniform_prototypes

    t0 = time.perf_counter()
    protos = uniform_prototypes(a.num_classes, a.dim, seed=a.seed, steps=a.steps)  # [K, d]
    seconds = time.perf_counter() - t0
    stats = {k: float(v) for k, v in prototype_stats(protos).items()}
    method = prototype_method(a.num_classes, a.dim)
    if a.out:
        np.save(a.out, protos.numpy().astype(np.float32))
    print(json.dumps({**stats, "seconds": round(seconds, 3), "method": method, "out": a.out}))
    return 0


def _models(argv: list[str]) -> int:
    from system.models import list_architectures

    print("\n".join(list_architectures()))
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "make-demo-data": (_make_demo_data, "render the embedded long-tailed image-text dataset"),
    "run": (_pipeline("run"), "the whole pipeline: text filter, stage 1 + stage 2 sweep, test report"),
    "pretrain": (_pipeline("pretrain"), "stage 1 alone (Ray Data + Ray Train + DeepSpeed)"),
    "finetune": (_pipeline("finetune"), "stage 2 + evaluation from a stage-1 checkpoint"),
    "prototypes": (_prototypes, "uniform class prototypes (simplex ETF or optimised) with their geometry"),
    "models": (_models, "list open_clip architectures (ours included)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: uniproto <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except ConfigError as e:
        print(f"uniproto: config error: {e}", file=sys.stderr)
        return 2
    except DatasetError as e:
        print(f"uniproto: dataset error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
