"""The embedded long-tailed demo dataset: rendered with PIL, written in the dataset directory contract.

Train follows the exponential long-tail profile; val and test are balanced. Everything is a pure function of
the seed (each image has its own numpy Generator seeded from (seed, split, position)), so two runs give
byte-identical shards and a test failure on CI reproduces locally. The same purity lets `workers` processes
render a split's shards side by side (one shard per task) into the very same bytes.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from system.data.dataset_dir import (
    FORMAT_VERSION,
    KEY_STRIDE,
    MANIFEST_NAME,
    Manifest,
    SplitInfo,
    shard_relpath,
    write_manifest,
    write_shard,
    write_split_shards,
)
from system.data.demo_render import COLOURS, PATTERNS, SHAPES, DemoClass, demo_classes, render_image
from system.data.demo_text import caption, write_corpus
from system.data.longtail import longtail_counts

SOURCE = "uniproto-demo"
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# Written first and removed never: it lets overwrite=True clear a half-written demo directory (no manifest yet)
# while still refusing to delete a directory that uniproto did not create.
_MARKER = ".uniproto-demo"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty; choose another --out, or pass overwrite=True (--overwrite) to replace it"
            )
        if not ((out / MANIFEST_NAME).is_file() or (out / _MARKER).is_file()):
            raise FileExistsError(
                f"refusing to overwrite {out}: it is not empty and does not look like a uniproto dataset "
                f"(no {MANIFEST_NAME}); delete it yourself if you really mean it"
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("created by uniproto make-demo-data\n", encoding="utf-8")


def _split_samples(
    split: str,
    classes: list[DemoClass],
    per_class: list[int],
    image_size: int,
    seed: int,
    progress: Callable[[str], None] | None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The split's samples at positions [start, stop) (all by default)."""
    code = _SPLIT_CODES[split]
    labels = np.repeat(np.arange(len(classes)), per_class)
    order = np.random.default_rng([seed, code, 1_000_003]).permutation(len(labels))  # shards mix classes
    total = len(labels)
    step = max(500, total // 5)
    ordered = labels[order]
    for position in range(start, total if stop is None else min(stop, total)):
        cls = classes[int(ordered[position])]
        rng = np.random.default_rng([seed, code, position])
        jpg, pose = render_image(cls, image_size, rng)
        text, boilerplate = caption(cls, rng)
        meta = {
            "label": cls.label,
            "class_name": cls.name,
            "source": SOURCE,
            "caption_boilerplate": boilerplate,
            "shape": cls.shape,
            "colour": cls.colour,
            "pattern": cls.pattern,
            "size": cls.size,
            **pose,
        }
        yield {"jpg": jpg, "txt": text, "json": meta}
        done = position + 1
        if progress is not None and (done % step == 0 or done == total):
            progress(f"[make-demo-data] {split}: {done}/{total} images")


def _render_shard(args: tuple) -> int:
    """One shard of a split, rendered in a worker process: (root, split, shard, samples_per_shard, classes,
    per_class, image_size, seed) -> its sample count."""
    root, split, shard, per_shard, classes, per_class, image_size, seed = args
    start = shard * per_shard
    samples = _split_samples(split, classes, per_class, image_size, seed, None, start, start + per_shard)
    return write_shard(root, shard_relpath(split, shard), shard, samples)


def _write_split(
    root: Path,
    split: str,
    classes: list[DemoClass],
    per_class: list[int],
    image_size: int,
    seed: int,
    samples_per_shard: int,
    progress: Callable[[str], None] | None,
    workers: int,
) -> SplitInfo:
    if workers <= 1:
        samples = _split_samples(split, classes, per_class, image_size, seed, progress)
        return write_split_shards(root, split, samples, samples_per_shard)
    shards = -(-sum(per_class) // samples_per_shard)
    (root / split).mkdir(parents=True, exist_ok=True)
    tasks = [(root, split, i, samples_per_shard, classes, per_class, image_size, seed) for i in range(shards)]
    # fork: the workers need nothing but this module, already imported
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        counts = list(pool.map(_render_shard, tasks))
    if progress is not None:
        progress(f"[make-demo-data] {split}: {sum(counts)} images in {shards} shards ({workers} processes)")
    return SplitInfo(num_samples=sum(counts), shards=[shard_relpath(split, i) for i in range(shards)])


def make_demo_dataset(
    out: str,
    num_classes: int = 24,
    imbalance: float = 100.0,
    n_max: int = 300,
    val_per_class: int = 20,
    test_per_class: int = 30,
    image_size: int = 64,
    seed: int = 0,
    samples_per_shard: int = 256,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = print,
    profile: str = "balanced",
    workers: int = 1,
) -> Manifest:
    """Render the demo dataset into `out` and return its manifest (see the module docstring); `workers` > 1
    renders each split's shards in that many processes (the same bytes, sooner)."""
    if val_per_class < 0 or test_per_class < 0:
        raise ValueError(
            f"val_per_class and test_per_class must be >= 0, got {val_per_class}, {test_per_class}"
        )
    if not 16 <= image_size <= 512:
        raise ValueError(f"image_size must be between 16 and 512, got {image_size}")
    if not 1 <= samples_per_shard <= KEY_STRIDE:
        raise ValueError(f"samples_per_shard must be between 1 and {KEY_STRIDE}, got {samples_per_shard}")
    classes = demo_classes(num_classes, seed, profile)  # validates num_classes and profile
    train_counts = longtail_counts(num_classes, n_max, imbalance)  # validates n_max and imbalance
    root = Path(out)
    _prepare_out(root, overwrite)
    start = time.perf_counter()
    if progress is not None:
        progress(
            f"[make-demo-data] {num_classes} classes, imbalance {imbalance:g} ({train_counts[0]} -> "
            f"{train_counts[-1]} train images per class), {image_size}px, into {root}"
        )
    splits = {}
    for split, per_class in (
        ("train", train_counts),
        ("val", [val_per_class] * num_classes),
        ("test", [test_per_class] * num_classes),
    ):
        splits[split] = _write_split(
            root, split, classes, per_class, image_size, seed, samples_per_shard, progress, workers
        )
    rows = write_corpus(root / "text", classes, seed)
    if progress is not None:
        progress(f"[make-demo-data] text: {num_classes} class descriptions, {rows} labelled sentences")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name="demo" if profile == "balanced" else f"demo-{profile}",
        class_names=[c.name for c in classes],
        train_counts=train_counts,
        splits=splits,
        text_dir="text",
        image_size=image_size,
        source=SOURCE,
        extra={
            "classes": [c.to_dict() for c in classes],
            "attributes": {"shapes": list(SHAPES), "colours": list(COLOURS), "patterns": list(PATTERNS)},
            "generator": {
                "profile": profile,
                "seed": seed,
                "imbalance": imbalance,
                "n_max": n_max,
                "val_per_class": val_per_class,
                "test_per_class": test_per_class,
                "samples_per_shard": samples_per_shard,
            },
        },
    )
    write_manifest(root, manifest)
    if progress is not None:
        total = sum(s.num_samples for s in splits.values())
        progress(f"[make-demo-data] wrote {total} images in {time.perf_counter() - start:.1f}s: {root}")
    return manifest
