"""Sweep outputs: results table (CSV + Markdown), metric-vs-parameter and efficiency plots, and best.yaml.

Plain Python over the trial records of `system.runtime.sweep.run_sweep` (no Ray import), so it is unit-tested with
hand-made records.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

import yaml

from system.reports.format import fmt

COLUMNS = (
    "trial_id",
    "status",
    "iterations",
    "time_s",
    "val_score",
    "val_top1",
    "best_lambda",
    "val_top1_head",
    "val_top1_proto",
    "temperature_head",
    "temperature_proto",
    "stage1_s",
    "stage2_s",
)
# The chosen lambda's bootstrap over the selection split, flattened into the CSV as lambda_boot_<key>.
BOOTSTRAP_KEYS = ("lambda_mean", "lambda_std", "lambda_lo", "lambda_hi", "top1_lo", "top1_hi")


def param_keys(records: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r.get("params", {}) if k not in keys]
    return keys


def results_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per trial: id, status, every swept parameter, times and val metrics (None when absent)."""
    keys = param_keys(records)
    return [
        {"trial_id": r.get("trial_id"), "status": r.get("status")}
        | {k: r.get("params", {}).get(k) for k in keys}
        | {c: r.get(c) for c in COLUMNS[2:]}
        | {f"lambda_boot_{k}": (r.get("lambda_bootstrap") or {}).get(k) for k in BOOTSTRAP_KEYS}
        for r in records
    ]


def write_results_csv(path: Path, records: list[dict[str, Any]]) -> None:
    rows = results_rows(records)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def results_markdown(records: list[dict[str, Any]]) -> str:
    """The results table, best val top-1 first; stopped and failed trials last."""
    keys = param_keys(records)
    head = [
        "trial",
        "status",
        *keys,
        "epochs",
        "val top-1",
        "lambda [95% bootstrap]",
        "head only",
        "prototypes only",
        "samples/s",
        "data-wait %",
        "time s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(records, key=lambda r: (r.get("status") != "completed", -(r.get("val_top1") or 0.0)))
    for r in order:
        params = [_short(r.get("params", {}).get(k)) for k in keys]
        status = r.get("status", "")
        if status == "error":
            status = (
                "error: " + (r.get("error") or "").strip().splitlines()[-1][:60]
                if r.get("error")
                else "error"
            )
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r.get("trial_id")),
                    status,
                    *params,
                    str(r.get("last_epoch") if r.get("last_epoch") is not None else ""),
                    fmt(r.get("val_top1"))
                    if r.get("val_top1") is not None
                    else f"({fmt(r.get('val_score'))} probe)",
                    lambda_cell(r),
                    fmt(r.get("val_top1_head")),
                    fmt(r.get("val_top1_proto")),
                    fmt(r.get("final_samples_per_s"), 0),
                    _percent(r.get("final_data_wait_fraction")),
                    fmt(r.get("time_s"), 0),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def lambda_cell(r: dict[str, Any]) -> str:
    """The chosen lambda, then the 95% interval of the lambdas the bootstrap over val chose, when it ran."""
    boot = r.get("lambda_bootstrap")
    if r.get("best_lambda") is None or not boot:
        return fmt(r.get("best_lambda"), 2)
    return f"{fmt(r['best_lambda'], 2)} [{fmt(boot['lambda_lo'], 2)}, {fmt(boot['lambda_hi'], 2)}]"


