"""The tar reader's own header parsing (system.data.tar_stream) against tarfile, on the member kinds shards
hold: ustar (with its path prefix), GNU (long names), pax (long and non-ASCII names), directories, links,
compressed streams; and the faults a garbled header makes."""

import bz2
import gzip
import io
import lzma
import tarfile

import pytest

from system.data.tar_stream import BufferedStream, ShardTally, iter_samples, tar_members

LONG_DIR = "shards/" + "d" * 120  # past ustar's 100-byte name field
NAMES = ["k0.jpg", "k0.txt", f"{LONG_DIR}/k1.jpg", f"{LONG_DIR}/k1.json", "ключ2.jpg", "ключ2.txt"]


def _tar(fmt: int, extra: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if extra:
            d = tarfile.TarInfo("shards")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
            link = tarfile.TarInfo("k0.lnk")
            link.type, link.linkname = tarfile.SYMTYPE, "k0.jpg"
            tar.addfile(link)
        for i, name in enumerate(NAMES):
            data = bytes([i]) * (100 + 700 * i)  # sizes that do and do not fill 512-byte blocks
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfiles(fmt):
    data = _tar(fmt)
    ours = list(tar_members(BufferedStream(io.BytesIO(data))))
    assert ours == _tarfile_members(data)
    assert [n for n, _ in ours] == NAMES  # directories and links are not members with data


def test_ustar_path_prefix():
    # ustar splits a long path into prefix + name (each part short enough)
    name = "a" * 90 + "/" + "b" * 60 + "/k.jpg"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert list(tar_members(BufferedStream(io.BytesIO(buf.getvalue())))) == [(name, b"abc")]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_streams_read_like_plain_ones(compress):
    plain = _tar(tarfile.PAX_FORMAT, extra=False)
    tally = ShardTally("/d/x.tar", 0)
    rows = list(iter_samples(io.BytesIO(compress(plain)), tally))
    assert [r["__key__"] for r in rows] == ["k0", f"{LONG_DIR}/k1", "ключ2"]
    assert rows[1]["json"] == bytes([3]) * 2200 and tally.fault is None


def test_garbled_headers_are_faults_named_by_where_they_are():
    data = bytearray(_tar(tarfile.USTAR_FORMAT, extra=False))
    first = bytearray(data)
    first[148:156] = b"0000000\0"  # a wrong checksum in the first header: not a tar at all
    tally = ShardTally("/d/x.tar", 0)
    assert list(iter_samples(io.BytesIO(bytes(first)), tally)) == [] and tally.fault == "not_a_tar"
    # The second sample's first header (after k0.jpg 512 + 512 and k0.txt 512 + 1024) garbled: the shard is
    # cut there, and k0 (whose members might have gone on) is dropped with it, as for a cut at a header.
    second = bytearray(data)
    second[2560 + 124 : 2560 + 136] = b"9999999999\0\0"  # not octal
    tally = ShardTally("/d/x.tar", 0)
    assert list(iter_samples(io.BytesIO(bytes(second)), tally)) == [] and tally.fault == "truncated"
    assert "after 3072 bytes" in tally.detail  # the header had been read when it failed to parse
    short = ShardTally("/d/x.tar", 0)
    assert list(iter_samples(io.BytesIO(b"not a tar, and short"), short)) == [] and short.fault == "not_a_tar"


def test_a_cut_compressed_shard_keeps_the_samples_before_the_cut():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(12):
            for ext, size in (("jpg", 6000), ("txt", 40)):
                info = tarfile.TarInfo(f"k{i:02d}.{ext}")
                info.size = size
                tar.addfile(info, io.BytesIO(bytes([i]) * size))
    cut = gzip.compress(buf.getvalue())[:-40]  # the gzip trailer and the stream's end are gone
    tally = ShardTally("/d/x.tar.gz", 0)
    keys = [r["__key__"] for r in iter_samples(io.BytesIO(cut), tally)]
    assert tally.fault == "truncated"
    assert 6 <= len(keys) < 12 and keys == [f"k{i:02d}" for i in range(len(keys))]  # a prefix, most of it


def test_a_pax_global_header_is_not_a_member_and_keeps_sizes():
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x" * 300}
    ) as tar:
        for name, data in (("k0.jpg", b"a" * 700), ("k0.txt", b"b" * 5)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    assert data[156:157] == b"g"  # the archive opens with a global header
    assert list(tar_members(BufferedStream(io.BytesIO(data)))) == _tarfile_members(data)


def _with_checksum(block: bytearray) -> bytearray:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return block


def test_a_header_that_checks_out_but_does_not_parse_is_a_bad_header():
    data = bytearray(_tar(tarfile.USTAR_FORMAT, extra=False))
    for at, reason in ((0, "not_a_tar"), (2560, "bad_header")):  # the first header, the second sample's first
        bad = bytearray(data)
        bad[at : at + 512] = _with_checksum(bad[at : at + 512])
        bad[at + 124 : at + 136] = b"9999999999\0\0"  # not octal, and this time the checksum holds
        bad[at : at + 512] = _with_checksum(bad[at : at + 512])
        tally = ShardTally("/d/x.tar", 0)
        assert list(iter_samples(io.BytesIO(bytes(bad)), tally)) == [] and tally.fault == reason
        assert f"at byte {at}" in tally.detail


def test_members_over_the_cap_come_back_without_data_and_the_rest_as_tarfile_reads_them():
    data = _tar(tarfile.PAX_FORMAT, extra=False)
    expected = _tarfile_members(data)
    ours = list(tar_members(BufferedStream(io.BytesIO(data)), max_member_bytes=2000))
    assert [n for n, _ in ours] == [n for n, _ in expected]
    assert [d for _, d in ours] == [d if len(d) <= 2000 else None for _, d in expected]


def test_skip_passes_over_bytes_without_holding_them():
    src = BufferedStream(io.BytesIO(bytes(range(256)) * 120))  # 30,720 bytes, three of the reader's chunks
    assert src.read(3) == b"\0\1\2"  # the first chunk is buffered now
    assert src.skip(20000) == 20000 and src.offset == 20003  # the rest of the buffer, then the stream
    assert src.read(2) == bytes([20003 % 256, 20004 % 256])
    assert src.skip(10**12) == 30720 - 20005 and src.offset == 30720  # the stream ended first
    assert src.read(1) == b""
