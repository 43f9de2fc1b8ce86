"""Decode stage: bad rows are skipped and counted by reason; resampling keeps the epoch size in expectation."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from system.data.decode import decode_batch, resample_factors, row_label


def _jpeg(colour, size=40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _batch(rows):
    cols = {k: np.array([r.get(k) for r in rows], dtype=object) for k in ("__key__", "jpg", "txt", "json")}
    return cols


def test_decode_resizes_and_skips_bad_rows(caplog):
    good = _jpeg((255, 0, 0))
    rows = [
        {"__key__": "a", "jpg": good, "txt": b"a red square", "json": json.dumps({"label": 1}).encode()},
        {"__key__": "b", "jpg": good[: len(good) // 3], "txt": b"x", "json": b'{"label": 0}'},  # truncated
        {"__key__": "c", "jpg": good, "txt": b"x", "json": b'{"label": 9}'},  # unknown label
        {"__key__": "d", "jpg": good, "txt": b"x", "json": b"{}"},  # missing label
        {"__key__": "e", "jpg": None, "txt": b"x", "json": b'{"label": 0}'},  # missing image
        {"__key__": "f", "jpg": b"not an image", "txt": b"x", "json": b'{"label": 0}'},
    ]
    batch = _batch(rows)
    batch["__url__"] = np.array(["/data/train/00007.tar"] * len(rows), dtype=object)
    with caplog.at_level("WARNING", logger="system.data.decode"):
        out = decode_batch(batch, image_size=16, num_classes=3)
    # The log names the shard and key of the first bad rows, so a user can find them.
    assert "skipped 5 of 6 rows" in caplog.text
    assert "/data/train/00007.tar:b (corrupt_image)" in caplog.text
    assert out["image"].shape == (1, 16, 16, 3) and out["image"].dtype == np.uint8
    assert out["label"].tolist() == [1] and out["label"].dtype == np.int64
    assert out["caption"].tolist() == ["a red square"]
    assert abs(int(out["image"][0, 8, 8, 0]) - 255) <= 3  # still red after JPEG + resize
    assert dict(decode_batch.last_skipped) == {
        "corrupt_image": 2,
        "unknown_label": 1,
        "missing_label": 1,
        "missing_image": 1,
    }


@pytest.mark.parametrize(
    ("raw", "label", "reason"),
    [
        (b'{"label": 2}', 2, None),
        (b'{"label": 0, "class_name": "x"}', 0, None),
        (None, -1, "missing_label"),
        (b"{}", -1, "missing_label"),
        (b"[1, 2]", -1, "missing_label"),
        (b'{"label": 3.7}', -1, "bad_label"),
        (b'{"label": -0.9}', -1, "bad_label"),
        (b'{"label": true}', -1, "bad_label"),
        (b'{"label": "3"}', -1, "bad_label"),
        (b'{"label": 1e400}', -1, "bad_label"),
        (b'{"label": null}', -1, "bad_label"),
        (b'{"label": 1', -1, "bad_metadata"),
        (b"\xff\xfe", -1, "bad_metadata"),
        (b"[" * 200_000 + b"]" * 200_000, -1, "bad_metadata"),  # past the parser's recursion limit
        (b'{"label": ' + b"9" * 5000 + b"}", -1, "bad_metadata"),  # past Python's int-digits limit
    ],
)
def test_row_label_accepts_json_integers_only(raw, label, reason):
    assert row_label(raw) == (label, reason)


def test_bad_labels_are_counted_not_coerced():
    good = _jpeg((0, 255, 0))
    rows = [
        {"__key__": k, "jpg": good, "txt": b"x", "json": j}
        for k, j in (("a", b'{"label": 1}'), ("b", b'{"label": 1.0}'), ("c", b'{"label": "1"}'))
    ]
    out = decode_batch(_batch(rows), image_size=8, num_classes=3)
    assert out["label"].tolist() == [1]
    assert dict(decode_batch.last_skipped) == {"bad_label": 2}


def test_decode_empty_result_keeps_shapes():
    rows = [{"__key__": "a", "jpg": b"junk", "txt": b"", "json": b'{"label": 0}'}]
    out = decode_batch(_batch(rows), image_size=8, num_classes=2)
    assert out["image"].shape == (0, 8, 8, 3) and out["label"].shape == (0,)


def test_resample_factors_hand_computed():
    counts = [100, 25, 4]
    assert resample_factors(counts, "none").tolist() == [1.0, 1.0, 1.0]
    sq = resample_factors(counts, "sqrt")
    # weights n^-1/2 = [0.1, 0.2, 0.5]; n*w = [10, 5, 2] sums to 17; scale 129/17 keeps the epoch size.
    assert sq == pytest.approx(np.array([0.1, 0.2, 0.5]) * 129 / 17)
    assert float(np.dot(sq, counts)) == pytest.approx(129)
    bal = resample_factors(counts, "balanced")
    assert (bal * np.array(counts)) == pytest.approx([43, 43, 43])
    with pytest.raises(ValueError, match="data.resample"):
        resample_factors(counts, "cubic")


def test_stochastic_repeats_match_expectation():
    good = _jpeg((0, 0, 255), size=8)
    rows = [{"__key__": str(i), "jpg": good, "txt": b"", "json": b'{"label": 0}'} for i in range(2000)]
    out = decode_batch(_batch(rows), image_size=8, num_classes=1, repeat_factors=np.array([1.3]), seed=0)
    # Binomial(2000, 0.3) extra rows: mean 600, sd ~20.5; 5 sd is far outside what a fixed seed produces.
    assert abs(len(out["label"]) - 2600) < 100
