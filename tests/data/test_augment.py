"""Decode-stage augmentation: random-resized crop + flip, seeded per row; off means the plain resize."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipelines.bench.shards import render_photo
from system.config import ConfigError, config_from_dict
from system.data.augment import Augment, crop_box, decode_image, row_rng
from system.data.decode import decode_batch
from system.runtime.data import train_augment


def _encode(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _halves(width: int = 60, height: int = 40) -> np.ndarray:
    """Left half black, right half white: [H, W, 3] uint8."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, width // 2 :] = 255
    return img


def _column_ramp(width: int = 200, height: int = 100) -> np.ndarray:
    """Red channel = column index, green = row index: a pixel tells where in the source it came from."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.arange(width, dtype=np.uint8)[None, :]
    img[..., 1] = np.arange(height, dtype=np.uint8)[:, None]
    return img


def _batch(raws: list[bytes], labels: list[int] | None = None) -> dict[str, np.ndarray]:
    labels = labels or [0] * len(raws)
    return {
        "__key__": np.array([f"k{i}" for i in range(len(raws))], dtype=object),
        "__url__": np.array(["/d/train/00000.tar"] * len(raws), dtype=object),
        "jpg": np.array(raws, dtype=object),
        "txt": np.array([b"a caption"] * len(raws), dtype=object),
        "json": np.array([json.dumps({"label": y}).encode() for y in labels], dtype=object),
    }


def test_augmented_batch_has_fixed_shape_and_dtype():
    rng = np.random.default_rng(0)
    raws = [
        render_photo(rng, 300, 257, (200, 30, 30)),  # JPEG, not square
        _encode(_column_ramp(90, 130)),  # PNG, taller than wide
        _encode(np.full((50, 70), 128, np.uint8)),  # greyscale PNG
    ]
    out = decode_batch(_batch(raws), image_size=48, num_classes=1, augment=Augment(scale=(0.08, 1.0), seed=3))
    assert out["image"].shape == (3, 48, 48, 3) and out["image"].dtype == np.uint8
    assert out["image"].flags["C_CONTIGUOUS"]
    assert out["label"].tolist() == [0, 0, 0] and out["key"].tolist() == ["k0", "k1", "k2"]
    assert (out["image"][2] == 128).all()  # grey stays grey through convert + crop + resize


def test_flip_really_flips():
    raw = _encode(_halves())
    fixed = {"scale": (1.0, 1.0), "ratio": (1.5, 1.5)}  # the full 60x40 image, every time
    kept = decode_image(raw, 20, Augment(**fixed, flip_prob=0.0), np.random.default_rng(1))
    flipped = decode_image(raw, 20, Augment(**fixed, flip_prob=1.0), np.random.default_rng(1))
    assert (kept[:, :8] == 0).all() and (kept[:, 12:] == 255).all()  # black left, white right
    assert (flipped[:, :8] == 255).all() and (flipped[:, 12:] == 0).all()  # mirrored
    np.testing.assert_array_equal(flipped, kept[:, ::-1])


@pytest.mark.parametrize("size", [(200, 100), (100, 200), (64, 64), (37, 500)])
@pytest.mark.parametrize(
    "aug", [Augment(), Augment(scale=(0.08, 1.0)), Augment(scale=(0.3, 0.3), ratio=(2, 2))]
)
def test_crop_box_stays_inside_and_respects_ranges(size, aug):
    width, height = size
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, top, right, bottom = crop_box(rng, width, height, aug)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        # Either a sampled box (area and aspect in range) or the centred fallback (aspect clamped into range).
        aspect_ok = aug.ratio[0] - 1e-9 <= w / h <= aug.ratio[1] + 1e-9
        sampled = aug.scale[0] - 1e-9 <= w * h / (width * height) <= aug.scale[1] + 1e-9
        fallback = abs((left + right) / 2 - width / 2) < 1e-9 and abs((top + bottom) / 2 - height / 2) < 1e-9
        assert aspect_ok or (fallback and (w == width or h == height))
        assert sampled or fallback


def test_crop_box_fallback_hand_computed():
    # 400x40 cannot hold 90% of its area at aspect <= 4/3: the largest centred crop at aspect 4/3 is 53.3x40.
    box = crop_box(np.random.default_rng(0), 400, 40, Augment())
    assert box == pytest.approx((200 - 80 / 3, 0.0, 200 + 80 / 3, 40.0))


def test_crop_pixels_come_from_inside_the_box():
    raw = _encode(_column_ramp())
    aug = Augment(scale=(0.1, 0.3), flip_prob=0.0)
    for seed in range(5):
        left, top, right, bottom = crop_box(np.random.default_rng(seed), 200, 100, aug)
        out = decode_image(raw, 16, aug, np.random.default_rng(seed))  # the same draws as crop_box's
        # Red = source column, green = source row: bilinear output stays within the box (+-1 level).
        assert left - 1 <= out[..., 0].min() and out[..., 0].max() <= right + 1
        assert top - 1 <= out[..., 1].min() and out[..., 1].max() <= bottom + 1
        assert (
            out[..., 0].max() - out[..., 0].min() >= (right - left) * 0.7
        )  # it spans the crop, not a sliver


def test_deterministic_for_a_seed_and_independent_of_batching():
    rng = np.random.default_rng(5)
    raws = [render_photo(rng, 320, 280, (30, 30, 200)) for _ in range(4)]
    aug = Augment(scale=(0.08, 1.0), seed=7)
    a = decode_batch(_batch(raws), image_size=32, num_classes=1, augment=aug)
    b = decode_batch(_batch(raws), image_size=32, num_classes=1, augment=aug)
    np.testing.assert_array_equal(a["image"], b["image"])
    other = decode_batch(
        _batch(raws), image_size=32, num_classes=1, augment=Augment(scale=(0.08, 1.0), seed=8)
    )
    assert not np.array_equal(a["image"], other["image"])
    # A row's draws are its own: the same (shard, key) gives the same crop in a batch of one.
    alone = decode_batch(
        {k: v[2:3] for k, v in _batch(raws).items()}, image_size=32, num_classes=1, augment=aug
    )
    np.testing.assert_array_equal(alone["image"][0], a["image"][2])
    # Another pass over the same shard (the reader's `__shard__`: its position in the epoch-ordered list)
    # draws anew; the same position draws the same.
    passes = [dict(_batch(raws), __shard__=np.array([p] * 4)) for p in (3, 19, 3)]
    outs = [decode_batch(b, image_size=32, num_classes=1, augment=aug)["image"] for b in passes]
    assert not np.array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    first = decode_image(raws[0], 32, aug, row_rng(7, "/d/train/00000.tar", "k0", position=0))
    again = decode_image(raws[0], 32, aug, row_rng(7, "/d/train/00000.tar", "k0", position=16))
    assert not np.array_equal(first, again)


def test_repeated_rows_get_their_own_crops():
    raw = render_photo(np.random.default_rng(1), 300, 300, (30, 200, 30))
    out = decode_batch(
        _batch([raw]),
        image_size=32,
        num_classes=1,
        repeat_factors=np.array([3.0]),
        augment=Augment(scale=(0.1, 1)),
    )
    assert len(out["image"]) == 3
    assert not np.array_equal(out["image"][0], out["image"][1])
    assert not np.array_equal(out["image"][1], out["image"][2])


def test_off_is_the_plain_resize():
    ramp = _column_ramp(120, 90)
    raw = _encode(ramp)
    out = decode_batch(_batch([raw]), image_size=32, num_classes=1)
    # PNG (no draft), shrink < 2 x REDUCING_GAP: exactly PIL's plain bilinear resize of the whole image.
    plain = np.asarray(Image.fromarray(ramp).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(out["image"][0], plain)
    # The identity augmentation (whole image, never flipped) is the same picture, up to 1 level of rounding.
    ident = decode_image(
        raw, 32, Augment(scale=(1.0, 1.0), ratio=(0.5, 2.0), flip_prob=0.0), np.random.default_rng(0)
    )
    assert np.abs(ident.astype(int) - plain.astype(int)).max() <= 1


def test_jpeg_draft_decoding_matches_full_decode():
    # 384 -> 48 px: draft decodes at 1/4 scale (96 px) in the DCT domain, then resizes; the result is the same
    # picture as a full decode + resize, within a few grey levels on average.
    raw = render_photo(np.random.default_rng(2), 384, 384, (120, 60, 200))
    fast = decode_image(raw, 48).astype(float)
    with Image.open(io.BytesIO(raw)) as im:
        full = np.asarray(im.convert("RGB").resize((48, 48), Image.BILINEAR)).astype(float)
    assert fast.shape == full.shape == (48, 48, 3)
    assert np.abs(fast - full).mean() < 3.0


def test_config_builds_the_train_augmentation():
    assert train_augment(config_from_dict({})) is None  # off by default
    cfg = config_from_dict(
        {
            "run": {"seed": 11},
            "data": {"augment": True, "crop_scale_min": 0.5, "crop_ratio_max": 2.0, "flip_prob": 0.0},
        }
    )
    assert train_augment(cfg) == Augment(scale=(0.5, 1.0), ratio=(0.75, 2.0), flip_prob=0.0, seed=11)
    with pytest.raises(ConfigError, match="data.crop_scale_min: must be <= data.crop_scale_max"):
        config_from_dict({"data": {"crop_scale_min": 0.95, "crop_scale_max": 0.9}})
    with pytest.raises(ConfigError, match="data.flip_prob"):
        config_from_dict({"data": {"flip_prob": 1.5}})
