"""`uniproto build-shards`: your images -> a dataset directory (see system/data/shard_build.py for how).

Three sources, one per flag (a registry, `SOURCES`):

- `--train-split F [--val-split F] [--test-split F] --image-root R --class-names F`: ImageNet-LT / Places-LT /
  iNaturalist-2018 split files, one `relative/path label` per line (the last whitespace-separated field is the
  label, so paths may hold spaces; a leading `/` is ignored, as in Places-LT's files; `#` lines and blank lines
  are skipped). A malformed line or a label outside the class list is an error naming file:line; a listed image
  that does not exist is counted (`missing_file`) and skipped.
- `--image-folder R [--class-names F]`: a folder per class, label = position in the sorted folder names (code
  point order, as torchvision's ImageFolder), images found recursively by extension. Without `--class-names` a
  class is named after its folder (`_` read as a space); with a WordNet-id class file (`n01440764 tench`) the
  folders are matched by id. Val/test: `--val-per-class N --test-per-class N`, a seeded per-class holdout.
- `--web-shards SPEC --class-names F [--synonyms F]`: img2dataset web-caption shards, classes assigned from the
  captions (system/data/webcaption.py); the same holdout flags give val/test.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from system.data.class_list import ClassList, read_class_names
from system.data.dataset_dir import DatasetError
from system.data.shard_build import (
    BuildOptions,
    SampleRef,
    SkipLog,
    SourcePlan,
    build_dataset,
    check_out,
    holdout,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"})


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def read_split_file(
    path: str | os.PathLike, image_root: Path, classes: ClassList, skips: SkipLog
) -> list[SampleRef]:
    """SampleRefs of one split file (format in the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"split file {p} does not exist")
    refs: list[SampleRef] = []
    with p.open(encoding="utf-8-sig") as handle:
        for lineno, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise DatasetError(f"{p}:{lineno}: expected '<relative/path> <label>', got {line!r}")
            rel, label_s = parts[0].lstrip("/"), parts[1]
            try:
                label = int(label_s)
            except ValueError:
                raise DatasetError(f"{p}:{lineno}: label {label_s!r} is not an integer") from None
            if not 0 <= label < len(classes.names):
                raise DatasetError(
                    f"{p}:{lineno}: label {label} is outside the class list (0..{len(classes.names) - 1}, "
                    f"from {classes.path})"
                )
            image = image_root / rel
            try:
                st = image.stat()
            except OSError:
                skips.add("missing_file", f"{p}:{lineno}", str(image))
                continue
            refs.append(SampleRef(str(image), label, rel, stamp=_stamp(st)))
    return refs


def plan_split_files(a: argparse.Namespace, skips: SkipLog) -> SourcePlan:
    if not a.image_root:
        raise DatasetError("--train-split needs --image-root (the folder its paths are relative to)")
    root = Path(a.image_root)
    if not root.is_dir():
        raise DatasetError(f"--image-root {root} is not a directory")
    if not a.class_names:
        raise DatasetError("--train-split needs --class-names")
    classes = read_class_names(a.class_names)
    files = {"train": a.train_split, "val": a.val_split, "test": a.test_split}
    splits = {s: read_split_file(f, root, classes, skips) for s, f in files.items() if f}
    described = ", ".join(f"{s}={Path(f).resolve()}" for s, f in files.items() if f)
    return SourcePlan(
        kind="split-files",
        description=f"split files {described}; images under {root.resolve()}",
        class_names=classes.names,
        splits=splits,
        class_ids=classes.ids,
    )


