"""The benchmarks' input: a dataset directory (manifest.json; its train split is used) or a raw shard spec (a
brace pattern, glob or folder of .tar files, `::`-separated for several; `system.data.shard_spec`). Raw local
shards get a train-only manifest in the work directory, with the class list scanned from their .json members
(`label`, `class_name`)."""

from __future__ import annotations

import json
from pathlib import Path


def resolve(spec: str, workdir: Path) -> tuple[str, list[str], int]:
    """(dataset root, train shard URLs, train samples) of a shard spec (system.data.shard_spec: a dataset
    directory, a folder, a brace pattern, a glob, local or object store). Raw local shards get a train-only
    manifest in `workdir`, with the classes read from their .json members (`write_scanned_manifest`)."""
    from system.data.dataset_dir import DatasetError, load_manifest
    from system.data.shard_spec import resolve_shards
    from system.data.stores import is_url

    found = resolve_shards(spec, splits=["train"])
    if found.manifest is not None and found.root is not None:
        # Absolute local paths: the runs start in the repository root, not in the caller's directory.
        root = found.root if is_url(found.root) else str(Path(found.root).resolve())
        urls = [u if is_url(u) else str(Path(u).resolve()) for u in found.urls]
        return root, urls, found.manifest.splits["train"].num_samples
    if any(is_url(u) for u in found.urls):
        raise DatasetError(
            f"--shards {spec!r}: raw object-store shards need their dataset directory (manifest)"
        )
    root = workdir / "dataset"
    write_scanned_manifest(root, found.urls)
    m = load_manifest(root)
    return str(root.resolve()), m.shard_paths(root, "train"), m.splits["train"].num_samples


def write_scanned_manifest(root: Path, shards: list[str]) -> None:
    """A train-only dataset dir over `shards` (symlinked): class list and counts from the .json members."""
    import tarfile

    from system.data.dataset_dir import FORMAT_VERSION, Manifest, SplitInfo, write_manifest

    names: dict[int, str] = {}
    counts: dict[int, int] = {}
    (root / "train").mkdir(parents=True, exist_ok=True)
    rel = []
    for i, path in enumerate(shards):
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                label = int(meta["label"])
                counts[label] = counts.get(label, 0) + 1
                names.setdefault(label, str(meta.get("class_name") or f"class_{label}"))
        link = root / "train" / f"{i:05d}.tar"
        if not link.exists():
            link.symlink_to(path)
        rel.append(f"train/{i:05d}.tar")
    k = max(counts) + 1 if counts else 0
    class_names = [names.get(c, f"class_{c}") for c in range(k)]
    train_counts = [counts.get(c, 0) for c in range(k)]
    manifest = Manifest(
        FORMAT_VERSION,
        "bench-shards",
        class_names,
        train_counts,
        # Stage 1 reads only train (its val probe is off here); prepare_run wants val/test listed.
        {s: SplitInfo(sum(train_counts), list(rel)) for s in ("train", "val", "test")},
        text_dir=None,
        source="uniproto benchmark train --shards",
    )
    write_manifest(root, manifest)
