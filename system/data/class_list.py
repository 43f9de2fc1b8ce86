"""Class-name files for dataset builders: which name (and optional id) each label has.

Three line formats, decided for the whole file so a line is never read two ways:

    tench                      plain: one name per line, label = position among the non-blank lines
    0 tench                    labelled: every line starts with an integer label; labels are 0..K-1, each once
    n01440764 tench            WordNet ids (ImageNet): every line starts with `n` + 8 digits; label = position

A file whose lines all start with an integer but whose integers are not exactly 0..K-1 is refused (naming the
line) rather than read as plain names: "2 toed sloth" style names would be the only way that could happen.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from system.data.dataset_dir import DatasetError

_LABELLED = re.compile(r"^(\d+)\s+(\S.*)$")
_WNID = re.compile(r"^(n\d{8})\s+(\S.*)$")


@dataclass(frozen=True)
class ClassList:
    """Class names in label order; `ids` are the WordNet ids when the file had them."""

    names: list[str]
    ids: list[str] | None
    fmt: str  # "plain" | "labelled" | "wnid"
    path: str


def read_class_names(path: str | os.PathLike) -> ClassList:
    """Read a class-name file (see the module docstring); DatasetError names the file and line."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"class-name file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{p}: not UTF-8 text ({err})") from None
    rows = [(n, " ".join(line.split())) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DatasetError(f"{p}: no class names (empty file)")
    if all(_WNID.match(line) for _, line in rows):
        ids, row_names = zip(*(_WNID.match(line).groups() for _, line in rows), strict=True)
        _refuse_duplicates(p, rows, list(ids), "WordNet id")
        out = ClassList(list(row_names), list(ids), "wnid", str(p))
    elif all(_LABELLED.match(line) for _, line in rows):
        by_label: dict[int, str] = {}
        for lineno, line in rows:
            label_s, name = _LABELLED.match(line).groups()
            label = int(label_s)
            if label in by_label or label >= len(rows):
                raise DatasetError(
                    f"{p}:{lineno}: label {label} {'repeats' if label in by_label else 'is out of range'}: "
                    f"a labelled class-name file lists each of 0..{len(rows) - 1} once"
                )
            by_label[label] = name
        row_names = [_LABELLED.match(line).group(2) for _, line in rows]
        out = ClassList([by_label[i] for i in range(len(rows))], None, "labelled", str(p))
    else:
        row_names = [line for _, line in rows]
        out = ClassList(row_names, None, "plain", str(p))
    _refuse_duplicates(p, rows, list(row_names), "name")
    return out


def _refuse_duplicates(path: Path, rows: list[tuple[int, str]], values: list[str], what: str) -> None:
    first: dict[str, int] = {}
    for (lineno, _), value in zip(rows, values, strict=True):
        if value in first:
            raise DatasetError(
                f"{path}:{lineno}: class {what} {value!r} repeats line {first[value]} (class names must be "
                f"unique; disambiguate one of them)"
            )
        first[value] = lineno
