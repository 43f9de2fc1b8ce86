"""Hostile shards against the tolerant tar reader (system.data.tar_stream): nothing a shard holds may escape as an
exception, fail the pyarrow conversion or make the reader hold a member over the size cap.

Seeded mutants of real shards (plain ustar, GNU long names, pax with non-ASCII names and a global header; plain
and compressed): size fields, pax records, names, type flags, truncation, byte flips, compression of mutated
tars and damage to compressed ones. Every mutant is read through `iter_samples` and `blocks`; the checks: no
exception, `tally.rows` equals the rows yielded, every sample the reader had finished before the first mutated
byte is yielded, in order, no yielded or read member exceeds the cap, and strict mode raises DataFault exactly
when the tolerant read counted something. Then one handcrafted shard per fault class, with its exact counts.
"""

import bz2
import gzip
import io
import json
import lzma
import random
import tarfile
import tracemalloc
import zlib

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from system.data import faults as F
from system.data import tar_stream
from system.data.faults import DataFault
from system.data.tar_stream import ShardTally, blocks, iter_samples, split_member_name

CAP = 4096  # member cap of the fuzz reads: above every member of the base shards, below many mutated sizes
SAMPLE_REASONS = {F.DUPLICATE_MEMBER, F.NON_CONTIGUOUS_KEY, F.BAD_NAME, F.OVERSIZED_MEMBER}
SHARD_REASONS = {None, F.EMPTY_SHARD, F.NOT_A_TAR, F.TRUNCATED, F.BAD_HEADER}  # reader_error: never expected
COMPRESS = (gzip.compress, bz2.compress, lzma.compress)


# ------------------------------------------------------------------------------------------ base shards


def _jpeg(rng: np.random.Generator) -> bytes:
    side = int(rng.integers(8, 20))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _shard_members(variant: str) -> list[tuple[str, bytes]]:
    """Six samples of jpg/txt/json (one with an unused .cls member too), names per tar format."""
    rng = np.random.default_rng({"ustar": 1, "gnu": 2, "pax": 3}[variant])
    members = []
    for i in range(6):
        key = f"k{i:02d}"
        if variant == "gnu" and i % 2:
            key = "shards/" + "d" * 110 + f"/{key}"  # past the 100-byte name field: a GNU long-name member
        if variant == "pax" and i % 2:
            key = f"ключ{i:02d}"  # not ASCII: a pax header per member
        members += [
            (f"{key}.jpg", _jpeg(rng)),
            (f"{key}.txt", f"caption {i} ".encode() * int(rng.integers(1, 40))),
            (f"{key}.json", json.dumps({"label": i}).encode()),
        ]
        if i == 2:
            members.append((f"{key}.cls", b"2"))
    return members


def _tar(members, fmt=tarfile.USTAR_FORMAT, **kwargs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kwargs) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _build(variant: str) -> bytes:
    members = _shard_members(variant)
    if variant == "ustar":
        return _tar(members)
    if variant == "gnu":
        return _tar(members, tarfile.GNU_FORMAT)
    return _tar(members, tarfile.PAX_FORMAT, pax_headers={"comment": "a global header " * 4})


