import json
import tarfile

import pytest

from system.data.dataset_dir import (
    FORMAT_VERSION,
    DatasetError,
    Manifest,
    iter_shard_samples,
    load_manifest,
    sample_key,
    write_manifest,
    write_split_shards,
)


def _samples(n):
    for i in range(n):
        yield {
            "jpg": bytes([i % 256]) * (10 + i),
            "txt": f"caption {i} — ünïcode",
            "json": {"label": i % 3, "class_name": f"class {i % 3}", "source": "test"},
        }


def _dataset(root, n_train=7, per_shard=3):
    train = write_split_shards(root, "train", _samples(n_train), per_shard)
    val = write_split_shards(root, "val", _samples(2), per_shard)
    (root / "text").mkdir()
    counts = [0, 0, 0]
    for i in range(n_train):
        counts[i % 3] += 1
    manifest = Manifest(FORMAT_VERSION, "toy", ["a", "b", "c"], counts, {"train": train, "val": val})
    write_manifest(root, manifest)
    return manifest


def test_shards_round_trip_bytes_text_json_and_keys(tmp_path):
    info = write_split_shards(tmp_path, "train", _samples(7), 3)
    assert info.num_samples == 7
    assert info.shards == ["train/00000.tar", "train/00001.tar", "train/00002.tar"]
    got = list(iter_shard_samples([str(tmp_path / s) for s in info.shards]))
    expected = list(_samples(7))
    assert [g["__key__"] for g in got] == [
        "000000000",
        "000000001",
        "000000002",
        "000010000",
        "000010001",
        "000010002",
        "000020000",
    ]
    for g, e in zip(got, expected, strict=True):
        assert g["jpg"] == e["jpg"] and g["txt"] == e["txt"] and g["json"] == e["json"]
    # img2dataset layout: members of a key contiguous, named {key}.{ext}.
    with tarfile.open(tmp_path / "train/00000.tar") as tar:
        assert tar.getnames()[:3] == ["000000000.jpg", "000000000.json", "000000000.txt"]
    assert sample_key(3, 42) == "000030042"


def test_explicit_keys_are_kept_and_duplicates_refused(tmp_path):
    samples = [{"__key__": "abc", "txt": "x"}, {"__key__": "def", "txt": "y"}]
    info = write_split_shards(tmp_path, "val", samples, 10)
    assert [s["__key__"] for s in iter_shard_samples([str(tmp_path / info.shards[0])])] == ["abc", "def"]
    with pytest.raises(ValueError, match="duplicate sample key 'abc'"):
        write_split_shards(tmp_path, "test", [{"__key__": "abc", "txt": "x"}] * 2, 10)
    with pytest.raises(ValueError, match="contain no '.'"):
        write_split_shards(tmp_path, "test", [{"__key__": "a.b", "txt": "x"}], 10)


def test_manifest_round_trip(tmp_path):
    manifest = _dataset(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.num_classes == 3
    assert loaded.train_counts == [3, 2, 2]
    paths = loaded.shard_paths(tmp_path, "train")
    assert len(paths) == 3 and paths[0] == str((tmp_path / "train/00000.tar").resolve())
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    with pytest.raises(ValueError, match="split 'test'"):
        loaded.shard_paths(tmp_path, "test")


def test_missing_manifest_names_path_and_suggests_demo(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(err.value)
    assert "uniproto make-demo-data --out DIR" in str(err.value)


def _edit_manifest(root, edit):
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format_version=2), "'format_version' is 2"),
        (lambda d: d.update(train_counts=[1, 2]), "'train_counts' has 2 entries but 'class_names' has 3"),
        (lambda d: d.pop("class_names"), r"missing required field\(s\) \['class_names'\]"),
        (lambda d: d.update(class_names=["a", "a", "b"]), "'class_names' has duplicates"),
        (lambda d: d.update(extras={}), r"unknown field\(s\) \['extras'\]"),
        (lambda d: d["splits"]["train"].update(num_samples=8), "'splits.train.num_samples' is 8"),
        (lambda d: d["splits"]["val"]["shards"].append("/abs/x.tar"), "relative to the dataset root"),
        (
            lambda d: d["splits"]["val"]["shards"].append("val/00009.tar"),
            r"'splits.val.shards\[1\]'.*does not exist",
        ),
        (lambda d: d.update(text_dir="nope"), "'text_dir' is 'nope'"),
        (lambda d: d.update(image_size=-3), "'image_size'"),
    ],
)
def test_manifest_refusals_name_file_and_field(tmp_path, edit, message):
    _dataset(tmp_path)
    _edit_manifest(tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(err.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", r"manifest\.json is not valid JSON"),
        (b'{"name": "caf\xe9"}', r"manifest\.json: not UTF-8 text \(byte 13\)"),
        (b"[" * 100_000 + b"]" * 100_000, r"manifest\.json is not valid JSON \(RecursionError"),
        (b"[1, 2]", r"manifest\.json: the manifest must be a JSON object"),
    ],
)
def test_invalid_manifests_are_reported_with_the_path(tmp_path, raw, message):
    (tmp_path / "manifest.json").write_bytes(raw)
    with pytest.raises(DatasetError, match=message):
        load_manifest(tmp_path)


def test_non_contiguous_members_are_refused(tmp_path):
    import io

    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name in ["k1.txt", "k2.txt", "k1.json"]:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(DatasetError, match="not contiguous"):
        list(iter_shard_samples([str(path)]))
