"""A tolerant, streaming WebDataset tar reader: members grouped into samples by key, faults skipped and counted.

Ray's `read_webdataset` fails its whole read task (one shard, and with it the dataset) on a duplicate member,
members of a key that are not contiguous, a truncated tar or a file that is not a tar at all. This reader
reads the tar as a stream (`tarfile` mode `r|*`: one member at a time, never the whole shard in memory, plain
or compressed) and turns each of those into a counted skip:

- a sample with the same `{key}.{ext}` twice is dropped (`duplicate_member`);
- members of a key that come back after other keys are dropped (`non_contiguous_key`, one per stray run);
  the key's first run is judged on its own (a later stage may find it lacks its label, say);
- a shard that cannot be opened, is empty, is not a tar or breaks off mid-stream ends with a shard fault;
  the complete samples read before it are kept, the sample being read when it broke is dropped.

Keys follow webdataset: the member name up to the first dot of its basename (folders included). Plain Python
and pyarrow (the Ray read task calls it); `strict` raises DataFault at the first fault instead.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa

from system.data import faults as F

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # any of these becomes the sample's `jpg` column
COLUMNS = ("jpg", "txt", "json")
SCHEMA = pa.schema(
    [
        ("__key__", pa.string()),
        ("__url__", pa.string()),
        ("__shard__", pa.int64()),  # position of the shard in the read list: epochs' passes differ
        ("jpg", pa.binary()),  # the sample's image, whatever its extension (.jpg/.jpeg/.png/.webp, any case)
        ("txt", pa.binary()),
        ("json", pa.binary()),
    ]
)
ROWS_PER_BLOCK = 64


@dataclass
class ShardTally:
    """What reading one shard found: rows passed on, samples skipped by reason, the shard fault if any."""

    url: str
    index: int
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    fault: str | None = None
    detail: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "rows": self.rows,
            "skipped": dict(self.skipped),
            "fault": self.fault,
            "detail": self.detail,
        }


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a member name, or None for a name without an extension."""
    slash = name.rfind("/") + 1
    base = name[slash:]
    if "." not in base or base.startswith("."):
        return None
    dot = slash + base.index(".")
    return name[:dot], name[dot + 1 :].lower()


