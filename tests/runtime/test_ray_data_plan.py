"""The stage-1 stream's physical plan: the tar read and the decode run as one task (raw JPEG bytes never cross the
object store), and the text-pairing actor pool follows. Ray only fuses a read into a map that takes whole
blocks, so a batch size on the decode stage would silently split them again."""

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_read_and_decode_fuse_into_one_task(tiny_dataset, capsys):
    import ray

    from system.config import load_config
    from system.data.dataset_dir import load_manifest
    from system.model.schedule import stage1_schedule
    from system.runtime.data import train_dataset
    from system.text.prepare import prepare_text_pools

    cfg = load_config(
        None,
        [f"data.root={tiny_dataset}", "train.epochs=1", "data.decode_batch_size=16", "data.resample=none"],
    )
    manifest = load_manifest(cfg.data.root)
    pools, _ = prepare_text_pools(cfg.data, manifest)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        schedule = stage1_schedule(cfg.train, sum(manifest.train_counts))
        ds = train_dataset(cfg, schedule, manifest, manifest.shard_paths(cfg.data.root, "train"), pools)
        capsys.readouterr()
        ds.explain()
        plan = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
        assert "TaskPoolMapOperator[ReadReadShards->MapBatches(decode_and_record)]" in plan
        assert "ActorPoolMapOperator[MapBatches(TextPairer)]" in plan
        sizes = [len(b["label"]) for b in ds.iter_batches(batch_size=None)]
    finally:
        ray.shutdown()
    # every train row comes out exactly once (resampling is off: its stochastic repeats would move the count)
    assert sum(sizes) == manifest.splits["train"].num_samples
