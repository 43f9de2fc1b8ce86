"""The engine behind `uniproto build-shards`: a planned list of images per split -> a dataset directory.

A reader (split files, image folders, web-caption shards) turns its input into a `SourcePlan`: class names and,
per split, `SampleRef`s (where an image's bytes are, its label and caption). From there:

1. **Plan.** Each split is put in a seeded order (shards mix classes; Ray reads one shard per task) and cut into
   shards of `samples_per_shard`. A shard's content is fixed by its list of refs alone, so the bytes do not
   depend on the worker count or on which worker writes it.
2. **Write.** Workers (a process pool) each write whole shards: read, re-encode as JPEG at `max_side`, skip and
   count what cannot be read. A shard is written under a temporary name and renamed when complete, then its
   record (`.build/<split>/<n>.json`: plan hash, tar sha256, label counts, skipped images) is written.
3. **Resume.** A rerun into a directory with `.build/` and no manifest (an interrupted build) keeps every shard
   whose record's plan hash matches and whose bytes still hash to the record; it writes the rest and removes
   shards and temp files that the plan no longer has.
4. **Manifest last**: `manifest.json` appears only when every shard is complete, so its presence means done. A
   directory holding a manifest is refused unless `overwrite` (then it is cleared and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from system.config import ConfigError
from system.data.corpus import corpus_file
from system.data.dataset_dir import (
    FORMAT_VERSION,
    KEY_STRIDE,
    MANIFEST_NAME,
    DatasetError,
    Manifest,
    SplitInfo,
    shard_relpath,
    write_manifest,
    write_shard,
)
from system.data.reencode import ImageSkip, reencode_jpeg

BUILD_DIR = ".build"  # per-shard records; also marks a directory as one that build-shards may resume or clear
SPLITS = ("train", "val", "test")
_SKIP_LINES_PER_REASON = 20  # log lines naming skipped files, per reason; the counts are always complete
# Bump when the shard bytes for the same plan change (encoding, json fields): old records then stop matching.
_WRITER_VERSION = 1

Say = Callable[[str], None]


@dataclass(frozen=True)
class SampleRef:
    """One planned sample: the image bytes are `path[offset:offset+size]` (size -1: the whole file)."""

    path: str
    label: int
    origin: str  # recorded in the sample's json: a path relative to the input root, or `shard.tar:key`
    caption: str = ""
    offset: int = 0
    size: int = -1
    stamp: str = (
        ""  # input file size and mtime: a changed input changes the plan hash, so the shard is redone
    )
    meta: tuple[tuple[str, Any], ...] = ()  # extra json fields (e.g. the web url)

    @property
    def where(self) -> str:
        """The input named in a log line: the file, or the tar and the member's sample."""
        return self.path if self.size < 0 else f"{self.path} ({self.origin})"


@dataclass
class SourcePlan:
    """What a reader hands the engine."""

    kind: str  # the samples' json `source`, e.g. "split-files"
    description: str  # the manifest's `source`: what the dataset was built from
    class_names: list[str]
    splits: dict[str, list[SampleRef]]
    class_ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildOptions:
    """Knobs of a build; checked on construction (ConfigError names the command-line flag)."""

    max_side: int = 512  # longest image side after re-encoding; 0 keeps the size (never upscaled)
    jpeg_quality: int = 90
    samples_per_shard: int = 1000
    workers: int = 0  # 0: min(4, cpus)
    seed: int = 0  # sample order within each split (and per-class holdout)
    overwrite: bool = False
    name: str | None = None  # dataset name in the manifest; default: the output folder's name

    def __post_init__(self) -> None:
        checks = {
            "--max-side": (self.max_side, 0, None),
            "--jpeg-quality": (self.jpeg_quality, 1, 100),
            "--samples-per-shard": (self.samples_per_shard, 1, KEY_STRIDE),
            "--workers": (self.workers, 0, None),
        }
        for flag, (value, lo, hi) in checks.items():
            if not isinstance(value, int) or value < lo or (hi is not None and value > hi):
                bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ConfigError(f"{flag}: must be an integer {bound}, got {value!r}")
        if self.workers == 0:
            self.workers = default_workers()

    def encoding(self) -> dict[str, int]:
        """The options that change a shard's bytes (part of every shard's plan hash)."""
        return {"max_side": self.max_side, "jpeg_quality": self.jpeg_quality, "writer": _WRITER_VERSION}


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class SkipLog:
    """Skipped inputs counted by reason; the first few of each reason are logged with the file named."""

    def __init__(self, say: Say | None) -> None:
        self.counts: Counter[str] = Counter()
        self.say = say

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if self.say is None or n > _SKIP_LINES_PER_REASON:
            return
        more = " (further ones are counted, not named)" if n == _SKIP_LINES_PER_REASON else ""
        self.say(f"[build-shards] skipped {where}: {reason}{f' ({detail})' if detail else ''}{more}")


