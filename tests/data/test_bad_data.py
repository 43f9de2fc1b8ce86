"""Bad data is skipped and counted, never fatal: every fault made here, exact counts, through the tar reader alone
and through `uniproto check-shards` on a real local Ray (the pipeline's own read + decode path)."""

import gzip
import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from system.data.decode import decode_batch, resample_factors
from system.data.faults import DataFault
from system.data.tar_stream import ShardTally, iter_samples


def _jpeg(colour=(200, 30, 30), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


JPG = _jpeg()


def _sample(key, label=0, jpg=JPG, txt=b"a red square", meta=None):
    members = [(f"{key}.jpg", jpg)] if jpg is not None else []
    if txt is not None:
        members.append((f"{key}.txt", txt))
    if meta is not False:
        members.append((f"{key}.json", json.dumps(meta or {"label": label}).encode()))
    return members


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _header_offset(data: bytes, name: str) -> int:
    """Byte offset of member `name`'s header in a plain tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return next(m.offset for m in tar.getmembers() if m.name == name)


FOUR = _tar(
    [m for i in range(4) for m in [(f"k{i}.jpg", JPG), (f"k{i}.txt", b"t"), (f"k{i}.json", b'{"label": 0}')]]
)
CUT_INSIDE = FOUR[: _header_offset(FOUR, "k3.txt") + 512 + 1]  # k3's caption cut after one byte
CUT_AT_HEADER = FOUR[: _header_offset(FOUR, "k3.jpg")]  # ends cleanly after k2, but without the end blocks


def _read(data: bytes, strict=False):
    tally = ShardTally("/d/x.tar", 0)
    keys = [s["__key__"] for s in iter_samples(io.BytesIO(data), tally, strict)]
    return keys, tally


def _good(n, prefix="k"):
    return [m for i in range(n) for m in _sample(f"{prefix}{i}", label=i % 3)]


# ------------------------------------------------------------------------------------ the tar reader alone


def test_reader_groups_members_by_key_and_keeps_image_extension_variants():
    members = _good(2) + [
        ("dir.v1/k9.JPEG", JPG),
        ("dir.v1/k9.txt", b"t"),
        ("dir.v1/k9.json", b'{"label":1}'),
    ]
    keys, tally = _read(_tar(members))
    assert keys == ["k0", "k1", "dir.v1/k9"]  # key: up to the first dot of the basename, folders kept
    assert tally.rows == 3 and not tally.skipped and tally.fault is None
    rows = list(iter_samples(io.BytesIO(_tar(members)), ShardTally("u", 7)))
    assert rows[2]["jpg"] == JPG and rows[2]["__shard__"] == 7 and rows[2]["__url__"] == "u"


def test_duplicate_member_and_non_contiguous_key_skip_one_sample_each():
    members = (
        _sample("a")
        + _sample("dup")
        + [("dup.jpg", JPG)]  # the same member twice: the sample is dropped
        + _sample("b")
        + [("a.txt", b"stray")]  # a run of key a after key b: that run is dropped, the first a is kept
        + _sample("c")
    )
    keys, tally = _read(_tar(members))
    assert keys == ["a", "b", "c"]
    assert tally.skipped == Counter({"duplicate_member": 1, "non_contiguous_key": 1})
    assert tally.rows == 3 and tally.fault is None


@pytest.mark.parametrize(
    ("data", "reason", "keys"),
    [
        (b"", "empty", []),
        (_tar([]), "empty", []),  # a sound tar without a single member
        (b"PAR1" + b"\0\1" * 600, "not_a_tar", []),  # img2dataset's parquet, renamed
        (CUT_INSIDE, "truncated", ["k0", "k1", "k2"]),  # cut inside k3's members: k3 dropped too
        # Cut at a header: no end-of-archive block. k2 may have had more members: dropped as incomplete.
        (CUT_AT_HEADER, "truncated", ["k0", "k1"]),
        (gzip.compress(FOUR)[:-40], "truncated", None),  # a .tar.gz cut short
    ],
)
def test_shard_faults_keep_the_complete_samples_before_them(data, reason, keys):
    got, tally = _read(data)
    assert tally.fault == reason
    if keys is not None:
        assert got == keys and tally.rows == len(keys)


def test_compressed_tar_reads_like_a_plain_one():
    keys, tally = _read(gzip.compress(_tar(_good(3))))
    assert keys == ["k0", "k1", "k2"] and tally.fault is None


def test_strict_reader_names_the_shard_and_key():
    with pytest.raises(DataFault, match=r"/d/x\.tar: key 'a' non_contiguous_key"):
        _read(_tar(_sample("a") + _sample("b") + [("a.json", b"{}")]), strict=True)
    with pytest.raises(DataFault, match=r"/d/x\.tar: .*truncated"):
        _read(CUT_INSIDE, strict=True)


def test_decode_counts_missing_text_and_strict_names_the_row():
    rows = [
        {"__key__": "a", "__url__": "/d/0.tar", "jpg": JPG, "txt": b"x", "json": b'{"label": 0}'},
        {"__key__": "b", "__url__": "/d/0.tar", "jpg": JPG, "txt": None, "json": b'{"label": 0}'},
    ]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    counts: Counter = Counter()
    out = decode_batch(batch, image_size=8, num_classes=1, counts=counts)
    assert out["key"].tolist() == ["a"] and counts == Counter({"missing_text": 1})
    with pytest.raises(DataFault, match=r"/d/0\.tar:b \(missing_text\)"):
        decode_batch(batch, image_size=8, num_classes=1, strict=True)


# ------------------------------------------------------------------------------------ resampling


@pytest.mark.parametrize("mode", ["sqrt", "balanced"])
def test_streaming_resampling_realises_the_expected_class_counts(mode):
    """Per-row seeded stochastic rounding over many batches: realised count of class c within 4 binomial
    standard deviations of n_c * r_c (floor(r_c) * n_c is exact, the remainder is Binomial(n_c, frac r_c))."""
    counts = [600, 150, 40, 10]
    factors = resample_factors(counts, mode)
    labels = np.repeat(np.arange(4), counts)
    np.random.default_rng(0).shuffle(labels)
    tiny = _jpeg(size=4)
    realised = np.zeros(4, dtype=np.int64)
    for start in range(0, len(labels), 64):  # batches of 64 rows from 4 "shards"
        chunk = labels[start : start + 64]
        batch = {
            "__key__": np.array([f"{start + i:06d}" for i in range(len(chunk))], dtype=object),
            "__url__": np.array([f"/d/{start // 200:05d}.tar"] * len(chunk), dtype=object),
            "__shard__": np.full(len(chunk), start // 200),
            "jpg": np.array([tiny] * len(chunk), dtype=object),
            "txt": np.array([b""] * len(chunk), dtype=object),
            "json": np.array([json.dumps({"label": int(y)}).encode() for y in chunk], dtype=object),
        }
        out = decode_batch(batch, image_size=4, num_classes=4, repeat_factors=factors, seed=11)
        realised += np.bincount(out["label"], minlength=4)
    n = np.asarray(counts)
    expected = n * factors
    frac = factors - np.floor(factors)
    sd = np.sqrt(n * frac * (1 - frac))
    assert np.all(np.abs(realised - expected) <= 4 * sd + 1e-9), (realised, expected, sd)
    # The epoch keeps its size in expectation, and the tail is lifted (balanced: every class ~ equal).
    assert abs(realised.sum() - n.sum()) <= 4 * np.sqrt((sd**2).sum())
    assert realised[3] > 3 * counts[3]


def test_resampling_draws_are_seeded_per_row_and_epoch():
    tiny = _jpeg(size=4)
    keys = [f"{i:04d}" for i in range(200)]

    def run(seed, shard, order):
        batch = {
            "__key__": np.array([keys[i] for i in order], dtype=object),
            "__url__": np.array(["/d/0.tar"] * len(order), dtype=object),
            "__shard__": np.full(len(order), shard),
            "jpg": np.array([tiny] * len(order), dtype=object),
            "txt": np.array([b""] * len(order), dtype=object),
            "json": np.array([b'{"label": 0}'] * len(order), dtype=object),
        }
        out = decode_batch(batch, image_size=4, num_classes=1, repeat_factors=np.array([1.5]), seed=seed)
        return Counter(out["key"].tolist())

    order = list(range(200))
    first = run(5, 0, order)
    # Same seed, shard position and keys: the same repeats, whatever the batch order.
    assert run(5, 0, order[::-1]) == first
    # Another epoch's pass over the shard (another position in the stream) or another seed draws anew.
    assert run(5, 200, order) != first and run(6, 0, order) != first
    assert 60 < sum(v - 1 for v in first.values()) < 140  # Binomial(200, 0.5) extra copies


# ------------------------------------------------------------------------------------ check-shards on Ray


def _gnu_tar(members) -> bytes:
    """A GNU-format tar whose member names may carry bytes that are not UTF-8 (surrogate-escaped)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _pax_size_not_a_number() -> bytes:
    """Two good samples, then a member whose pax header says `size=abcdefghijkl`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in _good(2, "p") + [("p9.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name == "p9.txt":
                info.pax_headers = {"uniproto": "abcdefgh"}  # same length as the record swapped in below
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    assert raw.count(b"uniproto=abcdefgh") == 1
    return raw.replace(b"uniproto=abcdefgh", b"size=abcdefghijkl")


def _huge_declared_size() -> bytes:
    """Two good samples, then a member whose header declares 2**80 bytes (GNU base-256, checksum fixed)."""
    raw = bytearray(_tar(_good(2, "h") + [("h9.txt", b"x")]))
    at = _header_offset(bytes(raw), "h9.txt")
    raw[at + 124 : at + 136] = b"\x80" + (2**80).to_bytes(11, "big")
    raw[at + 148 : at + 156] = b" " * 8
    raw[at + 148 : at + 156] = f"{sum(raw[at : at + 512]):06o}\0 ".encode()
    return bytes(raw)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """Listed shards: 5 good; 3 good + 12 bad samples; a tar cut inside its 4th sample; an empty tar; a parquet
    named .tar; a gzip bomb beside 2 good samples; a non-numeric pax size after 2; a 2**80 size after 2; and one
    that does not exist. Beside them an img2dataset side file."""
    d = tmp_path_factory.mktemp("bad")
    (d / "00000.tar").write_bytes(_tar(_good(5, "s0k")))
    bad = (
        _sample("g1")
        + _sample("c1", jpg=b"not a jpeg at all")
        + _sample("t1", jpg=JPG[: len(JPG) // 3])  # truncated JPEG
        + _sample("m1", txt=None)  # missing text
        + _sample("l1", meta=False)  # missing label json
        + _sample("u1", label=9)  # unknown label (3 classes)
        + _sample("f1", meta={"label": 1.7})  # labels are JSON integers, never coerced ...
        + _sample("s1", meta={"label": "1"})
        + _sample("b1", meta={"label": True})
        + [("n1.jpg", JPG), ("n1.txt", b"t"), ("n1.json", b"[" * 200_000)]  # nested past the parser's stack
        + _sample("o1", jpg=bytes(2 * 2**20))  # a 2 MiB member, over the 1 MiB cap of this check
        + _sample("d1")
        + [("d1.txt", b"again")]  # duplicate member
        + _sample("a")
        + _sample("b")
        + [("a.json", b'{"label": 1}')]  # non-contiguous key
    )
    (d / "00001.tar").write_bytes(_gnu_tar(bad + _sample("x\udcff1")))  # + a name that is not UTF-8
    (d / "00002.tar").write_bytes(CUT_INSIDE)  # 3 complete samples, then cut inside the 4th
    (d / "00003.tar").write_bytes(_tar([]))
    (d / "00004.tar").write_bytes(b"PAR1" + b"\0\1" * 600)
    bomb = _tar(_good(2, "z") + _sample("zz", jpg=bytes(64 * 2**20)))  # 64 MiB of zeros: ~64 KB gzipped
    (d / "00005.tar").write_bytes(gzip.compress(bomb, compresslevel=9))
    (d / "00006.tar").write_bytes(_pax_size_not_a_number())
    (d / "00007.tar").write_bytes(_huge_declared_size())
    (d / "00000.parquet").write_bytes(b"PAR1")
    return d


EXPECTED_SKIPPED = {
    "bad_label": 3,
    "bad_metadata": 1,
    "bad_name": 1,
    "corrupt_image": 2,
    "duplicate_member": 1,
    "missing_label": 1,
    "missing_text": 1,
    "non_contiguous_key": 1,
    "oversized_member": 2,
    "unknown_label": 1,
}


def _check_shards(argv, capsys):
    from pipelines.cli import main

    code = main(["check-shards", *argv])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module's check-shards runs (check-shards leaves a caller's Ray running)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_check_shards_counts_every_fault_and_loses_no_good_sample(bad_folder, local_ray, capsys):
    spec = f"{bad_folder}/{{00000..00008}}.tar::{bad_folder}/00000.parquet"
    argv = [spec, "--class-count", "3", "--cpus", "2", "--max-member-mib", "1"]
    code, lines, err = _check_shards(argv, capsys)
    assert code == 0, err
    result = json.loads(lines[-1])
    # 5 (shard 0) + g1, a, b (shard 1) + 3 before the cut (shard 2) + the 2 beside the bomb + 1 each before the
    # bad pax size and the 2**80 size (the second good sample there is the one being read when the shard breaks:
    # a sample is complete only once the next key's member has been read): no other sample or shard is lost.
    assert result["good"] == 15
    assert result["skipped"] == EXPECTED_SKIPPED
    assert result["failed_shards"] == [
        {"path": f"{bad_folder}/00002.tar", "reason": "truncated"},
        {"path": f"{bad_folder}/00003.tar", "reason": "empty"},
        {"path": f"{bad_folder}/00004.tar", "reason": "not_a_tar"},
        {"path": f"{bad_folder}/00006.tar", "reason": "bad_header"},
        {"path": f"{bad_folder}/00007.tar", "reason": "truncated"},
        {"path": f"{bad_folder}/00008.tar", "reason": "missing"},
    ]
    assert result["shards"] == 9 and result["ignored_files"] == 1 and result["rows_out"] == 15
    assert result["seconds"] > 0

    # --strict: the first fault stops the check, exit 1, the message names the shard.
    code, lines, err = _check_shards(
        [f"{bad_folder}/00001.tar", "--class-count", "3", "--cpus", "2", "--strict"], capsys
    )
    assert code == 1
    assert f"{bad_folder}/00001.tar" in err and "(data.strict)" in err


def test_check_shards_user_errors_exit_2(tmp_path, capsys):
    code, _, err = _check_shards([str(tmp_path / "nope" / "{0..3}.tar")], capsys)
    assert code == 2 and "none of its 4 shard(s) exists" in err
    (tmp_path / "side.parquet").write_bytes(b"x")
    code, _, err = _check_shards([str(tmp_path)], capsys)
    assert code == 2 and "no .tar shards" in err
    (tmp_path / "00000.tar").write_bytes(FOUR)
    code, _, err = _check_shards([str(tmp_path), "--max-member-mib", "0"], capsys)
    assert code == 2 and "--max-member-mib must be >= 1" in err


def test_check_shards_member_cap_defaults_to_the_runs():
    from pipelines.cli import check_shards_request
    from system.config import load_config
    from system.data.tar_stream import MAX_MEMBER_BYTES

    run_cap = load_config(None, []).data.max_member_bytes
    assert check_shards_request(["x"]).max_member_mib * 2**20 == run_cap == MAX_MEMBER_BYTES == 64 * 2**20


def test_ledger_summary_and_report_line():
    from system.data.ledger import LedgerState, data_line

    led = LedgerState()
    led.shard(
        0, {"url": "/d/0.tar", "rows": 16, "skipped": {"duplicate_member": 1}, "fault": None, "detail": ""}
    )
    led.shard(1, {"url": "/d/1.tar", "rows": 3, "skipped": {}, "fault": "truncated", "detail": "cut"})
    led.shard(
        2, {"url": "/d/1.tar", "rows": 3, "skipped": {}, "fault": "truncated", "detail": "cut"}
    )  # epoch 2
    assert led.batch(0, 0, 8, 6, {"corrupt_image": 2})
    assert led.unsettled() == 1  # position 0's rows 8..15 are still in flight (1, 2: no decode stage)
    assert led.batch(0, 8, 16, 8, {})
    assert led.unsettled() == 0
    s = led.summary()
    assert s["good"] == 14 and s["rows_read"] == 22 and s["shards"] == 3
    assert s["skipped"] == {"corrupt_image": 2, "duplicate_member": 1}
    assert s["failed_shards"] == [
        {"path": "/d/1.tar", "reason": "truncated", "detail": "cut"}
    ]  # once per path
    assert data_line(s) == (
        "14 good samples from 3 shard reads; skipped: corrupt_image 2, duplicate_member 1; "
        "failed shards: 1 (/d/1.tar (truncated))"
    )


def test_ledger_counts_a_retried_tasks_replay_once_and_stays_one_range_per_shard():
    from system.data.ledger import LedgerState

    led = LedgerState()
    # 1,000 batches of 8 rows over one shard, arriving out of order in pairs, plus a full replay of the first
    # 500 (a retried task decodes them again): counted once, and the ranges merge back into one.
    order = [i + 1 if i % 2 == 0 else i - 1 for i in range(1000)]
    for i in order + list(range(500)):
        led.batch(0, 8 * i, 8 * i + 8, 16, {"corrupt_image": 1})
    d = led.decodes[0]
    assert d.ranges == [[0, 8000]] and d.rows_in == 8000 and d.rows_out == 16000
    assert d.skipped == {"corrupt_image": 1000}
    assert not led.batch(0, 4, 12, 8, {})  # a range that overlaps a counted one is a replay, never half-added
    # Final row counts only once the read is recorded and covered.
    assert led.rows_out([0, 1]) == {0: None, 1: None}
    led.shard(0, {"url": "a", "rows": 8000, "skipped": {}, "fault": None, "detail": ""})
    led.shard(1, {"url": "b", "rows": 0, "skipped": {}, "fault": "missing", "detail": "gone"})
    assert led.rows_out([0, 1]) == {0: 16000, 1: 0}
    led.shard(2, {"url": "c", "rows": 10, "skipped": {}, "fault": None, "detail": ""})
    led.batch(2, 0, 5, 5, {})
    assert led.rows_out([2]) == {2: None} and led.unsettled() == 1
