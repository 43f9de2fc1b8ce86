"""The ablation's variants and its statistics (docs/method.md, "Evaluation protocol"). Plain numpy, no Ray.

Each *arm* is one stage-1 recipe trained with several seeds; each *variant* is an arm read with one classifier
rule. `text_filter` and `full` share their arm (same stage 1): they differ only in the stage-2 classifier, the
learnable head alone (lambda = 0) versus the prototype-guided blend with lambda chosen on val. Every variant's
stage 2 is trained identically (same head, same epochs), so feature and classifier effects are not mixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GROUPS = ("overall", "many", "medium", "few")
# Keeping every sentence and caption: a threshold no lexical score reaches, and no attribute prompts.
NO_TEXT_FILTER = {"data.filter_threshold": -1.0e9, "data.filter_top_k": None, "data.attribute_prompts": False}


@dataclass(frozen=True)
class Arm:
    """A stage-1 recipe: config overrides on top of the user's config."""

    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """A row of the table: an arm and its classifier ("head": lambda = 0; "blend": lambda chosen on val)."""

    arm: str
    classifier: str
    description: str


ARMS: dict[str, Arm] = {
    "baseline": Arm(
        "plain cross-entropy on images (cosine softmax, learnable class weights), no text",
        {
            "loss.ce_weight": 1.0,
            "loss.contrastive_weight": 0.0,
            "loss.proto_weight": 0.0,
            "loss.distill_weight": 0.0,  # text-free: no image-text logits of a teacher either
            **NO_TEXT_FILTER,
        },
    ),
    "contrastive": Arm(
        "class-wise image-text contrastive pretraining (VL-LTR-like), unfiltered text",
        {"loss.ce_weight": 0.0, "loss.proto_weight": 0.0, **NO_TEXT_FILTER},
    ),
    "prototypes": Arm(
        "+ uniform prototypes (prototype loss on image and text), unfiltered text",
        {"loss.ce_weight": 0.0, **NO_TEXT_FILTER},
    ),
    "text_filter": Arm(
        "+ irrelevant-text filtering and attribute prompts (the config's filter settings)",
        {"loss.ce_weight": 0.0},
    ),
    "no_text": Arm(
        "control: the prototype loss on images alone (no contrastive, no text term)",
        {
            "loss.ce_weight": 0.0,
            "loss.contrastive_weight": 0.0,
            "loss.distill_weight": 0.0,  # text-free: no image-text logits of a teacher either
            "loss.proto_modalities": "image",
            "loss.prototype_assign": "random",  # nor prototypes placed by the class names' text
        },
    ),
}
VARIANTS: dict[str, Variant] = {
    "baseline": Variant("baseline", "head", ARMS["baseline"].description),
    "contrastive": Variant("contrastive", "head", ARMS["contrastive"].description),
    "prototypes": Variant("prototypes", "head", ARMS["prototypes"].description),
    "text_filter": Variant("text_filter", "head", ARMS["text_filter"].description),
    "full": Variant("text_filter", "blend", "+ prototype-guided classifier (lambda chosen on val)"),
    "no_text": Variant("no_text", "blend", ARMS["no_text"].description + ", same classifier as full"),
}
# The cumulative ladder: each variant is compared with the one before it.
LADDER = ("baseline", "contrastive", "prototypes", "text_filter", "full")


def bootstrap_pairs(variants: Iterable[str]) -> list[tuple[str, str]]:
    """The (variant, reference) pairs of the paired bootstrap, among the variants that ran: each rung of the
    ladder against the rung below it that ran (what that component adds), each variant against the
    cross-entropy baseline (what the recipe adds up to), and `full` against the no-text control (what the
    text adds); each pair once, in that order."""
    ran = set(variants)
    rungs = [v for v in LADDER if v in ran]
    pairs = list(zip(rungs[1:], rungs[:-1], strict=True))
    if "baseline" in ran:
        pairs += [(v, "baseline") for v in (*LADDER[1:], "no_text") if v in ran]
    if {"full", "no_text"} <= ran:
        pairs.append(("full", "no_text"))
    return list(dict.fromkeys(pairs))


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the non-None values, and their count."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean, std and n of every group over its seeds. `runs[variant]` = one dict per seed."""
    out: dict[str, dict[str, Any]] = {}
    for name, seeds in runs.items():
        row: dict[str, Any] = {"seeds": len(seeds)}
        for g in GROUPS:
            m, s, n = mean_std([r.get(g) for r in seeds])
            row[g] = {"mean": m, "std": s, "n": n}
        out[name] = row
    return out


def noise_floor(a: dict[str, Any], b: dict[str, Any], one_image: float) -> float:
    """The smallest difference of two means we call real: two standard errors of the difference, and never
    less than one eval image's worth of accuracy in that group (`one_image`, in points)."""
    if a["n"] == 0 or b["n"] == 0:
        return math.inf
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    return max(2.0 * se, one_image)


