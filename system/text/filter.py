"""Irrelevant-text filtering and attribute enhancement (docs/method.md, "Irrelevant text filtering").

Per class: score every description sentence with a relevance scorer, drop those below a threshold or outside
the per-class top-k, then build the class's text pool: prompt templates (always, so no class is ever left
without text), the kept sentences, and attribute prompts made from the attribute phrases of the kept sentences.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from system.text.attributes import attribute_clause, attribute_phrases, head_noun, normalise
from system.text.scorers import SCORERS, LexicalScorer, RelevanceScorer, make_scorer, register_scorer

__all__ = [
    "ATTRIBUTE_PROMPT",
    "PROMPT_TEMPLATES",
    "SCORERS",
    "LexicalScorer",
    "RelevanceScorer",
    "TextFilterResult",
    "attribute_phrases",
    "attribute_prompts",
    "build_text_pools",
    "filter_corpus",
    "filter_quality",
    "is_relevant_caption",
    "make_scorer",
    "register_scorer",
]

PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {name}.",
    "a picture of a {name}.",
    "an image showing a {name}.",
    "a close-up photo of the {name}.",
    "a cropped photo of a {name}.",
)
ATTRIBUTE_PROMPT = "a photo of a {name}, which has {attribute}."


@dataclass
class TextFilterResult:
    """Kept and dropped sentences per class label (every label of `class_names` is present)."""

    kept: dict[int, list[str]]
    dropped: dict[int, list[str]]
    class_names: list[str] = field(default_factory=list)

    def report(self) -> list[dict[str, Any]]:
        """One row per class: label, name, kept and dropped counts."""
        labels = sorted(set(self.kept) | set(self.dropped))
        return [
            {
                "label": label,
                "name": self.class_names[label] if label < len(self.class_names) else str(label),
                "kept": len(self.kept.get(label, [])),
                "dropped": len(self.dropped.get(label, [])),
            }
            for label in labels
        ]


def filter_corpus(
    corpus: dict[int, list[str]],
    class_names: list[str],
    scorer: RelevanceScorer | str = "lexical",
    threshold: float = 0.0,
    top_k: int | None = None,
) -> TextFilterResult:
    """Drop sentences scoring below `threshold`, then keep at most `top_k` best per class.

    Kept sentences stay in corpus order (the top-k cut ranks by score, ties by position). Every class of
    `class_names` gets an entry, even one absent from `corpus`, so reports cover all classes.
    """
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 or None, got {top_k}")
    if isinstance(scorer, str):
        scorer = make_scorer(scorer, class_names)
    kept: dict[int, list[str]] = {}
    dropped: dict[int, list[str]] = {}
    for label in range(len(class_names)):
        sentences = list(dict.fromkeys(corpus.get(label, [])))  # duplicates would count twice in top-k
        scores = scorer.score_many(sentences, label) if sentences else []
        passing = [i for i, s in enumerate(scores) if s >= threshold]
        if top_k is not None and len(passing) > top_k:
            passing = sorted(sorted(passing, key=lambda i: -scores[i])[:top_k])
        keep = set(passing)
        kept[label] = [s for i, s in enumerate(sentences) if i in keep]
        dropped[label] = [s for i, s in enumerate(sentences) if i not in keep]
    unknown = sorted(set(corpus) - set(kept))
    if unknown:
        raise ValueError(f"corpus has labels {unknown[:10]} outside 0..{len(class_names) - 1}")
    return TextFilterResult(kept, dropped, list(class_names))


def attribute_prompts(name: str, sentences: list[str], limit: int = 8) -> list[str]:
    """Attribute prompts for class `name` from its sentences: the most frequent phrases first, skipping
    phrases that only repeat the class name or are headed by it (they add nothing the templates say)."""
    name_words = {normalise(w) for w in name.lower().split()}
    counts: Counter[str] = Counter()
    for sentence in sentences:
        for phrase in attribute_phrases(sentence):
            words = {normalise(w) for w in phrase.split()}
            # "which has a small star" for a star class says nothing: skip phrases headed by the name itself.
            if not words <= name_words and head_noun(phrase) not in name_words:
                counts[phrase] += 1
    ranked = sorted(counts, key=lambda p: -counts[p])  # stable: ties keep first appearance
    return [ATTRIBUTE_PROMPT.format(name=name, attribute=attribute_clause(p)) for p in ranked[:limit]]


def build_text_pools(
    result: TextFilterResult,
    class_names: list[str],
    attribute_prompts: bool = True,
    max_attribute_prompts: int = 8,
) -> dict[int, list[str]]:
    """Text pool per class: filled prompt templates + kept sentences + attribute prompts, de-duplicated."""
    pools: dict[int, list[str]] = {}
    for label, name in enumerate(class_names):
        kept = result.kept.get(label, [])
        texts = [t.format(name=name) for t in PROMPT_TEMPLATES] + list(kept)
        if attribute_prompts and max_attribute_prompts > 0:
            texts += _attribute_prompts(name, kept, max_attribute_prompts)
        pools[label] = list(dict.fromkeys(texts))
    return pools


_attribute_prompts = attribute_prompts  # build_text_pools' flag argument shadows the function name


def filter_quality(result: TextFilterResult, truth: dict[tuple[int, str], bool]) -> dict[str, Any]:
    """Precision and recall of DROPPING boilerplate (positives = boilerplate sentences), with counts.

    Sentences absent from `truth` are counted as `unlabelled` and left out of the rates. A rate with an empty
    denominator is None (not 0 or 1: there was nothing to measure).
    """
    tp = fp = fn = tn = unlabelled = 0
    for was_dropped, part in ((True, result.dropped), (False, result.kept)):
        for label, sentences in part.items():
            for sentence in sentences:
                boilerplate = truth.get((label, sentence))
                if boilerplate is None:
                    unlabelled += 1
                elif was_dropped:
                    tp, fp = (tp + 1, fp) if boilerplate else (tp, fp + 1)
                else:
                    fn, tn = (fn + 1, tn) if boilerplate else (fn, tn + 1)
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "true_drops": tp,
        "wrong_drops": fp,
        "missed_boilerplate": fn,
        "kept_relevant": tn,
        "unlabelled": unlabelled,
    }


def is_relevant_caption(scorer: RelevanceScorer, caption: str, label: int, threshold: float = 0.0) -> bool:
    """Whether a per-image caption describes its class well enough to train on (else the pipeline swaps in a
    sentence from the class pool). An empty caption is never relevant."""
    caption = " ".join(caption.split())
    return bool(caption) and scorer.score(caption, label) >= threshold
