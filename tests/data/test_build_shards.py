"""uniproto build-shards: split files, image folders and web-caption shards -> the dataset directory contract."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import build_shards_request
from pipelines.cli import main as cli_main
from system.config import DataSection
from system.data.build_shards import build
from system.data.class_list import read_class_names
from system.data.corpus import load_class_corpus
from system.data.dataset_dir import DatasetError, iter_shard_samples, load_manifest
from system.data.decode import decode_batch
from system.data.reencode import reencode_jpeg, target_size
from system.data.shard_build import SampleRef, holdout
from system.data.webcaption import CaptionMatcher
from system.text.prepare import prepare_text_pools

pytestmark = pytest.mark.timeout(120)

CLASSES = ["cat", "dog", "sea lion"]
# (class folder, file, width, height): 5 / 4 / 3 readable train images, sizes around --max-side 64.
TRAIN = [
    ("cat", "0.jpg", 200, 100),  # downscaled to 64 x 32
    ("cat", "1.jpg", 40, 30),  # smaller than max side: kept as is, never upscaled
    ("cat", "2.png", 90, 120),  # PNG in: JPEG out, 48 x 64
    ("cat", "3.jpg", 64, 64),
    ("cat", "4.jpg", 70, 50),
    ("dog", "0.jpg", 50, 50),
    ("dog", "1.jpg", 80, 60),
    ("dog", "2.jpg", 30, 90),
    ("dog", "3.jpg", 64, 20),
    ("sea_lion", "0.jpg", 55, 44),
    ("sea_lion", "1.jpg", 100, 64),
    ("sea_lion", "2.jpg", 64, 99),
]
VAL = [("cat", "v.jpg", 33, 33), ("dog", "v.jpg", 34, 34), ("sea_lion", "v.jpg", 35, 35)]


def _image(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _jpeg_bytes(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    """Images under tmp/imgs/<class>/, split files with a corrupt image and a missing file, class names."""
    imgs = tmp_path / "imgs"
    label = {"cat": 0, "dog": 1, "sea_lion": 2}
    for i, (cls, name, w, h) in enumerate(TRAIN + VAL):
        _image(imgs / cls / name, w, h, seed=i)
    (imgs / "dog" / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    train = [f"{cls}/{name} {label[cls]}" for cls, name, _, _ in TRAIN]
    train += ["dog/bad.jpg 1", "/cat/missing.jpg 0", "", "# a comment line"]
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "val.txt").write_text("".join(f"{c}/{n} {label[c]}\n" for c, n, _, _ in VAL))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return tmp_path


def _split_args(t: Path, out: str, *extra: str) -> list[str]:
    return [
        "--train-split", str(t / "train.txt"), "--val-split", str(t / "val.txt"), "--image-root",
        str(t / "imgs"), "--class-names", str(t / "classes.txt"), "--out", str(t / out), "--max-side", "64",
        "--samples-per-shard", "3", *extra,
    ]  # fmt: skip


def _build(argv: list[str]) -> dict:
    return build(build_shards_request(argv), say=None)


def _shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("*/*.tar"))}


def _samples(root: Path, split: str) -> list[dict]:
    return list(iter_shard_samples(load_manifest(root).shard_paths(root, split)))


def test_split_files_build_manifest_counts_and_samples(tree):
    lines: list[str] = []
    summary = build(build_shards_request(_split_args(tree, "ds", "--workers", "2")), say=lines.append)
    # Skipped inputs are named in the log: the split file's line for a missing image, the file for a corrupt one.
    missing = f"skipped {tree / 'train.txt'}:14: missing_file ({tree / 'imgs/cat/missing.jpg'})"
    assert any(line.endswith(missing) for line in lines)
    assert any(f"skipped {tree / 'imgs/dog/bad.jpg'}: corrupt_image" in line for line in lines)
    assert summary["splits"] == {"train": 12, "val": 3}
    assert summary["skipped"] == {"corrupt_image": 1, "missing_file": 1}
    assert summary["classes"] == 3 and summary["shards_written"] == 5 + 1  # 13 planned train refs / 3
    m = load_manifest(tree / "ds")
    assert m.class_names == CLASSES and m.train_counts == [5, 4, 3]
    assert m.splits["train"].shards == [f"train/{i:05d}.tar" for i in range(5)]
    assert m.text_dir is None and m.source.startswith("split files train=")
    assert m.extra["skipped"] == {"corrupt_image": 1, "missing_file": 1}
    train = _samples(tree / "ds", "train")
    assert sorted(s["json"]["origin"] for s in train) == sorted(f"{c}/{n}" for c, n, _, _ in TRAIN)
    assert len({s["__key__"] for s in train}) == 12
    folder_label = {"cat": 0, "dog": 1, "sea_lion": 2}
    for s in train:
        meta = s["json"]
        assert meta["label"] == folder_label[meta["origin"].split("/")[0]]
        assert meta["class_name"] == CLASSES[meta["label"]] and meta["source"] == "split-files"
        assert s["txt"] == ""
    # Shards mix classes (seeded order), not the split file's class-sorted order.
    assert [s["json"]["label"] for s in train] != sorted(s["json"]["label"] for s in train)


def test_images_reencoded_at_max_side_aspect_kept_never_upscaled(tree):
    _build(_split_args(tree, "ds", "--workers", "1"))
    expected = {
        "cat/0.jpg": (64, 32),
        "cat/1.jpg": (40, 30),
        "cat/2.png": (48, 64),
        "dog/2.jpg": (21, 64),  # 30 x 90 -> 64 / 90 * 30 = 21.3
        "sea_lion/1.jpg": (64, 41),  # 100 x 64 -> 40.96
        "sea_lion/2.jpg": (41, 64),  # 64 x 99: the long side is the height
    }
    sizes = {}
    for s in _samples(tree / "ds", "train"):
        with Image.open(io.BytesIO(s["jpg"])) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            sizes[s["json"]["origin"]] = im.size
            assert im.size == (s["json"]["width"], s["json"]["height"])
    for origin, size in expected.items():
        assert sizes[origin] == size, origin
    assert max(max(wh) for wh in sizes.values()) == 64


def test_reencode_unit_cases():
    assert target_size(200, 100, 64) == (64, 32)
    assert target_size(40, 30, 64) == (40, 30)
    assert target_size(3000, 1, 64) == (64, 1)  # never collapses to 0
    assert target_size(500, 400, 0) == (500, 400)  # 0: keep
    # Transparent pixels become white, not black.
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    jpg, w, h = reencode_jpeg(buf.getvalue(), 64)
    assert (w, h) == (10, 10)
    with Image.open(io.BytesIO(jpg)) as im:
        assert min(im.convert("RGB").getpixel((5, 5))) > 245
    # EXIF orientation 6 (rotate 90): stored 80 x 40, displayed 40 x 80; scaled to 32 x 64.
    im = Image.fromarray(np.zeros((40, 80, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    assert reencode_jpeg(buf.getvalue(), 64)[1:] == (32, 64)
    # Same bytes in, same bytes out.
    data = _jpeg_bytes(120, 90, 1)
    assert reencode_jpeg(data, 64) == reencode_jpeg(data, 64)


def test_same_input_same_bytes_for_any_worker_count(tree):
    _build(_split_args(tree, "one", "--workers", "1", "--name", "x"))
    _build(_split_args(tree, "two", "--workers", "2", "--name", "x"))
    one, two = _shard_bytes(tree / "one"), _shard_bytes(tree / "two")
    assert len(one) == 6 and one == two
    assert (tree / "one/manifest.json").read_bytes() == (tree / "two/manifest.json").read_bytes()


def test_resume_after_interruption_keeps_complete_shards(tree):
    first = _build(_split_args(tree, "ds", "--workers", "2"))
    root = tree / "ds"
    before = _shard_bytes(root)
    old = 1_000_000_000  # a distinctive mtime: a shard rewritten by the rerun gets a new one
    for p in root.glob("*/*.tar"):
        os.utime(p, (old, old))
    # The interruption: no manifest yet, one shard never renamed from its temp name, one half written.
    (root / "manifest.json").unlink()
    (root / "train/00001.tar").rename(root / "train/00001.tar.tmp")
    (root / "train/00002.tar").write_bytes(before["train/00002.tar"][:1000])
    (root / "train/00009.tar").write_bytes(b"a shard from a plan with more shards")
    second = _build(_split_args(tree, "ds", "--workers", "2"))
    assert second["shards_written"] == 2 and second["shards_kept"] == 4
    assert second["splits"] == first["splits"] and second["skipped"] == first["skipped"]
    assert _shard_bytes(root) == before  # the stale 00009.tar is gone, the rest identical
    assert not list(root.rglob("*.tmp"))
    rewritten = {p.relative_to(root).as_posix() for p in root.glob("*/*.tar") if p.stat().st_mtime != old}
    assert rewritten == {"train/00001.tar", "train/00002.tar"}
    assert load_manifest(root).train_counts == [5, 4, 3]


def test_changed_options_rewrite_every_shard_on_resume(tree):
    _build(_split_args(tree, "ds", "--workers", "1"))
    (tree / "ds/manifest.json").unlink()
    summary = _build(
        _split_args(tree, "ds", "--workers", "1", "--max-side", "32")
    )  # the last --max-side wins
    assert summary["shards_kept"] == 0 and summary["shards_written"] == 6
    for s in _samples(tree / "ds", "train"):
        assert max(s["json"]["width"], s["json"]["height"]) <= 32


def test_refuses_existing_dataset_without_overwrite(tree, capsys):
    _build(_split_args(tree, "ds", "--workers", "1"))
    with pytest.raises(DatasetError, match=f"{tree / 'ds'} already holds a dataset.*--overwrite"):
        _build(_split_args(tree, "ds", "--workers", "1"))
    assert cli_main(["build-shards", *_split_args(tree, "ds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("uniproto: dataset error: --out") and "--overwrite" in err[0]
    summary = _build(_split_args(tree, "ds", "--workers", "1", "--overwrite"))
    assert summary["shards_written"] == 6 and summary["shards_kept"] == 0
    foreign = tree / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a uniproto dataset"):
        _build(_split_args(tree, "foreign", "--overwrite"))
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("cat/0.jpg x", "label 'x' is not an integer"),
        ("cat/0.jpg 3", r"label 3 is outside the class list \(0..2"),
        ("cat/0.jpg", "expected '<relative/path> <label>'"),
    ],
)
def test_bad_split_line_names_file_and_line(tree, line, message):
    (tree / "train.txt").write_text(f"cat/1.jpg 0\n\n{line}\n")
    with pytest.raises(DatasetError, match=f"{tree / 'train.txt'}:3: {message}"):
        _build(_split_args(tree, "ds"))
    assert not (tree / "ds/manifest.json").exists()


def test_class_name_file_formats(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("tench, Tinca tinca\n\ngoldfish\n")
    c = read_class_names(f)
    assert (c.names, c.ids, c.fmt) == (["tench, Tinca tinca", "goldfish"], None, "plain")
    f.write_text("1 goldfish\n0 tench\n2 great white shark\n")
    c = read_class_names(f)
    assert (c.names, c.fmt) == (["tench", "goldfish", "great white shark"], "labelled")
    f.write_text("n01440764 tench\nn01443537 goldfish\n")
    c = read_class_names(f)
    assert (c.names, c.ids, c.fmt) == (["tench", "goldfish"], ["n01440764", "n01443537"], "wnid")
    f.write_text("0 tench\n0 goldfish\n")
    with pytest.raises(DatasetError, match=f"{f}:2: label 0 repeats"):
        read_class_names(f)
    f.write_text("crane\nheron\ncrane\n")
    with pytest.raises(DatasetError, match=f"{f}:3: class name 'crane' repeats line 1"):
        read_class_names(f)


def test_image_folder_with_seeded_per_class_holdout(tree):
    def args(out: str) -> list[str]:
        return ["--image-folder", str(tree / "imgs"), "--out", str(tree / out), "--max-side", "64",
                "--val-per-class", "1", "--test-per-class", "1"]  # fmt: skip

    summary = _build([*args("ds"), "--workers", "1"])
    # cat 6 images, dog 5 + 1 corrupt, sea lion 4 (the val.txt images are ordinary files of the tree here).
    assert summary["skipped"] == {"corrupt_image": 1}
    m = load_manifest(tree / "ds")
    assert m.class_names == ["cat", "dog", "sea lion"]  # sorted folders; sea_lion read as "sea lion"
    assert m.extra["class_folders"] == ["cat", "dog", "sea_lion"]
    origins = {
        split: [s["json"]["origin"] for s in _samples(tree / "ds", split)]
        for split in ("train", "val", "test")
    }
    # The corrupt image may be drawn into any split; every class holds one out for val and one for test.
    assert sum(map(len, origins.values())) == 15
    assert m.splits["val"].num_samples + m.splits["test"].num_samples in (5, 6)
    for split in ("val", "test"):
        labels = sorted(s["json"]["label"] for s in _samples(tree / "ds", split))
        assert set(labels) <= {0, 1, 2} and len(labels) == len(set(labels))
    everything = [o for split in origins.values() for o in split]
    assert len(everything) == len(set(everything))  # splits are disjoint
    assert m.train_counts[0] == 4 and m.train_counts[2] == 2
    # The same seed draws the same holdout.
    _build(args("again"))
    assert _shard_bytes(tree / "again") == _shard_bytes(tree / "ds")


def test_caption_matching_rules():
    m = CaptionMatcher(
        ["cat", "dog", "butterfly", "wolf", "bear", "polar bear", "mouse"],
        {0: ["kitty"], 6: ["mice"]},
    )
    assert m.assign("A CAT on the mat") == (0, "")
    assert m.assign("two dogs playing") == (1, "")  # plural
    assert m.assign("Butterflies over a field") == (2, "")  # y -> ies
    assert m.assign("a pack of wolves") == (3, "")  # f -> ves
    assert m.assign("my kitty sleeps") == (0, "")  # synonym
    assert m.assign("three mice") == (6, "")  # irregular plural through the synonyms
    assert m.assign("a polar bear swimming") == (5, "")  # inside a longer match: not also "bear"
    assert m.assign("a bear and a polar bear") == (None, "ambiguous_class")
    assert m.assign("a cat and a dog") == (None, "ambiguous_class")
    assert m.assign("a catalog of dogma") == (None, "no_class_match")  # whole words only
    assert m.assign("   ") == (None, "no_caption")
    with pytest.raises(DatasetError, match="'kitty' names both class 'cat' and class 'dog'"):
        CaptionMatcher(["cat", "dog"], {0: ["kitty"], 1: ["Kitty"]}, "syn.yaml")


def _web_shard(path: Path, rows: list[tuple[str, bytes | None, str]]) -> None:
    """An img2dataset shard: {key}.jpg (when given), {key}.txt, {key}.json with the url."""
    with tarfile.open(path, "w") as tar:
        for key, image, caption in rows:
            members = {
                "txt": caption.encode(),
                "json": json.dumps({"url": f"http://x/{key}", "key": key}).encode(),
            }
            if image is not None:
                members["jpg"] = image
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[ext])
                tar.addfile(info, io.BytesIO(members[ext]))


def test_web_caption_shards_assign_classes_and_count_drops(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    img = [_jpeg_bytes(80, 60, s) for s in range(8)]
    _web_shard(
        web / "00000.tar",
        [
            ("000000000", img[0], "A cat on a mat"),
            ("000000001", img[1], "two DOGS playing in the park"),
            ("000000002", img[2], "my kitty"),
            ("000000003", img[3], "a cat and a dog"),
            ("000000004", img[4], "a sunset over the sea"),
        ],
    )
    _web_shard(
        web / "00001.tar",
        [
            ("000010000", None, "a dog without its picture"),
            ("000010001", b"garbage", "a dog with a broken picture"),
            ("000010002", img[5], "sea lions on the rocks"),
            ("000010003", img[6], "Dog!"),
        ],
    )
    (web / "00000.parquet").write_bytes(b"img2dataset side file, not a shard")
    (tmp_path / "classes.txt").write_text("0 cat\n1 dog\n2 sea lion\n")
    (tmp_path / "syn.yaml").write_text("cat: [kitty]\n1: puppy\n")
    summary = _build(
        [
            "--web-shards",
            str(web / "*.tar"),
            "--class-names",
            str(tmp_path / "classes.txt"),
            "--synonyms",
            str(tmp_path / "syn.yaml"),
            "--out",
            str(tmp_path / "ds"),
            "--max-side",
            "40",
        ]  # fmt: skip
    )
    assert summary["splits"] == {"train": 5}
    assert summary["skipped"] == {
        "ambiguous_class": 1,
        "corrupt_image": 1,
        "missing_image": 1,
        "no_class_match": 1,
    }
    m = load_manifest(tmp_path / "ds")
    assert m.train_counts == [2, 2, 1] and m.source.startswith("img2dataset shards")
    got = {s["json"]["origin"]: s for s in _samples(tmp_path / "ds", "train")}
    assert sorted(got) == ["00000.tar:000000000", "00000.tar:000000001", "00000.tar:000000002",
                           "00001.tar:000010002", "00001.tar:000010003"]  # fmt: skip
    assert got["00000.tar:000000001"]["txt"] == "two DOGS playing in the park"
    assert got["00000.tar:000000001"]["json"]["label"] == 1
    assert got["00001.tar:000010002"]["json"]["label"] == 2
    assert got["00000.tar:000000002"]["json"]["url"] == "http://x/000000002"
    assert got["00000.tar:000000000"]["json"]["source"] == "web-caption"
    with Image.open(io.BytesIO(got["00000.tar:000000000"]["jpg"])) as im:
        assert im.size == (40, 30)


def test_class_text_copied_normalised_and_optional(tree):
    text = tree / "corpus"
    text.mkdir()
    (text / "desc_0.txt").write_bytes("\ufeffCats purr.  \r\n== References ==\r\nA book.\r\n".encode())
    (text / "dog.txt").write_text("Dogs bark.\n\n\n")  # by class name
    (text / "desc_7.txt").write_text("label 7 does not exist")
    with pytest.raises(DatasetError, match="desc_7.txt is for label 7, but there are 3 classes"):
        _build(_split_args(tree, "ds", "--class-text", str(text)))
    (text / "desc_7.txt").unlink()
    _build(_split_args(tree, "ds", "--class-text", str(text), "--overwrite"))
    root = tree / "ds"
    m = load_manifest(root)
    assert m.text_dir == "text"
    assert (root / "text/desc_0.txt").read_bytes() == b"Cats purr.\n== References ==\nA book.\n"
    assert (root / "text/desc_1.txt").read_text() == "Dogs bark.\n"
    missing: list[int] = []
    corpus = load_class_corpus(m.text_path(root), 3, missing)
    assert corpus[0] == ["Cats purr."] and missing == [2]
    # Without --class-text the dataset has no text dir and the text stage falls back to prompts.
    _build(_split_args(tree, "plain"))
    plain = load_manifest(tree / "plain")
    pools, report = prepare_text_pools(DataSection(root=str(tree / "plain")), plain)
    assert plain.text_dir is None and all(pools[c] for c in range(3)) and report["kept"] == 0


def test_built_rows_decode_to_their_labels(tree):
    _build(_split_args(tree, "ds"))
    rows = _samples(tree / "ds", "train") + _samples(tree / "ds", "val")
    # The raw columns Ray Data's read_webdataset hands the decode stage: bytes per member.
    batch = {
        "__key__": np.array([r["__key__"] for r in rows], dtype=object),
        "jpg": np.array([r["jpg"] for r in rows], dtype=object),
        "txt": np.array([r["txt"].encode() for r in rows], dtype=object),
        "json": np.array([json.dumps(r["json"]).encode() for r in rows], dtype=object),
    }
    out = decode_batch(batch, image_size=32, num_classes=3)
    assert out["image"].shape == (15, 32, 32, 3) and out["image"].dtype == np.uint8
    assert out["label"].tolist() == [r["json"]["label"] for r in rows]
    assert not decode_batch.last_skipped


def test_cli_prints_json_last_and_refuses_misplaced_flags(tree, capsys):
    assert cli_main(["build-shards", *_split_args(tree, "ds", "--workers", "1")]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["out"] == str(tree / "ds") and last["splits"] == {"train": 12, "val": 3}
    assert set(last) >= {"out", "classes", "splits", "skipped", "seconds"}
    with pytest.raises(SystemExit) as exit_info:
        build_shards_request([*_split_args(tree, "x"), "--synonyms", "s.yaml"])
    assert exit_info.value.code == 2
    assert "--synonyms does not apply to --train-split" in capsys.readouterr().err


def test_holdout_keeps_a_train_image_per_class_and_is_seeded():
    refs = [
        SampleRef(f"/x/{c}/{i}.jpg", c, f"{c}/{i}") for c, n in enumerate([10, 3, 2, 1]) for i in range(n)
    ]
    splits = holdout(refs, 4, val_per_class=2, test_per_class=2, seed=5)
    per_class = {s: [sum(r.label == c for r in rows) for c in range(4)] for s, rows in splits.items()}
    assert per_class == {"train": [6, 1, 1, 1], "val": [2, 2, 1, 0], "test": [2, 0, 0, 0]}
    assert holdout(refs, 4, 2, 2, seed=5) == splits
    assert holdout(refs, 4, 2, 2, seed=6)["val"] != splits["val"]
    assert set(holdout(refs, 4, 0, 0, seed=5)) == {"train"}


def test_image_folder_matched_by_wordnet_ids(tmp_path):
    for i, wnid in enumerate(["n00000001", "n00000002"]):
        _image(tmp_path / "imgs" / wnid / "a.jpg", 20, 20, seed=i)
    (tmp_path / "c.txt").write_text("n00000002 tiger shark\nn00000001 tench\n")
    _build(
        [
            "--image-folder",
            str(tmp_path / "imgs"),
            "--class-names",
            str(tmp_path / "c.txt"),
            "--out",
            str(tmp_path / "ds"),
        ]
    )
    m = load_manifest(tmp_path / "ds")
    assert m.class_names == ["tiger shark", "tench"] and m.extra["class_ids"] == ["n00000002", "n00000001"]
    labels = {s["json"]["origin"]: s["json"]["label"] for s in _samples(tmp_path / "ds", "train")}
    assert labels == {"n00000001/a.jpg": 1, "n00000002/a.jpg": 0}
    (tmp_path / "c.txt").write_text("n00000003 goldfish\nn00000001 tench\n")
    with pytest.raises(DatasetError, match=r"folder\(s\) \['n00000002'\] are not WordNet ids of"):
        _build(
            [
                "--image-folder",
                str(tmp_path / "imgs"),
                "--class-names",
                str(tmp_path / "c.txt"),
                "--out",
                str(tmp_path / "x"),
            ]
        )


def test_build_request_names_one_source_and_refuses_foreign_fields(tmp_path):
    from system.data.build_shards import BuildRequest, BuildRequestError

    with pytest.raises(BuildRequestError, match="exactly one source"):
        BuildRequest(out=str(tmp_path / "o"))
    with pytest.raises(BuildRequestError, match="exactly one source"):
        BuildRequest(out=str(tmp_path / "o"), train_split="t.txt", image_folder="imgs")
    with pytest.raises(BuildRequestError, match="--val-split does not apply to --image-folder"):
        BuildRequest(out=str(tmp_path / "o"), image_folder="imgs", val_split="v.txt")
    with pytest.raises(BuildRequestError, match="--test-per-class must be >= 0"):
        BuildRequest(out=str(tmp_path / "o"), web_shards="a.tar", test_per_class=-1)
    assert BuildRequest(out="o", web_shards="a.tar", val_per_class=2).source == "web_shards"