def _headers(tar: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """(offset, typeflag, size) of every header block of a sound tar (extended headers too), and the offset
    of its end-of-archive block."""
    out, at = [], 0
    while tar[at : at + 512] != bytes(512):
        block = tar[at : at + 512]
        size = int(block[124:136].split(b"\0")[0].strip() or b"0", 8)
        out.append((at, block[156], size))
        at += 512 + -(-size // 512) * 512
    return out, at


def _finished_at(tar: bytes) -> list[tuple[str, int]]:
    """(key, offset) per sample: once bytes up to `offset` are read intact, the reader has yielded the sample.
    It learns a sample is complete only from a member of the next key (read whole: header and data) or from the
    end-of-archive block, so a change before that point may rightly cost it (a cut at the next header, a
    renamed next member that turns out to be a duplicate)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        firsts: list[tuple[str, int]] = []
        for m in t.getmembers():
            if not m.isfile():
                continue
            key = split_member_name(m.name)[0]
            if not firsts or firsts[-1][0] != key:
                firsts.append((key, m.offset_data + m.size))
    end = _headers(tar)[1] + 512
    return [(k, firsts[i + 1][1] if i + 1 < len(firsts) else end) for i, (k, _) in enumerate(firsts)]


class Base:
    def __init__(self, variant: str):
        self.variant = variant
        self.tar = _build(variant)
        self.headers, self.end = _headers(self.tar)
        self.regular = [h for h in self.headers if h[1] == ord("0")]
        self.extended = [h for h in self.headers if h[1] in b"xL"]
        self.finished = _finished_at(self.tar)
        self.keys = [k for k, _ in self.finished]

    def kept_before(self, offset: int) -> list[str]:
        """The samples that must be yielded when no byte before `offset` changed."""
        return [k for k, at in self.finished if at <= offset]


BASES = {v: Base(v) for v in ("ustar", "gnu", "pax")}


# ------------------------------------------------------------------------------------------ mutations


def _checksum(buf: bytearray, at: int) -> None:
    """Make the header at `at` pass the checksum test, so that its other fields are what gets tested."""
    block = buf[at : at + 512]
    block[148:156] = b" " * 8
    buf[at + 148 : at + 156] = b"%06o\0 " % sum(block)


def _number_field(n: int) -> bytes:
    """A 12-byte header number: octal where it fits, GNU base-256 beyond (and for negatives)."""
    if 0 <= n < 8**11:
        return b"%011o\0" % n
    if n < 0:
        return bytes([0xFF]) + (256**11 + n).to_bytes(11, "big")
    return bytes([0x80]) + (n % 256**11).to_bytes(11, "big")


def _pax_header(records: bytes) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    return info.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)


def _record(key: bytes, value: bytes) -> bytes:
    """One pax record, `length key=value\\n`, its length counting its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    digits = 1
    while len(str(len(body) + digits)) != digits:
        digits += 1
    return str(len(body) + digits).encode() + body


HOSTILE_RECORDS = [
    _record(b"size", b"abc"),
    _record(b"size", b"-5"),
    _record(b"size", b""),
    _record(b"size", str(2**80).encode()),
    _record(b"size", b"9" * 5000),  # past int()'s digit limit
    _record(b"size", b"0"),
    _record(b"size", b"100000"),
    _record(b"path", b"k\xff\xfe01.jpg"),  # not UTF-8
    _record(b"path", b""),
    _record(b"path", b"noext"),
    _record(b"path", b"k00.jpg"),  # the first sample's member again
    b"99 path=x.jpg\n",  # a length past the end
    b"0 path=x.jpg\n",
    b"ab path=x.jpg\n",
    b"12path=x.jpg\n",  # no space
    b"5 p\n",
    b"\xff\xfe\xfd\n",
]

HOSTILE_NAMES = [
    b"k\xff\xfe.jpg",
    b"\xc3(.txt",
    b"k01.\xff\xfe",  # a valid key with an extension that is not UTF-8
    b"",
    b"noext",
    b".jpg",
    b"k00.jpg",  # duplicate or stray member of the first sample
    b"k05.json",
    b"a" * 100,  # no NUL in the field
    b"dir/",
    b"k03.JPEG",
]

TYPEFLAGS = b"0125x gLKS7\0"


def _mut_size(base: Base, rng: random.Random) -> tuple[bytes, int]:
    at, _, size = rng.choice(base.headers)
    n = rng.choice(
        [0, 1, size - 1, size + 1, size + 512, 2 * size + 7, rng.randrange(2**33), CAP + 1, 3 * CAP,
         8**11 - 1, 2**80, -1, -(2**40)]
    )  # fmt: skip
    buf = bytearray(base.tar)
    buf[at + 124 : at + 136] = rng.choice(
        [_number_field(n), b"9999999999x\0", b"   \0   \0    ", b"\x80" * 12]
    )
    _checksum(buf, at)
    return bytes(buf), at


def _mut_pax(base: Base, rng: random.Random) -> tuple[bytes, int]:
    records = b"".join(rng.sample(HOSTILE_RECORDS, rng.randint(1, 2)))
    if base.extended and rng.random() < 0.5:  # replace an extended header's records
        at, _, size = rng.choice(base.extended)
        old = bytearray(base.tar[at : at + 512])
        old[124:136] = _number_field(len(records))
        old[156] = ord("x")
        _checksum(old, 0)
        rest = base.tar[at + 512 + -(-size // 512) * 512 :]
        return base.tar[:at] + bytes(old) + records + bytes(-len(records) % 512) + rest, at
    at = rng.choice(base.regular)[0]  # or put one before a member
    return base.tar[:at] + _pax_header(records) + base.tar[at:], at


def _mut_name(base: Base, rng: random.Random) -> tuple[bytes, int]:
    at = rng.choice(base.regular)[0]
    buf = bytearray(base.tar)
    buf[at : at + 100] = rng.choice(HOSTILE_NAMES).ljust(100, b"\0")
    _checksum(buf, at)
    return bytes(buf), at


def _mut_type(base: Base, rng: random.Random) -> tuple[bytes, int]:
    at = rng.choice(base.headers)[0]
    buf = bytearray(base.tar)
    buf[at + 156] = rng.choice(TYPEFLAGS) if rng.random() < 0.8 else rng.randrange(256)
    _checksum(buf, at)
    return bytes(buf), at


def _mut_truncate(base: Base, rng: random.Random) -> tuple[bytes, int]:
    if rng.random() < 0.5:
        cut = rng.randrange(len(base.tar))
    else:  # near a boundary: a header's start, its end, the end of its data
        at, _, size = rng.choice(base.headers)
        cut = max(0, rng.choice([at, at + 512, at + 512 + size]) + rng.randint(-2, 2))
    return base.tar[:cut], cut


def _mut_flip(base: Base, rng: random.Random) -> tuple[bytes, int]:
    buf = bytearray(base.tar)
    in_header = rng.random() < 0.6
    at = rng.choice(base.headers)[0]
    spots = [
        at + rng.randrange(512) if in_header else rng.randrange(len(buf)) for _ in range(rng.randint(1, 4))
    ]
    for p in spots:
        buf[p] ^= rng.randrange(1, 256)
    first = min(spots)
    if in_header and rng.random() < 0.5:  # a checksum that holds: the garbled fields get parsed
        _checksum(buf, at)
        first = at
    return bytes(buf), first


MUTATIONS = {
    "size": _mut_size,
    "pax": _mut_pax,
    "name": _mut_name,
    "type": _mut_type,
    "truncate": _mut_truncate,
    "flip": _mut_flip,
}


# ------------------------------------------------------------------------------------------ the checks


@pytest.fixture
def widest_read(monkeypatch):
    """The largest single read the reader asked of its buffered stream (a member is read in one piece)."""
    widest = [0]
    real = tar_stream.BufferedStream.read

    def read(self, size):
        widest[0] = max(widest[0], size)
        return real(self, size)

    monkeypatch.setattr(tar_stream.BufferedStream, "read", read)
    return widest


def _read(data: bytes, strict: bool = False):
    tally = ShardTally("/d/mutant.tar", 3)
    tables = list(blocks(iter_samples(io.BytesIO(data), tally, strict, max_member_bytes=CAP), 4))
    return [k for t in tables for k in t.column("__key__").to_pylist()], tally, tables


def _check(data: bytes, kept: list[str] | None, what: str) -> tuple[list[str], ShardTally]:
    """Read a mutant (no exception may escape) and check the invariants; returns the keys yielded and the
    tally."""
    keys, tally, tables = _read(data)
    assert tally.rows == len(keys), what
    if kept is not None:
        assert keys[: len(kept)] == kept, what
    assert tally.fault in SHARD_REASONS, (what, tally.fault, tally.detail)
    assert set(tally.skipped) <= SAMPLE_REASONS, what
    assert bool(tally.detail) == (tally.fault is not None) and "\n" not in tally.detail, what
    for t in tables:
        for column in ("jpg", "txt", "json"):
            lengths = pc.binary_length(t.column(column))
            assert (pc.max(lengths).as_py() or 0) <= CAP, what
    # Strict mode stops exactly where the tolerant read counts something, and only with DataFault.
    try:
        _read(data, strict=True)
    except DataFault as e:
        assert tally.fault or tally.skipped, (what, str(e))
    else:
        assert not tally.fault and not tally.skipped, what
    return keys, tally


@pytest.mark.parametrize("variant", sorted(BASES))
def test_base_shards_read_whole(variant):
    base = BASES[variant]
    assert len(base.keys) == 6 and _check(base.tar, base.keys, variant)[0] == base.keys
    assert variant == "ustar" or base.extended  # the GNU and pax shards do hold extended headers
    for compress in COMPRESS:
        assert _check(compress(base.tar), base.keys, variant)[0] == base.keys


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_mutants_are_contained(kind, widest_read):
    rng = random.Random(f"fuzz-{kind}")
    outcomes = set()
    for n in range(400):
        base = BASES[rng.choice(sorted(BASES))]
        data, first = MUTATIONS[kind](base, rng)
        what = f"{kind} #{n} on {base.variant} at byte {first}"
        tally = _check(data, base.kept_before(first), what)[1]
        outcomes.add((tally.fault, *sorted(tally.skipped)))
        if n % 8 == 0:  # compressing a mutated tar changes nothing the reader sees
            _check(rng.choice(COMPRESS)(data), base.kept_before(first), what + " (compressed)")
    assert widest_read[0] <= CAP  # no member over the cap was read into memory, whatever its header said
    assert len(outcomes) >= 3  # the mutants reach several outcomes (a guard against a no-op mutation)


def test_damaged_compressed_streams_are_contained(widest_read):
    rng = random.Random("fuzz-compressed")
    for n in range(250):
        base = BASES[rng.choice(sorted(BASES))]
        packed = bytearray(rng.choice(COMPRESS)(base.tar))
        if rng.random() < 0.5:  # cut: what comes out is a prefix of the shard
            keys = _check(bytes(packed[: rng.randrange(len(packed))]), None, f"compressed cut #{n}")[0]
            assert keys == base.keys[: len(keys)]
        else:  # flipped: the decompressed bytes may be anything (gzip checks its CRC only at the end)
            for _ in range(rng.randint(1, 3)):
                packed[rng.randrange(len(packed))] ^= rng.randrange(1, 256)
            _check(bytes(packed), None, f"compressed flip #{n}")
    assert widest_read[0] <= CAP


# ------------------------------------------------------------------------------------------ handcrafted


def _sample(key: str, jpg: bytes = b"\xff\xd8 jpeg") -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", jpg), (f"{key}.txt", b"a caption"), (f"{key}.json", b'{"label": 0}')]


def _handcrafted(members, patch=None) -> tuple[bytes, list[tuple[int, int, int]]]:
    data = bytearray(_tar(members))
    headers, _ = _headers(bytes(data))
    if patch is not None:
        patch(data, headers)
    return bytes(data), headers


def _read_plain(data: bytes, cap: int = CAP):
    tally = ShardTally("/d/x.tar", 0)
    tables = list(blocks(iter_samples(io.BytesIO(data), tally, max_member_bytes=cap)))
    keys = [k for t in tables for k in t.column("__key__").to_pylist()]
    assert tally.rows == len(keys)
    return keys, tally


def test_a_name_that_is_not_utf8_drops_its_sample():
    members = _sample("k0") + _sample("k1") + _sample("k2") + [("k2.bin", b"x")] + _sample("k3")

    def patch(data, headers):
        for at, _, _ in headers[3:6]:  # k1's three members, their key made of bytes that are not UTF-8
            data[at : at + 2] = b"\xff\xfe"
            _checksum(data, at)
        at = headers[9][0]  # k2's unused member: an extension that is not UTF-8
        data[at : at + 100] = b"k2.\xff\xfe".ljust(100, b"\0")
        _checksum(data, at)

    data, _ = _handcrafted(members, patch)
    keys, tally = _read_plain(data)
    # Before the fix: a surrogate-escaped key reached pyarrow, which raised UnicodeEncodeError for the task.
    assert keys == ["k0", "k3"] and tally.fault is None
    assert dict(tally.skipped) == {
        "bad_name": 2
    }  # k1's key, and k2's unused member with a non-UTF-8 extension
    with pytest.raises(DataFault, match=r"/d/x\.tar: key '\\udcff\\udcfe' bad_name"):
        list(iter_samples(io.BytesIO(data), ShardTally("/d/x.tar", 0), strict=True))


def test_a_pax_size_that_is_not_a_number_is_a_bad_header():
    members = _sample("k0") + _sample("k1") + _sample("k2")
    data = _tar(members)
    at = _headers(data)[0][6][0]  # k2.jpg
    hostile = data[:at] + _pax_header(_record(b"size", b"twelve")) + data[at:]
    keys, tally = _read_plain(hostile)
    # Before the fix: ValueError from int() escaped the reader. k1 might have had more members: dropped.
    assert keys == ["k0"] and tally.fault == "bad_header" and "pax" in tally.detail and not tally.skipped
    with pytest.raises(DataFault, match=r"/d/x\.tar: bad_header"):
        list(iter_samples(io.BytesIO(hostile), ShardTally("/d/x.tar", 0), strict=True))


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        (_number_field(2**80), "truncated"),  # skipped unread: the stream ends first
        (_number_field(-1), "bad_header"),
        (b"9999999999x\0", "bad_header"),  # not octal, with a checksum that holds
    ],
)
def test_impossible_sizes_end_the_shard_without_allocating(field, reason, widest_read):
    def patch(data, headers):
        at = headers[6][0]  # k2.jpg
        data[at + 124 : at + 136] = field
        _checksum(data, at)

    data, _ = _handcrafted(_sample("k0") + _sample("k1") + _sample("k2"), patch)
    keys, tally = _read_plain(data, cap=tar_stream.MAX_MEMBER_BYTES)
    # Before the fix: 2**80 raised OverflowError (a size under it but over memory, MemoryError).
    assert keys == ["k0"] and tally.fault == reason and not tally.skipped
    assert widest_read[0] <= 10240  # headers and the small members only
    if field[0] == 0x80:
        assert str(2**80) in tally.detail


def test_a_member_over_the_cap_drops_its_sample_and_the_stream_reads_on(widest_read):
    members = _sample("k0") + _sample("k1", jpg=bytes(3 * CAP)) + _sample("k2") + _sample("k3")
    keys, tally = _read_plain(_tar(members))
    assert keys == ["k0", "k2", "k3"] and tally.fault is None
    assert dict(tally.skipped) == {"oversized_member": 1}
    assert widest_read[0] <= CAP
    # The same shard under the default cap reads whole.
    assert _read_plain(_tar(members), cap=tar_stream.MAX_MEMBER_BYTES)[0] == ["k0", "k1", "k2", "k3"]
    with pytest.raises(DataFault, match=r"key 'k1' oversized_member: 'k1.jpg' declares more than 4096"):
        list(iter_samples(io.BytesIO(_tar(members)), ShardTally("/d/x.tar", 0), True, CAP))


def test_an_extended_header_over_the_cap_is_a_bad_header():
    data = _tar(_sample("k0") + _sample("k1"))
    at = _headers(data)[0][3][0]
    hostile = data[:at] + _pax_header(_record(b"comment", b"x" * (2 * CAP))) + data[at:]
    keys, tally = _read_plain(hostile)
    assert keys == [] and tally.fault == "bad_header" and "over the cap" in tally.detail


def _bomb(member_bytes: int) -> bytes:
    """A gzip shard: k0, then k1 whose .jpg is `member_bytes` zero bytes, then k2; compressed as a stream, so
    the test itself never holds the member either."""
    head = _tar(_sample("k0"))
    head = head[: _headers(head)[1]]  # without its end-of-archive blocks
    info = tarfile.TarInfo("k1.jpg")
    info.size = member_bytes
    tail = _tar([("k1.txt", b"a caption"), *_sample("k2")])
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    parts = [z.compress(head + info.tobuf(tarfile.USTAR_FORMAT))]
    zeros = bytes(2**20)
    for _ in range(member_bytes // len(zeros)):
        parts.append(z.compress(zeros))
    parts.append(z.compress(bytes(member_bytes % len(zeros)) + bytes(-member_bytes % 512) + tail))
    return b"".join([*parts, z.flush()])


def _traced_peak(data: bytes, cap: int) -> tuple[list[str], ShardTally, int]:
    """Keys, tally and the peak of Python's allocations while reading `data` through iter_samples + blocks."""
    tracemalloc.start()
    try:
        keys, tally = _read_plain(data, cap=cap)
        return keys, tally, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_is_skipped_in_bounded_memory():
    bomb = _bomb(100 * 2**20)  # 100 MiB of zeros in about 100 KB
    assert len(bomb) < 200_000
    _read_plain(gzip.compress(_tar(_sample("w"))))  # pyarrow's first conversion imports modules: not ours
    keys, tally, peak = _traced_peak(bomb, tar_stream.MAX_MEMBER_BYTES)
    assert keys == ["k0", "k2"] and dict(tally.skipped) == {"oversized_member": 1} and tally.fault is None
    # Passed over in 1 MiB reads (about 4 MiB at the peak). Before the cap the member was held whole, and
    # copied: 720 MB of RSS for a 200 MB one. The control read, with a cap above the member, shows it.
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    keys, tally, peak = _traced_peak(bomb, 2**30)
    assert keys == ["k0", "k1", "k2"] and peak > 100 * 2**20


def test_anything_else_raised_while_reading_is_a_reader_error():
    data = _tar(_sample("k0") + _sample("k1") + _sample("k2"))

    class Flaky(io.BytesIO):
        """A stream whose source fails with an error no tar or compression code raises."""

        def read(self, size=-1):
            if self.tell() >= 4096:  # after k1's first member: k0 is complete
                raise RuntimeError("the source\nfailed")
            return super().read(min(size, 512) if size and size > 0 else 512)

    tally = ShardTally("s3://b/x.tar", 0)
    keys = [r["__key__"] for r in iter_samples(Flaky(data), tally)]
    assert keys == ["k0"] and tally.fault == "reader_error"
    assert tally.detail == "RuntimeError: the source failed"  # one line, type and message
    with pytest.raises(DataFault, match=r"s3://b/x\.tar: reader_error: RuntimeError"):
        list(iter_samples(Flaky(data), ShardTally("s3://b/x.tar", 0), strict=True))
