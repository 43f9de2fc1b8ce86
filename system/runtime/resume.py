"""A Ray Train checkpoint as a local directory that every rank of a node reads at once.

Ray's `Checkpoint.as_directory` shares one download between the processes of a node through a file lock that is
held only while downloading: a rank that arrives after another's download has finished takes the lock again and
downloads over the files the first rank is reading (seen as an empty meta.json on resume from S3; a DeepSpeed
shard half rewritten under `load_checkpoint` would be worse). Here the node's local rank 0 downloads, once, into
a directory named after the checkpoint, and a barrier holds the other ranks until the copy is complete and
until every rank of the node has finished reading it.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs
import ray.train
import torch.distributed as dist

from system.model.export import weights_copy

_PREFIX = "uniproto-resume-"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def checkpoint_directory(
    checkpoint: ray.train.Checkpoint,
    local_rank: int | None = None,
    barrier: Callable[[], None] = _barrier,
    root: str | None = None,
) -> Iterator[Path]:
    """`checkpoint` as a local directory, read-only to the caller. A checkpoint on the local filesystem is read
    in place; a remote one is downloaded by the node's local rank 0 into `root` (the system's temporary
    directory) and removed once every rank has left the context. Every rank of the training must enter it
    (the barrier is collective); `local_rank` defaults to Ray Train's."""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    if local_rank is None:
        local_rank = ray.train.get_context().get_local_rank()
    key = hashlib.sha256(checkpoint.path.encode()).hexdigest()[:16]
    local = Path(root or tempfile.gettempdir()) / f"{_PREFIX}{key}"
    if local_rank == 0:
        shutil.rmtree(local, ignore_errors=True)  # a copy left by an attempt that died mid-download
        checkpoint.to_directory(str(local))
    barrier()
    try:
        yield local
    finally:
        barrier()
        if local_rank == 0:
            shutil.rmtree(local, ignore_errors=True)


def checkpoint_url(checkpoint: ray.train.Checkpoint) -> str:
    """Where a Train checkpoint lives, as what `uniproto finetune` and `uniproto export` take: a local path, or an
    object-store URL (the filesystem's own path has no scheme: `bucket/prefix/checkpoint_...`)."""
    kind = checkpoint.filesystem.type_name  # "local", "s3", "gcs", ...
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


@contextlib.contextmanager
def checkpoint_weights(checkpoint: ray.train.Checkpoint) -> Iterator[Path]:
    """A finished stage-1 checkpoint's model.pt and meta.json as a local directory, for stage 2: the checkpoint
    itself on a local filesystem; otherwise those two files alone, copied through the checkpoint's own
    filesystem. (`as_directory` would download the DeepSpeed shards too: for ZeRO with Adam, several times the
    weights' size, per trial.)"""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    with weights_copy(checkpoint.filesystem, checkpoint.path, shown=checkpoint_url(checkpoint)) as local:
        yield local
