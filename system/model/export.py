"""`uniproto export`: a stage-1 checkpoint's consolidated weights as one fp32 safetensors file.

The file loads with no DeepSpeed and no pickle: `safetensors.torch.load_file`, `system.model.factory.load_state`, or
`model.pretrained: <file>` (open_clip reads safetensors), e.g. as the frozen teacher of a later run.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from system.data.faults import DatasetError
from system.data.stores import copy_out, filesystem_for, is_url
from system.model.checkpoint import META_FILE, MODEL_FILE, CheckpointError, read_weights
from system.model.factory import encoder_state

if TYPE_CHECKING:
    import pyarrow.fs as pafs


def checkpoint_location(path: str | Path) -> str | Path:
    """Where a stage-1 checkpoint is: `path` itself when it is a checkpoint directory (local, or an s3:// or
    gs:// URL), else what the run directory's stage1.json records (a local path or an object-store URL)."""
    if is_url(str(path)):
        return str(path).rstrip("/")
    p = Path(path)
    if (p / MODEL_FILE).is_file():
        return p
    record = p / "stage1.json"
    if not record.is_file():
        raise FileNotFoundError(
            f"--checkpoint {p}: neither a checkpoint directory ({MODEL_FILE}) nor a run directory"
        )
    try:
        ckpt = json.loads(record.read_text(encoding="utf-8"))["checkpoint"]
        if not isinstance(ckpt, str):
            raise TypeError(f"a {type(ckpt).__name__}, not a path")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{record}: no checkpoint path in it ({type(e).__name__}: {e})") from None
    if is_url(ckpt):
        return ckpt.rstrip("/")
    if not (Path(ckpt) / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{record}: its checkpoint {ckpt} has no {MODEL_FILE}")
    return Path(ckpt)


def find_checkpoint(path: str | Path) -> Path:
    """A local checkpoint directory (model.pt + meta.json), given or named by a run directory's stage1.json."""
    where = checkpoint_location(path)
    if isinstance(where, str):
        raise CheckpointError(
            f"{path}: the checkpoint {where} is on an object store; name a local copy instead "
            f"(uniproto export --checkpoint {where} --out model.safetensors)"
        )
    return where


@contextlib.contextmanager
def local_checkpoint(path: str | Path) -> Iterator[Path]:
    """A stage-1 checkpoint as a local directory holding its model.pt and meta.json: in place when local, else
    (given, or recorded in stage1.json when ray.storage_path is an object store) as `weights_copy` makes it."""
    where = checkpoint_location(path)
    if isinstance(where, Path):
        yield where
        return
    try:
        fs, p = filesystem_for(where)
    except DatasetError as e:  # no bucket in the URL, the store unreachable
        raise CheckpointError(f"{where}: cannot read the checkpoint ({e})") from None
    with weights_copy(fs, p, shown=where) as local:
        yield local


@contextlib.contextmanager
def weights_copy(fs: pafs.FileSystem, path: str, shown: str) -> Iterator[Path]:
    """The model.pt and meta.json of the checkpoint at `path` on `fs`, copied to a temporary directory removed on
    exit; the DeepSpeed shards beside them, which only resuming reads, are left where they are. Errors name the
    checkpoint as `shown` (its URL)."""
    with tempfile.TemporaryDirectory(prefix="uniproto-weights-") as tmp:
        try:
            copy_out(fs, f"{path}/{MODEL_FILE}", Path(tmp) / MODEL_FILE, shown=f"{shown}/{MODEL_FILE}")
            with contextlib.suppress(FileNotFoundError):  # optional: read_weights reads none as no metadata
                copy_out(fs, f"{path}/{META_FILE}", Path(tmp) / META_FILE)
        except FileNotFoundError:
            raise
        except OSError as e:  # no access, no such bucket, the store unreachable
            raise CheckpointError(f"{shown}: cannot read the checkpoint ({e})") from None
        yield Path(tmp)


def export_safetensors(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write every tensor of the checkpoint's model.pt as fp32 to `out`; metadata records arch, size, step."""
    from safetensors.torch import save_file

    where = checkpoint_location(checkpoint)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists (pass --overwrite to replace it)")
    with local_checkpoint(where) as ckpt:
        # refuses pickled objects and non-finite weights, naming the file where it is stored
        state, meta = read_weights(ckpt / MODEL_FILE, shown=f"{where}/{MODEL_FILE}")
    # clone: tied weights share storage, which safetensors refuses; fp32 whatever the training precision was
    tensors = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in encoder_state(state).items()}
    info = {k: str(v) for k, v in meta.items()} | {"format": "uniproto-clip", "dtype": "float32"}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=info)
    return {
        "checkpoint": str(where),
        "out": str(out),
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "bytes": out.stat().st_size,
        "metadata": info,
    }
