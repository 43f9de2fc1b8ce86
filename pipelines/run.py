"""The whole pipeline as one Ray job: text filter -> prototypes -> sweep (stage 1 + stage 2 per trial) -> test.

    uniproto run --config pipelines/configs/demo.yaml [--set a.b=value ...]
    python -m pipelines.run --config ...                 (the form `ray job submit` uses)

Connects to RAY_ADDRESS (or ray.address) when set, otherwise starts a local Ray.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pipelines.common import parse_args, prepare_run
from system.finetune import shot_accuracy_at
from system.report import accuracy_table, plot_lambda_curves, plot_per_class, write_report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("uniproto run", __doc__, argv)
    ctx = prepare_run(args)  # config, dataset and search space are validated here, before Ray starts
    cfg, manifest, space, timer = ctx.cfg, ctx.manifest, ctx.space, ctx.timer

    import numpy as np

    from system.ray_cluster import init_ray
    from system.ray_sweep import load_branch_logits, run_sweep

    with timer("ray"):
        print(f"[uniproto] {init_ray(cfg)}", flush=True)
    shared = ctx.shared()
    with timer("sweep"):
        print(
            f"[uniproto] sweep over {list(space) or 'no parameters'}: stage 1 + stage 2 per trial", flush=True
        )
        trials = run_sweep(cfg, space, shared)
    ok = [t for t in trials if "error" not in t]
    if not ok:
        last_lines = [t["error"].strip().splitlines()[-1] for t in trials]
        raise RuntimeError(
            f"every trial failed; last error lines: {last_lines} (full errors in Ray's trial logs)"
        )

    with timer("evaluate"):
        # Selection on val (trial and lambda), then the report split is read once, for the chosen pair only.
        best = max(ok, key=lambda t: (t["val_top1"], -t["best_lambda"]))
        lam = best["best_lambda"]
        rep = load_branch_logits(best["path"], cfg.eval.report_split)
        thr = (cfg.eval.many_threshold, cfg.eval.few_threshold)
        counts = manifest.train_counts
        results = {
            f"blended (lambda={lam:.2f})": shot_accuracy_at(rep, lam, counts, cfg.eval),
            "learnable head (lambda=0)": shot_accuracy_at(rep, 0.0, counts, cfg.eval),
            "class-mean prototypes (lambda=1)": shot_accuracy_at(rep, 1.0, counts, cfg.eval),
        }
        final = next(iter(results.values()))
        plot_per_class(
            ctx.run_dir / "per_class_accuracy.png",
            counts,
            final["per_class"],
            thr,
            f"{cfg.run.name}: per-class {cfg.eval.report_split} top-1, lambda={lam:.2f}",
        )
        curves = []
        for t in ok:
            z = np.load(Path(t["path"]) / "logits.npz")
            curves.append((str(t["params"]), z["lambda_grid"], z["lambda_curve"]))
        plot_lambda_curves(ctx.run_dir / "lambda_curves.png", curves, (lam, best["val_top1"]))

    report = {
        "run": cfg.run.name,
        "overall": final["overall"],
        "many": final["many"],
        "medium": final["medium"],
        "few": final["few"],
        "report_split": cfg.eval.report_split,
        "select_split": cfg.eval.select_split,
        "thresholds": list(thr),
        "selection": {"params": best["params"], "lambda": lam, "val_top1": best["val_top1"]},
        "results": {k: {g: v[g] for g in ("overall", "many", "medium", "few")} for k, v in results.items()},
        "per_class": final["per_class"],
        "train_counts": counts,
        "class_names": manifest.class_names,
        "trials": [{k: v for k, v in t.items() if k != "path"} for t in trials],
        "text_filter": {k: v for k, v in ctx.text_report.items() if k != "per_class"},
        "text_filter_per_class": ctx.text_report["per_class"],
        "prototypes": ctx.prototype_stats,
        "dataset": ctx.dataset_summary(),
        "stage_seconds": dict(timer.seconds),
        "config": cfg.to_dict(),
    }
    report["stage_seconds"]["total"] = time.perf_counter() - ctx.t_start
    write_report(ctx.run_dir, report)
    print(
        f"\n[uniproto] {cfg.run.name}: top-1 on {cfg.eval.report_split} (chosen on {cfg.eval.select_split})"
    )
    print(accuracy_table(report["results"]))
    print(
        f"[uniproto] report: {ctx.run_dir / 'report.md'} (+ report.json, per_class_accuracy.png, lambda_curves.png)"
    )
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
