"""A throughput dataset for `uniproto benchmark data`: photo-sized JPEGs (256-384 px) with captions, in shards.

The demo dataset's 64 px images decode in a fraction of a millisecond, so they say nothing about a real
pipeline. These images have the size and JPEG entropy of web photos (a smooth random scene, a few shapes, film
grain; about 15-40 kB at quality 90), so decoding costs what it costs on img2dataset shards. Only a train split
is written (a throughput set, not a benchmark of accuracy); labels follow a long tail.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from system.data.dataset_dir import (
    FORMAT_VERSION,
    Manifest,
    load_manifest,
    write_manifest,
    write_split_shards,
)
from system.data.demo_render import COLOURS, demo_classes

CAPTIONS = (
    "a photo of a {name}.",
    "{name} on a table, seen from above",
    "close-up of the {name} | free shipping on orders over $50",
    "my {name}, taken last summer",
)


def render_photo(rng: np.random.Generator, width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """One JPEG (quality 90) of width x height: low-frequency colour field + shapes + grain."""
    coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)  # [6, 6, 3]
    field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        w, h = rng.uniform(0.15, 0.5) * width, rng.uniform(0.15, 0.5) * height
        tint = tuple(int(np.clip(c + rng.normal(0, 30), 0, 255)) for c in colour)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=tint)
    pixels = np.asarray(field, dtype=np.int16)  # [H, W, 3]
    grain = rng.normal(0, 6, size=pixels.shape[:2] + (1,))  # [H, W, 1]
    out = np.clip(pixels + grain, 0, 255).astype(np.uint8)  # [H, W, 3]
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def long_tail_labels(n: int, classes: int, seed: int) -> np.ndarray:
    """n labels over `classes`, exponentially long-tailed (the head class about e^4 x the last)."""
    weights = np.exp(-np.arange(classes) / max(classes / 4, 1))
    return np.random.default_rng([seed, 1]).choice(classes, size=n, p=weights / weights.sum())


def _samples(
    labels: np.ndarray,
    names: list[str],
    colours: list[tuple[int, int, int]],
    sizes: tuple[int, int],
    seed: int,
) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng([seed, 2])
    for label in labels:
        w, h = (int(rng.integers(sizes[0], sizes[1] + 1)) for _ in range(2))
        name = names[int(label)]
        yield {
            "jpg": render_photo(rng, w, h, colours[int(label)]),
            "txt": CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(name=name),
            "json": {"label": int(label), "class_name": name, "source": "bench", "width": w, "height": h},
        }


def make_bench_shards(
    out: str | os.PathLike,
    samples: int,
    classes: int = 24,
    sizes: tuple[int, int] = (256, 384),
    samples_per_shard: int = 200,
    seed: int = 0,
) -> Manifest:
    """Write `samples` photos into `<out>/train/*.tar` with a manifest (train split only); returns it."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 8 <= sizes[0] <= sizes[1]:
        raise ValueError(f"image sizes must satisfy 8 <= min <= max, got {sizes}")
    spec = demo_classes(classes, seed=seed)
    names = [c.name for c in spec]
    colours = [COLOURS[c.colour] for c in spec]
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    labels = long_tail_labels(samples, classes, seed)
    counts = np.bincount(labels, minlength=classes).tolist()
    split = write_split_shards(
        root, "train", _samples(labels, names, colours, sizes, seed), samples_per_shard
    )
    manifest = Manifest(
        FORMAT_VERSION,
        "bench-photos",
        names,
        counts,
        {"train": split},
        text_dir=None,
        image_size=None,
        source=f"uniproto benchmark data --make-shards (seed {seed}, {sizes[0]}-{sizes[1]} px)",
    )
    write_manifest(root, manifest)
    return load_manifest(root)
