"""The stage-1 checkpoint: its layout, and loading it without running code from storage.

A checkpoint directory holds DeepSpeed's per-rank files (`<tag>/mp_rank_*_model_states.pt`,
`<tag>/*_optim_states.pt`), a consolidated `model.pt` (rank 0, for stage 2 and export) and `meta.json`.

DeepSpeed reads its files with `torch.load(weights_only=False)`, a full unpickle: anyone who can write to the
checkpoint storage could make a resumed run execute code. `weights_only_loads()` wraps a resume so every
`torch.load` inside it uses torch's weights-only unpickler, which builds tensors, containers and plain values
and refuses any other global by name; the few DeepSpeed types its optimizer states hold are allowed by name.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

MODEL_FILE = "model.pt"  # consolidated weights (rank 0 writes; `save_16bit_model`)
META_FILE = "meta.json"  # epoch, step, arch, image size, precision


class CheckpointError(RuntimeError):
    """A checkpoint file was refused; the message names the file and what was refused."""


def _deepspeed_state_types() -> list[Any]:
    """The non-tensor types DeepSpeed 0.19's ZeRO 0-3 checkpoints contain (found by loading each stage's files
    with the weights-only unpickler: tests/model/test_checkpoint.py). Plain data classes and an enum: no code runs
    when they are rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _refused(e: Exception) -> str:
    """What torch's weights-only unpickler refused, in one line (its message goes on to suggest
    weights_only=False, which is exactly what must not be done with files from storage)."""
    found = re.search(r"(Unsupported global|unsupported GLOBAL|Unsupported operand)[^\n]*", str(e))
    if found:
        return found.group(0).rstrip(".")
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside this block every `torch.load` (DeepSpeed's included) is weights-only with DeepSpeed's state types
    allowed; a refused global raises CheckpointError naming the file."""
    original = torch.load
    allowed = _deepspeed_state_types()

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed):
                return original(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"checkpoint file {f}: refused ({_refused(e)}); only tensors, plain values and DeepSpeed's own "
                "state types are loaded from checkpoint storage"
            ) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def read_weights(
    path: str | Path, shown: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a consolidated `model.pt` or an exported `.safetensors` file, and its metadata (the
    safetensors header's, or the `meta.json` beside a model.pt), never unpickling objects. CheckpointError names
    the file (as `shown`, for a local copy of a remote one): unreadable, not a tensor mapping, or holding a
    non-finite weight."""
    p = Path(path)
    name = shown or str(p)
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
            meta = _side_meta(p.parent / META_FILE)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such file") from None
    except Exception as e:  # noqa: BLE001 - corrupt files raise many types; each means "not loadable"
        raise CheckpointError(f"{name}: not a readable weights file ({_refused(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: not a mapping of parameter names to tensors")
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{name}: tensor {key} holds non-finite values (NaN or inf)")
    return state, meta


def _side_meta(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: must be a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


def check_meta(meta: dict[str, str], path: str | Path, **expected: object) -> None:
    """Refuse weights whose recorded metadata (arch, image_size, ...) differs from what the caller builds."""
    for key, want in expected.items():
        if want is not None and key in meta and str(meta[key]) != str(want):
            raise CheckpointError(f"{path}: written for {key}={meta[key]}, but this run uses {key}={want}")