def holdout(
    refs: list[SampleRef], num_classes: int, val_per_class: int, test_per_class: int, seed: int
) -> dict[str, list[SampleRef]]:
    """Per-class seeded holdout: val and test take up to N images of each class, train keeps at least one.

    Counts, not fractions: long-tailed benchmarks evaluate on balanced val/test splits (ImageNet-LT: 20 val and
    50 test images per class), and a fraction of a 3-image tail class rounds to nothing.
    """
    by_class: list[list[SampleRef]] = [[] for _ in range(num_classes)]
    for ref in refs:
        by_class[ref.label].append(ref)
    out: dict[str, list[SampleRef]] = {"train": [], "val": [], "test": []}
    for label, items in enumerate(by_class):
        order = np.random.default_rng([seed, 7, label]).permutation(len(items))
        shuffled = [items[i] for i in order]
        n_val = min(val_per_class, max(0, len(items) - 1))
        n_test = min(test_per_class, max(0, len(items) - 1 - n_val))
        out["val"] += shuffled[:n_val]
        out["test"] += shuffled[n_val : n_val + n_test]
        out["train"] += shuffled[n_val + n_test :]
    asked = {"train": True, "val": val_per_class > 0, "test": test_per_class > 0}
    return {split: rows for split, rows in out.items() if asked[split]}


# ------------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class ShardTask:
    root: str
    split: str
    index: int
    refs: tuple[SampleRef, ...]
    class_names: tuple[str, ...]
    kind: str
    encoding: tuple[tuple[str, int], ...]
    plan_hash: str

    @property
    def rel(self) -> str:
        return shard_relpath(self.split, self.index)

    @property
    def record_path(self) -> Path:
        return Path(self.root) / BUILD_DIR / self.split / f"{self.index:05d}.json"


def plan_shards(root: Path, plan: SourcePlan, options: BuildOptions) -> dict[str, list[ShardTask]]:
    """Seeded order per split, cut into shards; each shard's hash covers everything that decides its bytes."""
    encoding = tuple(sorted(options.encoding().items()))
    names = tuple(plan.class_names)
    tasks: dict[str, list[ShardTask]] = {}
    for split, refs in plan.splits.items():
        order = np.random.default_rng([options.seed, zlib.crc32(split.encode())]).permutation(len(refs))
        ordered = [refs[i] for i in order]
        size = options.samples_per_shard
        tasks[split] = []
        for index, start in enumerate(range(0, len(ordered), size)):
            chunk = tuple(ordered[start : start + size])
            content = [split, index, plan.kind, list(names), list(encoding), [asdict(r) for r in chunk]]
            digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
            tasks[split].append(ShardTask(str(root), split, index, chunk, names, plan.kind, encoding, digest))
    return tasks


# ------------------------------------------------------------------------------------------------ writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_bytes(ref: SampleRef) -> bytes:
    with open(ref.path, "rb") as f:
        f.seek(ref.offset)
        return f.read() if ref.size < 0 else f.read(ref.size)


def _samples(task: ShardTask, counts: Counter[int], skipped: list[list[str]]) -> Iterator[dict[str, Any]]:
    encoding = dict(task.encoding)
    for ref in task.refs:
        try:
            jpg, width, height = reencode_jpeg(
                _read_bytes(ref), encoding["max_side"], encoding["jpeg_quality"]
            )
        except ImageSkip as err:
            skipped.append([err.reason, ref.where, err.detail])
            continue
        except OSError as err:  # vanished or unreadable since planning
            skipped.append(["unreadable_file", ref.where, f"{type(err).__name__}: {err}"])
            continue
        counts[ref.label] += 1
        meta = {
            "label": ref.label,
            "class_name": task.class_names[ref.label],
            "source": task.kind,
            "origin": ref.origin,
            "width": width,
            "height": height,
            **dict(ref.meta),
        }
        yield {"jpg": jpg, "txt": ref.caption, "json": meta}