def compare(
    summary: dict[str, dict[str, Any]], pairs: list[tuple[str, str]], one_image: dict[str, float]
) -> list[dict[str, Any]]:
    """Differences of means for (variant, reference) pairs, each group marked as inside the noise or not."""
    rows = []
    for name, ref in pairs:
        if name not in summary or ref not in summary:
            continue
        row: dict[str, Any] = {"variant": name, "vs": ref}
        for g in GROUPS:
            a, b = summary[name][g], summary[ref][g]
            if a["mean"] is None or b["mean"] is None:
                row[g] = None
                continue
            diff = a["mean"] - b["mean"]
            floor = noise_floor(a, b, one_image.get(g, 0.0))
            row[g] = {"diff": diff, "noise": floor, "real": abs(diff) >= floor}
        rows.append(row)
    return rows


def one_image_points(
    test_labels: np.ndarray, train_counts: list[int], many: int, few: int
) -> dict[str, float]:
    """What one eval image is worth, in points, per group: 100/N overall; for a shot group, the mean of per-class
    accuracies moves by 100 / (images of one class * classes in the group)."""
    from system.method.metrics import shot_group

    labels = np.asarray(test_labels, dtype=np.int64)
    per_class = np.bincount(labels, minlength=len(train_counts))  # [K]
    out = {"overall": 100.0 / max(labels.size, 1)}
    groups = np.array([shot_group(int(n), many, few) for n in train_counts])
    for g in ("many", "medium", "few"):
        sizes = per_class[(groups == g) & (per_class > 0)]
        out[g] = 100.0 / (float(sizes.min()) * sizes.size) if sizes.size else 0.0
    return out


# The paired per-class bootstrap: resamples and seed are fixed, so the same runs give the same intervals.
CLASS_BOOTSTRAP = 2000
CLASS_BOOTSTRAP_SEED = 0


Run = tuple[np.ndarray, np.ndarray]  # one seed's eval predictions [N] and labels [N]


