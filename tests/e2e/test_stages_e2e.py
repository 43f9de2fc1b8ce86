"""Stages alone, with everything on object storage (a real S3 API: a moto server on 127.0.0.1, see conftest):
pretrain (stage 1) reads the dataset from the bucket and writes its checkpoints there; running pretrain again with
the same run name and more epochs resumes (Train V2 picks up the last checkpoint in the bucket, which both ranks
read from one local copy, system/runtime/resume.py); export and finetune (stage 2) then read the checkpoint URL
that stage1.json records.

It runs the GPU recipe's numerics on 2 CPU workers: bf16 autocast, and ZeRO-3 with every parameter partitioned
(persistence threshold 0; the tiny model's parameters are all under DeepSpeed's default threshold, so nothing
would be partitioned otherwise), with the per-epoch probe, checkpoint, resume and export."""

import json
import math
import tempfile
from pathlib import Path

import pytest
import ray
import torch

from system.model.export import export_safetensors
from system.model.factory import create_clip, load_state

pytestmark = pytest.mark.integration


def _sets(root, tmp_path, epochs):
    return {
        "data.root": root,
        "run.output_dir": tmp_path,
        "run.name": "stages",
        "ray.storage_path": "s3://uniproto/runs",
        "data.image_size": 32,
        "train.epochs": epochs,
        "train.steps": "null",
        "train.micro_batch_size": 16,
        "finetune.epochs": 5,
        "ray.no_progress_timeout_s": 120,
        "data.resample": "none",  # exact row counts, so the step counter is known in advance
        "train.precision": "bf16",
        "train.zero_stage": 3,
        "train.zero3_persistence_threshold": 0,
        "eval.stage1_val_samples": 24,
    }


@pytest.mark.timeout(1200)
def test_pretrain_resume_export_and_finetune_on_s3(s3_dataset, tmp_path, capfd, argv):
    import pyarrow.fs as pafs

    from pipelines.finetune import main as finetune
    from pipelines.pretrain import main as pretrain

    local_copies = set(Path(tempfile.gettempdir()).glob("uniproto-ckpt-*"))
    # 6 classes, 120+57+27+13+6+3 = 226 rows/epoch split 113 per worker, batches of 16: 7 steps per epoch.
    try:
        # the first run uploads in the background (train.async_checkpoint_upload), the second as it saves
        first = pretrain(argv({**_sets(s3_dataset, tmp_path, 1), "train.async_checkpoint_upload": True}))
        assert (
            set(Path(tempfile.gettempdir()).glob("uniproto-ckpt-*")) == local_copies
        )  # deleted once uploaded
        assert first["metrics"]["epoch"] == 1 and first["metrics"]["step"] == 7
        assert 0 < first["metrics"]["val_probe_samples"] <= 24  # the probe ran on partitioned parameters
        assert math.isfinite(first["metrics"]["loss"])
        assert {
            "contrastive_loss",
            "proto_loss",
            "samples_per_s",
            "data_wait_fraction",
            "lr",
            "logit_scale",
        } <= set(first["metrics"])
        run_dir = tmp_path / "stages"
        recorded = json.loads((run_dir / "stage1.json").read_text())["checkpoint"]
        assert recorded == first["checkpoint"]
        assert recorded.startswith(
            "s3://uniproto/runs/stages-stage1/checkpoint_"
        )  # a URL export and finetune take

        second = pretrain(argv(_sets(s3_dataset, tmp_path, epochs=2)))  # same name: resumes after epoch 1
        assert second["metrics"]["epoch"] == 2 and second["metrics"]["step"] == 14
        printed = capfd.readouterr().out
        assert "resumed after epoch 1 (step 7)" in printed
        assert "built successfully" not in printed  # DeepSpeed's op-build print is dropped unless verbose
        assert second["metrics"]["loss"] < first["metrics"]["loss"]  # bf16 training does train
        assert 1.0 <= second["metrics"]["logit_scale"] <= 100.0

        # The consolidated weights of a ZeRO-3 checkpoint in the bucket export and load into a fresh model.
        summary = export_safetensors(run_dir, tmp_path / "stage1.safetensors")
        assert summary["checkpoint"] == second["checkpoint"]
        model = load_state(create_clip("uniproto-tiny-rn", None, 32), summary["out"])
        assert summary["metadata"]["precision"] == "bf16" and summary["metadata"]["step"] == "14"
        assert all(torch.isfinite(p).all() for p in model.parameters())

        tuned = finetune(argv(_sets(s3_dataset, tmp_path, epochs=2)))
    finally:
        ray.shutdown()
    assert f"stage-1 weights: {second['checkpoint']}" in capfd.readouterr().out
    for key in ("overall", "many", "medium", "few"):
        assert 0.0 <= tuned[key] <= 100.0
    assert 0.0 <= tuned["best_lambda"] <= 1.0
    assert json.loads((run_dir / "finetune.json").read_text())["overall"] == tuned["overall"]
    s3, _ = pafs.FileSystem.from_uri("s3://uniproto/runs")
    files = [f.path for f in s3.get_file_info(pafs.FileSelector("uniproto/runs", recursive=True))]
    assert any(p.endswith("/model.pt") for p in files)  # the consolidated weights, in the bucket
    assert any("/tensorboard/" in p for p in files)
    assert not (run_dir / "ray").exists()  # nothing of Train's went to local disk
