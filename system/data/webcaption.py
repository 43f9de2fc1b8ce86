"""img2dataset web-caption shards -> a labelled dataset: each caption is assigned a class by its words.

Matching is on words (case-folded; any non-letter/digit separates words, so `Golden-Retriever's` reads as
`golden retriever s`): a class matches when its name or one of its synonyms appears as a whole word sequence.
The last word of a name or synonym also matches its regular English plural (`+s`, `+es` after s/x/z/ch/sh/o,
`y -> ies`, `f/fe -> ves`) and, for a word ending in `s`, its singular; irregular plurals (`mouse: [mice]`) go in
the synonyms file. A match lying inside a longer match of another class does not count (`polar bear` is not also
`bear`). A caption with exactly one class is kept, with the caption as the sample's txt; one with none
(`no_class_match`) or several (`ambiguous_class`) is dropped and counted.

Synonyms file: YAML (or JSON) mapping a class, by its name in the class-name file or by its integer label, to a
synonym or a list of them:

    tench: [Tinca tinca, doctor fish]
    3: tiger shark

The same word sequence may not name two classes (refused, naming both).
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from system.data.class_list import ClassList
from system.data.dataset_dir import DatasetError
from system.data.decode import IMAGE_KEYS
from system.data.shard_build import SampleRef, SkipLog, SourcePlan, holdout

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.casefold()))


def word_forms(word: str) -> set[str]:
    """`word` and its regular plural (or singular, for a word ending in s) forms."""
    forms = {word, word + "s"}
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.add(word + "es")
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    elif word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    return forms


def read_synonyms(path: str | os.PathLike, class_names: list[str]) -> dict[int, list[str]]:
    """label -> synonyms from a YAML/JSON mapping (module docstring); DatasetError names the file and key."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"synonyms file {p} does not exist")
    from system.config import ConfigError, read_yaml

    try:
        data = read_yaml(p)
    except ConfigError as err:
        raise DatasetError(str(err)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DatasetError(f"{p}: must be a mapping of class name (or label) to synonyms")
    label_of = {name: i for i, name in enumerate(class_names)}
    out: dict[int, list[str]] = {}
    for key, value in data.items():
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(class_names):
            label = key
        elif isinstance(key, str) and key in label_of:
            label = label_of[key]
        else:
            raise DatasetError(
                f"{p}: key {key!r} is neither a class name nor a label 0..{len(class_names) - 1}"
            )
        synonyms = [value] if isinstance(value, str) else value
        if not isinstance(synonyms, list) or not all(isinstance(s, str) and words(s) for s in synonyms):
            raise DatasetError(f"{p}: key {key!r}: synonyms must be a word or a list of words, got {value!r}")
        out.setdefault(label, []).extend(synonyms)
    return out


class CaptionMatcher:
    """Assigns a caption to the one class it names (see the module docstring)."""

    def __init__(
        self, class_names: list[str], synonyms: dict[int, list[str]] | None = None, where: str = ""
    ) -> None:
        exact: dict[tuple[str, ...], int] = {}
        for label, name in enumerate(class_names):
            for term in [name, *(synonyms or {}).get(label, [])]:
                seq = words(term)
                if not seq:
                    raise DatasetError(f"{where}: class {name!r}: {term!r} has no words to match")
                other = exact.setdefault(seq, label)
                if other != label:
                    raise DatasetError(
                        f"{where}: {' '.join(seq)!r} names both class {class_names[other]!r} and class {name!r}"
                    )
        # Plural/singular variants never override a given term; a variant two classes share matches neither.
        variants: dict[tuple[str, ...], int | None] = {}
        for seq, label in exact.items():
            for form in word_forms(seq[-1]):
                variant = (*seq[:-1], form)
                if variant in exact:
                    continue
                variants[variant] = label if variants.get(variant, label) == label else None
        self.index = {**{v: lab for v, lab in variants.items() if lab is not None}, **exact}
        self.max_len = max(map(len, self.index))

    def labels(self, caption: str) -> set[int]:
        """Classes named in `caption`, after dropping matches inside a longer match of another class."""
        toks = words(caption)
        spans: list[tuple[int, int, int]] = []  # (start, end, label) in word positions
        for i in range(len(toks)):
            for n in range(min(self.max_len, len(toks) - i), 0, -1):
                label = self.index.get(toks[i : i + n])
                if label is not None:
                    spans.append((i, i + n, label))
        return {
            lab
            for a, b, lab in spans
            if not any(c <= a and b <= d and d - c > b - a and other != lab for c, d, other in spans)
        }

    def assign(self, caption: str) -> tuple[int | None, str]:
        """(label, "") for exactly one class, else (None, reason)."""
        if not caption.strip():
            return None, "no_caption"
        found = self.labels(caption)
        if len(found) == 1:
            return found.pop(), ""
        return None, "no_class_match" if not found else "ambiguous_class"


def _expand(spec: str) -> list[str]:
    """Local shard paths of `spec` (brace ranges, globs, folders; side files ignored), all present."""
    from system.data.shard_spec import resolve_shards
    from system.data.stores import exists

    try:
        shards = resolve_shards(spec)
    except DatasetError as err:
        raise DatasetError(f"--web-shards: {err}") from None
    if "://" in shards.urls[0]:
        raise DatasetError(
            f"--web-shards {spec!r}: build from local shards (copy them from the object store)"
        )
    missing = [u for u, ok in zip(shards.urls, exists(shards.urls), strict=True) if not ok]
    if missing:
        raise DatasetError(f"--web-shards: missing shard file(s): {missing[:3]}")
    return shards.urls


def _members(path: str) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], tarfile.TarFile]]:
    """(key, {ext: member}, the open tar) per sample of one img2dataset shard, in file order."""
    try:
        tar = tarfile.open(path, "r:")  # plain tar (img2dataset's): image bytes are read later by offset
    except tarfile.ReadError as err:
        raise DatasetError(f"--web-shards: {path} is not an uncompressed tar ({err})") from None
    with tar:
        key, group = None, {}
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            dot = len(member.name) - len(base) + base.index(".")
            k, ext = member.name[:dot], member.name[dot + 1 :].lower()
            if k != key:
                if key is not None:
                    yield key, group, tar
                key, group = k, {}
            group[ext] = member
        if key is not None:
            yield key, group, tar


