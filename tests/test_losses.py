"""Stage-1 losses against hand-computed values and invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from system.losses import (
    Stage1Loss,
    classwise_contrastive_loss,
    cosine_ce_loss,
    multi_positive_targets,
    prototype_loss,
    soft_cross_entropy,
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
