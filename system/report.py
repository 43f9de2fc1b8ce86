"""Run reports: report.json (machine), report.md (people), PNGs (per-class accuracy vs. train count, lambda curves)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

GROUPS = ("overall", "many", "medium", "few")


def fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


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


def markdown(report: dict[str, Any]) -> str:
    best = report.get("selection", {})
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
        f"(val top-1 {fmt(best.get('val_top1'))}). Shot groups: many > {report['thresholds'][0]}, "
        f"medium {report['thresholds'][1]}-{report['thresholds'][0]}, few < {report['thresholds'][1]} training images; "
        "a group's accuracy is the mean of its classes'.",
        "",
        "![per-class accuracy](per_class_accuracy.png)",
        "",
        "## Sweep (selection split)",
        "",
        report.get("sweep_markdown", ""),
    ]
    eff = report.get("sweep", {}).get("efficiency")
    if eff:
        from system.sweep_report import efficiency_markdown

        lines += ["", efficiency_markdown(eff), "", "![sweep efficiency](sweep_efficiency.png)"]
    for plot in report.get("sweep", {}).get("plots", []):
        lines += ["", f"![{plot}]({plot})"]
    lines += ["", "![lambda curves](lambda_curves.png)", "", "## Text filter", ""]
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
