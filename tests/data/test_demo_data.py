import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from system.data.corpus import load_class_corpus, load_truth
from system.data.dataset_dir import iter_shard_samples, load_manifest
from system.data.demo_data import make_demo_dataset
from system.data.demo_render import COLOURS, PATTERNS, SHAPES, demo_classes, render_image
from system.data.longtail import longtail_counts

SMALL = dict(num_classes=6, imbalance=10.0, n_max=20, val_per_class=3, test_per_class=4, image_size=32)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    lines = []
    manifest = make_demo_dataset(str(root), samples_per_shard=16, progress=lines.append, **SMALL)
    return root, manifest, lines


def _samples(root, manifest, split):
    return list(iter_shard_samples(manifest.shard_paths(root, split)))


def test_counts_per_split_match_the_long_tail(demo):
    root, manifest, lines = demo
    assert load_manifest(root) == manifest
    assert manifest.name == "demo" and manifest.image_size == 32 and manifest.num_classes == 6
    assert manifest.train_counts == longtail_counts(6, 20, 10.0) == [20, 13, 8, 5, 3, 2]
    train = _samples(root, manifest, "train")
    assert Counter(s["json"]["label"] for s in train) == dict(enumerate(manifest.train_counts))
    for split, per_class in (("val", 3), ("test", 4)):
        labels = Counter(s["json"]["label"] for s in _samples(root, manifest, split))
        assert labels == {c: per_class for c in range(6)}
    assert manifest.splits["train"].num_samples == 51 and len(manifest.splits["train"].shards) == 4
    # Shuffled: the first shard is not one class in a row.
    assert len({s["json"]["label"] for s in train[:16]}) >= 4
    assert lines[-1].startswith("[make-demo-data] wrote 93 images")


def test_samples_decode_and_carry_consistent_metadata(demo):
    root, manifest, _ = demo
    classes = manifest.extra["classes"]
    captions = Counter()
    for sample in _samples(root, manifest, "test"):
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 32)
        meta = sample["json"]
        cls = classes[meta["label"]]
        assert meta["class_name"] == manifest.class_names[meta["label"]] == cls["name"]
        assert (meta["shape"], meta["colour"], meta["pattern"]) == (
            cls["shape"],
            cls["colour"],
            cls["pattern"],
        )
        assert meta["source"] == "uniproto-demo" and len(sample["__key__"]) == 9
        captions[meta["caption_boilerplate"]] += 1
        if not meta["caption_boilerplate"]:
            assert cls["shape"] in sample["txt"]
    assert captions[True] > 0 and captions[False] > captions[True]
    assert manifest.extra["generator"]["seed"] == 0


def test_rerun_is_byte_identical_and_overwrite_is_explicit(demo, tmp_path):
    root, manifest, _ = demo
    with pytest.raises(FileExistsError, match=str(root)):
        make_demo_dataset(str(root), progress=None, **SMALL)
    again = tmp_path / "again"
    make_demo_dataset(str(again), samples_per_shard=16, progress=None, **SMALL)
    for rel in [*manifest.splits["train"].shards, *manifest.splits["test"].shards, "text/truth.jsonl"]:
        assert (again / rel).read_bytes() == (root / rel).read_bytes(), rel
    # overwrite=True replaces the old content (a stale file disappears).
    (again / "stale.txt").write_text("x")
    make_demo_dataset(str(again), samples_per_shard=16, overwrite=True, progress=None, **SMALL)
    assert not (again / "stale.txt").exists() and load_manifest(again) == manifest


def test_overwrite_never_deletes_a_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="does not look like a uniproto dataset"):
        make_demo_dataset(str(tmp_path), overwrite=True, progress=None, **SMALL)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_truth_file_matches_the_corpus_reader(demo):
    root, manifest, _ = demo
    text_dir = Path(root) / "text"
    corpus = load_class_corpus(text_dir, 6)
    truth = load_truth(text_dir)
    rows = [json.loads(line) for line in (text_dir / "truth.jsonl").read_text().splitlines()]
    assert [(r["label"], r["sentence"]) for r in rows] == [(c, s) for c in range(6) for s in corpus[c]]
    assert len(truth) == len(rows)
    for label in range(6):
        flags = [truth[(label, s)] for s in corpus[label]]
        assert 8 <= flags.count(False) <= 12 and 4 <= flags.count(True) <= 8
    raw = (text_dir / "desc_0.txt").read_text()
    assert "== References ==" in raw and not any("Journal of Plane Figures" in s for s in corpus[0])


def test_classes_share_attributes_between_head_and_tail():
    classes = demo_classes(24, seed=0)
    assert len({(c.shape, c.colour, c.pattern) for c in classes}) == 24
    head, tail = classes[:12], classes[12:]
    # Every shape and colour in the tail also appears in the head: the tail is compositional.
    assert {c.shape for c in tail} <= {c.shape for c in head} == set(SHAPES)
    assert {c.colour for c in tail} <= {c.colour for c in head} == set(COLOURS)
    assert demo_classes(24, seed=0) == classes and demo_classes(24, seed=1) != classes
    with pytest.raises(ValueError, match="num_classes must be between 2 and 224"):
        demo_classes(225)


def test_rendered_object_has_its_class_colour():
    cls = demo_classes(24, seed=0)[9]  # red solid circle
    assert cls.name == "red solid circle"
    jpg, pose = render_image(cls, 64, np.random.default_rng(5))
    pixels = np.asarray(Image.open(io.BytesIO(jpg)), dtype=float)
    cx, cy = (int(v * 64) for v in pose["center"])
    r, g, b = pixels[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).mean(0)
    assert r > 150 and g < 90 and b < 90
    assert 0.45 <= pose["object_fraction"] <= 0.6 and 1 <= pose["distractors"] <= 3


def test_crowded_profile_has_a_diverse_head_and_fine_grained_tail_families():
    classes = demo_classes(24, seed=0, profile="crowded")
    assert demo_classes(24, seed=0, profile="crowded") == classes  # deterministic
    assert len({(c.shape, c.colour, c.pattern) for c in classes}) == 24
    head, tail = classes[:8], classes[8:]
    assert len({(c.shape, c.colour) for c in head}) == 8  # no two head classes share shape and colour
    families: dict[tuple[str, str], list] = {}
    for c in tail:
        families.setdefault((c.shape, c.colour), []).append(c)
    assert len(families) == 4
    for members in families.values():  # a family: same shape, colour and size; four patterns
        assert len(members) == 4 and len({m.size for m in members}) == 1
        assert sorted(m.pattern for m in members) == sorted(PATTERNS)
    assert not {(c.shape, c.colour) for c in head} & set(families)  # the tail crowds away from the head
    with pytest.raises(ValueError, match="profile"):
        demo_classes(24, profile="odd")
