"""The text-filtering stage alone on a dataset's class corpus, with its report (`run_filter_text`; the
`uniproto filter-text` command in pipelines/cli.py prints its summary, the last line as one JSON object).

Writes `filter_text.json` and `filter_text.md` (per class: kept and dropped sentences with their scores; with
truth labels, the wrong drops and the missed boilerplate) and, when the dataset records which sentences are
boilerplate (`text/truth.jsonl`, as the demo does), the precision and recall of dropping boilerplate: scorer,
threshold, top_k, kept, dropped, precision, recall, seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from system.config import Config, ConfigError
from system.data.corpus import load_class_corpus, load_truth
from system.data.dataset_dir import load_manifest
from system.text.filter import TextFilterResult, filter_corpus, filter_quality
from system.text.scorers import RelevanceScorer, make_scorer, scorer_options


class RecordingScorer(RelevanceScorer):
    """Wraps a scorer and keeps every (label, sentence) -> score it produced, for the report."""

    def __init__(self, inner: RelevanceScorer) -> None:
        super().__init__(inner.class_names)
        self.inner = inner
        self.scores: dict[tuple[int, str], float] = {}

    def score(self, sentence: str, label: int) -> float:
        return self.score_many([sentence], label)[0]

    def score_many(self, sentences: Sequence[str], label: int) -> list[float]:
        scores = self.inner.score_many(sentences, label)
        self.scores.update({(label, s): v for s, v in zip(sentences, scores, strict=True)})
        return scores


def build_scorer(cfg: Config, class_names: list[str]) -> RelevanceScorer:
    """The configured scorer; a missing or unusable model/centroid path is a config error naming the key."""
    name = cfg.data.text_scorer
    try:
        return make_scorer(name, class_names, **scorer_options(cfg, name))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data.text_scorer={name}: {err}") from None


def filter_report(
    result: TextFilterResult,
    scores: dict[tuple[int, str], float],
    truth: dict[tuple[int, str], bool],
) -> dict[str, Any]:
    """Totals, quality (when truth is known) and per-class kept/dropped sentences with scores."""
    rows = []
    for row in result.report():
        label = row["label"]
        entry = dict(row)
        for part, sentences in (("kept_sentences", result.kept), ("dropped_sentences", result.dropped)):
            entry[part] = [
                {"sentence": s, "score": round(scores.get((label, s), float("nan")), 4)}
                | ({"boilerplate": truth[(label, s)]} if (label, s) in truth else {})
                for s in sentences.get(label, [])
            ]
        rows.append(entry)
    report: dict[str, Any] = {
        "kept": sum(r["kept"] for r in rows),
        "dropped": sum(r["dropped"] for r in rows),
        "per_class": rows,
    }
    if truth:
        report["quality"] = filter_quality(result, truth)
    return report


def _markdown(report: dict[str, Any]) -> str:
    head = report["summary"]
    lines = [
        f"# Text filter: `{head['scorer']}` on {report['dataset']}",
        "",
        f"threshold {head['threshold']}, top-k {head['top_k']}: kept {head['kept']}, dropped {head['dropped']}"
        f" in {head['seconds']} s.",
    ]
    quality = report.get("quality")
    if quality:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines += [
            "",
            f"Dropping boilerplate: precision {fmt(quality['precision'])}, recall {fmt(quality['recall'])} "
            f"({quality['true_drops']} boilerplate dropped, {quality['wrong_drops']} relevant dropped, "
            f"{quality['missed_boilerplate']} boilerplate kept).",
        ]
    lines += ["", "| label | class | kept | dropped |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['name']} | {r['kept']} | {r['dropped']} |" for r in report["per_class"]]
    for title, part, flag in (
        ("Relevant sentences dropped", "dropped_sentences", False),
        ("Boilerplate kept", "kept_sentences", True),
    ):
        wrong = [(r["name"], s) for r in report["per_class"] for s in r[part] if s.get("boilerplate") is flag]
        if wrong:
            lines += ["", f"## {title} ({len(wrong)})", ""]
            lines += [f"- {name}: {s['sentence']} (score {s['score']})" for name, s in wrong]
    lines += ["", "## Dropped sentences", ""]
    for r in report["per_class"]:
        for s in r["dropped_sentences"]:
            lines.append(f"- {r['name']}: {s['sentence']} (score {s['score']})")
    return "\n".join(lines) + "\n"


def run_filter_text(cfg: Config, out_dir: str | Path) -> dict[str, Any]:
    """Filter the class corpus of cfg.data.root with the configured scorer; write the reports; return the
    summary (the command's last JSON line)."""
    t0 = time.perf_counter()
    root = cfg.data.root
    manifest = load_manifest(root)  # DatasetError names the file
    text_dir = manifest.text_path(root)
    if text_dir is None or not Path(text_dir).is_dir():
        raise ConfigError(f"data.root: dataset {root} has no class text folder ({manifest.text_dir})")
    corpus = load_class_corpus(text_dir, manifest.num_classes)
    scorer = RecordingScorer(build_scorer(cfg, manifest.class_names))
    load_seconds = time.perf_counter() - t0
    result = filter_corpus(
        corpus, manifest.class_names, scorer, cfg.data.filter_threshold, cfg.data.filter_top_k
    )
    report = filter_report(result, scorer.scores, load_truth(text_dir))
    quality = report.get("quality") or {}
    summary = {
        "scorer": cfg.data.text_scorer,
        "threshold": cfg.data.filter_threshold,
        "top_k": cfg.data.filter_top_k,
        "kept": report["kept"],
        "dropped": report["dropped"],
        "precision": quality.get("precision"),
        "recall": quality.get("recall"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    full = {
        "summary": summary,
        "dataset": str(root),
        "scorer_options": scorer_options(cfg),
        "load_seconds": round(load_seconds, 2),
        **report,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "filter_text.json").write_text(json.dumps(full, indent=1) + "\n")
    (out / "filter_text.md").write_text(_markdown(full))
    return summary
