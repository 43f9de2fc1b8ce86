"""DeepSpeed config generation for CPU and GPU settings, and the LR schedule."""

import pytest

from system.config import OptimSection, TrainSection
from system.model.ds_config import deepspeed_config, warmup_cosine


def test_cpu_fp32_config_has_no_train_batch_size():
    cfg = deepspeed_config(
        TrainSection(micro_batch_size=16, grad_accum=2, zero_stage=1), OptimSection(grad_clip=1.0)
    )
    assert "train_batch_size" not in cfg  # derived by DeepSpeed from micro x accum x world size
    assert cfg["train_micro_batch_size_per_gpu"] == 16
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"] == {"stage": 1}
    assert cfg["gradient_clipping"] == 1.0
    assert "bf16" not in cfg and "fp16" not in cfg and "optimizer" not in cfg


def test_gpu_bf16_zero3_config():
    cfg = deepspeed_config(
        TrainSection(use_gpu=True, precision="bf16", zero_stage=3), OptimSection(grad_clip=0.0)
    )
    # bf16 is autocast in the step: DeepSpeed keeps fp32 weights, gradients and optimizer (no bf16 block)
    assert "bf16" not in cfg and "fp16" not in cfg
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "stage3_param_persistence_threshold" not in cfg["zero_optimization"]  # DeepSpeed's default
    assert "gradient_clipping" not in cfg


def test_zero3_persistence_threshold_passes_through():
    cfg = deepspeed_config(TrainSection(zero_stage=3, zero3_persistence_threshold=0), OptimSection())
    assert cfg["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    # only stage 3 partitions parameters: the knob is not sent to stages 0-2
    cfg = deepspeed_config(TrainSection(zero_stage=2, zero3_persistence_threshold=0), OptimSection())
    assert cfg["zero_optimization"] == {"stage": 2}


def test_warmup_cosine_shape():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))
