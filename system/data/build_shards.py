"""`uniproto build-shards`: your images -> a dataset directory (see system/data/shard_build.py for how).

The console script's parser (pipelines/cli.py) builds a typed `BuildRequest`; `build(request)` plans the source
and writes the shards. Three sources, one per flag (a registry, `SOURCES`):

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

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def plan_split_files(a: BuildRequest, skips: SkipLog) -> SourcePlan:
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


def plan_image_folder(a: BuildRequest, skips: SkipLog) -> SourcePlan:
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
    splits = holdout(refs, len(names), a.val_per_class, a.test_per_class, a.options.seed)
    return SourcePlan(
        kind="image-folder",
        description=f"image folder {root.resolve()} (val/test: {a.val_per_class}/{a.test_per_class} per class "
        f"held out, seed {a.options.seed})",
        class_names=names,
        splits=splits,
        class_ids=ids,
        extra={"class_folders": folders},
    )


def _plan_web(a: BuildRequest, skips: SkipLog) -> SourcePlan:
    from system.data.webcaption import plan_web_shards

    if not a.class_names:
        raise DatasetError("--web-shards needs --class-names")
    return plan_web_shards(
        a.web_shards,
        read_class_names(a.class_names),
        a.synonyms,
        a.val_per_class,
        a.test_per_class,
        a.options.seed,
        skips,
    )


# The field (flag) that names the source -> its reader.
SOURCES: dict[str, Callable[[BuildRequest, SkipLog], SourcePlan]] = {
    "train_split": plan_split_files,
    "image_folder": plan_image_folder,
    "web_shards": _plan_web,
}
# Fields that only mean something for some sources: refused elsewhere rather than silently ignored.
ONLY_FOR = {
    "image_root": {"train_split"},
    "val_split": {"train_split"},
    "test_split": {"train_split"},
    "synonyms": {"web_shards"},
    "val_per_class": {"image_folder", "web_shards"},
    "test_per_class": {"image_folder", "web_shards"},
}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


class BuildRequestError(ValueError):
    """A request that names no source, two sources, or a field its source does not use (the parser's usage
    error)."""


@dataclass(frozen=True)
class BuildRequest:
    """One `uniproto build-shards` command. Exactly one of `train_split`, `image_folder`, `web_shards` names the
    source; the fields in `ONLY_FOR` are refused for the other sources."""

    out: str  # dataset directory to create (or resume)
    train_split: str | None = None  # split file of `relative/path label` lines (with image_root)
    image_folder: str | None = None  # a folder per class
    web_shards: str | None = None  # img2dataset shards: brace pattern or glob of .tar, `::` between specs
    image_root: str | None = None  # folder the split files' paths are relative to
    val_split: str | None = None
    test_split: str | None = None
    class_names: str | None = None  # one class per line in label order
    class_text: str | None = None  # VL-LTR corpus folder: desc_<label>.txt (or <id>.txt, <name>.txt)
    synonyms: str | None = None  # YAML/JSON mapping class name (or label) -> list of synonyms
    val_per_class: int = 0  # images per class held out for val (seeded)
    test_per_class: int = 0  # images per class held out for test (seeded)
    options: BuildOptions = field(default_factory=BuildOptions)  # encoding, shard size, workers, seed, name

    def __post_init__(self) -> None:
        named = [k for k in SOURCES if getattr(self, k)]
        if len(named) != 1:
            raise BuildRequestError(
                f"name exactly one source of {[_flag(k) for k in SOURCES]}, got {[_flag(k) for k in named]}"
            )
        for name, allowed in ONLY_FOR.items():
            if self.source not in allowed and getattr(self, name) not in (None, 0):
                raise BuildRequestError(f"{_flag(name)} does not apply to {_flag(self.source)}")
        for name in ("val_per_class", "test_per_class"):
            if getattr(self, name) < 0:
                raise BuildRequestError(f"{_flag(name)} must be >= 0")

    @property
    def source(self) -> str:
        """The field that names the source (a key of SOURCES)."""
        return next(k for k in SOURCES if getattr(self, k))


def build(a: BuildRequest, say: Callable[[str], None] | None = print) -> dict:
    """Run one `build-shards` request; returns the summary (the CLI prints it as its last line)."""
    t0 = time.perf_counter()
    check_out(Path(a.out), a.options.overwrite)  # refuse before a long planning pass, not after it
    skips = SkipLog(say)
    plan = SOURCES[a.source](a, skips)
    summary = build_dataset(a.out, plan, a.options, skips, a.class_text, say)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
