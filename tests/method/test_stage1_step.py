"""The shared stage-1 step: bf16 autocast on CPU with fp32 master weights and fp32 losses, the logit-scale clamp
after the optimizer step (plain and under real DeepSpeed ZeRO 1-3 engines), gradient checkpointing and
torch.compile."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import one_rank_deepspeed_env

from system.method.losses import Stage1Loss, classwise_contrastive_loss, prototype_loss
from system.method.prototypes import uniform_prototypes
from system.method.stage1_step import LOGIT_SCALE_MAX, Stage1Step, autocast, clamp_logit_scale_
from system.model.factory import create_clip, preprocess_for, tokenizer_for

REPO = Path(__file__).resolve().parents[2]
ARCH = "uniproto-tiny-vit"


def _batch(n: int = 8, size: int = 32, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)  # [n, S, S, 3]
    labels = torch.arange(n) % classes  # [n]
    text = tokenizer_for(ARCH)([f"a photo of class {int(c)} with red stripes" for c in labels])  # [n, L]
    return images, text, labels


def _step(precision: str, seed: int = 0, classes: int = 4) -> tuple[torch.nn.Module, Stage1Step]:
    torch.manual_seed(seed)
    model = create_clip(ARCH, None, 32)
    loss_fn = Stage1Loss(uniform_prototypes(classes, 128, seed=0), local_loss=True)
    return model, Stage1Step(model, model, loss_fn, preprocess_for(model), precision)


def test_fp32_step_is_the_loss_by_hand():
    model, step = _step("fp32")
    images, text, labels = _batch()
    result = step(images, text, labels)
    out = model(preprocess_for(model)(images), text)
    s = out["logit_scale"]
    con = classwise_contrastive_loss(out["image_features"], out["text_features"], labels, s, 0.1)
    proto = prototype_loss(out["image_features"], out["text_features"], labels, step.loss_fn.prototypes, 0.1)
    assert set(result.terms) == {"contrastive_loss", "proto_loss"}
    assert result.terms["contrastive_loss"].item() == pytest.approx(con.item(), rel=1e-6)
    assert result.terms["proto_loss"].item() == pytest.approx(proto.item(), rel=1e-6)
    assert result.loss.item() == pytest.approx(con.item() + proto.item(), rel=1e-6)
    assert result.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's initial temperature


def test_bf16_autocast_on_cpu_trains_with_fp32_weights_and_fp32_losses():
    """A model cast to bf16 fed fp32 inputs fails; autocast over fp32 weights does not, and trains."""
    images, text, labels = _batch()
    cast, _ = _step("fp32")
    with pytest.raises(RuntimeError):
        cast.to(torch.bfloat16)(preprocess_for(cast)(images), text)

    model, step = _step("bf16")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with autocast("bf16", "cpu"):
        inner = model(preprocess_for(model)(images), text)
    assert inner["image_features"].dtype == torch.bfloat16  # the encoders did run in bf16
    losses = []
    for _ in range(8):
        result = step(images, text, labels)
        assert all(t.dtype == torch.float32 for t in result.terms.values())  # losses in fp32
        opt.zero_grad()
        result.loss.backward()
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights ...
        assert all(
            p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None
        )  # ... grads
        opt.step()
        clamp_logit_scale_(model)
        losses.append(result.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]

    fp32_model, fp32_step = _step("fp32")
    close = fp32_step(images, text, labels).loss.item()
    assert _step("bf16")[1](images, text, labels).loss.item() == pytest.approx(
        close, rel=0.05
    )  # bf16 rounding


def test_clamp_after_the_step_lets_the_scale_come_back_down():
    """A clamp inside the forward zeroes the gradient above the limit; the in-place clamp after the step does not."""
    p = torch.nn.Parameter(torch.tensor([LOGIT_SCALE_MAX + 0.5]))
    p.exp().clamp(max=100.0).sum().backward()
    assert p.grad.item() == 0.0  # the old forward clamp: stuck above the limit for good

    model = torch.nn.Module()
    model.logit_scale = torch.nn.Parameter(torch.tensor([LOGIT_SCALE_MAX + 0.5]))
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.logit_scale.exp().sum().backward()  # a loss that wants a smaller scale
    assert model.logit_scale.grad.item() > 0
    opt.step()
    clamp_logit_scale_(model)
    assert model.logit_scale.item() < LOGIT_SCALE_MAX - 1.0  # came back down
    model.logit_scale.data.fill_(-0.3)
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == 0.0  # and never below s = 1


ZERO_CHILD = textwrap.dedent(
    """
    import json, math
    import deepspeed, torch
    from deepspeed.utils import safe_get_full_fp32_param
    from system.config import OptimSection, TrainSection
    from system.model.ds_config import deepspeed_config
    from system.method.stage1_step import clamp_logit_scale_

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.logit_scale = torch.nn.Parameter(torch.tensor([4.0]))

        def forward(self, x, sign):
            return sign * self.logit_scale.sum() + 0.0 * self.proj(x).sum()

    deepspeed.init_distributed("gloo")
    x = torch.randn(2, 4)
    out = {}
    for stage in (0, 1, 2, 3):
        torch.manual_seed(0)
        model = Scaled()
        optim = OptimSection(grad_clip=0.0)
        train = TrainSection(micro_batch_size=2, zero_stage=stage, zero3_persistence_threshold=0)
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            config=deepspeed_config(train, optim) | {"zero_allow_untested_optimizer": True},  # SGD: exact steps
        )

        def values():
            master = safe_get_full_fp32_param(engine.module.logit_scale)
            with deepspeed.zero.GatheredParameters([engine.module.logit_scale]):
                module = float(engine.module.logit_scale.detach().reshape(-1)[0])
            return module, (float(master.reshape(-1)[0]) if master is not None else module)

        seen = []
        for sign in (-1.0, -1.0, 1.0):  # push the scale up twice (past ln 100), then down once
            engine.backward(engine(x, sign))
            engine.step()
            clamp_logit_scale_(engine.module)
            seen.append(values())
        out[stage] = seen

    # The train loop's compile path: DeepSpeed compiles the module in place, so the state-dict keys that
    # checkpoints and export read stay the module's own (torch.compile(model) would prefix them with _orig_mod).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    keys = sorted(model.state_dict())
    optim = OptimSection(grad_clip=0.0)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        config=deepspeed_config(TrainSection(micro_batch_size=2, compile=True), optim),
    )
    eager = float(engine(x).sum())
    engine.compile(backend="aot_eager")
    compiled = float(engine(x).sum())
    engine.backward(engine(x).sum())
    engine.step()
    out["compile"] = {
        "is_compiled": bool(engine.is_compiled), "same_keys": sorted(engine.module.state_dict()) == keys,
        "eager": eager, "compiled": compiled,
    }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.timeout(300)