def _folder_images(folder: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # sorted: a fixed walk order
        found += [Path(dirpath, f) for f in sorted(filenames) if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return found


def plan_image_folder(a: argparse.Namespace, skips: SkipLog) -> SourcePlan:
    root = Path(a.image_folder)
    if not root.is_dir():
        raise DatasetError(f"--image-folder {root} is not a directory")
    out = Path(a.out).resolve()
    if out == root.resolve() or root.resolve() in out.parents:
        raise DatasetError(f"--out {a.out} is inside --image-folder {root}: it would be read as a class")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DatasetError(f"--image-folder {root} has no class folders")
    ids: list[str] | None = None
    if a.class_names:
        classes = read_class_names(a.class_names)
        names = classes.names
        if classes.ids:  # folders named by WordNet id, labels from the file
            unknown = sorted(set(folders) - set(classes.ids))
            if unknown:
                raise DatasetError(
                    f"--image-folder {root}: folder(s) {unknown[:5]} are not WordNet ids of {classes.path}"
                )
            ids = classes.ids
            label_of = {wnid: i for i, wnid in enumerate(classes.ids)}
        else:
            if len(names) != len(folders):
                raise DatasetError(
                    f"{classes.path} names {len(names)} classes but --image-folder {root} has {len(folders)} "
                    f"class folders"
                )
            label_of = {f: i for i, f in enumerate(folders)}
    else:
        names = [" ".join(f.replace("_", " ").split()) for f in folders]
        label_of = {f: i for i, f in enumerate(folders)}
    refs: list[SampleRef] = []
    for folder in folders:
        for image in _folder_images(root / folder):
            try:
                st = image.stat()
            except OSError:  # a dangling symlink
                skips.add("missing_file", str(image))
                continue
            rel = image.relative_to(root).as_posix()
            refs.append(SampleRef(str(image), label_of[folder], rel, stamp=_stamp(st)))
    splits = holdout(refs, len(names), a.val_per_class, a.test_per_class, a.seed)
    return SourcePlan(
        kind="image-folder",
        description=f"image folder {root.resolve()} (val/test: {a.val_per_class}/{a.test_per_class} per class "
        f"held out, seed {a.seed})",
        class_names=names,
        splits=splits,
        class_ids=ids,
        extra={"class_folders": folders},
    )


def _plan_web(a: argparse.Namespace, skips: SkipLog) -> SourcePlan:
    from system.data.webcaption import plan_web_shards

    if not a.class_names:
        raise DatasetError("--web-shards needs --class-names")
    return plan_web_shards(
        a.web_shards,
        read_class_names(a.class_names),
        a.synonyms,
        a.val_per_class,
        a.test_per_class,
        a.seed,
        skips,
    )


# The flag that names the source -> its reader.
SOURCES: dict[str, Callable[[argparse.Namespace, SkipLog], SourcePlan]] = {
    "train_split": plan_split_files,
    "image_folder": plan_image_folder,
    "web_shards": _plan_web,
}
# Flags that only mean something for some sources: refused elsewhere rather than silently ignored.
_ONLY_FOR = {
    "image_root": {"train_split"},
    "val_split": {"train_split"},
    "test_split": {"train_split"},
    "synonyms": {"web_shards"},
    "val_per_class": {"image_folder", "web_shards"},
    "test_per_class": {"image_folder", "web_shards"},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="uniproto build-shards",
        description="Build a dataset directory (WebDataset shards + manifest) from split files, an image-folder "
        "tree or img2dataset web-caption shards. Deterministic, parallel, resumable (run it again after an "
        "interruption). The last line printed is one JSON object.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-split", help="split file of `relative/path label` lines (with --image-root)")
    src.add_argument("--image-folder", help="a folder per class; sorted folder names give the label order")
    src.add_argument(
        "--web-shards", help="img2dataset shards: brace pattern or glob of .tar, `::` between specs"
    )
    p.add_argument("--image-root", help="folder the split files' paths are relative to")
    p.add_argument("--val-split", help="split file for val")
    p.add_argument("--test-split", help="split file for test")
    p.add_argument(
        "--class-names",
        help="one class per line in label order: `name`, `label name` or `n01440764 name` lines",
    )
    p.add_argument("--class-text", help="VL-LTR corpus folder: desc_<label>.txt (or <id>.txt, <name>.txt)")
    p.add_argument("--synonyms", help="YAML/JSON mapping class name (or label) -> list of synonyms")
    p.add_argument("--val-per-class", type=int, default=0, help="images per class held out for val (seeded)")
    p.add_argument(
        "--test-per-class", type=int, default=0, help="images per class held out for test (seeded)"
    )
    p.add_argument("--out", required=True, help="dataset directory to create (or resume)")
    p.add_argument("--name", help="dataset name in the manifest (default: the --out folder's name)")
    p.add_argument("--max-side", type=int, default=512, help="longest side after re-encoding (0: keep)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=0, help="writer processes (default: min(4, cpus))")
    p.add_argument("--seed", type=int, default=0, help="sample order in the shards and the holdout draw")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    a = p.parse_args(argv)
    source = next(k for k in SOURCES if getattr(a, k))
    for flag, allowed in _ONLY_FOR.items():
        if source not in allowed and getattr(a, flag) not in (None, 0):
            p.error(f"--{flag.replace('_', '-')} does not apply to --{source.replace('_', '-')}")
    for flag in ("val_per_class", "test_per_class"):
        if getattr(a, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0")
    a.source = source
    return a


def build(a: argparse.Namespace, say: Callable[[str], None] | None = print) -> dict:
    """Run a parsed `build-shards` command; returns the summary (the CLI prints it as its last line)."""
    t0 = time.perf_counter()
    options = BuildOptions(
        max_side=a.max_side,
        jpeg_quality=a.jpeg_quality,
        samples_per_shard=a.samples_per_shard,
        workers=a.workers,
        seed=a.seed,
        overwrite=a.overwrite,
        name=a.name,
    )
    check_out(Path(a.out), a.overwrite)  # refuse before a long planning pass, not after it
    skips = SkipLog(say)
    plan = SOURCES[a.source](a, skips)
    summary = build_dataset(a.out, plan, options, skips, a.class_text, say)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def main(argv: list[str]) -> int:
    summary = build(parse_args(argv))
    print(json.dumps(summary))
    return 0
