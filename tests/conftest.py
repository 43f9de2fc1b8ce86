"""Shared fixtures. Ray in tests: enough logical CPUs, a short no-progress timeout (a starved pipeline fails in
two minutes instead of hanging CI), and a per-test timeout from pyproject's pytest-timeout settings."""

import os

import pytest

os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "120")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """6 classes, 120 -> 3 train images (many, medium and few groups all present), 32 px, small shards."""
    from system.data.demo_data import make_demo_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    make_demo_dataset(
        str(root),
        num_classes=6,
        imbalance=40.0,
        n_max=120,
        val_per_class=8,
        test_per_class=10,
        image_size=32,
        seed=3,
        samples_per_shard=40,
        progress=None,
    )
    return root
