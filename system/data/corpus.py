"""Reading class description corpora: sentence splitting and the VL-LTR `desc_<label>.txt` format.

VL-LTR's corpus is one Wikipedia-style file per class: lines starting with `==` are section headers, and the
reference-like sections (References, External links, ...) are citation lists, not descriptions, so their lines
are dropped before any sentence reaches a filter or a text encoder.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

DROPPED_SECTIONS = frozenset(
    {"references", "external links", "see also", "further reading", "notes", "bibliography", "sources"}
)

# Words that end with a period without ending the sentence. Lower-case, without the final period.
_ABBREVIATIONS = frozenset(
    """
    e.g i.e vs cf al approx ca dr mr mrs ms prof st jr sr inc ltd co corp ed eds jan feb mar apr jun jul
    aug sep sept oct nov dec u.s u.k mt ft sq resp var subsp sp spp
    """.split()
)
# Abbreviations that are also ordinary words ("no"): only before a number ("No. 5", "pp. 12").
_NUMERIC_ABBREVIATIONS = frozenset({"no", "nos", "fig", "figs", "vol", "pp", "p", "art", "ch"})
# A sentence boundary candidate: terminal punctuation, optional closing quotes/brackets, whitespace, and the
# start of a new sentence (capital, digit, opening quote or bracket).
_BOUNDARY = re.compile(r"""([.!?…]+)(["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")
_LAST_WORD = re.compile(r"(\S+)$")
_HEADER = re.compile(r"^\s*(=+)\s*(.*?)\s*=*\s*$")
_BULLET = re.compile(r"^\s*(?:[*#•·-]+|\d+[.)])\s+")
_TERMINAL = re.compile(r"""[.!?…:;]["'”’)\]]*$""")


def _is_abbreviation(text_before: str, text_after: str) -> bool:
    match = _LAST_WORD.search(text_before)
    if match is None:
        return False
    original = match.group(1).lstrip("(\"'“‘[")
    word = original.lower()
    if word in _ABBREVIATIONS:
        return True
    if word in _NUMERIC_ABBREVIATIONS and text_after[:1].isdigit():
        return True
    # Initials ("J. Smith") and dotted acronyms ("U.S.A", "p.m") do not end sentences; a lower-case single
    # letter is usually a unit ("3.5 m.") and does.
    return bool(re.fullmatch(r"[A-Z]|(?:[A-Za-z]\.)+[A-Za-z]", original))


def _split_paragraph(paragraph: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
        before = paragraph[start : match.start()]
        # "e.g. The" or "Dr. Smith": a single period after an abbreviation is not a boundary.
        if match.group(1) == "." and _is_abbreviation(before, paragraph[match.end() :]):
            continue
        sentence = paragraph[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _paragraphs(text: str) -> list[str]:
    """Join wrapped lines; a blank line, a line ending in terminal punctuation followed by a capitalised line,
    or a bullet always starts a new paragraph."""
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        bullet = _BULLET.match(line)
        if bullet:
            line = line[bullet.end() :]
        continues = (
            current
            and not bullet
            and not _TERMINAL.search(current[-1])
            and (line[0].islower() or line[0] in ",;)")
        )
        if current and not continues:
            paragraphs.append(" ".join(current))
            current = []
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def split_sentences(text: str) -> list[str]:
    """Split free text into sentences, whitespace-normalised.

    Rule-based on purpose (no model download): a boundary is terminal punctuation followed by whitespace and a
    capital/digit, unless the word before is an abbreviation ("e.g.", "Dr.", "Inc.") or an initial. Decimals
    ("3.5") and URLs never contain whitespace after the period, so they are never split.
    """
    sentences: list[str] = []
    for paragraph in _paragraphs(text):
        sentences.extend(_split_paragraph(paragraph))
    return sentences


def read_vlltr_corpus(path: str | os.PathLike) -> list[str]:
    """Sentences of one VL-LTR class file, without headers and without reference-like sections.

    A subsection (`=== ... ===`) of a dropped section is dropped too; the next header at the same or a higher
    level ends the dropped region.
    """
    kept_lines: list[str] = []
    drop_level: int | None = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        header = _HEADER.match(line) if line.lstrip().startswith("==") else None
        if header:
            level, title = len(header.group(1)), header.group(2).strip().lower()
            if drop_level is not None and level > drop_level:
                continue
            drop_level = level if title in DROPPED_SECTIONS else None
            kept_lines.append("")  # a header always ends the paragraph before it
            continue
        if drop_level is None:
            kept_lines.append(line)
    return split_sentences("\n".join(kept_lines))


def corpus_file(text_dir: str | os.PathLike, label: int) -> Path:
    return Path(text_dir) / f"desc_{label}.txt"


def load_class_corpus(
    text_dir: str | os.PathLike, num_classes: int, missing: list[int] | None = None
) -> dict[int, list[str]]:
    """Sentences per class label from `<text_dir>/desc_<label>.txt`.

    A missing file is not an error (many long-tailed datasets lack text for some classes; the prompt templates
    still cover them): the class gets an empty list, a warning is logged, and its label is appended to
    `missing` when a list is passed.
    """
    corpus: dict[int, list[str]] = {}
    absent: list[int] = []
    for label in range(num_classes):
        path = corpus_file(text_dir, label)
        if path.is_file():
            corpus[label] = read_vlltr_corpus(path)
        else:
            corpus[label] = []
            absent.append(label)
    if absent:
        shown = ", ".join(map(str, absent[:20])) + (" ..." if len(absent) > 20 else "")
        log.warning(
            "no class text for %d of %d classes in %s (labels %s)", len(absent), num_classes, text_dir, shown
        )
    if missing is not None:
        missing.extend(absent)
    return corpus


def load_truth(text_dir: str | os.PathLike) -> dict[tuple[int, str], bool]:
    """`(label, sentence) -> is_boilerplate` from `<text_dir>/truth.jsonl`; empty when the file is absent."""
    path = Path(text_dir) / "truth.jsonl"
    truth: dict[tuple[int, str], bool] = {}
    if not path.is_file():
        return truth
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                truth[(int(row["label"]), str(row["sentence"]))] = bool(row["boilerplate"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: bad truth row ({err})") from None
    return truth
