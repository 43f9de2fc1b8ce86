"""Stage-2 classifier: class means, exact blending, the lambda curve, head training and logit adjustment."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from system.method.heads import (
    HEADS,
    ClassMeanAccumulator,
    PrototypeGuidedClassifier,
    best_lambda,
    blend_logits,
    build_head,
    class_mean_prototypes,
    lambda_curve,
    leave_one_out_class_mean_predictions,
    positive_bias,
    train_head,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ class means


def test_class_means_hand_computed_2d():
    # class 0: (3,4)/5 = (0.6, 0.8) and (1, 0) -> mean (0.8, 0.4) -> (2, 1)/sqrt5
    # class 1: (0, 1) and (-1, 0) -> mean (-0.5, 0.5) -> (-1, 1)/sqrt2
    f = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [-3.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    mu = class_mean_prototypes(f, y, num_classes=2)
    expected = torch.tensor([[2.0, 1.0], [-1.0, 1.0]]) / torch.tensor([[math.sqrt(5.0)], [math.sqrt(2.0)]])
    assert torch.allclose(mu, expected, atol=1e-7)
    perm = torch.tensor([3, 1, 0, 2])
    assert torch.allclose(class_mean_prototypes(f[perm], y[perm], 2), mu, atol=1e-7)


def test_class_means_empty_class_names_it():
    f, y = torch.randn(4, 3, generator=_gen()), torch.tensor([0, 1, 0, 3])
    with pytest.raises(ValueError, match="class index 2"):
        class_mean_prototypes(f, y, num_classes=4)


def test_accumulator_batches_and_merge_equal_one_shot():
    f = torch.randn(300, 16, generator=_gen(1))
    y = torch.randint(0, 7, (300,), generator=_gen(2))
    y[:7] = torch.arange(7)
    one_shot = class_mean_prototypes(f, y, 7)
    acc = ClassMeanAccumulator(7, 16)
    for s in range(0, 200, 64):
        assert acc.update(f[s : min(s + 64, 200)], y[s : min(s + 64, 200)]) is acc
    other = ClassMeanAccumulator(7, 16).update(f[200:], y[200:])
    merged = acc.merge(other)
    assert torch.equal(merged.counts, torch.bincount(y, minlength=7))
    assert torch.allclose(merged.prototypes(), one_shot, atol=1e-6)
    with pytest.raises(ValueError):
        acc.merge(ClassMeanAccumulator(7, 8))
    with pytest.raises(ValueError):
        acc.update(f[:2], torch.tensor([0, 7]))


def _hand_made_features() -> tuple[torch.Tensor, torch.Tensor]:
    """9 unit-length features of 3 classes (class 3 has none), in 4-d, as the encoders return them."""
    f = torch.tensor(
        [[3, 4, 0, 0], [1, 0, 0, 0], [0, 2, 1, 0], [-3, 0, 0, 1], [0, 0, 5, 0],
         [1, 1, 1, 1], [0, -1, 0, 2], [2, 0, -1, 0], [0, 0, 0, 7]],
        dtype=torch.float32,
    )  # fmt: skip
    y = torch.tensor([0, 1, 0, 1, 2, 2, 1, 0, 2])
    return torch.nn.functional.normalize(f, dim=1), y


def test_class_mean_callers_give_what_their_own_formulas_gave():
    """The stage-1 val probe, the centroid diagnostics and the retrieval scorer's centroids now take their
    class means from ClassMeanAccumulator: the same figures as the formulas each computed before."""
    from system.method.diagnostics import class_centroids

    f, y = _hand_made_features()
    k = 4
    old_counts = torch.bincount(y, minlength=k)  # [K]
    acc = ClassMeanAccumulator(k, 4).update(f, y)
    # stage-1 val probe (runtime.pretrain): the encoder's unit features summed as they came; the accumulator
    # normalises them once more in float64 (a change in the 8th digit), then the same leave-one-out predictions
    old_sums = torch.zeros(k, 4, dtype=torch.float64).index_add_(0, y, f.double())  # [K, d]
    assert torch.allclose(acc.sums, old_sums, rtol=0, atol=1e-7) and torch.equal(acc.counts, old_counts)
    loo = leave_one_out_class_mean_predictions
    assert torch.equal(loo(f, y, acc.sums, acc.counts.double()), loo(f, y, old_sums, old_counts.double()))
    # diagnostics: the features normalised in float64, summed, the sums normalised (absent classes: zero rows)
    mu, counts = class_centroids(f.numpy(), y.numpy(), k)
    f64 = torch.nn.functional.normalize(f.double(), dim=1)
    old_mu = torch.nn.functional.normalize(
        torch.zeros(k, 4, dtype=torch.float64).index_add_(0, y, f64), dim=1
    )
    np.testing.assert_allclose(mu, old_mu.numpy(), rtol=0, atol=1e-15)
    assert counts.tolist() == old_counts.tolist() and not mu[3].any()
    # retrieval: plain means of the (already normalised) features, float32, a zero row for an empty class
    sums = np.zeros((k, 4), dtype=np.float64)
    np.add.at(sums, y.numpy(), f.numpy())
    old_means = (sums / np.maximum(old_counts.numpy(), 1)[:, None]).astype(np.float32)
    np.testing.assert_allclose(acc.means().float().numpy(), old_means, rtol=0, atol=1e-7)
    assert not acc.means()[3].any()


def test_retrieval_centroids_are_the_accumulators_means(tiny_dataset):
    """image_centroids over the tiny dataset's train split, with a stand-in encoder (unit vectors from pixel
    means), against the per-batch numpy sums it used to keep."""
    from system.data.dataset_dir import load_manifest
    from system.data.decode import decode_batch
    from system.text.retrieval import image_centroids, raw_batches

    class Encoder:
        def encode_images(self, images: np.ndarray) -> np.ndarray:
            x = images.reshape(len(images), -1, 3).mean(axis=1) + 1.0  # [N, 3]
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    manifest = load_manifest(tiny_dataset)
    k = manifest.num_classes
    mu = image_centroids(Encoder(), tiny_dataset, 32, batch_size=50)
    sums, counts = np.zeros((k, 3)), np.zeros(k, dtype=np.int64)
    for raw in raw_batches(manifest.shard_paths(tiny_dataset, "train"), 50):
        batch = decode_batch(raw, 32, k)
        np.add.at(sums, batch["label"], Encoder().encode_images(batch["image"]))
        np.add.at(counts, batch["label"], 1)
    assert counts.tolist() == manifest.train_counts
    np.testing.assert_allclose(mu, (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), atol=1e-6)


# ------------------------------------------------------------------------------------------------ blending


def test_blend_exact_at_ends_and_linear_between():
    h = torch.randn(5, 4, generator=_gen(3))
    p = torch.randn(5, 4, generator=_gen(4))
    assert torch.equal(blend_logits(h, p, 0.0), h)
    assert torch.equal(blend_logits(h, p, 1.0), p)
    # the unused branch may hold inf without spoiling the ends
    p_inf = p.clone()
    p_inf[0, 0] = float("inf")
    assert torch.equal(blend_logits(h, p_inf, 0), h)
    assert torch.allclose(blend_logits(h, p, 0.25), 0.75 * h + 0.25 * p, atol=1e-6)
    # linear in lam: equal steps in lam give equal steps in the logits
    z = [blend_logits(h, p, lam) for lam in (0.2, 0.5, 0.8)]
    assert torch.allclose(z[1] - z[0], z[2] - z[1], atol=1e-6)
    assert torch.allclose(z[1] - z[0], 0.3 * (p - h), atol=1e-6)
    with pytest.raises(ValueError):
        blend_logits(h, p, 1.5)


# ------------------------------------------------------------------------------------------------ classifier


def test_classifier_outputs_and_buffers():
    mu = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    clf = PrototypeGuidedClassifier(2, 3, prototypes=mu, lam=0.5, proto_scale=10.0)
    f = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    out = clf(f)
    assert set(out) == {"logits", "head_logits", "proto_logits"}
    assert all(v.shape == (2, 3) for v in out.values())
    # proto logits = 10 * cos(f, mu): f0 = (0.6, 0.8); f1 = (0, -1)
    expected = 10.0 * torch.tensor([[0.6, 0.8, -1.4 / math.sqrt(2.0)], [0.0, -1.0, 1.0 / math.sqrt(2.0)]])
    assert torch.allclose(out["proto_logits"], expected, atol=1e-5)
    assert torch.allclose(out["logits"], 0.5 * out["head_logits"] + 0.5 * out["proto_logits"], atol=1e-6)
    assert torch.equal(clf(f, lam=0.0)["logits"], out["head_logits"])
    assert torch.equal(clf(f, lam=1.0)["logits"], out["proto_logits"])
    # prototypes: a normalised buffer, saved, never trained
    assert "prototypes" in dict(clf.named_buffers())
    assert all("prototypes" not in n for n, _ in clf.named_parameters())
    assert torch.allclose(clf.prototypes.norm(dim=1), torch.ones(3))
    clone = PrototypeGuidedClassifier(2, 3, proto_scale=10.0)
    clone.load_state_dict(clf.state_dict())
    assert torch.equal(clone(f)["logits"], out["logits"])


def test_classifier_needs_prototypes_and_mlp_head():
    clf = PrototypeGuidedClassifier(4, 3, head="mlp", hidden_dim=6)
    with pytest.raises(RuntimeError, match="set_prototypes"):
        clf(torch.randn(2, 4))
    clf.set_prototypes(torch.randn(3, 4, generator=_gen()))
    assert clf(torch.randn(2, 4))["logits"].shape == (2, 3)
    assert clf.head[0].out_features == 6
    with pytest.raises(ValueError):
        clf.set_prototypes(torch.randn(2, 4))


def test_logit_adjustment_moves_predictions_to_tail():
    counts = [1000, 10]
    clf = PrototypeGuidedClassifier(
        2, 2, prototypes=torch.eye(2), lam=0.0, logit_adjust_tau=1.0, class_counts=counts
    )
    with torch.no_grad():
        clf.head.weight.zero_()
        clf.head.bias.copy_(torch.tensor([1.0, 0.5]))  # raw head prefers the head class 0
    f = torch.randn(3, 2, generator=_gen())
    clf.train()  # training sees the raw head
    assert torch.allclose(clf(f)["head_logits"], torch.tensor([1.0, 0.5]).expand(3, 2))
    clf.eval()  # inference subtracts tau * log(prior): 1 - log(1000/1010) = 1.00995, 0.5 - log(10/1010) = 5.115
    adjusted = torch.tensor([1.0 - math.log(1000 / 1010), 0.5 - math.log(10 / 1010)])
    out = clf(f)
    assert torch.allclose(out["head_logits"], adjusted.expand(3, 2), atol=1e-5)
    assert out["logits"].argmax(dim=1).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="class_counts"):
        PrototypeGuidedClassifier(2, 2, logit_adjust_tau=1.0)


def test_heads_registry():
    assert set(HEADS) >= {"linear", "mlp"}
    assert isinstance(build_head("linear", 8, 3), nn.Linear)
    assert build_head("mlp", 8, 3, hidden_dim=5)(torch.randn(4, 8)).shape == (4, 3)
    with pytest.raises(ValueError, match="'conv'"):
        build_head("conv", 8, 3)


# ------------------------------------------------------------------------------------------------ training


def _separable(n_per_class=(120, 60, 20, 8), d=8, noise=0.15, seed=0):
    g = _gen(seed)
    centers = torch.eye(d)[: len(n_per_class)] * 2.0  # [K, d]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    x = centers[y] + noise * torch.randn(len(y), d, generator=g)
    return x, y


def test_train_head_separable_and_deterministic():
    x, y = _separable()
    state = torch.get_rng_state()
    head = train_head(x, y, 4, epochs=20, batch_size=32, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert not head.training
    with torch.no_grad():
        assert (head(x).argmax(1) == y).float().mean() == 1.0
        xt, yt = _separable(n_per_class=(50, 50, 50, 50), seed=9)
        assert (head(xt).argmax(1) == yt).float().mean() >= 0.99
    again = train_head(x, y, 4, epochs=20, batch_size=32, seed=1)
    assert all(
        torch.equal(a, b)
        for a, b in zip(head.state_dict().values(), again.state_dict().values(), strict=True)
    )
    other = train_head(x, y, 4, epochs=20, batch_size=32, seed=2)
    assert not torch.equal(head.weight, other.weight)


@pytest.mark.parametrize("sampling", ["sqrt", "balanced"])
def test_train_head_sampling_and_mlp(sampling):
    x, y = _separable()
    head = train_head(
        x,
        y,
        4,
        head="mlp",
        hidden_dim=16,
        epochs=15,
        batch_size=32,
        balanced_sampling=sampling,
        label_smoothing=0.1,
    )
    with torch.no_grad():
        assert (head(x).argmax(1) == y).float().mean() >= 0.99
    with pytest.raises(ValueError, match="'uniform'"):
        train_head(x, y, 4, balanced_sampling="uniform")


def test_positive_bias_hand_computed():
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        head.bias.zero_()
    out = positive_bias(head, torch.eye(2), 2)
    assert np.allclose(out["weight_norm"], [5.0, 1.0])
    assert np.allclose(out["mean_logit"], [3.5, 0.5])
    mlp = build_head("mlp", 2, 3, hidden_dim=4)
    out = positive_bias(mlp, torch.randn(5, 2), 3)
    assert out["weight_norm"].shape == (3,) and out["mean_logit"].shape == (3,)


# ------------------------------------------------------------------------------------------------ lambda curve


def _naive_curve(h, p, y, lams):
    return np.array(
        [
            ((1 - lam) * h + lam * p if 0 < lam < 1 else (h if lam == 0 else p))
            .argmax(1)
            .eq(y)
            .double()
            .mean()
            .item()
            * 100
            for lam in lams
        ]
    )


def test_lambda_curve_hand_computed_with_tie():
    # one sample of class 1: z1 - z0 = 2 lam - 1; at lam = 0.5 the two tie and argmax picks class 0
    h, p, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([1])
    lams, acc = lambda_curve(h, p, y, lams=[0.0, 0.49, 0.5, 0.51, 1.0])
    assert acc.tolist() == [0.0, 0.0, 0.0, 100.0, 100.0]
    lams, acc = lambda_curve(h, p, y)
    assert len(lams) == 101 and lams[0] == 0.0 and lams[-1] == 1.0
    assert acc.tolist() == [0.0] * 51 + [100.0] * 50


@pytest.mark.parametrize("kind", ["gaussian", "integer_ties", "weak"])
def test_lambda_curve_matches_naive_loop(kind):
    g = _gen(5)
    n, k = 600, 25
    y = torch.randint(0, k, (n,), generator=g)
    if kind == "integer_ties":  # many exact ties, also of parallel lines
        h = torch.randint(-2, 3, (n, k), generator=g).float()
        p = torch.randint(-2, 3, (n, k), generator=g).float()
    else:
        shift = 0.3 if kind == "weak" else 2.0
        h = torch.randn(n, k, generator=g)
        p = 3.0 * torch.randn(n, k, generator=g)
        h[torch.arange(n), y] += shift
        p[torch.arange(n), y] += 2.0 * shift
    lams = np.linspace(0, 1, 101)
    got_lams, acc = lambda_curve(h, p, y, chunk_size=256)
    assert np.array_equal(got_lams, lams)
    np.testing.assert_allclose(acc, _naive_curve(h, p, y, lams), atol=1e-9)
    # any order of lams, and the non-finite fallback
    shuffled = np.random.default_rng(0).permutation(lams)
    np.testing.assert_allclose(
        lambda_curve(h, p, y, lams=shuffled)[1], _naive_curve(h, p, y, shuffled), atol=1e-9
    )
    h[0, 0] = float("inf")
    np.testing.assert_allclose(lambda_curve(h, p, y)[1], _naive_curve(h, p, y, lams), atol=1e-9)


def test_best_lambda_ties_go_to_smaller_lambda():
    h = torch.randn(50, 5, generator=_gen(6))
    y = torch.randint(0, 5, (50,), generator=_gen(7))
    # identical branches: a flat curve, so the smallest lambda wins
    lam, acc = best_lambda(h, h.clone(), y)
    assert lam == 0.0 and acc == pytest.approx(_naive_curve(h, h, y, [0.0])[0])
    # a perfect prototype branch: 100% from some lambda on, and the first such lambda is returned
    p = 10.0 * nn.functional.one_hot(y, 5).float()
    lams, acc = lambda_curve(h, p, y)
    lam, best = best_lambda(h, p, y)
    assert best == 100.0 and lam == lams[np.argmax(acc == 100.0)]
    lam, _ = best_lambda(h, p, y, lams=[1.0, 0.9, lam, 0.95])
    assert lam == lams[np.argmax(acc == 100.0)]


def test_leave_one_out_class_mean_hand_computed():
    from system.method.heads import leave_one_out_class_mean_predictions as loo

    # Two classes in 2-d. Without leave-one-out every sample is nearest its own class mean; with it, f2 sees
    # only f1 (cos 0.8) and class 1's mean direction [0.316, 0.949] (cos 0.822), so it goes to class 1;
    # f4 likewise goes to class 0.
    f = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    y = torch.tensor([0, 0, 1, 1])
    sums = torch.zeros(2, 2).index_add_(0, y, f)
    counts = torch.bincount(y, minlength=2)
    assert loo(f, y, sums, counts).tolist() == [0, 1, 1, 0]
    # A class whose only sample is the one being scored cannot be predicted for it; an empty class never is.
    f5 = torch.cat([f, torch.tensor([[0.0, -1.0]])])
    y5 = torch.tensor([0, 0, 1, 1, 2])
    sums5 = torch.zeros(4, 2).index_add_(0, y5, f5)
    pred = loo(f5, y5, sums5, torch.bincount(y5, minlength=4))
    assert pred[4] != 2 and (pred != 3).all()


def test_stage2_logit_adjustment_matches_the_classifier_and_leaves_the_prototypes_alone():
    from system.method.finetune import branch_logits, logit_adjustment

    assert logit_adjustment([10, 1], 0.0) is None
    adj = logit_adjustment([3, 1], 2.0)  # tau * log([0.75, 0.25])
    assert torch.allclose(adj, torch.tensor([2.0 * math.log(0.75), 2.0 * math.log(0.25)]))
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    f = np.array([[1.0, 0.9]], dtype=np.float32)  # the head prefers class 0 by 0.1 ...
    mu = torch.eye(2)
    plain = branch_logits(head, mu, f, np.array([1]), 16.0)
    adjusted = branch_logits(head, mu, f, np.array([1]), 16.0, adj)
    assert plain.head.argmax() == 0 and adjusted.head.argmax() == 1  # ... until the prior is taken out
    assert np.allclose(adjusted.proto, plain.proto)
    clf = PrototypeGuidedClassifier(2, 2, prototypes=mu, lam=0.0, logit_adjust_tau=2.0, class_counts=[3, 1])
    with torch.no_grad():
        clf.head.weight.copy_(head.weight)
        clf.head.bias.zero_()
    clf.eval()
    assert np.allclose(clf(torch.from_numpy(f))["head_logits"].detach().numpy(), adjusted.head, atol=1e-6)


def test_collapse_is_one_class_taking_half_the_predictions():
    from system.method.finetune import is_collapsed, top_class_share

    assert top_class_share(np.array([0, 1, 2, 3]), 4) == 0.25  # a uniform spread: 1/K
    assert top_class_share(np.array([2, 2, 2, 1]), 4) == 0.75
    assert top_class_share(np.array([], dtype=np.int64), 4) == 0.0
    assert is_collapsed(0.5, 10) and is_collapsed(0.97, 24)
    assert not is_collapsed(0.49, 10)
    assert not is_collapsed(0.6, 3)  # with 2-3 classes half the predictions on one class can be honest