def test_clamp_reaches_deepspeed_master_weights_at_every_zero_stage_and_compile_keeps_keys():
    env = one_rank_deepspeed_env(REPO)
    r = subprocess.run(
        [sys.executable, "-c", ZERO_CHILD], env=env, cwd=REPO, capture_output=True, text=True, timeout=280
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(s for s in r.stdout.splitlines() if s.startswith("RESULT "))[len("RESULT ") :])
    compiled = out.pop("compile")
    assert compiled["is_compiled"] and compiled["same_keys"]
    assert compiled["compiled"] == pytest.approx(compiled["eager"], rel=1e-6)
    for stage, seen in out.items():
        (up1, up1m), (up2, up2m), (down, downm) = seen
        # SGD with lr 1 moves the scale by 1 a step: 4 -> 5 would pass ln 100 = 4.605 without the clamp
        assert up1 == pytest.approx(LOGIT_SCALE_MAX) and up1m == pytest.approx(LOGIT_SCALE_MAX), stage
        assert up2 == pytest.approx(LOGIT_SCALE_MAX) and up2m == pytest.approx(LOGIT_SCALE_MAX), stage
        # the module and the optimizer's master copy agree, and the scale comes back down
        assert down == pytest.approx(downm) and down == pytest.approx(LOGIT_SCALE_MAX - 1.0), stage


def test_grad_checkpointing_gives_the_same_gradients():
    images, text, labels = _batch()
    grads = []
    for ckpt in (False, True):
        model, step = _step("fp32", seed=3)
        model.set_grad_checkpointing(ckpt)
        step(images, text, labels).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.timeout(240)
def test_compiled_model_trains_like_eager():
    """torch.compile with aot_eager (the traced forward and backward, no code generation: seconds on CPU)."""
    images, text, labels = _batch()
    losses = {}
    for compiled in (False, True):
        model, _ = _step("fp32", seed=5)
        loss_fn = Stage1Loss(uniform_prototypes(4, 128, seed=0), local_loss=True)
        fn = torch.compile(model, backend="aot_eager") if compiled else model
        step = Stage1Step(fn, model, loss_fn, preprocess_for(model), "fp32")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        seen = []
        for _ in range(3):
            result = step(images, text, labels)
            opt.zero_grad()
            result.loss.backward()
            opt.step()
            seen.append(result.loss.item())
        losses[compiled] = seen
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
