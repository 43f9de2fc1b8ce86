"""A real DeepSpeed engine (CPU, gloo, one rank, in a child process so the test process keeps no process group):
with ZeRO 0 and one rank, the skipped self-exchange of gradients leaves the steps unchanged."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import one_rank_deepspeed_env

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, sys
    import deepspeed, torch
    from system.config import OptimSection, TrainSection
    from system.model.ds_config import deepspeed_config, skip_single_rank_allreduce
    from system.model.optim import build_adamw

    deepspeed.init_distributed("gloo")
    x, y = torch.randn(32, 6, generator=torch.Generator().manual_seed(0)), torch.randn(32, 3)
    out = {}
    for skip in (False, True):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
        optim = OptimSection(lr=0.05, grad_clip=0.5)
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=build_adamw(model, optim),
            config=deepspeed_config(TrainSection(micro_batch_size=32, zero_stage=0), optim),
        )
        start = [p.detach().flatten().tolist() for p in model.parameters()]
        calls = []
        exchange = engine.allreduce_gradients
        engine.allreduce_gradients = lambda *a, **k: (calls.append(1), exchange(*a, **k))[1]
        skipped = skip_single_rank_allreduce(engine, 1, 0) if skip else False
        for _ in range(4):
            engine.backward(torch.nn.functional.mse_loss(engine(x), y))
            engine.step()
        out[str(skip)] = {
            "skipped": skipped, "exchanges": len(calls), "start": start,
            "params": [p.detach().flatten().tolist() for p in model.parameters()],
        }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.timeout(240)
def test_single_rank_zero0_skips_the_self_exchange_and_trains_the_same():
    env = one_rank_deepspeed_env(REPO)
    r = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=REPO, capture_output=True, text=True, timeout=200
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(s for s in r.stdout.splitlines() if s.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    plain, skipped = out["False"], out["True"]
    assert plain["exchanges"] == 4 and not plain["skipped"]  # DeepSpeed exchanges after every backward ...
    assert (
        skipped["exchanges"] == 0 and skipped["skipped"]
    )  # ... unless told there is nobody to exchange with
    for a, b, a0 in zip(plain["params"], skipped["params"], plain["start"], strict=True):
        assert a == pytest.approx(b, abs=1e-7)
        assert max(abs(u - v) for u, v in zip(a, a0, strict=True)) > 1e-3  # the steps did move the weights


def test_skip_applies_only_to_one_rank_at_stage_0():
    from system.model.ds_config import skip_single_rank_allreduce

    class Engine:
        enable_backward_allreduce = True

    for world, stage in ((2, 0), (1, 1), (1, 3)):
        e = Engine()
        assert not skip_single_rank_allreduce(e, world, stage) and e.enable_backward_allreduce
    e = Engine()
    assert skip_single_rank_allreduce(e, 1, 0) and not e.enable_backward_allreduce
