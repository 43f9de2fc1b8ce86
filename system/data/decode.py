"""Decode stage of the data plane: raw WebDataset columns -> fixed-shape uint8 images and int64 labels.

Plain numpy/PIL (the Ray pipeline calls it inside `map_batches`). Bad rows are dropped and counted by reason
instead of failing the whole shard, which is what Ray Data's default decoder would do (docs/stack-notes.md).
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from system.data.augment import Augment, decode_image, row_rng
from system.data.faults import (
    BAD_LABEL,
    BAD_METADATA,
    MISSING_LABEL,
    MISSING_TEXT,
    UNKNOWN_LABEL,
    DataFault,
)
from system.data.row_draws import RowDraws, hash_words

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
log = logging.getLogger(__name__)


def resample_factors(train_counts: Sequence[int], mode: str) -> np.ndarray:
    """Per-class expected repeat factor r_c so class c is drawn with weight n_c * r_c.

    none: r=1; sqrt: r proportional to n_c^-1/2; balanced: r proportional to 1/n_c. Normalised so an epoch keeps
    its size (sum n_c r_c = sum n_c): resampling changes the class mix, not the epoch length.
    """
    n = np.asarray(train_counts, dtype=np.float64)
    if mode == "none":
        return np.ones_like(n)
    powers = {"sqrt": -0.5, "balanced": -1.0}
    if mode not in powers:
        raise ValueError(f"data.resample: unknown mode {mode!r} (none, sqrt, balanced)")
    w = np.power(np.maximum(n, 1.0), powers[mode])
    return w * n.sum() / (n * w).sum()


def _first_image(row: dict) -> bytes | None:
    for k in IMAGE_KEYS:
        v = row.get(k)
        if v is not None:
            return v
    return None


def row_label(raw_json) -> tuple[int, str | None]:
    """The label of a sample's .json member and None, or (-1, the fault's reason). The label must be a JSON
    integer: 3.7, true, "3" or 1e400 are bad labels, never coerced to a class."""
    if raw_json is None:
        return -1, MISSING_LABEL
    try:
        meta = json.loads(_as_text(raw_json))
    except (ValueError, RecursionError):  # malformed, too many digits, or nested past the parser's stack
        return -1, BAD_METADATA
    if not isinstance(meta, dict) or "label" not in meta:
        return -1, MISSING_LABEL
    label = meta["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        return -1, BAD_LABEL
    return label, None


def _as_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def _skip(skipped: Counter[str], examples: list[str], reason: str, row: dict) -> None:
    """Count a skipped row; keep a few examples naming the shard and key, for the log."""
    skipped[reason] += 1
    if len(examples) < 3:
        examples.append(f"{_as_text(row.get('__url__')) or '?'}:{_as_text(row.get('__key__'))} ({reason})")


def _row_key(seed: int, stream: int, row: dict) -> int:
    """A 64-bit key for one row's draws in one `stream` (1: resampling, 2: text choice): a hash of the run
    seed, the stream, the row's shard position (new every epoch), and its shard and key (system.data.row_draws:
    a hash per row instead of a numpy Generator, the draws being on every streamed row's path)."""
    shard = row.get("__shard__")
    return hash_words(
        seed,
        stream,
        -1 if shard is None else int(shard),
        zlib.crc32(_as_text(row.get("__url__")).encode("utf-8")),
        zlib.crc32(_as_text(row.get("__key__")).encode("utf-8")),
    )


def _repeat_draw(seed: int, row: dict) -> float:
    """A uniform in [0, 1) for one row's resampling draw."""
    return RowDraws(_row_key(seed, 1, row)).random()


def _text_draws(seed: int, row: dict, copies: int) -> list[int]:
    """63-bit seeds for the text stage's choice, one per output copy of a row (which caption or pool sentence
    it gets): text pairing is then reproducible whatever the actor count, batching or process ids."""
    draws = RowDraws(_row_key(seed, 2, row))
    return [draws.next64() >> 1 for _ in range(copies)]


