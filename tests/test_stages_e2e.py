"""Stages alone: pretrain (stage 1), finetune from its checkpoint (stage 2), and resume by running pretrain again
with the same run name and more epochs (Train V2 picks up the last checkpoint from storage)."""

import json

import pytest
import ray

pytestmark = pytest.mark.integration


def _sets(root, tmp_path, epochs):
    return {
        "data.root": root,
        "run.output_dir": tmp_path,
        "run.name": "stages",
        "data.image_size": 32,
        "train.epochs": epochs,
        "train.micro_batch_size": 16,
        "finetune.epochs": 5,
        "ray.no_progress_timeout_s": 120,
        "data.resample": "none",  # exact row counts, so the step counter is known in advance
    }


@pytest.mark.timeout(1200)
def test_pretrain_finetune_and_resume(tiny_dataset, tmp_path, capfd, argv):
    from pipelines.finetune import main as finetune
    from pipelines.pretrain import main as pretrain

    # 6 classes, 120+57+27+13+6+3 = 226 rows/epoch split 113 per worker, batches of 16: 7 steps per epoch.
    try:
        first = pretrain(argv(_sets(tiny_dataset, tmp_path, epochs=1)))
        assert first["metrics"]["epoch"] == 1 and first["metrics"]["step"] == 7
        assert {
            "contrastive_loss",
            "proto_loss",
            "samples_per_s",
            "data_wait_fraction",
            "lr",
            "logit_scale",
        } <= set(first["metrics"])
        run_dir = tmp_path / "stages"
        assert json.loads((run_dir / "stage1.json").read_text())["checkpoint"] == first["checkpoint"]

        second = pretrain(argv(_sets(tiny_dataset, tmp_path, epochs=2)))  # same name: resumes after epoch 1
        assert second["metrics"]["epoch"] == 2 and second["metrics"]["step"] == 14
        assert "resumed after epoch 1 (step 7)" in capfd.readouterr().out

        tuned = finetune(argv(_sets(tiny_dataset, tmp_path, epochs=2)))
    finally:
        ray.shutdown()
    for key in ("overall", "many", "medium", "few"):
        assert 0.0 <= tuned[key] <= 100.0
    assert 0.0 <= tuned["best_lambda"] <= 1.0
    assert json.loads((run_dir / "finetune.json").read_text())["overall"] == tuned["overall"]
