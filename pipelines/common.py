"""What every pipeline does before Ray starts: parse args, validate config and dataset, set up the run dir."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system.config import Config, load_config, save_config
from system.data.dataset_dir import Manifest, load_manifest
from system.experiments.spaces import load_space
from system.runtime.stage_inputs import StageInputs


def parse_args(prog: str, doc: str | None, argv: list[str] | None, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=(doc or "").strip().splitlines()[0] if doc else None
    )
    add_config_args(parser)
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    if args.verbose:
        args.set.append("run.verbose=true")
    return args


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (sections: run, data, model, loss, optim, train, ...)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=3",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="third-party INFO logs (Ray, DeepSpeed, open_clip) and Tune's status table (run.verbose=true)",
    )


class StageTimer:
    """Wall time per named stage, printed as it goes so long runs show progress."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        print(f"[uniproto] >> {name}", flush=True)
        yield
        self.seconds[name] = time.perf_counter() - t0
        print(f"[uniproto] << {name} done in {self.seconds[name]:.1f}s", flush=True)


@dataclass
class RunContext:
    cfg: Config
    manifest: Manifest
    run_dir: Path
    t_start: float
    timer: StageTimer
    text_report: dict[str, Any] = field(default_factory=dict)
    pools: dict[int, list[str]] = field(default_factory=dict)
    prototypes: Any = None
    prototype_stats: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)  # sweep.space parsed and validated

    def storage_path(self) -> str:
        return self.cfg.ray.storage_path or str((self.run_dir / "ray").resolve())

    def stage_inputs(self) -> StageInputs:
        """What every trial and worker needs, passed through Ray (no driver-local paths on workers)."""
        root = self.cfg.data.root
        return StageInputs(
            manifest=self.manifest,
            paths={
                s: self.manifest.shard_paths(root, s)
                for s in ("train", self.cfg.eval.select_split, self.cfg.eval.report_split)
            },
            storage_path=self.storage_path(),
            pools=self.pools,
            prototypes=self.prototypes,
            prototype_stats=self.prototype_stats,
            prototype_seed=self.cfg.run.seed,  # trials with another run.seed draw their own
        )

    def dataset_summary(self) -> dict[str, Any]:
        counts = self.manifest.train_counts
        return {
            "root": self.cfg.data.root,
            "name": self.manifest.name,
            "num_classes": self.manifest.num_classes,
            "train_samples": int(sum(counts)),
            "imbalance": max(counts) / max(min(counts), 1),
            "splits": {s: info.num_samples for s, info in self.manifest.splits.items()},
        }


def prepare_run(args: argparse.Namespace, need_prototypes: bool = True) -> RunContext:
    """Validate everything that can be validated without Ray, then build the driver-side inputs."""
    t_start = time.perf_counter()
    cfg = load_config(args.config, args.set)
    space = load_space(cfg.sweep.space, cfg) if cfg.sweep.space else {}
    manifest = load_manifest(cfg.data.root)
    for split in ("train", cfg.eval.select_split, cfg.eval.report_split):
        manifest.shard_paths(cfg.data.root, split)  # raises naming the split when the dataset lacks it
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    print(
        f"[uniproto] run {cfg.run.name}: dir {run_dir}, dataset {cfg.data.root} ({manifest.num_classes} classes)",
        flush=True,
    )
    ctx = RunContext(cfg, manifest, run_dir, t_start, StageTimer(), space=space)

    from system.text.prepare import prepare_text_pools
    from system.text.scorers import scorer_options

    with ctx.timer("text filter"):
        ctx.pools, ctx.text_report = prepare_text_pools(cfg.data, manifest, scorer_options(cfg))
        q = ctx.text_report.get("quality")
        extra = (
            f", boilerplate-drop precision {q['precision']:.3f} recall {q['recall']:.3f}"
            if q and q["precision"] is not None
            else ""
        )
        print(
            f"[uniproto] text filter kept {ctx.text_report['kept']} / dropped {ctx.text_report['dropped']} sentences{extra}",
            flush=True,
        )
    if need_prototypes:
        from system.method.class_prototypes import make_class_prototypes

        with ctx.timer("prototypes"):
            ctx.prototypes, ctx.prototype_stats = make_class_prototypes(cfg, manifest.class_names)
            s = ctx.prototype_stats
            print(
                f"[uniproto] {s['num_classes']} prototypes in {s['dim']}-d: pairwise cos min {s['min_cos']:.4f} max {s['max_cos']:.4f}",
                flush=True,
            )
    return ctx
