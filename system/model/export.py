"""`uniproto export`: a stage-1 checkpoint's consolidated weights as one fp32 safetensors file.

The file loads with no DeepSpeed and no pickle: `safetensors.torch.load_file`, `system.model.factory.load_state`, or
`model.pretrained: <file>` (open_clip reads safetensors), e.g. as the frozen teacher of a later run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from system.model.checkpoint import MODEL_FILE, CheckpointError, read_weights
from system.model.factory import encoder_state


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory (model.pt + meta.json), or a run directory whose stage1.json names one."""
    p = Path(path)
    if (p / MODEL_FILE).is_file():
        return p
    record = p / "stage1.json"
    if record.is_file():
        try:
            ckpt = Path(json.loads(record.read_text(encoding="utf-8"))["checkpoint"])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise CheckpointError(f"{record}: no checkpoint path in it ({type(e).__name__}: {e})") from None
        if (ckpt / MODEL_FILE).is_file():
            return ckpt
        raise FileNotFoundError(f"{record}: its checkpoint {ckpt} has no {MODEL_FILE}")
    raise FileNotFoundError(
        f"--checkpoint {p}: neither a checkpoint directory ({MODEL_FILE}) nor a run directory"
    )


def export_safetensors(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write every tensor of the checkpoint's model.pt as fp32 to `out`; metadata records arch, size, step."""
    from safetensors.torch import save_file

    ckpt = find_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists (pass --overwrite to replace it)")
    state, meta = read_weights(ckpt / MODEL_FILE)  # refuses pickled objects and non-finite weights
    # clone: tied weights share storage, which safetensors refuses; fp32 whatever the training precision was
    tensors = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in encoder_state(state).items()}
    info = {k: str(v) for k, v in meta.items()} | {"format": "uniproto-clip", "dtype": "float32"}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=info)
    return {
        "checkpoint": str(ckpt),
        "out": str(out),
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "bytes": out.stat().st_size,
        "metadata": info,
    }
