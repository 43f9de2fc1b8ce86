"""Run reports: report.json (machine), report.md (people), PNGs (per-class accuracy vs. train count, lambda curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from system.reports.format import fmt
from system.reports.sweep import efficiency_markdown

GROUPS = ("overall", "many", "medium", "few")


def accuracy_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per named result with overall / many / medium / few."""
    lines = ["| | overall | many | medium | few |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(g)) for g in GROUPS) + " |")
    return "\n".join(lines)


def plot_per_class(
    path: Path,
    train_counts: list[int],
    per_class: list[float | None],
    thresholds: tuple[int, int],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.asarray(train_counts, dtype=float)
    acc = np.asarray([np.nan if a is None else a for a in per_class], dtype=float)
    many, few = thresholds
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = np.where(n > many, "tab:blue", np.where(n < few, "tab:red", "tab:orange"))
    ax.scatter(n, acc, c=colours, s=28, edgecolors="k", linewidths=0.4)
    for x in (few, many):
        ax.axvline(x, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test top-1 of the class (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color=c, label=lab)
        for c, lab in (
            ("tab:red", f"few (<{few})"),
            ("tab:orange", f"medium ({few}-{many})"),
            ("tab:blue", f"many (>{many})"),
        )
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lambda_curves(
    path: Path, curves: list[tuple[str, np.ndarray, np.ndarray]], chosen: tuple[float, float] | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, grid, acc in curves:
        ax.plot(grid, acc, label=label, lw=1.5)
    if chosen is not None:
        ax.plot([chosen[0]], [chosen[1]], "k*", ms=12, label=f"chosen lambda={chosen[0]:.2f}")
    ax.set_xlabel("classifier blending weight lambda (0 = learnable head, 1 = class-mean prototypes)")
    ax.set_ylabel("val top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (run_dir / "report.md").write_text(markdown(report))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def chosen_trial(report: dict[str, Any]) -> dict[str, Any]:
    """The selection merged over the chosen trial's record, which holds its stage-2 details."""
    best = report.get("selection", {})
    for t in report.get("trials", []):
        if best.get("trial_id") is not None and t.get("trial_id") == best.get("trial_id"):
            return {**t, **best}
    return dict(best)


def lambda_notes(trial: dict[str, Any]) -> str:
    """How to read a trial's lambda: its branches' temperatures and its bootstrap over val."""
    parts = []
    t_head, t_proto = trial.get("temperature_head"), trial.get("temperature_proto")
    if t_head is not None and t_proto is not None:
        parts.append(
            f"Each branch was temperature-scaled on val before blending (T = {t_head:.3g} for the head, "
            f"{t_proto:.3g} for the prototypes), so lambda weighs calibrated logits."
        )
    boot = trial.get("lambda_bootstrap")
    if boot:
        parts.append(
            f"Over {boot['n_boot']} bootstrap resamples of val the chosen lambda was "
            f"{fmt(boot['lambda_mean'], 2)} ± {fmt(boot['lambda_std'], 2)} (95% within "
            f"[{fmt(boot['lambda_lo'], 2)}, {fmt(boot['lambda_hi'], 2)}]), with val top-1 in "
            f"[{fmt(boot['top1_lo'])}, {fmt(boot['top1_hi'])}]% (the best candidate's, so optimistic)."
        )
    return " ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    best = report.get("selection", {})
    notes = lambda_notes(chosen_trial(report))
    lines = [
        f"# uniproto run `{report['run']}`",
        "",
        f"Dataset `{report['dataset']['root']}`: {report['dataset']['num_classes']} classes, "
        f"{report['dataset']['train_samples']} train images (imbalance {report['dataset']['imbalance']:.0f}x).",
        "",
        f"## Top-1 on `{report['report_split']}` (chosen on `{report['select_split']}`)",
        "",
        accuracy_table(report["results"]),
        "",
        f"Chosen: {best.get('params')} with lambda = {fmt(best.get('lambda'), 2)} "
        f"(val top-1 {fmt(best.get('val_top1'))})"
        + (
            f"; the linear head's L2 strength {best['head_l2']:.0e}, chosen on val"
            if best.get("head_l2")
            else ""
        )
        + f". Shot groups: many > {report['thresholds'][0]}, "
        f"medium {report['thresholds'][1]}-{report['thresholds'][0]}, few < {report['thresholds'][1]} training images; "
        "a group's accuracy is the mean of its classes'.",
        *(["", notes] if notes else []),
        "",
        "![per-class accuracy](per_class_accuracy.png)",
        "",
        "## Sweep (selection split)",
        "",
        report.get("sweep_markdown", ""),
    ]
    eff = report.get("sweep", {}).get("efficiency")
    if eff:
        lines += ["", efficiency_markdown(eff), "", "![sweep efficiency](sweep_efficiency.png)"]
    for plot in report.get("sweep", {}).get("plots", []):
        lines += ["", f"![{plot}]({plot})"]
    lines += ["", "![lambda curves](lambda_curves.png)"]
    geo = report.get("feature_geometry")
    if geo:
        lines += [
            "",
            "## Feature space (train split, chosen trial)",
            "",
            "Mean cosine distance between class centroids, by shot group of the pair (tail = few-shot, "
            "head = many-shot); tail-tail / head-tail below 1 means the tail classes are crowded together.",
            "",
            "| | head-head | head-tail | tail-tail | tail-tail / head-tail | max centroid cos |",
            "|---|---|---|---|---|---|",
        ]
        for when in ("before", "after"):
            g = geo[when]
            lines.append(
                f"| {when} stage 1 | {fmt(g['head_head'], 3)} | {fmt(g['head_tail'], 3)} | "
                f"{fmt(g['tail_tail'], 3)} | {fmt(g['tail_over_head_tail'], 2)} | {fmt(g['centroid_max_cos'], 3)} |"
            )
        lines += ["", "![feature geometry](feature_geometry.png)"]
    pb = report.get("positive_bias")
    if pb:
        lines += [
            "",
            "## Positive bias of the learnable head",
            "",
            f"Spearman rank correlation with the class's train count: weight norm "
            f"{fmt(pb.get('weight_norm_vs_count_spearman'), 2)}, mean logit "
            f"{fmt(pb.get('mean_logit_vs_count_spearman'), 2)} (1: the head favours frequent classes).",
            "",
            "![positive bias](positive_bias.png)",
        ]
    if report.get("data"):
        lines += ["", "## Data", "", data_markdown(report["data"])]
    lines += ["", "## Text filter", ""]
    tf = report.get("text_filter", {})
    if tf.get("quality"):
        q = tf["quality"]
        lines.append(
            f"Dropping boilerplate: precision {fmt(q.get('precision'), 3)}, recall {fmt(q.get('recall'), 3)} "
            f"(measured against the corpus' recorded boilerplate)."
        )
    lines.append(f"Sentences kept {tf.get('kept', 0)}, dropped {tf.get('dropped', 0)}, across all classes.")
    lines += ["", "## Time by stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def _group_colours(n: np.ndarray, thresholds: tuple[int, int]) -> np.ndarray:
    many, few = thresholds
    return np.where(n > many, "tab:blue", np.where(n < few, "tab:red", "tab:orange"))


def plot_geometry(
    path: Path,
    train_counts: list[int],
    nearest_before: np.ndarray,
    nearest_after: np.ndarray,
    thresholds: tuple[int, int],
    title: str,
) -> None:
    """Each class's cosine distance to its nearest other class centroid against its train count, before and
    after stage 1: a crowded tail shows as small distances on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.asarray(train_counts, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.scatter(n, nearest_before, facecolors="none", edgecolors="grey", s=28, label="before stage 1")
    ax.scatter(
        n,
        nearest_after,
        c=_group_colours(n, thresholds),
        s=28,
        edgecolors="k",
        linewidths=0.4,
        label="after stage 1 (colour: shot group)",
    )
    for x in thresholds:
        ax.axvline(x, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("cosine distance to the nearest other class centroid")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_positive_bias(
    path: Path,
    train_counts: list[int],
    weight_norm: np.ndarray | None,
    mean_logit: np.ndarray,
    thresholds: tuple[int, int],
) -> None:
    """The learnable head's per-class weight norm and mean logit against train count (positive bias)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.asarray(train_counts, dtype=float)
    panels = [("mean logit over the train split", mean_logit)]
    if weight_norm is not None:
        panels.insert(0, ("weight norm of the class's row", weight_norm))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (label, values) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.scatter(n, values, c=_group_colours(n, thresholds), s=28, edgecolors="k", linewidths=0.4)
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel(label)
    fig.suptitle("learnable head: positive bias toward frequent classes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def data_markdown(data: dict[str, Any]) -> str:
    """Per split: good samples, samples skipped by reason, shards that failed (path and reason)."""
    lines = ["| split | good samples | skipped | failed shards |", "|---|---|---|---|"]
    for split, d in data.items():
        if not d:
            continue
        skipped = ", ".join(f"{k} {v}" for k, v in d["skipped"].items()) or "none"
        failed = "; ".join(f"`{f['path']}` ({f['reason']})" for f in d["failed_shards"]) or "none"
        lines.append(f"| {split} | {d['good']} | {skipped} | {failed} |")
    return "\n".join(lines)
