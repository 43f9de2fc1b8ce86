"""The stage-1 stream's physical plan: the tar read, the decode and (by default) the text pairing run as one task
(raw JPEG bytes never cross the object store, decoded images cross it once), and `data.text_stage=actors` puts
the pairing in an actor pool instead, with the same rows out. Ray only fuses a read into a map that takes whole
blocks, so a batch size on the decode or pairing stage would silently split them again."""

import hashlib

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _rows(ds) -> list[tuple[int, str, str]]:
    """Every row as (label, image digest, text digest), sorted: a multiset that ignores block order."""
    out = []
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for img, y, t in zip(b["image"], b["label"], b["text"], strict=True):
            digest = hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()
            out.append((int(y), digest, hashlib.sha1(np.asarray(t, np.int64).tobytes()).hexdigest()))
    return sorted(out)


@pytest.mark.timeout(240)
def test_read_decode_and_pairing_fuse_into_one_task_and_actors_give_the_same_rows(tiny_dataset, capsys):
    import ray

    from system.config import load_config
    from system.data.dataset_dir import load_manifest
    from system.ray_data import train_dataset
    from system.text.prepare import prepare_text_pools

    base = [f"data.root={tiny_dataset}", "train.epochs=1", "data.decode_batch_size=16", "data.resample=none"]
    cfgs = {stage: load_config(None, [*base, f"data.text_stage={stage}"]) for stage in ("auto", "actors")}
    manifest = load_manifest(cfgs["auto"].data.root)
    pools, _ = prepare_text_pools(cfgs["auto"].data, manifest)
    paths = manifest.shard_paths(cfgs["auto"].data.root, "train")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        plans, rows = {}, {}
        for stage, cfg in cfgs.items():
            ds = train_dataset(cfg, manifest, paths, pools)
            capsys.readouterr()
            ds.explain()
            plans[stage] = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
            rows[stage] = _rows(ds)
    finally:
        ray.shutdown()
    # auto with the lexical scorer: one task per shard reads, decodes and pairs; no actor pool
    fused = "TaskPoolMapOperator[ReadReadShards->MapBatches(decode_and_record)->MapBatches(pair_text)]"
    assert fused in plans["auto"], plans["auto"]
    assert "ActorPool" not in plans["auto"]
    assert "TaskPoolMapOperator[ReadReadShards->MapBatches(decode_and_record)]" in plans["actors"]
    assert "ActorPoolMapOperator[MapBatches(TextPairer)]" in plans["actors"]
    # every train row comes out exactly once (resampling is off: its stochastic repeats would move the count),
    # and the pairing is keyed by each row's own draw, so where it runs changes no image, label or text
    assert len(rows["auto"]) == manifest.splits["train"].num_samples
    assert rows["auto"] == rows["actors"]
    assert len({t for _, _, t in rows["auto"]}) > 1
