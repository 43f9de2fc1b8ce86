"""A tolerant, streaming WebDataset tar reader: members grouped into samples by key, faults skipped and counted.

Ray's `read_webdataset` fails its whole read task (one shard, and with it the dataset) on a duplicate member,
members of a key that are not contiguous, a truncated tar or a file that is not a tar at all. This reader
reads the tar as a stream (one member at a time, never the whole shard in memory, plain or compressed; headers
parsed as tarfile does for the ustar, GNU and pax members that shards hold) and turns each of those into a
counted skip. Sample-level faults (counted in `ShardTally.skipped`, the stream read on):

- a sample with the same `{key}.{ext}` twice is dropped (`duplicate_member`);
- members of a key that come back after other keys are dropped (`non_contiguous_key`, one per stray run);
  the key's first run is judged on its own (a later stage may find it lacks its label, say);
- a sample with a member name that is not valid UTF-8 is dropped (`bad_name`): its key could not become a
  string column;
- a member that declares more than `max_member_bytes` (64 MiB by default, far above any real image) is never
  read into memory: the check is made on its header, its bytes are passed over in reads of at most 1 MiB and
  its sample is dropped (`oversized_member`). A shard cannot make the task allocate what a header claims.

Shard-level faults (`ShardTally.fault` and a one-line `detail`; the complete samples read before the fault are
kept, the sample being read when it came is dropped):

- a shard that cannot be opened, is empty, is not a tar (`not_a_tar`: the first header does not parse) or breaks
  off mid-stream (`truncated`: a cut, a bad checksum or a compression error past the first header, a member
  ending before its declared size; `read_error`: an I/O error of the filesystem);
- a header past the first whose checksum holds but whose fields do not parse: a size that is not a number or
  is negative, a malformed pax record, an extended header (pax, GNU long name) over the cap (`bad_header`);
- anything else raised while reading (`reader_error`, detail: the exception's type and message): no exception
  leaves `iter_samples`, so no shard fails the dataset.

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
        ("__row__", pa.int64()),  # ordinal of the row among those its shard's read passed on
        ("jpg", pa.binary()),  # the sample's image, whatever its extension (.jpg/.jpeg/.png/.webp, any case)
        ("txt", pa.binary()),
        ("json", pa.binary()),
    ]
)
ROWS_PER_BLOCK = 64
MAX_MEMBER_BYTES = 64 * 2**20  # data.max_member_bytes' default: members declaring more are skipped unread
_SKIP_CHUNK = 2**20  # an oversized member is passed over in reads of at most this many bytes


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


def _is_utf8(text: str) -> bool:
    """Whether a name decoded with surrogateescape came from valid UTF-8 (no escaped byte in it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _one_line(error: BaseException) -> str:
    """An unexpected exception as a short detail line: its type and message, printable whatever it holds."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:300]


def _members(
    stream: IO[bytes], max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, ext, data) of every regular member, in file order (data None: over `max_member_bytes`, skipped
    unread); raises _Fault for a shard-level fault."""
    raw = _RawGuard(stream)
    head = raw.read(6)
    if not head:
        raise _Fault(F.EMPTY_SHARD, "zero bytes")
    src = BufferedStream(_decompressed(head, raw))
    for name, data in tar_members(src, max_member_bytes):
        parts = split_member_name(name)
        if parts is not None:
            yield parts[0], parts[1], data


# Header parsing, as tarfile does it for the member types a shard holds (ustar, GNU and pax): a hand-written
# loop because tarfile's per-member work (a TarInfo with a dozen parsed fields, three file objects) was a
# quarter of a read+decode task at training sizes; this one parses name, size, type and checksum only.
_BLOCK = tarfile.BLOCKSIZE
_REGULAR = frozenset(b"07\0")  # regular file, contiguous file, old-style regular file (typeflag bytes)
_LONG_NAME, _PAX, _PAX_GLOBAL = ord("L"), ord("x"), ord("g")
_ZERO_BLOCK = bytes(_BLOCK)


def _nts(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A header number: octal text, or GNU base-256 when the high bit of its first byte is set."""
    if field[0] & 0x80:
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0xFF else n
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ValueError(f"invalid number field {field!r}") from None


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)  # old tars' signed sums
    return stored == signed


def _pax_records(data: bytes) -> dict[str, str]:
    """`length key=value\n` records of a pax extended header."""
    out, i = {}, 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        if length <= 0:
            raise ValueError("bad pax record length")
        key, _, value = data[space + 1 : i + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def tar_members(
    src: BufferedStream, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of the regular members of an uncompressed tar stream, ending at its zero block; data is None
    for a member declaring more than `max_member_bytes` (its bytes are passed over, never held). A header
    that cannot be read is `not_a_tar` at the start of the stream and `truncated` later (tarfile's rule: it
    stops quietly there, and a sound tar ends with a zero block); a stream error likewise. A later header whose
    checksum holds but whose size or pax records do not parse is `bad_header`."""
    next_name: str | None = None  # from a GNU long-name member or a pax header, for the next member
    next_size: int | None = None
    # A pax `size` record applies to the next member proper, not to another header member.
    headers = (_PAX, _PAX_GLOBAL, _LONG_NAME)
    while True:
        at = src.offset
        try:
            block = src.read(_BLOCK)
            if block == _ZERO_BLOCK:
                return
            if len(block) < _BLOCK:
                if at == 0:
                    raise ValueError(f"{len(block)} bytes, less than one header")
                raise _Fault(F.TRUNCATED, f"no end-of-archive block at byte {at} (cut or damaged)")
            if not _checksum_ok(block):
                raise ValueError(f"bad header checksum at byte {at}")
        except _Fault:
            raise
        except (ValueError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise _Fault(_unread(at), f"{e or type(e).__name__} after {src.offset} bytes") from None
        kind = block[156]
        try:
            size = next_size if next_size is not None and kind not in headers else _number(block[124:136])
        except ValueError as e:
            raise _Fault(_unparsed(at), f"{e} in the header at byte {at}") from None
        if size < 0:
            raise _Fault(_unparsed(at), f"negative member size {size} in the header at byte {at}")
        data: bytes | None = None
        try:
            if size > max_member_bytes:  # from the header, before a byte of the member is read
                if kind in headers:  # its records would have to be held to be parsed
                    raise _Fault(_unparsed(at), f"a {size}-byte extended header at byte {at}, over the cap")
                got = src.skip(size)
            else:
                data = src.read(size)
                got = len(data)
            if got != size:
                raise _Fault(F.TRUNCATED, f"member {_nts(block[:100])!r} ends after {got} of {size} bytes")
            src.read(-size % _BLOCK)  # padding to the next header; a cut there shows at the next read
        except _Fault:
            raise
        except (ValueError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise _Fault(_unread(at), f"{e or type(e).__name__} after {src.offset} bytes") from None
        if kind == _LONG_NAME:
            next_name = _nts(data)  # type: ignore[arg-type]  # header members over the cap were refused
            continue
        if kind == _PAX:
            try:
                records = _pax_records(data)  # type: ignore[arg-type]
                next_name = records.get("path", next_name)
                next_size = int(records["size"]) if "size" in records else next_size
            except ValueError as e:
                raise _Fault(_unparsed(at), f"bad pax header at byte {at}: {e}") from None
            continue
        if kind == _PAX_GLOBAL:
            continue
        name = next_name
        if name is None:
            name = _nts(block[:100])
            if block[257:265] == b"ustar\x0000":  # POSIX ustar: a path prefix in the header
                prefix = _nts(block[345:500])
                name = f"{prefix}/{name}" if prefix else name
        next_name = next_size = None
        if kind in _REGULAR and not (kind == 0 and name.endswith("/")):  # old-style directories end in /
            yield name, data


def _unread(at: int) -> str:
    """The fault of a header or stream that cannot be read at byte `at`: before the first member the file is
    not a tar at all; later the archive was cut or damaged there."""
    return F.NOT_A_TAR if at == 0 else F.TRUNCATED


def _unparsed(at: int) -> str:
    """The fault of a checksummed header whose fields do not parse: a bad header, or not a tar at byte 0."""
    return F.NOT_A_TAR if at == 0 else F.BAD_HEADER


class BufferedStream:
    """Reads of exact sizes from a stream, served from chunks of tarfile's record size (headers are 512 bytes:
    one system call each would cost more than parsing them), with the offset reached. Chunks no larger than
    tarfile's keep its behaviour on a cut compressed stream: the decompressor raises at the cut, and what came
    before it in earlier chunks has been passed on."""

    CHUNK = tarfile.RECORDSIZE

    def __init__(self, src: IO[bytes]):
        self.src, self.buf, self.i, self.offset = src, b"", 0, 0

    def read(self, size: int) -> bytes:
        if len(self.buf) - self.i < size:
            parts, have = [self.buf[self.i :]], len(self.buf) - self.i
            while have < size:
                more = self.src.read(max(self.CHUNK, size - have))
                if not more:
                    break
                parts.append(more)
                have += len(more)
            self.buf, self.i = b"".join(parts), 0
        out = self.buf[self.i : self.i + size]
        self.i += len(out)
        self.offset += len(out)
        return out

    def skip(self, size: int) -> int:
        """Pass over `size` bytes without holding them (reads of at most _SKIP_CHUNK); returns how many there
        were, fewer than `size` where the stream ended."""
        take = min(len(self.buf) - self.i, size)
        self.i += take
        left = size - take
        if left:
            self.buf, self.i = b"", 0
        while left:
            more = self.src.read(min(_SKIP_CHUNK, left))
            if not more:
                break
            left -= len(more)
        self.offset += size - left
        return size - left


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


def iter_samples(
    stream: IO[bytes], tally: ShardTally, strict: bool = False, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[dict[str, Any]]:
    """Samples of one shard as dicts (`__key__`, `__url__`, `__shard__`, `__row__`, and `jpg`, `txt`, `json`:
    bytes or None), in file order. Faults are counted in `tally` (or raised as DataFault with `strict`);
    nothing else is raised. Members declaring more than `max_member_bytes` are skipped unread and drop their sample."""
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
        row = {"__key__": key, "__url__": tally.url, "__shard__": tally.index, "__row__": tally.rows - 1}
        return row | sample

    samples_seen = 0
    try:
        for k, ext, data in _members(stream, max_member_bytes):
            if k != key:
                out = finish()
                if out is not None:
                    yield out
                key, sample, bad = k, {c: None for c in COLUMNS}, None
                samples_seen += 1
                if k in done:
                    bad = F.NON_CONTIGUOUS_KEY
                    fault(bad, k)
                elif not k.isascii() and not _is_utf8(k):  # once per sample, not per member
                    bad = F.BAD_NAME
                    fault(bad, k)
            column = "jpg" if ext in IMAGE_EXTS else ext
            if data is None or column not in sample:
                if bad is None and data is None:
                    bad = F.OVERSIZED_MEMBER
                    fault(bad, k, f"{k + '.' + ext!r} declares more than {max_member_bytes} bytes")
                elif bad is None and not ext.isascii() and not _is_utf8(ext):
                    bad = F.BAD_NAME
                    fault(bad, k, f"extension {ext!r}")
                continue  # also members we do not use (.cls, .parquet side data inside the tar, ...)
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
    except F.DataFault:
        raise  # strict mode's stop, raised by fault() above
    except Exception as e:  # noqa: BLE001 - whatever a hostile shard provokes ends this shard, not the dataset
        tally.fault, tally.detail = F.READER_ERROR, _one_line(e)
        fault(F.READER_ERROR, None, tally.detail)
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
