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
import pickle
import re
from collections.abc import Iterator
from typing import Any

import torch

MODEL_FILE = "model.pt"  # consolidated weights (rank 0 writes; `save_16bit_model`)
META_FILE = "meta.json"  # epoch, step, arch, image size, precision


class CheckpointError(RuntimeError):
    """A checkpoint file was refused; the message names the file and what was refused."""


def _deepspeed_state_types() -> list[Any]:
    """The non-tensor types DeepSpeed 0.19's ZeRO 0-3 checkpoints contain (found by loading each stage's files
    with the weights-only unpickler: tests/test_checkpoint.py). Plain data classes and an enum: no code runs
    when they are rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


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
            # torch's message goes on to suggest weights_only=False: keep only what was refused
            found = re.search(r"(Unsupported global|unsupported GLOBAL|Unsupported operand)[^\n]*", str(e))
            what = found.group(0).rstrip(".") if found else type(e).__name__
            raise CheckpointError(
                f"checkpoint file {f}: refused ({what}); only tensors, plain values and DeepSpeed's own state "
                "types are loaded from checkpoint storage"
            ) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