def decode_batch(
    batch: dict[str, np.ndarray],
    image_size: int,
    num_classes: int,
    repeat_factors: np.ndarray | None = None,
    seed: int | None = None,
    *,
    augment: Augment | None = None,
    strict: bool = False,
    counts: Counter[str] | None = None,
) -> dict[str, np.ndarray]:
    """Decode a batch of raw rows (`__key__`, `jpg`, `txt`, `json` bytes) into training columns.

    Returns `image` uint8 [N, S, S, 3], `label` int64 [N], `caption` str [N], `key` str [N], `draw` int64 [N]
    (the text stage's per-row seed), `shard` and `row` int64 [N] (the reader's `__shard__` and `__row__`),
    and `skipped`
    reasons are tallied in `decode_batch.last_skipped` for the caller's log. With `repeat_factors`, each row is
    repeated floor(r) times plus once more with probability frac(r) (stochastic rounding keeps the expectation
    exact while streaming, no global view of the data needed). With `augment`, each output row is a random-resized
    crop (flipped at random) drawn from the row's own seeded generator (system.data.augment); without it, the
    whole image resized to S x S.

    With a `seed`, the repeat draw of a row is a function of the seed, the row's shard position in the stream
    (`__shard__`, so every epoch draws anew) and its key: reproducible whatever the batching or streaming
    order, and different for every row. `counts` (optional) gets this batch's skip counts added. `strict`:
    the first bad row raises DataFault naming its shard and key instead of being skipped.
    """
    keys = batch.get("__key__")
    n = len(keys) if keys is not None else 0
    rng = np.random.default_rng(seed)
    images, labels, captions, out_keys, draws, where = [], [], [], [], [], []
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    for i in range(n):
        row = {k: v[i] for k, v in batch.items()}
        raw = _first_image(row)
        if raw is None:
            _skip(skipped, examples, "missing_image", row)
            continue
        if row.get("txt") is None:
            _skip(skipped, examples, MISSING_TEXT, row)
            continue
        label, reason = row_label(row.get("json"))
        if reason is None and not 0 <= label < num_classes:
            reason = UNKNOWN_LABEL
        if reason is not None:
            _skip(skipped, examples, reason, row)
            continue
        aug_rng = (
            row_rng(
                augment.seed, _as_text(row.get("__url__")), _as_text(row.get("__key__")), row.get("__shard__")
            )
            if augment is not None
            else None
        )
        try:
            arr = decode_image(raw, image_size, augment, aug_rng)  # [S, S, 3]
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt data; all mean "skip this row"
            _skip(skipped, examples, "corrupt_image", row)
            continue
        reps = 1
        if repeat_factors is not None:
            r = float(repeat_factors[label])
            u = rng.random() if seed is None else _repeat_draw(seed, row)
            reps = int(r) + int(u < r - int(r))
        row_draws = rng.integers(2**63, size=reps) if seed is None else _text_draws(seed, row, reps)
        for rep in range(reps):
            if rep and augment is not None:
                arr = decode_image(raw, image_size, augment, aug_rng)  # every copy gets its own crop
            images.append(arr)
            labels.append(label)
            captions.append(_as_text(row.get("txt")).strip())
            out_keys.append(_as_text(row.get("__key__")))
            draws.append(int(row_draws[rep]))
            where.append((_int_or(row.get("__shard__"), -1), _int_or(row.get("__row__"), -1)))
    decode_batch.last_skipped = skipped  # type: ignore[attr-defined]
    if counts is not None:
        counts.update(skipped)
    if strict and skipped:
        raise DataFault(f"bad sample (data.strict): {examples[0]}")
    if skipped:
        log.warning(
            "skipped %d of %d rows (%s); e.g. %s",
            sum(skipped.values()),
            n,
            dict(skipped),
            "; ".join(examples),
        )
    size = (0, image_size, image_size, 3)
    return {
        "image": np.stack(images) if images else np.zeros(size, dtype=np.uint8),
        "label": np.asarray(labels, dtype=np.int64),
        "caption": np.asarray(captions, dtype=object),
        "key": np.asarray(out_keys, dtype=object),
        "draw": np.asarray(draws, dtype=np.int64),  # per-row seed of the text stage's choice
        # where the row came from: the shard's position in the read list and the reader's row ordinal in it
        # (-1 when the batch does not say); the training stream's cursor counts rows by position
        "shard": np.asarray([w[0] for w in where], dtype=np.int64).reshape(-1),
        "row": np.asarray([w[1] for w in where], dtype=np.int64).reshape(-1),
    }


def _int_or(value, default: int) -> int:
    return default if value is None else int(value)
