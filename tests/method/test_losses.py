"""Stage-1 losses against hand-computed values and invariances."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from system.method import losses
from system.method.losses import (
    Stage1Loss,
    classwise_contrastive_loss,
    cosine_ce_loss,
    distillation_loss,
    image_text_logits,
    multi_positive_targets,
    prototype_loss,
    soft_cross_entropy,
    teacher_logit_pair,
    total_loss,
)


def test_targets_row_normalised_and_smoothed():
    y = torch.tensor([0, 1, 0])
    t = multi_positive_targets(y, y, smoothing=0.0)
    assert torch.allclose(t, torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))
    ts = multi_positive_targets(y, y, smoothing=0.3)
    assert torch.allclose(ts[1], torch.tensor([0.1, 0.8, 0.1]))
    assert torch.allclose(ts.sum(1), torch.ones(3))


def test_contrastive_hand_computed_two_classes():
    # Orthogonal unit features: img0 = txt0 = e0, img1 = txt1 = e1, scale 1 -> logits = identity.
    img = torch.eye(2)
    txt = torch.eye(2)
    y = torch.tensor([0, 1])
    loss = classwise_contrastive_loss(img, txt, y, 1.0, label_smoothing=0.0)
    expected = -math.log(math.e / (math.e + 1))  # each row: softmax([1, 0])[0]
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Smoothing 0.2 over 2 columns: targets [0.9, 0.1].
    loss_s = classwise_contrastive_loss(img, txt, y, 1.0, label_smoothing=0.2)
    p = math.e / (math.e + 1)
    assert loss_s.item() == pytest.approx(-(0.9 * math.log(p) + 0.1 * math.log(1 - p)), rel=1e-6)


def test_contrastive_multi_positive_hand_computed():
    # Three samples, two of class 0 whose text features coincide: row 0 targets [.5, 0, .5].
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = img.clone()
    y = torch.tensor([0, 1, 0])
    loss = classwise_contrastive_loss(img, txt, y, 2.0, label_smoothing=0.0)
    # Row of class 0: logits [2, 0, 2] -> log p(pos) = log(e^2 / (2 e^2 + 1)); row of class 1: logits [0, 2, 0].
    lp0 = 2 - math.log(2 * math.e**2 + 1)
    lp1 = 2 - math.log(math.e**2 + 2)
    assert loss.item() == pytest.approx(-(2 * lp0 + lp1) / 3, rel=1e-6)


def test_contrastive_symmetric_in_modalities():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    a = classwise_contrastive_loss(img, txt, y, 3.0)
    b = classwise_contrastive_loss(txt, img, y, 3.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_distinct_labels_reduce_to_clip_loss():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    y = torch.arange(5)
    logits = 2.5 * img @ txt.T
    clip = 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y))
    assert classwise_contrastive_loss(img, txt, y, 2.5, 0.0).item() == pytest.approx(clip.item(), rel=1e-6)


def test_local_loss_rows_average_to_global():
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    txt = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    y = torch.tensor([0, 0, 1, 2, 1, 0, 2, 3])
    full = classwise_contrastive_loss(img, txt, y, 4.0, 0.1)
    halves = [
        classwise_contrastive_loss(img[s], txt[s], y[s], 4.0, 0.1, img, txt, y)
        for s in (slice(0, 4), slice(4, 8))
    ]
    assert full.item() == pytest.approx(sum(h.item() for h in halves) / 2, rel=1e-6)


def test_prototype_loss_hand_computed_and_minimal_on_prototypes():
    protos = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([0, 1])
    on = prototype_loss(protos.clone(), protos.clone(), y, protos, temperature=0.5)
    # logits = cos / 0.5 = [2, -2]: CE = log(1 + e^-4)
    assert on.item() == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)  # float32
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        f = F.normalize(torch.randn(2, 2, generator=g), dim=1)
        assert prototype_loss(f, f, y, protos, 0.5) >= on - 1e-7


def test_soft_ce_equals_ce_for_one_hot():
    z = torch.tensor([[1.0, 2.0, 0.5]])
    assert soft_cross_entropy(z, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(
        F.cross_entropy(z, torch.tensor([1])).item()
    )


def test_stage1_loss_terms_are_weighted_and_summed():
    protos = torch.eye(3)
    img = torch.eye(3)
    y = torch.arange(3)
    fn = Stage1Loss(
        protos, contrastive_weight=0.5, proto_weight=2.0, proto_temperature=1.0, label_smoothing=0.0
    )
    terms = fn(img, img, y, torch.tensor([1.0]))
    assert set(terms) == {"contrastive_loss", "proto_loss"}
    assert terms["contrastive_loss"].item() == pytest.approx(
        0.5 * classwise_contrastive_loss(img, img, y, 1.0, 0.0).item()
    )
    assert terms["proto_loss"].item() == pytest.approx(2.0 * prototype_loss(img, img, y, protos, 1.0).item())
    assert total_loss(terms).item() == pytest.approx(
        terms["contrastive_loss"].item() + terms["proto_loss"].item()
    )
    with pytest.raises(ValueError, match="no \\*_loss"):
        total_loss({})


def test_image_only_prototype_loss_ignores_text():
    # The no-text control: only CE(f P^T / tau, y). Same prototypes and features as above: log(1 + e^-4).
    protos = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([0, 1])
    assert prototype_loss(protos, None, y, protos, 0.5).item() == pytest.approx(
        math.log(1 + math.exp(-4)), rel=1e-5
    )
    # With text far from its prototypes, the two-modality loss grows but the image-only one does not move.
    txt = protos.flip(0)
    assert prototype_loss(protos, txt, y, protos, 0.5) > prototype_loss(protos, None, y, protos, 0.5) + 1.0


def test_cosine_ce_hand_computed_and_scale_free_in_the_weights():
    # W rows (2, 0) and (0, 3) normalise to e0, e1; f = e0 -> logits [1, 0] / 0.5 = [2, 0]: CE = log(1 + e^-2).
    w = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    f = torch.tensor([[1.0, 0.0]])
    expected = math.log(1 + math.exp(-2))
    assert cosine_ce_loss(f, w, torch.tensor([0]), 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert cosine_ce_loss(f, 7.0 * w, torch.tensor([0]), 0.5).item() == pytest.approx(expected, rel=1e-6)
    # With W equal to fixed prototypes it is exactly the prototype loss's image term.
    protos = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([0, 1])
    assert cosine_ce_loss(protos, protos, y, 0.5).item() == pytest.approx(
        prototype_loss(protos, None, y, protos, 0.5).item()
    )


def test_stage1_loss_ce_and_no_text_terms():
    protos = torch.eye(3)
    img = torch.eye(3)
    txt = torch.roll(torch.eye(3), 1, dims=0)  # every caption points at the wrong class
    y = torch.arange(3)
    w = torch.randn(3, 3, requires_grad=True)
    fn = Stage1Loss(protos, contrastive_weight=0.0, proto_weight=0.0, ce_weight=1.5, proto_temperature=0.2)
    terms = fn(img, txt, y, torch.tensor([1.0]), class_weights=w)
    assert set(terms) == {"ce_loss"}
    assert terms["ce_loss"].item() == pytest.approx(1.5 * cosine_ce_loss(img, w, y, 0.2).item())
    total_loss(terms).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="class_weights"):
        fn(img, txt, y, torch.tensor([1.0]))
    image_only = Stage1Loss(protos, contrastive_weight=0.0, proto_temperature=1.0, proto_modalities="image")
    both = Stage1Loss(protos, contrastive_weight=0.0, proto_temperature=1.0)
    got = image_only(img, txt, y, torch.tensor([1.0]))["proto_loss"].item()
    assert got == pytest.approx(prototype_loss(img, None, y, protos, 1.0).item())
    assert both(img, txt, y, torch.tensor([1.0]))["proto_loss"].item() > got


# --- distillation: both directions explicit, rows local or global, columns global ---------------------------


def _np_soft_ce(student: np.ndarray, teacher: np.ndarray) -> float:
    """Independent reference: mean over rows of -sum_j softmax(teacher)_ij log softmax(student)_ij."""
    t = np.exp(teacher - teacher.max(1, keepdims=True))
    t /= t.sum(1, keepdims=True)
    log_p = student - student.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    return float(-(t * log_p).sum(1).mean())


def _unit(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def test_distillation_hand_computed_both_directions():
    # Teacher logits all zero -> uniform targets [.5, .5] in both directions.
    # i2t = identity: each row -(1/2)(log e/(e+1) + log 1/(e+1)) = log(e+1) - 1/2.
    # t2i = zeros: each row log 2. The directions differ, so a transposed i2t in place of t2i would be caught.
    s_i2t = torch.eye(2, dtype=torch.float64)
    s_t2i = torch.zeros(2, 2, dtype=torch.float64)
    t = torch.zeros(2, 2, dtype=torch.float64)
    expected = 0.5 * ((math.log(math.e + 1) - 0.5) + math.log(2))
    assert distillation_loss(s_i2t, s_t2i, t, t).item() == pytest.approx(expected, rel=1e-12)


def test_distillation_matches_numpy_on_rectangular_logits():
    # [b, B] = [2, 4] logits, as one rank of two sees them under the local loss.
    g = torch.Generator().manual_seed(5)
    s_i2t, s_t2i, t_i2t, t_t2i = (torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in range(4))
    got = distillation_loss(s_i2t, s_t2i, t_i2t, t_t2i).item()
    ref = 0.5 * (_np_soft_ce(s_i2t.numpy(), t_i2t.numpy()) + _np_soft_ce(s_t2i.numpy(), t_t2i.numpy()))
    assert got == pytest.approx(ref, rel=1e-12)
    # The teacher is a target: no gradient reaches it even when its logits carry a graph.
    t_req = t_i2t.clone().requires_grad_()
    s_req = s_i2t.clone().requires_grad_()
    distillation_loss(s_req, s_t2i, t_req, t_t2i).backward()
    assert t_req.grad is None and s_req.grad is not None


def test_teacher_logit_pair_values_and_no_grad():
    img = _unit(3, 4, 6).requires_grad_()
    txt = _unit(3, 4, 7)
    i2t, t2i = teacher_logit_pair(img, txt, torch.tensor([2.0], dtype=torch.float64), local_loss=False)
    assert torch.allclose(i2t, 2.0 * img.detach() @ txt.T)
    assert torch.allclose(t2i, 2.0 * txt @ img.detach().T)
    assert not i2t.requires_grad and not t2i.requires_grad
    # Not distributed: local rows are the whole batch, the same pair.
    li2t, lt2i = teacher_logit_pair(img, txt, 2.0, local_loss=True)
    assert torch.equal(li2t, i2t) and torch.equal(lt2i, t2i)
    # Called inside a bf16 autocast region (the step's teacher forward), the logits stay in the features' dtype.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ai2t, _ = teacher_logit_pair(img.float(), txt.float(), 2.0, local_loss=False)
    assert ai2t.dtype == torch.float32


def test_local_distillation_rows_average_to_global():
    # Two simulated ranks by slicing rows: each rank's logits [4, 8] = its rows against the global batch.
    img, txt, t_img, t_txt = (_unit(8, 5, seed) for seed in (10, 11, 12, 13))
    s, ts = 3.0, 7.0
    full = distillation_loss(
        *image_text_logits(img, txt, img, txt, s), *image_text_logits(t_img, t_txt, t_img, t_txt, ts)
    )
    halves = [
        distillation_loss(
            *image_text_logits(img[h], txt[h], img, txt, s),  # [4, 8] each
            *image_text_logits(t_img[h], t_txt[h], t_img, t_txt, ts),  # [4, 8] each
        )
        for h in (slice(0, 4), slice(4, 8))
    ]
    assert full.item() == pytest.approx(sum(x.item() for x in halves) / 2, rel=1e-12)
    # The former construction (t2i as the transpose of the [4, 8] i2t) is a softmax over the 4 local images:
    # a different objective, which is why both directions are now built explicitly.
    old = []
    for h in (slice(0, 4), slice(4, 8)):
        st, tt = s * img[h] @ txt.T, ts * t_img[h] @ t_txt.T  # [4, 8]
        old.append(
            0.5 * (soft_cross_entropy(st, F.softmax(tt, 1)) + soft_cross_entropy(st.T, F.softmax(tt.T, 1)))
        )
    assert abs(sum(x.item() for x in old) / 2 - full.item()) > 1e-3


def _fake_rank_gather(monkeypatch, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Make losses' all-gathers return the global tensor a rank's local rows belong to (matched by storage)."""
    table = {local.data_ptr(): full for local, full in pairs}
    monkeypatch.setattr(losses, "gather_features", lambda x, with_grad=True: table[x.data_ptr()])
    monkeypatch.setattr(losses, "gather_labels", lambda y: table[y.data_ptr()])