def _text(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> str:
    if member is None:
        return ""
    handle = tar.extractfile(member)
    return handle.read().decode("utf-8", errors="replace") if handle is not None else ""


def plan_web_shards(
    spec: str,
    classes: ClassList,
    synonyms_path: str | None,
    val_per_class: int,
    test_per_class: int,
    seed: int,
    skips: SkipLog,
) -> SourcePlan:
    """Scan the shards' captions (image bytes are not read here) and plan the labelled samples."""
    import json

    synonyms = read_synonyms(synonyms_path, classes.names) if synonyms_path else {}
    matcher = CaptionMatcher(classes.names, synonyms, synonyms_path or classes.path)
    paths = _expand(spec)
    base = Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
    refs: list[SampleRef] = []
    for path in paths:
        st = os.stat(path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        shard = Path(path).relative_to(base).as_posix()
        for key, group, tar in _members(path):
            origin = f"{shard}:{key}"
            where = f"{path} ({origin})"  # log lines name the file
            image = next((group[e] for e in IMAGE_KEYS if e in group), None)
            if image is None:
                skips.add("missing_image", where)
                continue
            caption = " ".join(_text(tar, group.get("txt")).split())
            meta: dict[str, Any] = {}
            if "json" in group:
                try:
                    meta = json.loads(_text(tar, group["json"]))
                except json.JSONDecodeError:
                    meta = {}
                if not caption and isinstance(meta, dict) and isinstance(meta.get("caption"), str):
                    caption = " ".join(meta["caption"].split())
            label, reason = matcher.assign(caption)
            if label is None:
                skips.add(reason, where, caption[:80])
                continue
            extra = tuple(
                (k, meta[k]) for k in ("url",) if isinstance(meta, dict) and isinstance(meta.get(k), str)
            )
            refs.append(SampleRef(path, label, origin, caption, image.offset_data, image.size, stamp, extra))
    splits = holdout(refs, len(classes.names), val_per_class, test_per_class, seed)
    return SourcePlan(
        kind="web-caption",
        description=f"img2dataset shards {spec} ({len(paths)} files), classes matched in captions"
        + (f" with synonyms {Path(synonyms_path).resolve()}" if synonyms_path else ""),
        class_names=classes.names,
        splits=splits,
        class_ids=classes.ids,
        extra={"caption_matches": len(refs)},
    )