def seed_mean_class_accuracy(runs: Sequence[Run], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class top-1 in percent [K], averaged over the seeds' runs, and eval images per class [K]; nan for a
    class without eval images.

    Each run brings its own labels: stage 2 reads a split in no fixed order, so predictions are matched to
    labels within a run, never by position across runs. The runs must cover the same eval set (the same images
    per class), or the seeds' accuracies would not be of the same classes' images.
    """
    from system.method.metrics import per_class_accuracy

    if len(runs) == 0:
        raise ValueError("need the predictions of at least one seed")
    images = np.bincount(np.asarray(runs[0][1], dtype=np.int64), minlength=num_classes)[:num_classes]  # [K]
    acc = []
    for preds, labels in runs:
        y = np.asarray(labels, dtype=np.int64).ravel()  # [N]
        if not np.array_equal(np.bincount(y, minlength=num_classes)[:num_classes], images):
            raise ValueError("the runs were not evaluated on the same eval set (images per class differ)")
        acc.append(per_class_accuracy(preds, y, num_classes))  # [K]
    return np.mean(acc, axis=0) * 100.0, images.astype(np.float64)


def paired_class_bootstrap(
    runs_a: Sequence[Run],
    runs_b: Sequence[Run],
    train_counts: Sequence[int],
    many: int,
    few: int,
    n_boot: int = CLASS_BOOTSTRAP,
    seed: int = CLASS_BOOTSTRAP_SEED,
) -> dict[str, dict[str, Any] | None]:
    """Arm A minus arm B in top-1 points, per group, with a 95% interval from a paired per-class bootstrap.

    `runs_a` and `runs_b` hold one (predictions, labels) pair per seed, the same seeds for both arms, on the
    same eval set. Each class's accuracy is averaged over the seeds, the difference is taken per class (both
    arms saw the same classes), and the classes are resampled with replacement `n_boot` times. Overall weighs
    a class by its eval images (so it is the difference of overall top-1 over images); a shot group is the
    plain mean over its classes, as in the table. Classes without eval images are left out. Per group:
    {"diff", "lo", "hi" (2.5 / 97.5 percentiles), "excludes_zero", "classes"}; None for a group without
    classes.
    """
    if len(runs_a) != len(runs_b):
        raise ValueError(f"the arms need the same seeds, got {len(runs_a)} and {len(runs_b)} runs")
    from system.method.metrics import shot_group

    k = len(train_counts)
    acc_a, images = seed_mean_class_accuracy(runs_a, k)  # [K], [K]
    acc_b, images_b = seed_mean_class_accuracy(runs_b, k)  # [K], [K]
    if not np.array_equal(images, images_b):
        raise ValueError("the arms were not evaluated on the same eval set (images per class differ)")
    diff = acc_a - acc_b  # [K]
    groups = np.array([shot_group(int(n), many, few) for n in train_counts])  # [K]
    out: dict[str, dict[str, Any] | None] = {}
    for g in GROUPS:
        keep = images > 0 if g == "overall" else (groups == g) & (images > 0)  # [K]
        d = diff[keep]  # [M]
        w = images[keep] if g == "overall" else np.ones_like(d)  # [M]
        if d.size == 0:
            out[g] = None
            continue
        # one generator per group: a group's interval does not depend on which other groups have classes
        rng = np.random.default_rng(seed)
        stats = np.empty(n_boot)  # [B]
        block = max(1, 2**22 // d.size)  # resamples per batch, to bound the index matrix's memory
        for s in range(0, n_boot, block):
            idx = rng.integers(0, d.size, size=(min(block, n_boot - s), d.size))  # [b, M]
            stats[s : s + idx.shape[0]] = (w[idx] * d[idx]).sum(axis=1) / w[idx].sum(axis=1)  # [b]
        lo, hi = np.percentile(stats, [2.5, 97.5])
        out[g] = {
            "diff": float((w * d).sum() / w.sum()),
            "lo": float(lo),
            "hi": float(hi),
            "excludes_zero": bool(lo > 0 or hi < 0),
            "classes": int(d.size),
        }
    return out


def _ci_cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    return f"{c['diff']:+.1f} [{c['lo']:+.1f}, {c['hi']:+.1f}]"


def class_bootstrap_markdown(rows: list[dict[str, Any]], split: str, n_boot: int = CLASS_BOOTSTRAP) -> str:
    """The paired per-class bootstrap table and its reading in words; a row is {"variant", "vs", and each
    group's `paired_class_bootstrap` result}."""
    if not rows:
        return ""
    head = (
        "| variant | vs | overall | many | medium | few | 95% CI excludes 0 in |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        real = [g for g in GROUPS if r[g] is not None and r[g]["excludes_zero"]]
        lines.append(
            f"| `{r['variant']}` | `{r['vs']}` | "
            + " | ".join(_ci_cell(r[g]) for g in GROUPS)
            + f" | {', '.join(real) if real else 'none'} |"
        )
    words = []
    for r in rows:
        real = [g for g in GROUPS if r[g] is not None and r[g]["excludes_zero"]]
        noise = [g for g in GROUPS if r[g] is not None and not r[g]["excludes_zero"]]
        said = []
        if real:
            said.append("the interval excludes 0 (a real difference) in " + ", ".join(real))
        if noise:
            said.append("it includes 0 (no difference shown) in " + ", ".join(noise))
        words.append(
            f"- `{r['variant']}` vs `{r['vs']}`: " + ("; ".join(said) or "no group to compare") + "."
        )
    return (
        f"Paired per-class bootstrap on `{split}` (points): each class's top-1 averaged over the seeds, the "
        f"difference taken per class, the classes resampled {n_boot} times; 95% interval in brackets.\n\n"
        + head
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(words)
        + "\n"
    )


def _cell(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _diff_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    mark = "" if d["real"] else " (noise)"
    return f"{d['diff']:+.1f}{mark}"


def markdown(summary: dict[str, dict[str, Any]], comparisons: list[dict[str, Any]], split: str) -> str:
    head = (
        "| variant | what it adds | overall | many | medium | few | seeds |\n|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| `{name}` | {VARIANTS[name].description if name in VARIANTS else ''} | "
        + " | ".join(_cell(row[g]) for g in GROUPS)
        + f" | {row['seeds']} |"
        for name, row in summary.items()
    ]
    table = head + "\n".join(lines)
    diff_head = "| variant | vs | overall | many | medium | few |\n|---|---|---|---|---|---|\n"
    diffs = "\n".join(
        f"| `{r['variant']}` | `{r['vs']}` | " + " | ".join(_diff_cell(r[g]) for g in GROUPS) + " |"
        for r in comparisons
    )
    return (
        f"Top-1 on `{split}` (%), mean ± std over seeds; lambda (and any `--space` grid) chosen on val.\n\n{table}\n\n"
        "Differences of means; `(noise)` marks a difference smaller than two standard errors or one "
        f"{split} image.\n\n{diff_head}{diffs}\n"
    )


def plot(path: Path, summary: dict[str, dict[str, Any]], title: str) -> None:
    """Grouped bars: one group per shot group, one bar per variant, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    x = np.arange(len(GROUPS))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for i, name in enumerate(names):
        means = [summary[name][g]["mean"] or 0.0 for g in GROUPS]
        stds = [summary[name][g]["std"] or 0.0 for g in GROUPS]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(x, GROUPS)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    # below the axes: inside, the legend would hide the bars of some group
    ax.legend(fontsize=8, ncols=min(len(names), 6), loc="upper center", bbox_to_anchor=(0.5, -0.07))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
