"""The non-demo long-tailed dataset of the recipe check: real digit scans through `build-shards` split files."""

from __future__ import annotations

import numpy as np

from pipelines.digits_lt import CLASS_NAMES, TEST_PER_CLASS, VAL_PER_CLASS, split_indices, write_dataset


def test_splits_are_long_tailed_balanced_and_disjoint():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    splits, counts = split_indices(labels, seed=0)
    assert sorted(counts, reverse=True) == [
        120,
        78,
        50,
        33,
        21,
        14,
        9,
        6,
        4,
        2,
    ]  # imbalance 60 after rounding
    for split, per_class in (("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS)):
        assert np.bincount(labels[splits[split]], minlength=10).tolist() == [per_class] * 10
    assert np.bincount(labels[splits["train"]], minlength=10).tolist() == counts
    every = splits["train"] + splits["val"] + splits["test"]
    assert len(every) == len(set(every))  # no image in two splits
    again, _ = split_indices(labels, seed=0)
    other, other_counts = split_indices(labels, seed=1)
    assert again == splits and other_counts != counts  # seeded: the tail falls on other digits


def test_dataset_directory_through_build_shards(tmp_path):
    from system.data.dataset_dir import load_manifest

    out = tmp_path / "digits-lt"
    summary = write_dataset(out, seed=0)
    manifest = load_manifest(out)
    assert manifest.class_names == list(CLASS_NAMES)
    assert manifest.train_counts == summary["train_counts"]
    assert manifest.splits["val"].num_samples == 10 * VAL_PER_CLASS
    assert manifest.splits["test"].num_samples == 10 * TEST_PER_CLASS
    assert write_dataset(out, seed=0)["reused"]  # a second call keeps the built directory
