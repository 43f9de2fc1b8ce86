"""The stage-1 optimizer: weight-decay groups as open_clip's, and the fused AdamW kernel makes the same update
as torch's for-loop AdamW (the `optim.fused` switch changes speed, not training)."""

import pytest
import torch

from system.config import OptimSection
from system.model.optim import build_adamw, param_groups


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 4)  # weight [4, 6] decays, bias [4] does not
        self.norm = torch.nn.LayerNorm(4)  # gain and bias: no decay
        self.logit_scale = torch.nn.Parameter(torch.ones(1))  # 1-element (docs/stack-notes.md), no decay
        self.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x)) * self.logit_scale  # [n, 4]


def test_param_groups_decay_only_matrices_and_skip_frozen():
    m = _Tiny()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 6])]
    assert sorted(p.numel() for p in no_decay["params"]) == [1, 4, 4, 4]


@pytest.mark.parametrize("fused", [True, False])
def test_build_adamw_uses_the_configured_kernel(fused):
    opt = build_adamw(_Tiny(), OptimSection(lr=0.01, weight_decay=0.2, fused=fused))
    assert bool(opt.defaults["fused"]) is fused
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert all(g["lr"] == 0.01 for g in opt.param_groups)


def test_fused_and_for_loop_adamw_take_the_same_steps():
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    models, opts = [], []
    for fused in (True, False):
        torch.manual_seed(1)
        m = _Tiny()
        models.append(m)
        opts.append(build_adamw(m, OptimSection(lr=0.05, weight_decay=0.1, fused=fused)))
    start = models[0].linear.weight.detach().clone()
    for _ in range(5):
        for m, opt in zip(models, opts, strict=True):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the steps moved the weights (the comparison above is not between two untouched models)
    assert (models[0].linear.weight - start).abs().max() > 0.05
