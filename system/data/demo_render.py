"""The demo dataset's visual vocabulary and its image renderer (PIL + numpy, no download).

A class is a (shape, colour, pattern) combination, with a typical size. Images are drawn at twice the target
resolution and box-downsampled, which anti-aliases edges for free. Objects stay large (45-80% of the side) and
patterns coarse (3-5 px stripes at 64 px) so classes survive downscaling to 32-48 px.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "ring")
# Hues spread around the wheel with distinct lightness; each pattern's dark shade keeps the hue readable.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (250, 140, 20),
    "yellow": (238, 208, 30),
    "green": (40, 160, 60),
    "cyan": (30, 190, 210),
    "blue": (35, 80, 215),
    "purple": (140, 55, 180),
}
PATTERNS = ("solid", "striped", "dotted", "checkered")
SIZES = {"small": (0.45, 0.60), "large": (0.64, 0.80)}  # object diameter as a fraction of the image side
SUPERSAMPLE = 2


@dataclass(frozen=True)
class DemoClass:
    label: int
    shape: str
    colour: str
    pattern: str
    size: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.pattern} {self.shape}"

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "name": self.name}


def max_demo_classes() -> int:
    return len(SHAPES) * len(COLOURS) * len(PATTERNS)


PROFILES = ("balanced", "crowded")


def demo_classes(num_classes: int, seed: int = 0, profile: str = "balanced") -> list[DemoClass]:
    """Choose `num_classes` distinct combinations, deterministic in `seed`.

    profile "balanced" (below) spreads attributes evenly. Profile "crowded" makes the tail fine-grained, the
    situation the method is for: see `crowded_classes`.

    Greedy balanced design: each next class (label order = frequency order) takes the combination whose
    shape, colour and pattern have been used least so far, ties broken by a seeded shuffle. So every shape and
    colour appears among the first few head classes and again in the tail: the attributes are shared, and an
    encoder can learn "red" or "star" on head classes and reuse them for tail classes.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if profile == "crowded":
        return crowded_classes(num_classes, seed)
    limit = max_demo_classes()
    if not 2 <= num_classes <= limit:
        raise ValueError(
            f"num_classes must be between 2 and {limit} (the attribute combinations), got {num_classes}"
        )
    rng = np.random.default_rng([seed, 7])
    combos = [(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS]
    order = rng.permutation(len(combos))
    used: dict[str, int] = {}
    chosen: list[tuple[str, str, str]] = []
    free = [combos[i] for i in order]
    for _ in range(num_classes):
        best = min(free, key=lambda combo: sum(used.get(a, 0) for a in combo))
        free.remove(best)
        chosen.append(best)
        for attribute in best:
            used[attribute] = used.get(attribute, 0) + 1
    sizes = list(SIZES)
    return [
        DemoClass(label, shape, colour, pattern, sizes[int(rng.integers(len(sizes)))])
        for label, (shape, colour, pattern) in enumerate(chosen)
    ]


def crowded_classes(num_classes: int, seed: int = 0) -> list[DemoClass]:
    """A long tail whose tail is crowded: the first third of the classes (the head, in frequency order) differ
    in shape and colour; the rest come in families of up to four that share shape, colour and size and differ
    only in pattern. Tail classes then sit close together in feature space (fine-grained and rare), far from
    the head: the geometry the prototype loss is meant to spread out.
    """
    n_head = max(1, num_classes // 3)
    n_families = -(-(num_classes - n_head) // len(PATTERNS))  # ceil
    if num_classes < 2 or n_head + n_families > len(SHAPES) * len(COLOURS):
        raise ValueError(f"num_classes for the crowded profile must be between 2 and 96, got {num_classes}")
    rng = np.random.default_rng([seed, 11])
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    # Head: every pair different, spread over shapes and colours (each next one uses the least used ones).
    free = [pairs[i] for i in rng.permutation(len(pairs))]
    used: dict[str, int] = {}
    head: list[tuple[str, str, str]] = []
    for i in range(n_head):
        best = min(free, key=lambda pair: sum(used.get(a, 0) for a in pair))
        free.remove(best)
        head.append((*best, PATTERNS[i % len(PATTERNS)]))
        for attribute in best:
            used[attribute] = used.get(attribute, 0) + 1
    tail = [(*free[f], pattern) for f in range(n_families) for pattern in PATTERNS][: num_classes - n_head]
    sizes = list(SIZES)
    family_size = {free[f]: sizes[int(rng.integers(len(sizes)))] for f in range(n_families)}
    return [
        DemoClass(
            label, shape, colour, pattern, family_size.get((shape, colour)) or sizes[int(rng.integers(2))]
        )
        for label, (shape, colour, pattern) in enumerate(head + tail)
    ]


def _shape_polygons(shape: str, radius: float) -> list[list[tuple[float, float]]]:
    """Unrotated outlines around (0, 0); circle and ring are handled as ellipses by the caller."""

    def regular(n: int, r: float, phase: float) -> list[tuple[float, float]]:
        return [
            (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)
        ]

    up = -math.pi / 2
    if shape == "square":
        return [regular(4, radius, math.pi / 4)]
    if shape == "triangle":
        return [regular(3, radius, up)]
    if shape == "hexagon":
        return [regular(6, radius, 0.0)]
    if shape == "diamond":  # an elongated rhombus, so a rotated square never looks like one
        return [[(0, -radius), (0.58 * radius, 0), (0, radius), (-0.58 * radius, 0)]]
    if shape == "star":
        outer, inner = regular(5, radius, up), regular(5, 0.42 * radius, up + math.pi / 5)
        return [[p for pair in zip(outer, inner, strict=True) for p in pair]]
    if shape == "cross":
        a, b = 0.2 * radius, radius
        return [
            [
                (-a, -b),
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
            ]
        ]
    raise ValueError(f"unknown shape {shape!r}")


def _object_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        if shape == "ring":
            hole = 0.5 * radius
            draw.ellipse((cx - hole, cy - hole, cx + hole, cy + hole), fill=0)
    else:
        cos, sin = math.cos(angle), math.sin(angle)
        for polygon in _shape_polygons(shape, radius):
            draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in polygon], fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _pattern(
    pattern: str, u: np.ndarray, v: np.ndarray, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """1 where the pattern's dark shade goes, in the object's own (rotated) frame, so patterns turn with it."""
    if pattern == "solid":
        return np.zeros_like(u)
    if pattern == "striped":
        width = rng.uniform(3.0, 5.0) * scale
        return (np.floor(u / width) % 2).astype(np.float32)
    if pattern == "checkered":
        cell = rng.uniform(4.0, 6.0) * scale
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    if pattern == "dotted":
        gap, dot = rng.uniform(9.0, 11.0) * scale, rng.uniform(2.2, 2.8) * scale
        du, dv = (u % gap) - gap / 2, (v % gap) - gap / 2
        return (du * du + dv * dv < dot * dot).astype(np.float32)
    raise ValueError(f"unknown pattern {pattern!r}")


def _draw_clutter(image: Image.Image, rng: np.random.Generator) -> int:
    """1-3 small, thin, low-saturation marks: lines, zigzags, arcs, blobs. Never large or saturated, so they
    cannot be mistaken for a class object."""
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(1, 4))
    for _ in range(count):
        grey = rng.uniform(95, 185)
        colour = tuple(int(grey + t) for t in rng.uniform(-12, 12, 3))
        x, y = rng.uniform(0.05, 0.95, 2) * size
        extent = rng.uniform(0.08, 0.2) * size
        width = max(1, int(rng.uniform(0.012, 0.03) * size))
        kind = int(rng.integers(4))
        if kind == 0:
            a = rng.uniform(0, math.pi)
            draw.line(
                [(x, y), (x + extent * math.cos(a), y + extent * math.sin(a))], fill=colour, width=width
            )
        elif kind == 1:
            points = [(x + k * extent / 4, y + (extent / 6) * (-1) ** k) for k in range(5)]
            draw.line(points, fill=colour, width=width)
        elif kind == 2:
            start = rng.uniform(0, 360)
            draw.arc(
                (x, y, x + extent, y + extent), start, start + rng.uniform(60, 200), fill=colour, width=width
            )
        else:
            r = extent * 0.35
            angles = np.sort(rng.uniform(0, 2 * math.pi, 6))
            radii = r * rng.uniform(0.5, 1.0, 6)
            draw.polygon(
                [(x + q * math.cos(a), y + q * math.sin(a)) for a, q in zip(angles, radii, strict=True)],
                fill=colour,
            )
    return count


def render_image(
    cls: DemoClass, image_size: int, rng: np.random.Generator
) -> tuple[bytes, dict[str, object]]:
    """JPEG bytes of one image of `cls` and the pose attributes used to draw it."""
    big = image_size * SUPERSAMPLE
    scale = big / 64.0  # pattern sizes are specified in pixels at 64 px
    tint = rng.uniform(212, 248, 3)
    grad = rng.uniform(-14, 14, 2)
    ramp = np.linspace(-0.5, 0.5, big, dtype=np.float32)
    background = tint[None, None, :] + grad[0] * ramp[None, :, None] + grad[1] * ramp[:, None, None]
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    distractors = _draw_clutter(canvas, rng)

    low, high = SIZES[cls.size]
    fraction = rng.uniform(low, high)
    radius = fraction * big / 2
    margin = radius + 0.02 * big
    cx, cy = rng.uniform(margin, big - margin, 2)
    angle = rng.uniform(0, 2 * math.pi)
    mask = _object_mask(cls.shape, big, cx, cy, radius, angle)

    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32)
    cos, sin = math.cos(angle), math.sin(angle)
    u = (xs - cx) * cos + (ys - cy) * sin
    v = -(xs - cx) * sin + (ys - cy) * cos
    dark = _pattern(cls.pattern, u + rng.uniform(0, 40), v + rng.uniform(0, 40), scale, rng)
    base = np.array(COLOURS[cls.colour], np.float32) * rng.uniform(0.9, 1.08) + rng.uniform(-10, 10, 3)
    shade = 1.0 + 0.08 * (v / radius)  # a soft light from above
    colour = base[None, None, :] * (1 - 0.65 * dark[..., None]) * shade[..., None]
    pixels = np.asarray(canvas, np.float32) * (1 - mask[..., None]) + colour * mask[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    noisy = np.asarray(image, np.float32) + rng.normal(0, 4.0, (image_size, image_size, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    pose = {
        "object_fraction": round(float(fraction), 4),
        "rotation_deg": round(math.degrees(angle), 2),
        "center": [round(float(cx) / big, 4), round(float(cy) / big, 4)],
        "distractors": distractors,
    }
    return buffer.getvalue(), pose