def param_label(params: dict[str, Any]) -> str:
    """'proto_temperature=0.05, lr=0.002': the last part of each dotted key with its value."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())


def _percent(v: float | None) -> str:
    return "" if v is None else fmt(100 * v)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def efficiency(records: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Sweep wall time against the sum of its trials' times, and what the scheduler's early stops saved.

    A stopped trial's full length is estimated as the median time of the trials that completed (the same
    work), so saved = that median minus the time the stopped trial did run (never negative). Without any
    completed trial, nothing can be estimated and `saved_s` is None.
    """
    times = [float(r.get("time_s") or 0.0) for r in records]
    done = [float(r["time_s"]) for r in records if r.get("status") == "completed" and r.get("time_s")]
    stopped = [r for r in records if r.get("status") == "stopped"]
    full = statistics.median(done) if done else None
    saved = None if full is None else sum(max(full - float(r.get("time_s") or 0.0), 0.0) for r in stopped)
    total = sum(times)
    return {
        "wall_s": wall_s,
        "trial_time_sum_s": total,
        "parallelism": total / wall_s if wall_s > 0 else None,
        "trials": len(records),
        "completed": len(done),
        "stopped_early": len(stopped),
        "errored": sum(r.get("status") == "error" for r in records),
        "saved_trial_s": saved,
        "saved_fraction": None if saved is None or total + saved == 0 else saved / (total + saved),
    }


def efficiency_markdown(e: dict[str, Any]) -> str:
    saved = (
        "n/a (no completed trial to compare with)"
        if e["saved_trial_s"] is None
        else (
            f"{e['saved_trial_s']:.0f} s of trial time ({100 * e['saved_fraction']:.0f}% of what running them all "
            "to the end would have cost)"
        )
    )
    return "\n".join(
        [
            f"- sweep wall time {e['wall_s']:.0f} s for {e['trial_time_sum_s']:.0f} s of trial time "
            f"(trials ran {fmt(e['parallelism'], 2)}x in parallel on average)",
            f"- {e['trials']} trials: {e['completed']} completed, {e['stopped_early']} stopped early by the scheduler, "
            f"{e['errored']} failed",
            f"- early stopping saved {saved}",
        ]
    )


def plot_metric_vs_params(run_dir: Path, records: list[dict[str, Any]], space: dict[str, Any]) -> list[str]:
    """sweep_<key>.png per numeric swept key: val top-1 of completed trials, last probe score of stopped ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in param_keys(records):
        vals = [r["params"].get(key) for r in records]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for status, marker, label in (
            ("completed", "o", "completed: val top-1 (chosen lambda)"),
            ("stopped", "x", "stopped early: last val class-mean probe"),
        ):
            pts = [
                (r["params"][key], r.get("val_top1") if status == "completed" else r.get("val_score"))
                for r in records
                if r.get("status") == status
            ]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                xs, ys = zip(*sorted(pts), strict=True)
                ax.plot(xs, ys, marker=marker, ls="-" if status == "completed" else "", label=label)
        kind = (space.get(key) or ("",))[0]
        positive = all(v > 0 for v in vals)
        if kind == "loguniform" or (positive and max(vals) / min(vals) >= 10):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("val top-1 (%)")
        ax.set_title(f"sweep: val top-1 against {key}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"sweep_{key.replace('.', '_')}.png"
        fig.savefig(run_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def plot_efficiency(path: Path, e: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["sweep wall time", "sum of trial times"]
    values = [e["wall_s"], e["trial_time_sum_s"]]
    if e["saved_trial_s"] is not None:
        labels.append("trial time without early stops (est.)")
        values.append(e["trial_time_sum_s"] + e["saved_trial_s"])
    fig, ax = plt.subplots(figsize=(6.5, 2.6))
    ax.barh(labels[::-1], values[::-1], color=["tab:gray", "tab:blue", "tab:green"][: len(values)][::-1])
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v:.0f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_title(f"{e['trials']} trials, {e['stopped_early']} stopped early")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_config(config: dict[str, Any], params: dict[str, Any], lam: float, run_name: str) -> dict[str, Any]:
    """The chosen trial as a standalone config: its params set, lambda fixed, no sweep (one trial)."""
    from system.config import apply_overrides, config_from_dict

    out = apply_overrides(config, dict(params))
    out = apply_overrides(
        out, {"finetune.blend_weight": float(lam), "sweep.space": None, "run.name": run_name}
    )
    config_from_dict(out)  # refuse to write a config that would not load
    return out


def write_best_yaml(path: Path, cfg: dict[str, Any]) -> None:
    header = (
        "# The sweep's chosen trial (selected on val). Reproduce with: uniproto run --config "
        + str(path)
        + "\n"
    )
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
