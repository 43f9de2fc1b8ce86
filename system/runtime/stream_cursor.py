"""Where the stage-1 stream stands, so a resumed run continues it instead of reading it again from the top.

The stream is one seeded list of shard positions (every epoch's shards, each epoch in its own order;
system.runtime.data.train_dataset). Each Train worker counts the rows it trains on by (shard position, reader
row). At every checkpoint the workers pool their counts and compare them with the ledger's final row count of
each position (system/data/ledger.py): the first position not trained on to its end is the stream's `start`,
and the rows already trained on at or after it are `consumed`. The checkpoint keeps both (`stream.json`).

A resumed run (a restarted worker group, a retried Tune trial, or the same command run again) builds its
stream from `start`, with the `consumed` rows dropped after decoding: it trains on exactly the rows the
uninterrupted run had still to train on, with the same augmentation and resampling draws (both are seeded by
the shard's position in the list, which the resumed stream keeps). What is not reproduced is the order rows
leave the workers' shuffle buffers and reach each worker, which no streaming run fixes either.

Without a ledger the cursor is off and a resumed run reads the stream from its start (stopping at the
planned step count), as it did before the cursor existed.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

STREAM_FILE = "stream.json"


@dataclass
class StreamState:
    """The first shard position not trained on to its end, and the rows at or after it already trained on."""

    start: int = 0
    consumed: dict[int, dict[int, int]] = field(default_factory=dict)  # position -> reader row -> times

    def to_json(self) -> str:
        return json.dumps(
            {
                "start": self.start,
                "consumed": {
                    str(p): {str(r): n for r, n in rows.items()} for p, rows in self.consumed.items()
                },
            }
        )

    @classmethod
    def from_json(cls, text: str) -> StreamState:
        d = json.loads(text)
        consumed = {int(p): {int(r): int(n) for r, n in rows.items()} for p, rows in d["consumed"].items()}
        return cls(start=int(d["start"]), consumed=consumed)

    @property
    def consumed_rows(self) -> int:
        return sum(sum(rows.values()) for rows in self.consumed.values())


def advance(start: int, counts: dict[int, Counter[int]], totals: dict[int, int | None]) -> StreamState:
    """The state after pooling every worker's `counts` ({position: Counter(row)}, the resumed state's consumed
    rows included once): `start` moves past every position whose trained rows reach its final count."""
    end = max(counts, default=start - 1)
    while start <= end:
        total = totals.get(start)
        if total is None or sum(counts.get(start, Counter()).values()) < total:
            break
        start += 1
    return StreamState(start, {p: dict(c) for p, c in sorted(counts.items()) if p >= start})


class StreamCursor:
    """One Train worker's count of the rows it trained on; `checkpoint()` (every rank, collectively) pools them.

    Rows are noted as device tensors and counted on the host only at a checkpoint (or every `flush_every`
    micro-batches), so the training loop never waits on the device for them."""

    def __init__(self, ledger, resumed: StreamState | None, rank: int, flush_every: int = 256):
        self.ledger = ledger
        self.start = resumed.start if resumed is not None else 0
        self.counts: dict[int, Counter[int]] = defaultdict(Counter)
        if resumed is not None and rank == 0:  # the resumed state's rows count once, on one rank
            for p, rows in resumed.consumed.items():
                self.counts[p].update(rows)
        self.pending: list[tuple[Any, Any]] = []
        self.flush_every = flush_every

    @property
    def enabled(self) -> bool:
        return self.ledger is not None

    def note(self, shard, row) -> None:
        """The rows of one micro-batch (int64 tensors [b], any device)."""
        if not self.enabled:
            return
        self.pending.append((shard, row))
        if len(self.pending) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        import torch

        if not self.pending:
            return
        shard = torch.cat([s.reshape(-1) for s, _ in self.pending]).cpu().tolist()
        row = torch.cat([r.reshape(-1) for _, r in self.pending]).cpu().tolist()
        self.pending = []
        for p, r in zip(shard, row, strict=True):
            self.counts[p][r] += 1

    def checkpoint(self) -> StreamState | None:
        """Pool every rank's counts (a collective: every rank calls it at the same step), advance `start`
        over the positions trained on to their end, and forget those positions."""
        if not self.enabled:
            return None
        import ray
        import torch

        self._flush()
        pooled: dict[int, Counter[int]] = defaultdict(Counter)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, dict(self.counts))
        else:
            gathered = [dict(self.counts)]
        for part in gathered:
            for p, rows in part.items():
                pooled[p].update(rows)
        end = max(pooled, default=self.start - 1)
        totals = (
            ray.get(self.ledger.rows_out.remote(list(range(self.start, end + 1))))
            if end >= self.start
            else {}
        )
        state = advance(self.start, pooled, totals)
        self.start = state.start
        for p in [p for p in self.counts if p < state.start]:
            del self.counts[p]
        return state


def resumed_state(storage_path: str, name: str) -> StreamState | None:
    """The stream state of the checkpoint Ray Train resumes the run `name` from (its latest registered one),
    or None for a run with no checkpoint or a checkpoint without one. Reads only that file, not the weights."""
    from ray.train import Result

    try:
        result = Result.from_path(f"{storage_path.rstrip('/')}/{name}")
    except (RuntimeError, FileNotFoundError, OSError, ValueError):
        return None  # no run there yet
    ckpt = result.checkpoint
    if ckpt is None:
        return None
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path.rstrip('/')}/{STREAM_FILE}") as f:
            return StreamState.from_json(f.read().decode("utf-8"))
    except (OSError, ValueError, KeyError):
        return None  # a checkpoint from before the cursor existed: the stream starts from the top


class ResumableTrainStream:
    """The Train run's `datasets["train"]` as a callable: Ray Train calls it each time it starts a worker group,
    so a restarted group (and a rerun of the same command) gets the stream from the checkpoint it resumes."""

    def __init__(self, build, storage_path: str, name: str):
        self.build, self.storage_path, self.name = build, storage_path, name

    def __call__(self):
        state = resumed_state(self.storage_path, self.name)
        if state is not None:
            print(
                f"[stage1] the stream resumes at shard position {state.start}, less {state.consumed_rows} rows "
                "already trained on",
                flush=True,
            )
        return self.build(state)
