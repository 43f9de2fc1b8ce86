"""Driver-side text stage: read the class corpora, filter irrelevant sentences, build attribute-enhanced pools."""

from __future__ import annotations

from typing import Any

from system.config import DataSection
from system.data.corpus import load_class_corpus, load_truth
from system.data.dataset_dir import Manifest
from system.data.shard_spec import local_text_dir
from system.text.filter import build_text_pools, filter_corpus, filter_quality, make_scorer


def prepare_text_pools(
    data: DataSection, manifest: Manifest, scorer_options: dict[str, Any] | None = None
) -> tuple[dict[int, list[str]], dict[str, Any]]:
    """Per-class text pools for pairing, and a report (per-class kept/dropped, quality when truth is known).

    A dataset without class text still trains: every class keeps its prompt templates. `scorer_options` are
    the model scorers' paths and arch (system.text.scorers.scorer_options(cfg)).
    """
    text_dir = local_text_dir(data.root, manifest.text_dir) if manifest.text_dir else None
    missing: list[int] = []
    corpus = (
        load_class_corpus(text_dir, manifest.num_classes, missing)
        if text_dir is not None and text_dir.is_dir()
        else {c: [] for c in range(manifest.num_classes)}
    )
    result = filter_corpus(
        corpus,
        manifest.class_names,
        make_scorer(data.text_scorer, manifest.class_names, **(scorer_options or {})),
        data.filter_threshold,
        data.filter_top_k,
    )
    pools = build_text_pools(result, manifest.class_names, attribute_prompts=data.attribute_prompts)
    rows = result.report()
    report: dict[str, Any] = {
        "scorer": data.text_scorer,
        "threshold": data.filter_threshold,
        "kept": sum(r["kept"] for r in rows),
        "dropped": sum(r["dropped"] for r in rows),
        "classes_without_text": missing,
        "per_class": rows,
        "pool_sizes": [len(pools[c]) for c in range(manifest.num_classes)],
    }
    truth = load_truth(text_dir) if text_dir is not None and text_dir.is_dir() else {}
    if truth:
        report["quality"] = filter_quality(result, truth)
    return pools, report
