"""Stage 1 with everything on object storage: the dataset read from, and checkpoints written to, a real S3 API
(a moto server on 127.0.0.1, see conftest). Running it again resumes from the checkpoint in the bucket, which
both ranks read from one local copy (system/runtime/resume.py)."""

import tempfile
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.integration


def _sets(root, tmp_path, epochs):
    return {
        "data.root": root,
        "ray.storage_path": "s3://uniproto/runs",
        "run.output_dir": tmp_path,
        "run.name": "s3run",
        "data.image_size": 32,
        "data.resample": "none",
        "train.epochs": epochs,
        "train.steps": "null",
        "train.micro_batch_size": 16,
        "eval.stage1_val_samples": 24,
        "ray.no_progress_timeout_s": 120,
    }


@pytest.mark.timeout(900)
def test_stage1_on_s3_checkpoints_to_the_bucket_and_resumes(s3_dataset, tmp_path, capfd, argv):
    import pyarrow.fs as pafs

    from pipelines.pretrain import main as pretrain

    local_copies = set(Path(tempfile.gettempdir()).glob("uniproto-ckpt-*"))
    try:
        # the first run uploads in the background (train.async_checkpoint_upload), the second as it saves
        first = pretrain(
            argv({**_sets(s3_dataset, tmp_path, epochs=1), "train.async_checkpoint_upload": True})
        )
        assert (
            set(Path(tempfile.gettempdir()).glob("uniproto-ckpt-*")) == local_copies
        )  # deleted once uploaded
        second = pretrain(argv(_sets(s3_dataset, tmp_path, epochs=2)))
    finally:
        ray.shutdown()
    assert "resumed after epoch 1 (step 7)" in capfd.readouterr().out
    assert first["metrics"]["step"] == 7 and second["metrics"]["epoch"] == 2
    assert "uniproto/runs/s3run-stage1/" in second["checkpoint"]
    s3, _ = pafs.FileSystem.from_uri("s3://uniproto/runs")
    files = [f.path for f in s3.get_file_info(pafs.FileSelector("uniproto/runs", recursive=True))]
    assert any(p.endswith("/model.pt") for p in files)  # the consolidated weights, in the bucket
    assert any("/tensorboard/" in p for p in files)
    assert not (tmp_path / "s3run" / "ray").exists()  # nothing of Train's went to local disk
