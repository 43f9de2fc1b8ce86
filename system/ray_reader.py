"""Ray side of the tolerant reader: a Datasource with one read task per shard, and the run's data ledger.

Why our own Datasource rather than `read_webdataset` or a FileBasedDatasource subclass: the file-based base
stats every path on the driver (a missing shard fails the dataset before the first task) and opens the stream
outside `_read_stream` (an unreadable object fails its task, then the dataset). Here a read task owns its
shard from open to end: any fault becomes a record, and a shard listed twice (once per epoch) is two tasks
that know their position in the list (`__shard__`).

Counts travel to the driver through a ledger actor, not through the data. The training stream is consumed by
the Train workers, never by the driver, and rows are samples: counts in columns would need tombstone rows
through the text actors and the workers' fixed-size batches. The ledger's records are keyed by the unit of
work that Ray would retry (a shard's read, by its position in the list; a decode batch, by its first row's
shard position and key), and a record overwrites its key, so a retried task replaces its counts instead of
adding them again. Each record is sent with a blocking call before the task moves on: when the dataset has
been iterated to its end, every finished task's counts are in the ledger. Reads cut short (a training stream
stopped at its planned length) record nothing, so the ledger describes what was read to the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from system.data.stores import filesystem_for, fs_path
from system.data.tar_stream import (
    MAX_MEMBER_BYTES,
    ROWS_PER_BLOCK,
    ShardTally,
    blocks,
    iter_samples,
    open_fault,
)


@ray.remote(
    num_cpus=0
)  # bookkeeping only: never takes a CPU from the data pipeline (the 2-core hang of docs/stack-notes.md)
class DataLedger:
    """Skip counts of one pipeline run, by unit of work (see the module docstring)."""

    def __init__(self) -> None:
        self.shards: dict[int, dict[str, Any]] = {}
        self.batches: dict[tuple, dict[str, Any]] = {}

    def shard(self, index: int, record: dict[str, Any]) -> None:
        self.shards[index] = record

    def batch(self, unit: tuple, record: dict[str, Any]) -> None:
        self.batches[unit] = record

    def summary(self) -> dict[str, Any]:
        return summarize(list(self.shards.values()), list(self.batches.values()))


def summarize(shards: list[dict[str, Any]], batches: list[dict[str, Any]]) -> dict[str, Any]:
    """good (samples decoded, before resampling repeats), skipped by reason, failed shards (unique by path)."""
    skipped: Counter[str] = Counter()
    for r in shards:
        skipped.update(r["skipped"])
    for b in batches:
        skipped.update(b["skipped"])
    rows = sum(r["rows"] for r in shards)
    failed = {(r["url"], r["fault"]): r["detail"] for r in shards if r["fault"]}
    return {
        # Without a decode stage (a bare read) every row passed on counts as good.
        "good": sum(b["rows"] - sum(b["skipped"].values()) for b in batches) if batches else rows,
        "skipped": dict(sorted(skipped.items())),
        "failed_shards": [
            {"path": url, "reason": reason, "detail": detail}
            for (url, reason), detail in sorted(failed.items())
        ],
        "shards": len(shards),
        "rows_read": rows,
    }


def new_ledger() -> ray.actor.ActorHandle:
    return DataLedger.remote()


def ledger_summary(ledger: ray.actor.ActorHandle | None) -> dict[str, Any] | None:
    return None if ledger is None else ray.get(ledger.summary.remote())


class _ReadShard:
    """One read task: stream one shard, yield blocks of raw rows, record the tally in the ledger."""

    def __init__(
        self,
        index: int,
        url: str,
        fs: pafs.FileSystem,
        ledger,
        strict: bool,
        rows_per_block: int,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ):
        self.index, self.url, self.fs, self.ledger = index, url, fs, ledger
        self.strict, self.rows_per_block, self.max_member_bytes = strict, rows_per_block, max_member_bytes

    def __call__(self) -> Iterator[pa.Table]:
        tally = ShardTally(self.url, self.index)
        path = fs_path(self.url)
        try:
            stream = self.fs.open_input_stream(path)
        except OSError as e:
            open_fault(tally, e, self.strict)
            self._record(tally)
            return
        with stream:
            samples = iter_samples(stream, tally, self.strict, self.max_member_bytes)
            yield from blocks(samples, self.rows_per_block)
        self._record(tally)

    def _record(self, tally: ShardTally) -> None:
        if self.ledger is not None:
            ray.get(self.ledger.shard.remote(self.index, tally.record()))


class ShardSource(Datasource):
    """Tar shards (local paths or object-store URLs, repeats allowed) read by the tolerant stream reader."""

    def __init__(
        self,
        urls: Sequence[str],
        filesystem: pafs.FileSystem | None = None,
        ledger=None,
        strict: bool = False,
        rows_per_block: int = ROWS_PER_BLOCK,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ):
        super().__init__()
        self.urls = list(urls)
        self.filesystem = filesystem if filesystem is not None else filesystem_for(self.urls[0])[0]
        self.ledger, self.strict, self.rows_per_block = ledger, strict, rows_per_block
        self.max_member_bytes = max_member_bytes

    def get_name(self) -> str:
        return "ReadShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # unknown without a request per shard; Ray Data plans from the task count

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        # One task per listed shard whatever `parallelism` says: a task is the unit of fault and of retry.
        return [
            ReadTask(
                _ReadShard(
                    i,
                    url,
                    self.filesystem,
                    self.ledger,
                    self.strict,
                    self.rows_per_block,
                    self.max_member_bytes,
                ),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=[url]),
                per_task_row_limit=per_task_row_limit,
            )
            for i, url in enumerate(self.urls)
        ]


def read_shards(
    urls: Sequence[str],
    filesystem: pafs.FileSystem | None = None,
    ledger=None,
    strict: bool = False,
    num_cpus: float | None = None,
    rows_per_block: int | None = None,
    max_member_bytes: int | None = None,
) -> ray.data.Dataset:
    """Raw rows (`__key__`, `__url__`, `__shard__`, `jpg`, `txt`, `json`) of tar shards, one task per shard.
    `num_cpus`: logical CPUs per read task (Ray's default 1); give the decode stage's, so read and decode
    fuse into one task (Ray Data fuses only tasks with the same resources). `rows_per_block`: rows per block
    the reader yields (a fused map with no batch size sees each block as one batch). `max_member_bytes`:
    members declaring more are skipped unread and their samples counted as oversized (data.max_member_bytes)."""
    urls = list(urls)
    source = ShardSource(
        urls,
        filesystem,
        ledger,
        strict,
        rows_per_block or ROWS_PER_BLOCK,
        max_member_bytes or MAX_MEMBER_BYTES,
    )
    return ray.data.read_datasource(
        source,
        override_num_blocks=max(len(urls), 1),
        num_cpus=num_cpus,
    )


def decode_and_record(batch: dict[str, np.ndarray], ledger=None, **decode_kwargs) -> dict[str, np.ndarray]:
    """`decode_batch` that records its skip counts in the ledger, keyed by the batch's first row (a retried
    task decodes the same batch again and overwrites the same record)."""
    from system.data.decode import decode_batch

    counts: Counter[str] = Counter()
    out = decode_batch(batch, counts=counts, **decode_kwargs)
    keys = batch.get("__key__")
    if ledger is not None and keys is not None and len(keys):
        shard = batch.get("__shard__")
        first = int(shard[0]) if shard is not None else str(batch.get("__url__", [""])[0])
        ray.get(ledger.batch.remote((first, str(keys[0])), {"rows": len(keys), "skipped": dict(counts)}))
    return out


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
