"""The stage-1 optimizer: AdamW with open_clip's weight-decay groups, torch's fused kernel by default.

Plain torch (no Ray, no DeepSpeed): DeepSpeed gets this optimizer instead of building its own, which avoids
JIT-compiling its C++ Adam (docs/stack-notes.md), and `benchmark train`'s bare loop uses the same one.
"""

from __future__ import annotations

from typing import Any

import torch

from system.config import OptimSection


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases and the logit scale (tensors with fewer than 2 dims), as open_clip."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(model: torch.nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    """AdamW over `param_groups`. `optim.fused` picks torch's fused kernel (CPU and CUDA): one pass per
    tensor instead of the for-loop's seven elementwise ops; one CPU step of uniproto-tiny-rn (1 thread, batch 64)
    takes 155 ms instead of 222. Same update to float rounding (tests/model/test_optim.py)."""
    return torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr, fused=optim.fused or None)