def write_task(task: ShardTask) -> dict[str, Any]:
    """Write one shard, then its record (what a resume trusts). Runs in a pool worker."""
    counts: Counter[int] = Counter()
    skipped: list[list[str]] = []
    num = write_shard(task.root, task.rel, task.index, _samples(task, counts, skipped))
    record = {
        "plan": task.plan_hash,
        "sha256": _sha256(Path(task.root) / task.rel),
        "num_samples": num,
        "label_counts": sorted([label, n] for label, n in counts.items()),
        "skipped": skipped,
    }
    path = task.record_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return record


def completed_record(task: ShardTask) -> dict[str, Any] | None:
    """The record of a shard an earlier run finished with this very plan, or None (then it is rewritten)."""
    shard = Path(task.root) / task.rel
    if not (task.record_path.is_file() and shard.is_file()):
        return None
    try:
        record = json.loads(task.record_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("plan") != task.plan_hash:
        return None
    return record if record.get("sha256") == _sha256(shard) else None


def _remove_stale(root: Path, tasks: dict[str, list[ShardTask]]) -> None:
    """Shards, records and temp files an earlier (interrupted or differently planned) run left behind."""
    planned = {Path(t.rel) for ts in tasks.values() for t in ts}
    records = {t.record_path for ts in tasks.values() for t in ts}
    for split_dir in [root / s for s in SPLITS] + [root / s for s in tasks]:
        if split_dir.is_dir():
            for f in split_dir.iterdir():
                if f.is_file() and f.name.endswith((".tar", ".tmp")) and f.relative_to(root) not in planned:
                    f.unlink()
    build = root / BUILD_DIR
    if build.is_dir():
        for f in build.rglob("*"):
            if f.is_file() and f not in records:
                f.unlink()


def _run_tasks(pending: list[ShardTask], workers: int) -> Iterator[tuple[ShardTask, dict[str, Any]]]:
    if workers <= 1 or len(pending) <= 1:
        for task in pending:
            yield task, write_task(task)
        return
    import webdataset  # noqa: F401 - imported once here, so forked workers do not each pay seconds for torch

    with ProcessPoolExecutor(max_workers=min(workers, len(pending))) as pool:
        # map yields in task order, so logs and counts come out the same way for any worker count.
        yield from zip(pending, pool.map(write_task, pending, chunksize=1), strict=True)


# ------------------------------------------------------------------------------------------------ output dir


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an `out` that is not ours, or that holds a finished dataset without `overwrite` (no side effects:
    called before a long planning pass, so a refusal comes at once)."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / MANIFEST_NAME).is_file():
        if not overwrite:
            raise DatasetError(
                f"--out {out} already holds a dataset ({out / MANIFEST_NAME}); pass --overwrite to replace it"
            )
    elif not (out / BUILD_DIR).is_dir():
        raise DatasetError(
            f"--out {out} is not empty and is not a uniproto dataset (no {MANIFEST_NAME}, no {BUILD_DIR}/); "
            f"choose an empty or new folder"
        )


def prepare_out(out: Path, overwrite: bool) -> bool:
    """Make `out` ready; True when an interrupted build (no manifest yet) is resumed."""
    check_out(out, overwrite)
    if (out / MANIFEST_NAME).is_file():  # overwrite: clear the finished dataset
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    resumed = (out / BUILD_DIR).is_dir()
    (out / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    return resumed


def copy_class_text(
    src: Path, dst: Path, class_names: list[str], class_ids: list[str] | None, say: Say | None
) -> int:
    """Copy a VL-LTR corpus into `dst/desc_<label>.txt`, normalised (UTF-8, `\\n` line ends, no trailing
    spaces, one final newline). A class's file is `desc_<label>.txt`, else `<class id>.txt`, else
    `<class name>.txt`. Returns the number of classes with text; classes without it still train on prompts."""
    if not src.is_dir():
        raise DatasetError(f"--class-text {src} is not a directory")
    dst.mkdir(parents=True, exist_ok=True)
    files = {f.name: f for f in src.iterdir() if f.is_file()}
    used: set[str] = set()
    for name in files:
        stem = name[len("desc_") : -len(".txt")] if name.startswith("desc_") and name.endswith(".txt") else ""
        if stem.isdigit() and int(stem) >= len(class_names):
            raise DatasetError(
                f"--class-text: {src / name} is for label {int(stem)}, but there are {len(class_names)} classes"
            )
    copied = 0
    for label, cname in enumerate(class_names):
        candidates = (
            [f"desc_{label}.txt"] + ([f"{class_ids[label]}.txt"] if class_ids else []) + [f"{cname}.txt"]
        )
        found = next((files[c] for c in candidates if c in files), None)
        if found is None:
            continue
        try:
            text = found.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DatasetError(f"--class-text: {found} is not UTF-8 text ({err})") from None
        lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        corpus_file(dst, label).write_text("\n".join(lines).strip("\n") + "\n", encoding="utf-8")
        used.add(found.name)
        copied += 1
    if say is not None:
        unused = sorted(set(files) - used)
        note = f"; {len(unused)} file(s) matched no class, e.g. {unused[:3]}" if unused else ""
        say(f"[build-shards] class text: {copied} of {len(class_names)} classes from {src}{note}")
    return copied


# ------------------------------------------------------------------------------------------------ build


def build_dataset(
    out: str | os.PathLike,
    plan: SourcePlan,
    options: BuildOptions,
    skips: SkipLog,
    class_text: str | os.PathLike | None = None,
    say: Say | None = print,
) -> dict[str, Any]:
    """Write `plan` as a dataset directory at `out` (see the module docstring); returns the summary."""
    start = time.perf_counter()
    root = Path(out)
    resumed = prepare_out(root, options.overwrite)
    if say is not None:
        sizes = ", ".join(f"{s} {len(r)}" for s, r in plan.splits.items())
        say(
            f"[build-shards] {len(plan.class_names)} classes, {sizes} images planned -> {root} "
            f"({options.workers} workers{', resuming' if resumed else ''})"
        )
    # Class text first: a bad corpus folder fails in seconds, not after the images are written. Cleared first, so
    # a resumed build does not keep files of an earlier attempt's corpus.
    shutil.rmtree(root / "text", ignore_errors=True)
    text_dir = None
    if class_text is not None:
        copy_class_text(Path(class_text), root / "text", plan.class_names, plan.class_ids, say)
        text_dir = "text"
    tasks = plan_shards(root, plan, options)
    _remove_stale(root, tasks)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    pending: list[ShardTask] = []
    for split_tasks in tasks.values():
        for task in split_tasks:
            record = completed_record(task) if resumed else None
            if record is None:
                pending.append(task)
            else:
                records[(task.split, task.index)] = record
    reused = len(records)
    total = len(pending)
    step = max(1, total // 10)
    for done, (task, record) in enumerate(_run_tasks(pending, options.workers), 1):
        records[(task.split, task.index)] = record
        if say is not None and (done % step == 0 or done == total):
            say(f"[build-shards] {done}/{total} shards written ({reused} kept from an earlier run)")

    splits: dict[str, SplitInfo] = {}
    counts_by_split: dict[str, list[int]] = {}
    for split, split_tasks in tasks.items():
        counts = [0] * len(plan.class_names)
        for task in split_tasks:
            record = records[(split, task.index)]
            for label, n in record["label_counts"]:
                counts[label] += n
            for reason, where, detail in record["skipped"]:
                skips.add(reason, where, detail)
        splits[split] = SplitInfo(sum(counts), [t.rel for t in split_tasks])
        counts_by_split[split] = counts

    train_counts = counts_by_split.get("train", [0] * len(plan.class_names))
    empty = [plan.class_names[c] for c, n in enumerate(train_counts) if n == 0]
    if empty and say is not None:
        say(f"[build-shards] warning: {len(empty)} classes have no train image, e.g. {empty[:5]}")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=options.name or root.resolve().name,
        class_names=list(plan.class_names),
        train_counts=train_counts,
        splits=splits,
        text_dir=text_dir,
        image_size=None,  # images keep their aspect; the decode stage resizes
        source=plan.description,
        extra={
            **plan.extra,
            **({"class_ids": plan.class_ids} if plan.class_ids else {}),
            "builder": {
                "max_side": options.max_side,
                "jpeg_quality": options.jpeg_quality,
                "samples_per_shard": options.samples_per_shard,
                "seed": options.seed,
            },
            "skipped": dict(sorted(skips.counts.items())),
        },
    )
    write_manifest(root, manifest)  # last: its presence means every shard is complete
    return {
        "out": str(root),
        "classes": len(plan.class_names),
        "splits": {s: info.num_samples for s, info in splits.items()},
        "skipped": dict(sorted(skips.counts.items())),
        "shards_written": total,
        "shards_kept": reused,
        "seconds": round(time.perf_counter() - start, 2),
    }
