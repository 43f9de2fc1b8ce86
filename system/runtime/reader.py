"""Ray side of the tolerant reader: a Datasource with one read task per shard, and the run's data ledger.

Why our own Datasource rather than `read_webdataset` or a FileBasedDatasource subclass: the file-based base
stats every path on the driver (a missing shard fails the dataset before the first task) and opens the stream
outside `_read_stream` (an unreadable object fails its task, then the dataset). Here a read task owns its
shard from open to end: any fault becomes a record, and a shard listed twice (once per epoch) is two tasks
that know their position in the list (`__shard__`).

Counts travel to the driver through a ledger actor, not through the data. The training stream is consumed by
the Train workers, never by the driver, and rows are samples: counts in columns would need tombstone rows
through the text actors and the workers' fixed-size batches. The ledger keeps counters per shard position,
not per batch (system/data/ledger.py: a retried task's replayed batches are recognised by their reader-row
range and not added twice). Decode batches send their counts without waiting (a read never blocks on the
ledger); a read task sends its shard's record once, at the shard's end, and waits for it, so a finished read
is in the ledger. `ledger_summary` waits (briefly) until every finished read's decode counts have arrived.
Reads cut short (a training stream stopped at its planned length) record nothing, so the ledger describes
what was read to the end.
"""

from __future__ import annotations

import time
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

from system.data.ledger import LedgerState
from system.data.stores import filesystem_for, fs_path
from system.data.tar_stream import (
    MAX_MEMBER_BYTES,
    ROWS_PER_BLOCK,
    ShardTally,
    blocks,
    iter_samples,
    open_fault,
)


@ray.remote(num_cpus=0)  # bookkeeping only: never takes a CPU from the data pipeline (the 2-core hang)
class DataLedger:
    """Skip and row counts of one pipeline run, by shard position (see the module docstring)."""

    def __init__(self) -> None:
        self.state = LedgerState()

    def shard(self, index: int, record: dict[str, Any]) -> None:
        self.state.shard(index, record)

    def batch(self, index: int, start: int, stop: int, rows_out: int, skipped: dict[str, int]) -> None:
        self.state.batch(index, start, stop, rows_out, skipped)

    def unsettled(self) -> int:
        return self.state.unsettled()

    def rows_out(self, positions: list[int]) -> dict[int, int | None]:
        return self.state.rows_out(positions)

    def summary(self) -> dict[str, Any]:
        return self.state.summary()


def new_ledger() -> ray.actor.ActorHandle:
    return DataLedger.remote()


def ledger_summary(ledger: ray.actor.ActorHandle | None, settle_s: float = 5.0) -> dict[str, Any] | None:
    """The ledger's totals, once the decode counts of every finished read have arrived (they are sent without
    waiting; at most `settle_s` seconds are spent waiting for stragglers, then the totals are read as they are)."""
    if ledger is None:
        return None
    deadline = time.monotonic() + settle_s
    while ray.get(ledger.unsettled.remote()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ray.get(ledger.summary.remote())


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
        first_index: int = 0,
    ):
        super().__init__()
        self.urls = list(urls)
        self.first_index = first_index  # position of urls[0] in the whole read list (a resumed stream's tail)
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
                    self.first_index + i,
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
    first_index: int = 0,
) -> ray.data.Dataset:
    """Raw rows (`__key__`, `__url__`, `__shard__`, `__row__`, `jpg`, `txt`, `json`) of tar shards, one task
    per shard. `first_index`: the position `__shard__` counts from (the tail of a longer list keeps the
    positions, and so the seeded draws, it has in the whole list).
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
        first_index,
    )
    return ray.data.read_datasource(
        source,
        override_num_blocks=max(len(urls), 1),
        num_cpus=num_cpus,
    )


def decode_and_record(
    batch: dict[str, np.ndarray], ledger=None, skip=None, **decode_kwargs
) -> dict[str, np.ndarray]:
    """`decode_batch` that sends its counts to the ledger without waiting: one record per shard position in
    the batch, with the reader-row range it covers (a retried task's replay covers the same range and is not
    counted twice). `skip` ({position: {row: times}}, a resumed stream's rows already trained on) drops
    those decoded rows after they are counted: the ledger's row counts stay those of the whole shard."""
    from system.data.decode import decode_batch

    if ledger is None:
        out = decode_batch(batch, **decode_kwargs)
        return drop_rows(out, skip) if skip else out
    outs = []
    for part in shard_runs(batch):
        counts: Counter[str] = Counter()
        out = decode_batch(part, counts=counts, **decode_kwargs)
        rows = part.get("__row__")
        if rows is not None and len(rows):
            ledger.batch.remote(
                int(part["__shard__"][0]),
                int(rows.min()),
                int(rows.max()) + 1,
                len(out["label"]),
                dict(counts),
            )
        outs.append(out)
    out = outs[0] if len(outs) == 1 else {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return drop_rows(out, skip) if skip else out


def drop_rows(out: dict[str, np.ndarray], skip: dict[int, dict[int, int]]) -> dict[str, np.ndarray]:
    """Decoded rows less those in `skip` ({position: {row: times}}): the first `times` copies of a row (its
    resampling repeats) are dropped."""
    if not len(out["shard"]) or not any(int(p) in skip for p in np.unique(out["shard"])):
        return out
    left = {p: dict(rows) for p, rows in skip.items()}
    keep = np.ones(len(out["shard"]), dtype=bool)
    for i, (p, r) in enumerate(zip(out["shard"].tolist(), out["row"].tolist(), strict=True)):
        rows = left.get(p)
        if rows and rows.get(r, 0) > 0:
            rows[r] -= 1
            keep[i] = False
    return {k: v[keep] for k, v in out.items()}


def shard_runs(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The batch cut where its `__shard__` changes (a read fused with its decode sees one shard per batch)."""
    shard = batch.get("__shard__")
    if shard is None or len(shard) == 0:
        return [batch]
    cuts = [0, *(np.flatnonzero(shard[1:] != shard[:-1]) + 1).tolist(), len(shard)]
    if len(cuts) == 2:
        return [batch]
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
