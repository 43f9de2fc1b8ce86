"""The data ledger's bookkeeping (plain Python; the Ray actor that holds it is system.runtime.reader.DataLedger).

Counts are kept per shard position in the read list (a shard listed once per epoch has one position per
epoch), never per batch, so the ledger of a run over S shard reads holds O(S) numbers however many batches
pass through it:
- the read record of each position (rows passed on, samples skipped by the reader, the shard's fault), which
  a retried read overwrites;
- the decode counters of each position (rows in, rows out after resampling repeats, rows skipped by reason),
  plus the reader-row ranges already counted. A decode batch covers a contiguous range of its shard's reader
  rows (`__row__`); a retried task decodes the same ranges again and those arrive as already covered, so they
  are not added twice. Ranges that meet merge, so a shard decoded in order keeps a single range.

A position's decode is complete when its counted ranges cover every row its read passed on: only then is its
row count final (what the resumable training stream needs to know a shard was consumed to its end).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DecodeCounts:
    """Decode counters of one shard position, deduplicated by reader-row range."""

    rows_in: int = 0
    rows_out: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    ranges: list[list[int]] = field(default_factory=list)  # sorted, disjoint, merged [start, stop)

    def add(self, start: int, stop: int, rows_out: int, skipped: dict[str, int]) -> bool:
        """Count the batch of reader rows [start, stop) unless some of it was counted already (a retried
        task's replay). Returns whether it was counted."""
        if stop <= start:
            return False
        i = 0
        while i < len(self.ranges) and self.ranges[i][1] <= start:
            i += 1
        if i < len(self.ranges) and self.ranges[i][0] < stop:
            return False  # overlaps a counted range: the same rows again
        self.ranges.insert(i, [start, stop])
        # Merge with the neighbours this range touches (in-order batches collapse to one range).
        if i + 1 < len(self.ranges) and self.ranges[i + 1][0] == stop:
            self.ranges[i][1] = self.ranges.pop(i + 1)[1]
        if i > 0 and self.ranges[i - 1][1] == start:
            self.ranges[i - 1][1] = self.ranges.pop(i)[1]
        self.rows_in += stop - start
        self.rows_out += rows_out
        self.skipped.update(skipped)
        return True

    def covers(self, rows: int) -> bool:
        """Whether the counted ranges are exactly [0, rows)."""
        return rows == 0 or (len(self.ranges) == 1 and self.ranges[0] == [0, rows])


@dataclass
class LedgerState:
    """Skip and row counts of one pipeline run, by shard position."""

    reads: dict[int, dict[str, Any]] = field(default_factory=dict)
    decodes: dict[int, DecodeCounts] = field(default_factory=dict)

    def shard(self, index: int, record: dict[str, Any]) -> None:
        self.reads[index] = record

    def batch(self, index: int, start: int, stop: int, rows_out: int, skipped: dict[str, int]) -> bool:
        return self.decodes.setdefault(index, DecodeCounts()).add(start, stop, rows_out, skipped)

    def unsettled(self) -> int:
        """Positions whose read is recorded but whose decode counts do not cover it yet (records in flight)."""
        return sum(
            1 for i, r in self.reads.items() if i in self.decodes and not self.decodes[i].covers(r["rows"])
        )

    def rows_out(self, positions: list[int]) -> dict[int, int | None]:
        """Each position's final row count after decode (resampling repeats included), or None while its
        read or decode is not complete."""
        out: dict[int, int | None] = {}
        for p in positions:
            r, d = self.reads.get(p), self.decodes.get(p)
            if r is None:
                out[p] = None
            elif r["rows"] == 0:
                out[p] = 0
            else:
                out[p] = d.rows_out if d is not None and d.covers(r["rows"]) else None
        return out

    def summary(self) -> dict[str, Any]:
        return summarize(list(self.reads.values()), list(self.decodes.values()))


def summarize(reads: list[dict[str, Any]], decodes: list[DecodeCounts]) -> dict[str, Any]:
    """good (samples decoded, before resampling repeats), skipped by reason, failed shards (unique by path)."""
    skipped: Counter[str] = Counter()
    for r in reads:
        skipped.update(r["skipped"])
    for d in decodes:
        skipped.update(d.skipped)
    rows = sum(r["rows"] for r in reads)
    failed = {(r["url"], r["fault"]): r["detail"] for r in reads if r["fault"]}
    return {
        # Without a decode stage (a bare read) every row passed on counts as good.
        "good": sum(d.rows_in - sum(d.skipped.values()) for d in decodes) if decodes else rows,
        "skipped": dict(sorted(skipped.items())),
        "failed_shards": [
            {"path": url, "reason": reason, "detail": detail}
            for (url, reason), detail in sorted(failed.items())
        ],
        "shards": len(reads),
        "rows_read": rows,
    }


def data_line(summary: dict[str, Any] | None) -> str:
    """One line for logs and reports: good samples, skipped by reason, failed shards."""
    if not summary:
        return "no counts"
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()) or "none"
    failed = summary["failed_shards"]
    shards = "; ".join(f"{f['path']} ({f['reason']})" for f in failed[:5]) + (
        " ..." if len(failed) > 5 else ""
    )
    return (
        f"{summary['good']} good samples from {summary['shards']} shard reads; skipped: {skipped}; "
        f"failed shards: {len(failed)}{' (' + shards + ')' if failed else ''}"
    )