def test_stage1_local_mode_averages_to_global_with_distillation(monkeypatch):
    img, txt, t_img, t_txt = (_unit(8, 5, seed) for seed in (20, 21, 22, 23))
    y = torch.tensor([0, 1, 0, 2, 1, 1, 2, 0])
    protos = _unit(3, 5, 24)
    scale, t_scale = torch.tensor([4.0], dtype=torch.float64), torch.tensor([6.0], dtype=torch.float64)
    kw = dict(distill_weight=0.3, proto_weight=0.7, proto_temperature=0.5)
    glob = Stage1Loss(protos, local_loss=False, **kw)(
        img, txt, y, scale, teacher_logit_pair(t_img, t_txt, t_scale, local_loss=False)
    )
    per_rank = []
    for h in (slice(0, 4), slice(4, 8)):
        local = [x[h].clone() for x in (img, txt, t_img, t_txt, y)]
        _fake_rank_gather(monkeypatch, list(zip(local, (img, txt, t_img, t_txt, y), strict=True)))
        pair = teacher_logit_pair(local[2], local[3], t_scale, local_loss=True)
        assert pair[0].shape == pair[1].shape == (4, 8)
        per_rank.append(Stage1Loss(protos, local_loss=True, **kw)(*local[:2], local[4], scale, pair))
    assert set(glob) == {"contrastive_loss", "proto_loss", "distill_loss"}
    for key in glob:
        mean = sum(r[key].item() for r in per_rank) / 2
        assert mean == pytest.approx(glob[key].item(), rel=1e-12), key


