"""Resuming cannot run code from checkpoint storage: DeepSpeed's files load through the weights-only unpickler
(ZeRO 0-3 checkpoints round-trip), and a planted pickle payload is refused, naming the file, while a plain
DeepSpeed load of the same file runs it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import one_rank_deepspeed_env

from system.model.checkpoint import CheckpointError, weights_only_loads

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_only_loads_refuses_a_payload_and_restores_torch_load(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"module": _Payload(marker)}, tmp_path / "evil.pt")
    original = torch.load
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused \(.*system"), weights_only_loads():
        torch.load(tmp_path / "evil.pt", weights_only=False)  # the caller's False is overridden
    assert not marker.exists()
    assert torch.load is original
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    with weights_only_loads():
        assert torch.equal(torch.load(tmp_path / "ok.pt")["w"], torch.ones(2))


CHILD = textwrap.dedent(
    """
    import glob, json, os, sys
    import deepspeed, torch
    from system.model.checkpoint import CheckpointError, weights_only_loads
    from system.config import OptimSection, TrainSection
    from system.model.ds_config import deepspeed_config, warmup_cosine
    from system.model.optim import build_adamw

    class Payload:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (os.system, (f"touch {self.marker}",))

    deepspeed.init_distributed("gloo")
    root = sys.argv[1]
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))

    def engine(stage, seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
        optim = OptimSection()
        opt = build_adamw(model, optim)
        train = TrainSection(micro_batch_size=2, zero_stage=stage, zero3_persistence_threshold=0)
        e, *_ = deepspeed.initialize(
            model=model, optimizer=opt, config=deepspeed_config(train, optim),
            lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(10, 0.1)),
        )
        return e

    def params(e):
        with deepspeed.zero.GatheredParameters(list(e.module.parameters())):
            return [p.detach().flatten().tolist() for p in e.module.parameters()]

    out = {}
    for stage in (0, 1, 2, 3):
        a = engine(stage, 0)
        for _ in range(2):
            a.backward(a(x).sum())
            a.step()
        a.save_checkpoint(f"{root}/s{stage}", tag="t")
        b = engine(stage, 1)
        with weights_only_loads():
            b.load_checkpoint(f"{root}/s{stage}", tag="t")
        out[stage] = {"same": params(a) == params(b), "steps": b.global_steps}

    # A payload planted in the model-states file of the stage-0 checkpoint.
    target = glob.glob(f"{root}/s0/t/mp_rank_00_model_states.pt")[0]
    torch.save({"module": Payload(f"{root}/ran-guarded")}, target)
    try:
        with weights_only_loads():
            engine(0, 2).load_checkpoint(f"{root}/s0", tag="t")
        out["guarded"] = "loaded"
    except CheckpointError as e:
        out["guarded"] = str(e)
    out["guarded_ran"] = os.path.exists(f"{root}/ran-guarded")
    torch.save({"module": Payload(f"{root}/ran-plain")}, target)
    try:
        engine(0, 3).load_checkpoint(f"{root}/s0", tag="t")  # DeepSpeed alone: a full unpickle
    except Exception:
        pass  # the payload's return value is no state dict; what matters is whether it ran
    out["plain_ran"] = os.path.exists(f"{root}/ran-plain")
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.timeout(300)
def test_deepspeed_checkpoints_round_trip_weights_only_and_a_planted_payload_does_not_run(tmp_path):
    env = one_rank_deepspeed_env(REPO)
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(s for s in r.stdout.splitlines() if s.startswith("RESULT "))[len("RESULT ") :])
    for stage in ("0", "1", "2", "3"):
        assert out[stage] == {"same": True, "steps": 2}, stage  # every ZeRO stage resumes weights-only
    assert "mp_rank_00_model_states.pt: refused" in out["guarded"] and "system" in out["guarded"]
    assert not out["guarded_ran"]
    assert out["plain_ran"]  # the same file through DeepSpeed's own load runs the payload: the guard matters
