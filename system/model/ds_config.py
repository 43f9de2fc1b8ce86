"""DeepSpeed config from the typed train/optim sections (pure: unit-tested for CPU and GPU settings)."""

from __future__ import annotations

import math
from typing import Any

from system.config import OptimSection, TrainSection


def deepspeed_config(train: TrainSection, optim: OptimSection) -> dict[str, Any]:
    """The dict passed to `deepspeed.initialize`.

    `train_batch_size` is left out on purpose: DeepSpeed derives it from micro-batch x accumulation x world
    size, so the same config survives a change of worker count (docs/stack-notes.md). No "optimizer" block: we pass a
    torch AdamW, which avoids DeepSpeed JIT-compiling its fused C++ Adam.
    """
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "zero_optimization": {"stage": train.zero_stage},
        "steps_per_print": 10**9,  # progress is ours; DeepSpeed's own prints would flood the driver log
        "wall_clock_breakdown": False,
    }
    if optim.grad_clip > 0:
        cfg["gradient_clipping"] = optim.grad_clip
    # No "bf16" block: train.precision=bf16 is torch autocast in the step (system.method.stage1_step), so parameters,
    # gradients, their all-reduce and the optimizer stay fp32 (DeepSpeed's bf16 mode would cast the module's
    # weights to bf16 while our inputs and prototype buffers are fp32).
    if train.zero_stage == 3:
        # Lets rank 0 write a consolidated state dict for stage 2 without a separate conversion step.
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
        if train.zero3_persistence_threshold is not None:
            cfg["zero_optimization"]["stage3_param_persistence_threshold"] = train.zero3_persistence_threshold
    return cfg


def skip_single_rank_allreduce(engine: Any, world: int, zero_stage: int) -> bool:
    """With one data-parallel rank and ZeRO stage 0, turn off the engine's gradient exchange: DeepSpeed would
    flatten every gradient, all-reduce it with itself and copy it back (2-5% of a CPU step on
    uniproto-tiny-rn). Stage 0 steps the torch optimizer on the module's own gradients, so nothing else changes
    (tests/model/test_ds_engine.py). Stages 1-3 move gradients into their partitions in that exchange: left alone."""
    if world != 1 or zero_stage != 0:
        return False
    engine.enable_backward_allreduce = False
    return True


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warm-up over warmup_fraction of the steps, then cosine decay to 0."""
    total = max(int(total_steps), 1)
    warmup = int(round(warmup_fraction * total))

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