# --- beta is beta: (1 - beta) L_con + beta L_distill -------------------------------------------------------


def _distill_inputs():
    img, txt, t_img, t_txt = (_unit(4, 3, seed) for seed in (30, 31, 32, 33))
    y = torch.tensor([0, 1, 1, 0])
    s = torch.tensor([2.0], dtype=torch.float64)
    return img, txt, y, s, teacher_logit_pair(t_img, t_txt, 5.0, local_loss=False)


def test_distill_weight_is_beta():
    img, txt, y, s, pair = _distill_inputs()
    con = classwise_contrastive_loss(img, txt, y, s, 0.1).item()
    dist = distillation_loss(*image_text_logits(img, txt, img, txt, s), *pair).item()
    terms = Stage1Loss(None, distill_weight=0.5)(img, txt, y, s, pair)
    assert set(terms) == {"contrastive_loss", "distill_loss"}
    assert terms["contrastive_loss"].item() == pytest.approx(0.5 * con, rel=1e-12)
    assert terms["distill_loss"].item() == pytest.approx(0.5 * dist, rel=1e-12)
    assert total_loss(terms).item() == pytest.approx(0.5 * con + 0.5 * dist, rel=1e-12)
    # (1 - beta) multiplies contrastive_weight: 2.0 * (1 - 0.25) = 1.5.
    terms = Stage1Loss(None, contrastive_weight=2.0, distill_weight=0.25)(img, txt, y, s, pair)
    assert terms["contrastive_loss"].item() == pytest.approx(1.5 * con, rel=1e-12)
    assert terms["distill_loss"].item() == pytest.approx(0.25 * dist, rel=1e-12)


