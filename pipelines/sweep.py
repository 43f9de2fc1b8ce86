"""A Ray Tune sweep over the pipeline, then the chosen trial on the report split.

    uniproto sweep --config pipelines/configs/demo.yaml --space tune_spaces/proto_temperature.yaml [--samples N]
    python -m pipelines.sweep --config ...               (the form `ray job submit` uses)

Each trial runs stage 1 (Ray Train + DeepSpeed) and stage 2 and evaluates the whole lambda curve on val.
Running the same command again resumes an interrupted sweep. Outputs in <run dir>: results.csv/.md,
sweep_<param>.png, lambda_curves.png, sweep_efficiency.png, best.yaml and the test report (report.json/.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.common import RunContext, parse_args, prepare_run
from system.method.finetune import shot_accuracy_at
from system.reports.format import fmt
from system.reports.report import (
    accuracy_table,
    plot_geometry,
    plot_lambda_curves,
    plot_per_class,
    plot_positive_bias,
    write_report,
)


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", help="search space YAML (sets sweep.space)")
    p.add_argument(
        "--samples", type=int, help="samples per grid point, or optuna trials (sets sweep.num_samples)"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("uniproto sweep", __doc__, argv, extra=_sweep_args)
    if args.space:
        args.set.append(f"sweep.space={args.space}")
    if args.samples is not None:
        args.set.append(f"sweep.num_samples={args.samples}")
    return run_pipeline(prepare_run(args))


def run_pipeline(ctx: RunContext) -> dict[str, Any]:
    """Sweep (stage 1 + stage 2 per trial), select on val, report on test; write every output."""
    import numpy as np

    from system.reports import sweep as sr
    from system.runtime.cluster import init_ray
    from system.runtime.sweep import geometry_before, load_branch_logits, run_sweep

    cfg, manifest, space, timer, run_dir = ctx.cfg, ctx.manifest, ctx.space, ctx.timer, ctx.run_dir
    with timer("ray"):
        print(f"[uniproto] {init_ray(cfg)}", flush=True)
    inputs = ctx.stage_inputs()
    with timer("geometry before stage 1"):
        before = geometry_before(cfg, inputs)
        g = before["summary"]
        print(
            f"[uniproto] class centroids before stage 1: head-tail distance {fmt(g['head_tail'], 3)}, "
            f"tail-tail {fmt(g['tail_tail'], 3)}",
            flush=True,
        )
    with timer("sweep"):
        print(
            f"[uniproto] sweep over {list(space) or 'no parameters'} ({cfg.sweep.search} search, "
            f"{cfg.sweep.scheduler} scheduler): stage 1 + stage 2 per trial",
            flush=True,
        )
        out = run_sweep(cfg, space, inputs, run_dir)
    trials, info = out["trials"], out["sweep"]
    ok = [t for t in trials if t["status"] == "completed"]
    if not ok:
        last_lines = [t.get("error", t["status"]).strip().splitlines()[-1] for t in trials]
        raise RuntimeError(
            f"no trial completed; last error lines: {last_lines} (full errors in Ray's trial logs)"
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
            run_dir / "per_class_accuracy.png",
            counts,
            final["per_class"],
            thr,
            f"{cfg.run.name}: per-class {cfg.eval.report_split} top-1, lambda={lam:.2f}",
        )
        curves = []
        for t in ok:
            z = np.load(Path(t["path"]) / "logits.npz")
            curves.append(
                (f"{t['trial_id']} {sr.param_label(t['params'])}", z["lambda_grid"], z["lambda_curve"])
            )
        plot_lambda_curves(run_dir / "lambda_curves.png", curves, (lam, best["val_top1"]))
        z = np.load(Path(best["path"]) / "logits.npz")
        plot_geometry(
            run_dir / "feature_geometry.png",
            counts,
            before["nearest"],
            z["nearest_centroid"],
            thr,
            f"class centroids, nearest neighbour: tail-tail / head-tail "
            f"{fmt(before['summary']['tail_over_head_tail'], 2)} before -> "
            f"{fmt(best['geometry_after']['tail_over_head_tail'], 2)} after stage 1",
        )
        weight_norm = z["weight_norm"] if "weight_norm" in z else None
        plot_positive_bias(run_dir / "positive_bias.png", counts, weight_norm, z["mean_logit"], thr)
        bias = {
            "weight_norm_vs_count_spearman": _spearman(weight_norm, counts),
            "mean_logit_vs_count_spearman": _spearman(z["mean_logit"], counts),
            "weight_norm": weight_norm,
            "mean_logit": z["mean_logit"],
        }
        sr.write_results_csv(run_dir / "results.csv", trials)
        eff = sr.efficiency(trials, info["wall_s"])
        sr.plot_efficiency(run_dir / "sweep_efficiency.png", eff)
        plots = sr.plot_metric_vs_params(run_dir, trials, space)
        best_cfg = sr.best_config(cfg.to_dict(), best["params"], lam, f"{cfg.run.name}-best")
        sr.write_best_yaml(run_dir / "best.yaml", best_cfg)

    sweep_md = sr.results_markdown(trials)
    (run_dir / "results.md").write_text(
        f"# Sweep `{cfg.run.name}`\n\nSelected on `{cfg.eval.select_split}`.\n\n{sweep_md}\n\n"
        f"## Efficiency\n\n{sr.efficiency_markdown(eff)}\n\n![efficiency](sweep_efficiency.png)\n"
    )
    report = {
        "run": cfg.run.name,
        "overall": final["overall"],
        "many": final["many"],
        "medium": final["medium"],
        "few": final["few"],
        "report_split": cfg.eval.report_split,
        "select_split": cfg.eval.select_split,
        "thresholds": list(thr),
        "selection": {
            "trial_id": best["trial_id"],
            "params": best["params"],
            "lambda": lam,
            "val_top1": best["val_top1"],
            "head_l2": best.get("head_l2"),  # the convex head's L2 strength, chosen on val (None: sgd fit)
        },
        "results": {k: {g: v[g] for g in ("overall", "many", "medium", "few")} for k, v in results.items()},
        "per_class": final["per_class"],
        "train_counts": counts,
        "class_names": manifest.class_names,
        "trials": [{k: v for k, v in t.items() if k != "path"} for t in trials],
        "sweep": info | {"efficiency": eff, "plots": plots},
        "sweep_markdown": sweep_md,
        "feature_geometry": {"before": before["summary"], "after": best["geometry_after"]},
        "positive_bias": bias,
        "text_filter": {k: v for k, v in ctx.text_report.items() if k != "per_class"},
        "text_filter_per_class": ctx.text_report["per_class"],
        "prototypes": ctx.prototype_stats,
        "dataset": ctx.dataset_summary(),
        # per split: good samples, skipped by reason, failed shards (stage 2 reads each split once)
        "data": best.get("data"),
        "stage_seconds": dict(timer.seconds),
        "config": cfg.to_dict(),
    }
    report["stage_seconds"]["total"] = time.perf_counter() - ctx.t_start
    write_report(run_dir, report)
    print(f"\n[uniproto] {cfg.run.name}: sweep on {cfg.eval.select_split}\n{sweep_md}")
    print(f"[uniproto] {sr.efficiency_markdown(eff)}")
    print(
        f"\n[uniproto] {cfg.run.name}: top-1 on {cfg.eval.report_split} (chosen on {cfg.eval.select_split})"
    )
    print(accuracy_table(report["results"]))
    print(
        f"[uniproto] report: {run_dir / 'report.md'} (+ report.json, results.csv/.md, best.yaml, "
        f"per_class_accuracy.png, lambda_curves.png, feature_geometry.png, positive_bias.png, "
        f"sweep_efficiency.png{''.join(', ' + p for p in plots)})"
    )
    return report


def _spearman(values, counts) -> float | None:
    """Rank correlation with the train counts (1: the larger the class, the larger the value)."""
    if values is None or len(set(counts)) < 2:
        return None
    from scipy.stats import spearmanr

    r = float(spearmanr(values, counts).statistic)
    return None if math.isnan(r) else r


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
