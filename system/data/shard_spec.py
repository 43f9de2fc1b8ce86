"""Shard specs -> (pyarrow filesystem, shard URLs). No Ray here: the driver resolves, the read tasks open.

A spec is one of, or several joined with `::`:

    /data/train/00003.tar                        one shard
    /data/train/{00000..00099}.tar               brace expansion (the `braceexpand` package)
    s3://bucket/prefix/{0000..0009}.tar          an object store (s3://, gs://), brace-expanded the same way
    /data/train   or   s3://bucket/prefix        a folder of shards (its .tar files, sorted)
    /data/ds      or   s3://bucket/ds            a dataset directory (manifest.json): its splits' shards
    /data/train/*.tar                            a local glob

Files that are not shards (img2dataset's .parquet and _stats.json beside each tar) are dropped with a
warning. Shards that do not exist stay in the list: the reader reports each as a missing shard and reads on.
A spec that names nothing at all is a DatasetError.

Local paths and object-store URLs are opened through system.data.stores (pyarrow's filesystems, configured the
standard way and never from our config files).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from system.data.dataset_dir import MANIFEST_NAME, DatasetError, Manifest, load_manifest
from system.data.stores import exists, filesystem_for, fs_path_to_url, is_url, join

log = logging.getLogger(__name__)
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_shard_name(path: str) -> bool:
    return path.lower().endswith(SHARD_SUFFIXES)


@dataclass
class ShardSet:
    """Resolved shards: one filesystem for all of them, their URLs (local: absolute paths), and the files
    that were dropped for not being shards."""

    filesystem: pafs.FileSystem
    urls: list[str]
    ignored: list[str] = field(default_factory=list)
    manifest: Manifest | None = None  # when the spec was a dataset directory
    root: str | None = None


def is_dataset_dir(path: str) -> bool:
    try:
        return exists([join(path, MANIFEST_NAME)])[0]
    except (OSError, DatasetError):
        return False


def _list_folder(fs: pafs.FileSystem, folder: str, like: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    return [fs_path_to_url(p, like) for p in files]


def _expand_part(part: str, splits: Sequence[str] | None) -> tuple[list[str], Manifest | None, str | None]:
    """One `::`-free spec part -> candidate file URLs (shards and possibly side files)."""
    import braceexpand

    out: list[str] = []
    manifest, root = None, None
    for item in braceexpand.braceexpand(part):
        if not is_url(item) and any(c in item for c in "*?["):
            out.extend(str(Path(p).resolve()) for p in sorted(glob.glob(item)))
            continue
        fs, p = filesystem_for(item)
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.Directory or (is_url(item) and info.type == pafs.FileType.NotFound):
            if is_dataset_dir(item):
                manifest = load_manifest(item)
                root = item
                wanted = list(splits) if splits else list(manifest.splits)
                for split in wanted:
                    if split not in manifest.splits:
                        raise DatasetError(
                            f"{item}: split {split!r} is not in the manifest ({sorted(manifest.splits)})"
                        )
                    out.extend(join(item, rel) for rel in manifest.splits[split].shards)
                continue
            if info.type == pafs.FileType.Directory:
                out.extend(_list_folder(fs, p, item))
                continue
        out.append(fs_path_to_url(p, item) if is_url(item) else p)
    return out, manifest, root


def resolve_shards(spec: str | Sequence[str], splits: Sequence[str] | None = None) -> ShardSet:
    """Resolve a shard spec (see the module docstring). `splits` picks the splits of a dataset directory
    (default: all of them). Raises DatasetError when nothing it names exists."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    parts = [q for p in parts for q in p.split("::") if q]
    if not parts:
        raise DatasetError("empty shard spec")
    kinds = {is_url(p) and p.split("://", 1)[0].lower() for p in parts}
    if len(kinds) > 1:
        raise DatasetError(f"shard spec {spec!r} mixes filesystems; use one store per spec")
    urls: list[str] = []
    manifest, root = None, None
    for part in parts:
        found, m, r = _expand_part(part, splits)
        urls.extend(found)
        manifest, root = manifest or m, root or r
    shards = [u for u in urls if is_shard_name(u)]
    ignored = [u for u in urls if not is_shard_name(u)]
    if ignored:
        log.warning(
            "ignoring %d file(s) that are not tar shards (e.g. img2dataset side files): %s",
            len(ignored),
            ", ".join(ignored[:3]) + (" ..." if len(ignored) > 3 else ""),
        )
    if not shards:
        raise DatasetError(
            f"shard spec {spec!r}: no .tar shards found" + (f" (only {ignored[:3]})" if ignored else "")
        )
    present = exists(shards)
    if not any(present):
        raise DatasetError(
            f"shard spec {spec!r}: none of its {len(shards)} shard(s) exists, e.g. {shards[0]}"
        )
    fs, _ = filesystem_for(shards[0])
    return ShardSet(fs, shards, ignored, manifest, root)


def local_copy_of_folder(url: str, cache_dir: str | os.PathLike) -> str:
    """Copy a small folder of an object store (a dataset's class text) to `cache_dir`; returns the local path."""
    fs, p = filesystem_for(url)
    dest = Path(cache_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(p, recursive=False)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                (dest / info.base_name).write_bytes(f.read())
    return str(dest)


def local_text_dir(root: str, text_dir: str) -> Path:
    """A dataset's class-text folder as a local path: itself for a local root; for an object-store root a copy
    in a per-process temporary folder (a few small files, read once by the driver's text stage)."""
    if not is_url(root):
        return Path(root) / text_dir
    import tempfile

    return Path(local_copy_of_folder(join(root, text_dir), tempfile.mkdtemp(prefix="uniproto-text-")))