def test_distill_weight_zero_changes_nothing_and_no_teacher_means_no_term():
    img, txt, y, s, pair = _distill_inputs()
    con = classwise_contrastive_loss(img, txt, y, s, 0.1).item()
    terms = Stage1Loss(None, contrastive_weight=2.0)(img, txt, y, s, pair)
    assert set(terms) == {"contrastive_loss"}
    assert terms["contrastive_loss"].item() == pytest.approx(2.0 * con, rel=1e-12)
    # beta > 0 without teacher logits: the distillation term is absent; the weighting follows the config.
    terms = Stage1Loss(None, distill_weight=0.5)(img, txt, y, s)
    assert set(terms) == {"contrastive_loss"}
    assert terms["contrastive_loss"].item() == pytest.approx(0.5 * con, rel=1e-12)
    # beta = 1: pure distillation, the contrastive term's weight is zero and it is absent.
    assert set(Stage1Loss(None, distill_weight=1.0)(img, txt, y, s, pair)) == {"distill_loss"}


def test_stage1_rejects_bad_beta_and_a_single_teacher_matrix():
    img, txt, y, s, pair = _distill_inputs()
    with pytest.raises(ValueError, match="beta"):
        Stage1Loss(None, distill_weight=1.5)
    fn = Stage1Loss(None, distill_weight=0.5)
    with pytest.raises(TypeError, match="pair"):
        fn(img, txt, y, s, pair[0])
    with pytest.raises(ValueError, match="local_loss"):
        fn(img, txt, y, s, (pair[0][:2], pair[1][:2]))
