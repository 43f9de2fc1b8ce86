"""`uniproto check-shards SPEC`: stream every sample of a shard spec through the pipeline's own read + decode (+
text filter where the dataset has class text) and count what would be skipped.

    uniproto check-shards runs/datasets/demo                       a dataset directory (all its splits)
    uniproto check-shards '/data/{00000..00099}.tar' --class-count 1000
    uniproto check-shards 's3://bucket/ds/train/{00000..00009}.tar' --root s3://bucket/ds --strict

The last line printed is one JSON object: {"good", "skipped": {reason: n}, "failed_shards": [{"path", "reason"}],
"shards", "seconds", ...}. Exit 0 when it ran (faults or not), 1 with --strict at the first fault (the error
names the shard and key), 2 on a user error (nothing at that path, a bad manifest).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from system.config import load_config
from system.data.faults import DataFault
from system.data.shard_spec import resolve_shards

UNBOUNDED_CLASSES = 2**62  # no class count known: any label >= 0 is accepted


@dataclass
class _Classes:
    """What the decode stage needs of a manifest when only a class count is known."""

    num_classes: int
    train_counts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CheckRequest:
    """What `uniproto check-shards` checks, and how (the console script's parser builds it)."""

    spec: str  # a dataset dir, a folder, a file, a brace or glob pattern, s3:// or gs://
    strict: bool = False  # stop at the first bad sample or shard (exit 1)
    cpus: int = 2  # logical CPUs of the local Ray
    class_count: int | None = None  # labels must lie in [0, K)
    root: str | None = None  # a dataset directory whose classes (and class text) check the labels
    splits: tuple[str, ...] | None = None  # with a dataset directory spec: only these splits
    image_size: int = 64  # decode size (what the run would use)
    max_member_mib: int = 64  # tar members declaring more are skipped unread (oversized_member)


def check_shards(a: CheckRequest) -> int:
    """Stream every sample of `a.spec` and print the counts; the exit code (0, 1 under strict, 2)."""
    t0 = time.perf_counter()
    shards = resolve_shards(
        a.spec, list(a.splits) if a.splits else None
    )  # DatasetError (exit 2) when the spec names nothing
    root = a.root or shards.root
    manifest = None
    if a.root:
        from system.data.dataset_dir import load_manifest

        manifest = load_manifest(a.root)
    elif shards.manifest is not None:
        manifest = shards.manifest
    if a.class_count is not None and a.class_count < 1:
        print("uniproto check-shards: --class-count must be >= 1", file=sys.stderr)
        return 2
    if a.max_member_mib < 1:
        print("uniproto check-shards: --max-member-mib must be >= 1", file=sys.stderr)
        return 2
    classes: Any = manifest or _Classes(a.class_count or UNBOUNDED_CLASSES)
    sets = [
        f"ray.num_cpus={a.cpus}",
        f"data.strict={str(a.strict).lower()}",
        f"data.image_size={a.image_size}",
        f"data.max_member_bytes={a.max_member_mib * 2**20}",
    ]
    if root:
        sets.append(f"data.root={root}")
    cfg = load_config(None, sets)

    import ray

    from system.runtime.cluster import init_ray

    started = not ray.is_initialized()  # a caller's Ray (tests, a notebook) is left running
    print(f"[uniproto] {init_ray(cfg)}", file=sys.stderr, flush=True)
    try:
        return _check(cfg, manifest, classes, shards, t0)
    finally:
        if started:
            ray.shutdown()


def _check(cfg, manifest, classes, shards, t0: float) -> int:
    from system.runtime.data import configure_data_context, decoded_split
    from system.runtime.reader import ledger_summary, new_ledger

    configure_data_context(cfg)
    ledger = new_ledger()
    ds = decoded_split(cfg, classes, shards.urls, ledger=ledger, filesystem=shards.filesystem)
    if manifest is not None and manifest.text_dir is not None:
        ds = _with_text(cfg, manifest, ds)
    rows = 0
    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            rows += len(batch["label"])
    except Exception as e:  # noqa: BLE001 - Ray wraps the task's error; find ours in it
        fault = _data_fault(e)
        if fault is None:
            raise
        print(f"uniproto check-shards: {fault}", file=sys.stderr)
        return 1
    out = ledger_summary(ledger) or {}
    result = {
        "good": out.get("good", 0),
        "skipped": out.get("skipped", {}),
        "failed_shards": [{"path": f["path"], "reason": f["reason"]} for f in out.get("failed_shards", [])],
        "shards": len(shards.urls),
        "seconds": round(time.perf_counter() - t0, 2),
        "ignored_files": len(shards.ignored),
        "rows_out": rows,
    }
    for f in out.get("failed_shards", []):
        print(f"[uniproto] failed shard {f['path']}: {f['reason']} ({f['detail']})", file=sys.stderr)
    print(json.dumps(result))
    return 0


def _with_text(cfg, manifest, ds):
    """The text-filter stage of the train stream, as the run builds it (pools from the dataset's class text)."""
    from system.runtime.data import with_text_pairing
    from system.text.prepare import prepare_text_pools

    pools, _ = prepare_text_pools(cfg.data, manifest)
    return with_text_pairing(cfg, manifest, ds, pools)


def _data_fault(e: BaseException) -> str | None:
    """The DataFault message inside an error that came back through Ray, or None."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, DataFault):
            # Ray's wrapper puts a traceback before our message and may add retry hints after it: take the
            # line that carries the strict-mode marker.
            return _strict_line(str(x)) or str(x).strip().splitlines()[-1]
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return _strict_line(str(e))


def _strict_line(text: str) -> str | None:
    """The last line of `text` naming a strict-mode fault (every DataFault message carries "data.strict")."""
    lines = [line.strip() for line in text.splitlines() if "data.strict" in line]
    if not lines:
        return None
    line = lines[-1]
    marker = "DataFault: "
    return line[line.rindex(marker) + len(marker) :] if marker in line else line