class _Fault(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _members(stream: IO[bytes]) -> Iterator[tuple[str, str, bytes]]:
    """(key, ext, data) of every regular member, in file order; raises _Fault for a shard-level fault."""
    raw = _RawGuard(stream)
    head = raw.read(6)
    if not head:
        raise _Fault(F.EMPTY_SHARD, "zero bytes")
    tracked = _Tracker(_decompressed(head, raw))
    try:
        tar = tarfile.open(fileobj=tracked, mode="r|")
    except _Fault:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise _Fault(F.NOT_A_TAR, str(e) or type(e).__name__) from None
    try:
        for member in tar:
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            if len(data) != member.size:
                raise _Fault(
                    F.TRUNCATED, f"member {member.name!r} ends after {len(data)} of {member.size} bytes"
                )
            parts = split_member_name(member.name)
            if parts is not None:
                yield parts[0], parts[1], data
        # tarfile ends quietly on a cut or garbled header after the first member: a sound tar ends with a
        # zero block where the iteration stopped.
        end = tracked.block_at(tar.offset)
        if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
            raise _Fault(F.TRUNCATED, f"no end-of-archive block at byte {tar.offset} (cut or damaged)")
    except _Fault:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise _Fault(F.TRUNCATED, f"{e or type(e).__name__} after {tracked.pos} bytes") from None


class _RawGuard:
    """The shard's byte stream: an I/O error of the filesystem becomes a read_error fault (not a tar fault)."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        try:
            return self.raw.read(size)
        except OSError as e:
            raise _Fault(F.READ_ERROR, str(e)) from None


class _Prefixed:
    """`head` (already read to sniff the compression) followed by the rest of `raw`."""

    def __init__(self, head: bytes, raw: _RawGuard):
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size is None or size < 0:
                out, self.head = self.head + self.raw.read(), b""
                return out
            out, self.head = self.head[:size], self.head[size:]
            return out if len(out) == size else out + self.raw.read(size - len(out))
        return self.raw.read(size)


def _decompressed(head: bytes, raw: _RawGuard) -> IO[bytes]:
    """Stream decompression chosen by magic bytes (gzip, bzip2, xz), or the bytes as they are."""
    src = _Prefixed(head, raw)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[arg-type]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(src, mode="rb")  # type: ignore[arg-type]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(src, mode="rb")  # type: ignore[arg-type]
    return src  # type: ignore[return-value]


class _Tracker:
    """The uncompressed tar bytes as tarfile reads them, keeping the last few chunks (to look at the block
    where tarfile stopped)."""

    KEEP = 4 * tarfile.RECORDSIZE

    def __init__(self, src: IO[bytes]):
        self.src, self.pos, self.window, self.window_start = src, 0, b"", 0

    def read(self, size: int = -1) -> bytes:
        data = self.src.read(size)
        self.pos += len(data)
        self.window += data
        if len(self.window) > self.KEEP:
            cut = len(self.window) - self.KEEP
            self.window, self.window_start = self.window[cut:], self.window_start + cut
        return data

    def block_at(self, offset: int) -> bytes:
        """The bytes [offset, offset + 512) as far as they were read (b"" when they have left the window)."""
        if offset < self.window_start:
            return b""
        i = offset - self.window_start
        return self.window[i : i + tarfile.BLOCKSIZE]


def iter_samples(stream: IO[bytes], tally: ShardTally, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Samples of one shard as dicts (`__key__`, `__url__`, `__shard__`, `jpg`, `txt`, `json`: bytes or None),
    in file order. Faults are counted in `tally` (or raised as DataFault with `strict`)."""
    done: set[str] = set()  # keys whose run of members has ended
    key: str | None = None
    sample: dict[str, Any] = {}
    bad: str | None = None  # why the current sample is dropped

    def fault(reason: str, at_key: str | None, detail: str = "") -> None:
        if strict:
            where = f" key {at_key!r}" if at_key is not None else ""
            raise F.DataFault(f"{tally.url}:{where} {reason}{': ' + detail if detail else ''} (data.strict)")

    def finish() -> dict[str, Any] | None:
        if key is None:
            return None
        done.add(key)
        if bad is not None:
            tally.skipped[bad] += 1
            return None
        tally.rows += 1
        return {"__key__": key, "__url__": tally.url, "__shard__": tally.index, **sample}

    samples_seen = 0
    try:
        for k, ext, data in _members(stream):
            if k != key:
                out = finish()
                if out is not None:
                    yield out
                key, sample, bad = k, {c: None for c in COLUMNS}, None
                samples_seen += 1
                if k in done:
                    bad = F.NON_CONTIGUOUS_KEY
                    fault(bad, k)
            column = "jpg" if ext in IMAGE_EXTS else ext
            if column not in sample:
                continue  # members we do not use (.cls, .parquet side data inside the tar, ...)
            if sample[column] is not None:
                if bad is None:
                    bad = F.DUPLICATE_MEMBER
                    fault(bad, k, f"{k}.{ext}")
                continue
            sample[column] = data
    except _Fault as e:
        # The sample being read when the shard broke is incomplete: dropped with the rest of the shard.
        tally.fault, tally.detail = e.reason, e.detail
        fault(e.reason, None, e.detail)
        return
    out = finish()
    if out is not None:
        yield out
    if samples_seen == 0:
        tally.fault, tally.detail = F.EMPTY_SHARD, "a tar without a single sample"
        fault(F.EMPTY_SHARD, None, tally.detail)


def open_fault(tally: ShardTally, error: OSError, strict: bool = False) -> None:
    """Record that a shard could not be opened (missing object, permissions, ...)."""
    tally.fault = F.MISSING_SHARD if isinstance(error, FileNotFoundError) else F.UNREADABLE
    tally.detail = str(error)
    if strict:
        raise F.DataFault(f"{tally.url}: {tally.fault}: {tally.detail} (data.strict)")


def blocks(samples: Iterator[dict[str, Any]], rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[pa.Table]:
    """Group sample dicts into pyarrow tables of SCHEMA (a fixed schema, so every block concatenates)."""
    rows: list[dict[str, Any]] = []
    for s in samples:
        rows.append(s)
        if len(rows) >= rows_per_block:
            yield pa.Table.from_pylist(rows, schema=SCHEMA)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=SCHEMA)
