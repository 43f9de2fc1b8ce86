"""Stage 2's streaming pieces (system/runtime/features.py) against the in-memory functions they replace: class sums,
the head's mean logits and both branches' logits computed over a Ray dataset equal those computed on the
gathered arrays; the head fitted in a Ray task equals the one fitted in process; the per-class cap keeps the
first rows of each class and the whole split's class weights."""

import numpy as np
import pytest
import torch

from system.config import config_from_dict
from system.method.finetune import branch_logits, fit_head, logit_adjustment
from system.method.heads import ClassMeanAccumulator, positive_bias
from system.method.linear_probe import class_weights
from system.runtime.features import feature_pool

K, D = 4, 8


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = np.minimum(g.geometric(0.4, n) - 1, K - 1).astype(np.int64)  # long-tailed labels
    f = g.normal(size=(n, D)).astype(np.float32) + 2.0 * np.eye(K, D, dtype=np.float32)[y]
    return f / np.linalg.norm(f, axis=1, keepdims=True), y


def test_feature_pool_is_sized_from_the_cluster_unless_set():
    cpu = config_from_dict({}, {"data.decode_cpus": 1.0, "finetune.feature_actor_cpus": 2.0})
    assert feature_pool(cpu, {"CPU": 9.0}).max_size == 4  # (9 - 1) // 2
    assert feature_pool(cpu, {"CPU": 1.0}).max_size == 1  # never below one actor
    assert feature_pool(cpu, {"CPU": 9.0}).num_gpus == 0.0
    gpu = config_from_dict({}, {"train.use_gpu": True, "finetune.feature_actors_min": 2})
    pool = feature_pool(gpu, {"CPU": 64.0, "GPU": 8.0})
    assert (pool.min_size, pool.max_size, pool.num_gpus) == (2, 8, 1.0)
    fixed = config_from_dict({}, {"finetune.feature_actors_max": 3})
    assert feature_pool(fixed, {"CPU": 64.0}).max_size == 3


def test_capped_class_weights_keep_the_whole_splits_class_mass():
    y = torch.tensor([0, 0, 1])  # a cap of 2 kept 2 of class 0's 8 rows and class 1's only row
    w = class_weights(y, 2, "sqrt", class_counts=[8, 1])
    # class 0 carries 8^(1/2) in total over its 2 rows, class 1 carries 1^(1/2)
    assert w.tolist() == pytest.approx([8**0.5 / 2, 8**0.5 / 2, 1.0])
    # uncapped, the rule is n^-q
    assert class_weights(y, 2, "sqrt", class_counts=[2, 1]).tolist() == pytest.approx(
        class_weights(y, 2, "sqrt").tolist()
    )


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_streaming_stage2_equals_the_in_memory_computation():
    import ray
    import ray.data

    from system.data.row_draws import row_keys
    from system.runtime.features import (
        class_sums,
        fit_head_remote,
        gather_features,
        mean_logits,
        split_logits,
    )

    train, val = _split(300, 0), _split(80, 1)
    cfg = config_from_dict({}, {"finetune.l2_points": 3})
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        # both splits in one dataset, as stage 2's single feature pass makes it: train rows from shard
        # positions 0-6, val rows from 7-9, blocks interleaved
        items = [
            {"feature": f, "label": int(y), "shard": i % 7}
            for i, (f, y) in enumerate(zip(*train, strict=True))
        ] + [
            {"feature": f, "label": int(y), "shard": 7 + i % 3}
            for i, (f, y) in enumerate(zip(*val, strict=True))
        ]
        both = ray.data.from_items(items[::2] + items[1::2], override_num_blocks=10).materialize()
        tr_rows, va_rows = (0, 7), (7, 10)
        tr = ray.data.from_items(
            [{"feature": f, "label": int(y)} for f, y in zip(*train, strict=True)], override_num_blocks=7
        ).materialize()
        # class sums of the train rows over 10 mixed blocks equal the one-shot accumulator
        acc = class_sums(both, K, D, tr_rows)
        ref = ClassMeanAccumulator(K, D).update(torch.from_numpy(train[0]), torch.from_numpy(train[1]))
        assert torch.equal(acc.counts, ref.counts)
        assert torch.allclose(acc.sums, ref.sums, atol=1e-9)
        assert torch.equal(class_sums(tr, K, D).counts, ref.counts)  # no ranges: every row
        # the head fitted in a Ray task is the in-process fit
        counts = np.bincount(train[1], minlength=K).tolist()
        head, probe = fit_head_remote(both, K, cfg.finetune, 0, counts, tr_rows, va_rows)
        local, local_probe = fit_head(train, val, K, cfg.finetune, 0, counts)
        assert probe.l2 == local_probe.l2
        assert torch.allclose(head.weight, local.weight, atol=1e-5)
        # both branches' logits of the val rows, streamed, with the logit adjustment
        mu = acc.prototypes()
        adjust = logit_adjustment(counts, 1.0)
        z = split_logits(both, head, mu, 16.0, adjust, va_rows)
        expect = branch_logits(local, mu, *val, 16.0, adjust)
        order = np.argsort(z.labels, kind="stable")  # blocks may come back in any order: compare as sets
        assert sorted(map(tuple, np.round(z.head, 4))) == sorted(map(tuple, np.round(expect.head, 4)))
        assert sorted(map(tuple, np.round(z.proto, 4))) == sorted(map(tuple, np.round(expect.proto, 4)))
        assert np.bincount(z.labels[order], minlength=K).tolist() == np.bincount(val[1], minlength=K).tolist()
        # the mean logit per class over train
        bias = positive_bias(local, torch.from_numpy(train[0]), K)["mean_logit"]
        assert np.allclose(mean_logits(both, head, tr_rows), bias, atol=1e-5)
        # the cap keeps, of each class, the rows with the smallest identity keys under the seed: the same rows
        # whatever the blocks' order, ordered by class then key
        ident = [
            {"feature": f, "label": int(y), "shard": i % 7, "row": i // 7}
            for i, (f, y) in enumerate(zip(*train, strict=True))
        ]
        keys = row_keys(np.arange(300) % 7, np.arange(300) // 7, seed=3)
        expect = np.concatenate(
            [np.flatnonzero(train[1] == c)[np.argsort(keys[train[1] == c])][:5] for c in range(K)]
        )
        for items_in, blocks in ((ident, 7), (ident[::-1], 5)):
            ds = ray.data.from_items(items_in, override_num_blocks=blocks).materialize()
            f, y = gather_features(ds, max_per_class=5, seed=3)
            assert np.bincount(y, minlength=K).tolist() == [min(5, c) for c in counts]
            assert np.array_equal(f, train[0][expect]) and np.array_equal(y, train[1][expect])
        with pytest.raises(ValueError, match="no row identity"):
            gather_features(tr, max_per_class=5)
    finally:
        ray.shutdown()
