"""Data-parallel gradients of the stage-1 loss equal the single-process gradient of the same loss.

Two gloo processes (no Ray) each take half of a fixed batch, compute the whole stage-1 loss, backward, then
all-reduce the gradients and divide by the world size, exactly as DDP and DeepSpeed do. The result must match the
gradient of the same loss computed in one process on the whole batch. One spawn runs every case; rank 0 saves
the averaged gradients to a file that the tests compare. Everything is float64, so the tolerance is tight.

The last two cases document why `gather_with_grad=False` is refused with several workers: without gradients
through the all-gather, each rank differentiates only its own rows.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from system.method.losses import Stage1Loss, teacher_logit_pair, total_loss

WORLD = 2
BATCH = 8  # global; each rank takes BATCH // WORLD rows
D_IN, D, K = 6, 4, 3
LABELS = [0, 1, 0, 2, 1, 1, 2, 0]  # several positives per class, split across ranks

# name -> (Stage1Loss keyword arguments, uses the teacher, uses the classifier weights)
CASES: dict[str, tuple[dict, bool, bool]] = {
    "global": (dict(local_loss=False), False, False),
    "local": (dict(local_loss=True), False, False),
    "distill_global": (dict(local_loss=False, distill_weight=0.4), True, False),
    "distill_local": (dict(local_loss=True, distill_weight=0.4), True, False),
    "proto_only": (dict(contrastive_weight=0.0, local_loss=True), False, False),
    "ce": (dict(proto_weight=0.0, ce_weight=1.0, local_loss=True), False, True),
    "nograd_global": (dict(local_loss=False, proto_weight=0.0, gather_with_grad=False), False, False),
    "nograd_local": (dict(local_loss=True, proto_weight=0.0, gather_with_grad=False), False, False),
}
EXACT = [c for c in CASES if not c.startswith("nograd")]
ENCODER = ("img.weight", "img.bias", "txt.weight", "txt.bias")


class TwoTower(nn.Module):
    """Two linear "encoders" to unit features, a [1]-shaped log logit scale and a cosine classifier."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.img = nn.Linear(D_IN, D)
        self.txt = nn.Linear(D_IN, D)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(5.0)]))  # [1]
        self.class_head = nn.Parameter(torch.randn(K, D))  # [K, d]
        self.double()

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = F.normalize(self.img(x_img), dim=1)  # [b, d]
        g = F.normalize(self.txt(x_txt), dim=1)  # [b, d]
        return f, g, self.logit_scale.exp()  # s [1]


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x_img = torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64)  # [B, D_IN]
    x_txt = torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64)  # [B, D_IN]
    protos = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)  # [K, d]
    return x_img, x_txt, torch.tensor(LABELS), protos


def case_grads(case: str, rows: slice) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradients of the case's stage-1 loss on `rows` of the batch (zeros for unused parameters), and the loss."""
    kwargs, use_teacher, use_head = CASES[case]
    model, x_img, x_txt, y, protos = TwoTower(seed=0), *_batch()
    loss_fn = Stage1Loss(protos, proto_temperature=0.5, **kwargs)
    f, g, s = model(x_img[rows], x_txt[rows])
    pair = None
    if use_teacher:
        teacher = TwoTower(seed=1).requires_grad_(False)  # same shape, different weights, frozen
        with torch.no_grad():
            tf, tg, ts = teacher(x_img[rows], x_txt[rows])
        pair = teacher_logit_pair(tf, tg, ts, loss_fn.local_loss)
    loss = total_loss(loss_fn(f, g, y[rows], s, pair, model.class_head if use_head else None))
    loss.backward()
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return grads, loss.detach()


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        b = BATCH // WORLD
        results = {}
        for case in CASES:
            grads, loss = case_grads(case, slice(rank * b, (rank + 1) * b))
            for t in (*grads.values(), loss):  # what DDP / DeepSpeed do: sum over ranks, divide by W
                dist.all_reduce(t)
                t /= WORLD
            results[case] = (grads, loss)
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory) -> dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]:
    tmp: Path = tmp_path_factory.mktemp("gloo")
    out = tmp / "grads.pt"
    mp.spawn(_worker, args=(str(tmp / "rendezvous"), str(out)), nprocs=WORLD, join=True)
    return torch.load(out)


@pytest.fixture(scope="module")
def single() -> dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]:
    assert not dist.is_initialized()
    return {case: case_grads(case, slice(None)) for case in CASES}


@pytest.mark.parametrize("case", EXACT)
def test_data_parallel_gradient_equals_single_process(case, data_parallel, single):
    dp_grads, dp_loss = data_parallel[case]
    sp_grads, sp_loss = single[case]
    # The mean over ranks of the loss is the loss (local mode: rows average to the global loss).
    torch.testing.assert_close(dp_loss, sp_loss, rtol=1e-10, atol=1e-12)
    for name, g in sp_grads.items():
        torch.testing.assert_close(dp_grads[name], g, rtol=1e-8, atol=1e-10, msg=f"{case}: {name}")
    # Not vacuous: the encoders get a gradient, and the scale / classifier do where their term is on.
    assert all(sp_grads[n].abs().sum() > 1e-6 for n in ENCODER)
    if CASES[case][0].get("contrastive_weight", 1.0) > 0:
        assert sp_grads["logit_scale"].abs().item() > 1e-6
    if CASES[case][2]:
        assert sp_grads["class_head"].abs().sum() > 1e-6


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[n].flatten() for n in ENCODER])


def test_without_gather_grad_global_loss_is_scaled_by_one_over_world(data_parallel, single):
    dp_grads, _ = data_parallel["nograd_global"]
    sp_grads, _ = single["nograd_global"]
    # Each rank back-propagates only through its own rows of the (identical) global loss: the encoders get
    # 1/W of the gradient. The logit scale sits outside the gather and stays exact.
    torch.testing.assert_close(_flat(dp_grads), _flat(sp_grads) / WORLD, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(dp_grads["logit_scale"], sp_grads["logit_scale"], rtol=1e-8, atol=1e-10)
    assert not torch.allclose(_flat(dp_grads), _flat(sp_grads), rtol=1e-3)


def test_without_gather_grad_local_loss_points_the_wrong_way(data_parallel, single):
    dp, sp = _flat(data_parallel["nograd_local"][0]), _flat(single["nograd_local"][0])
    # The other ranks' rows' dependence on this rank's features is lost: not a rescaling but another direction.
    cosine = F.cosine_similarity(dp, sp, dim=0).item()
    assert cosine < 0.99, cosine
    assert not torch.allclose(dp, sp, rtol=1e-3)
