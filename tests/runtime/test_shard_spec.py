"""Shard specs (paths, folders, brace expansion, dataset dirs) and the object-store path for real: a moto S3
server on 127.0.0.1, a dataset uploaded to it, read back through our pipeline on a real local Ray."""

import json
import os

import pytest

from system.data.dataset_dir import DatasetError, load_manifest
from system.data.shard_spec import resolve_shards
from system.data.stores import is_url, join


def _touch_tar(path):
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("k.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))


def test_brace_expansion_folders_and_side_files(tmp_path):
    for i in range(4):
        _touch_tar(tmp_path / "d" / f"{i:05d}.tar")
    (tmp_path / "d" / "00000.parquet").write_bytes(b"PAR1")
    (tmp_path / "d" / "00000_stats.json").write_text("{}")
    got = resolve_shards(f"{tmp_path}/d/{{00001..00003}}.tar")
    assert got.urls == [str(tmp_path / "d" / f"{i:05d}.tar") for i in (1, 2, 3)]
    # A folder: its tars in order; the side files are dropped (with a warning), not handed to tarfile.
    folder = resolve_shards(str(tmp_path / "d"))
    assert [os.path.basename(u) for u in folder.urls] == [f"{i:05d}.tar" for i in range(4)]
    assert sorted(os.path.basename(u) for u in folder.ignored) == ["00000.parquet", "00000_stats.json"]
    # Several parts joined with '::', a glob; a missing member of a brace range stays listed (the reader
    # reports it as a missing shard), but a spec naming nothing that exists is a user error.
    mixed = resolve_shards(
        f"{tmp_path}/d/00000.tar::{tmp_path}/d/0000[23].tar::{tmp_path}/d/{{00003..00004}}.tar"
    )
    assert [os.path.basename(u) for u in mixed.urls] == [
        "00000.tar",
        "00002.tar",
        "00003.tar",
        "00003.tar",
        "00004.tar",
    ]
    with pytest.raises(DatasetError, match="none of its 2 shard"):
        resolve_shards(f"{tmp_path}/d/{{00008..00009}}.tar")
    with pytest.raises(DatasetError, match="mixes filesystems"):
        resolve_shards(f"{tmp_path}/d/00000.tar::s3://b/x.tar")


def test_dataset_dir_spec_lists_the_manifest_splits(tiny_dataset):
    m = load_manifest(tiny_dataset)
    got = resolve_shards(str(tiny_dataset), splits=["val"])
    assert got.urls == m.shard_paths(tiny_dataset, "val") and got.manifest == m
    everything = resolve_shards(str(tiny_dataset))
    assert len(everything.urls) == sum(len(s.shards) for s in m.splits.values())
    with pytest.raises(DatasetError, match="split 'nope'"):
        resolve_shards(str(tiny_dataset), splits=["nope"])


def test_url_helpers():
    assert is_url("s3://b/k") and is_url("gs://b/k") and not is_url("/a/b") and not is_url("file:///a")
    assert join("s3://b/ds/", "train/00000.tar") == "s3://b/ds/train/00000.tar"


# ------------------------------------------------------------------------------------ s3 (moto server)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_s3_dataset_reads_through_the_pipeline_and_check_shards(s3_dataset, tiny_dataset, capsys):
    import ray

    from system.config import load_config
    from system.model.schedule import stage1_schedule
    from system.runtime.data import decoded_split, train_dataset
    from system.runtime.reader import ledger_summary, new_ledger, read_shards
    from system.text.prepare import prepare_text_pools

    local = load_manifest(tiny_dataset)
    cfg = load_config(
        None,
        [
            f"data.root={s3_dataset}",
            "data.resample=none",
            "train.epochs=1",
            "data.image_size=32",
            "run.seed=1",
        ],
    )
    manifest = load_manifest(cfg.data.root)  # the manifest read through pyarrow's S3 filesystem
    assert manifest == local
    train_urls = manifest.shard_paths(cfg.data.root, "train")
    assert train_urls[0] == f"{s3_dataset}/train/00000.tar"
    pools, report = prepare_text_pools(cfg.data, manifest)  # class text copied from the bucket
    assert report["kept"] > 0 and all(pools[c] for c in range(manifest.num_classes))

    ray.init(num_cpus=2, include_dashboard=False)  # workers inherit the AWS_* variables set above
    try:
        ledger = new_ledger()
        rows = sum(
            len(b["label"])
            for b in train_dataset(
                cfg,
                stage1_schedule(cfg.train, manifest.splits["train"].num_samples),
                manifest,
                train_urls,
                pools,
                ledger=ledger,
            ).iter_batches(batch_size=None)
        )
        data = ledger_summary(ledger)
        n_train = manifest.splits["train"].num_samples
        assert rows == n_train and data["good"] == n_train
        assert data["skipped"] == {} and data["failed_shards"] == [] and data["shards"] == len(train_urls)

        # A brace spec on the bucket, one shard missing: the others are read, the missing one is reported.
        n_val = len(manifest.splits["val"].shards)
        spec = f"{s3_dataset}/val/{{00000..{n_val:05d}}}.tar"
        shards = resolve_shards(spec)
        assert shards.urls[-1] == f"{s3_dataset}/val/{n_val:05d}.tar"
        ledger = new_ledger()
        ds = decoded_split(cfg, manifest, shards.urls, ledger=ledger, filesystem=shards.filesystem)
        assert (
            sum(len(b["label"]) for b in ds.iter_batches(batch_size=None))
            == manifest.splits["val"].num_samples
        )
        assert ledger_summary(ledger)["failed_shards"][0]["reason"] == "missing"
        assert read_shards(shards.urls[:1]).count() > 0

        from pipelines.cli import main

        capsys.readouterr()
        code = main(["check-shards", spec, "--root", s3_dataset, "--cpus", "2", "--image-size", "32"])
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 0
        result = json.loads(out[-1])
        assert result["good"] == manifest.splits["val"].num_samples and result["skipped"] == {}
        assert result["failed_shards"] == [{"path": f"{s3_dataset}/val/{n_val:05d}.tar", "reason": "missing"}]
        assert result["shards"] == n_val + 1
    finally:
        ray.shutdown()
