"""The text stage's row pairing: reproducible from the rows' own seeds, whatever the batching or actor."""

import numpy as np

from system.data.decode import decode_batch
from system.data.row_draws import RowDraws
from system.text.pairing import TextPairer

POOLS = {0: [f"zero {i}" for i in range(50)], 1: [f"one {i}" for i in range(50)]}


def _pairer(seed=0):
    return TextPairer(POOLS, ["red circle", "blue square"], "uniproto-tiny-rn", caption_prob=0.5, seed=seed)


def _batch(n, draws):
    return {
        "image": np.zeros((n, 4, 4, 3), np.uint8),
        "label": np.arange(n) % 2,
        "caption": np.asarray(["a red circle"] * n, dtype=object),
        "draw": np.asarray(draws, dtype=np.int64),
    }


def test_same_draws_same_text_whatever_the_batching_and_actor():
    draws = list(range(1000, 1040))
    whole = _pairer(seed=0)(_batch(40, draws))["text"]
    a, b = _pairer(seed=7), _pairer(seed=8)  # other actors, other fallback streams
    first = a({k: v[:15] for k, v in _batch(40, draws).items()})["text"]
    second = b({k: v[15:] for k, v in _batch(40, draws).items()})["text"]
    assert np.array_equal(np.concatenate([first, second]), whole)
    other = _pairer(seed=0)(_batch(40, [d + 1 for d in draws]))["text"]
    assert not np.array_equal(other, whole)  # new draws (a new epoch) pick new text


def test_decode_gives_every_copy_and_epoch_its_own_draw():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    row = {
        "__key__": np.asarray(["k0"], dtype=object),
        "__url__": np.asarray(["s/0.tar"], dtype=object),
        "jpg": np.asarray([buf.getvalue()], dtype=object),
        "txt": np.asarray([b"a red circle"], dtype=object),
        "json": np.asarray([b'{"label": 0}'], dtype=object),
    }
    out = decode_batch(row | {"__shard__": np.asarray([3])}, 8, 2, np.asarray([3.0, 1.0]), seed=5)
    assert len(out["draw"]) == 3 and len(set(out["draw"].tolist())) == 3  # 3 copies, 3 different draws
    again = decode_batch(row | {"__shard__": np.asarray([3])}, 8, 2, np.asarray([3.0, 1.0]), seed=5)
    assert np.array_equal(again["draw"], out["draw"])
    next_epoch = decode_batch(row | {"__shard__": np.asarray([27])}, 8, 2, np.asarray([3.0, 1.0]), seed=5)
    assert not set(next_epoch["draw"].tolist()) & set(out["draw"].tolist())


def test_cached_pool_tokens_equal_tokenizing_the_chosen_text():
    """The batch call takes pool sentences' tokens from a per-class cache: the same tokens as tokenizing each
    row's chosen text, for caption rows and pool rows alike."""
    from system.model.factory import tokenizer_for

    pairer = _pairer(seed=0)
    batch = _batch(40, list(range(2000, 2040)))
    batch["caption"][::3] = ""  # rows without a caption always draw from the pool
    out = pairer(batch)["text"]
    twin = _pairer(seed=0)
    texts = [
        twin.choose(str(c), int(y), RowDraws(int(d)))
        for c, y, d in zip(batch["caption"], batch["label"], batch["draw"], strict=True)
    ]
    assert any(t == "a red circle" for t in texts) and any(t != "a red circle" for t in texts)
    assert out.dtype == np.int64 and np.array_equal(out, tokenizer_for("uniproto-tiny-rn")(texts).numpy())
    assert set(pairer._pool_tokens) == {0, 1}
    empty = pairer({k: v[:0] for k, v in batch.items()})["text"]
    assert empty.shape[0] == 0
