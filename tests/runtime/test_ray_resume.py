"""Resuming from a checkpoint in object storage (a moto S3 server): the ranks of a node read one complete
local copy, downloaded once, and it is gone when they are done. Stage 2 copies only the weights of one."""

import threading
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Checkpoint

from system.runtime.resume import checkpoint_directory, checkpoint_url, checkpoint_weights

SHARD = bytes(range(256)) * 8192  # 2 MiB, large enough that a rewrite is not instant


def _upload(moto_s3, tmp_path: Path, name: str) -> Checkpoint:
    src = tmp_path / name
    src.mkdir()
    (src / "meta.json").write_text('{"step": 7}')
    (src / "shard.pt").write_bytes(SHARD)
    pafs.copy_files(str(src), f"uniproto/ckpt/{name}", pafs.LocalFileSystem(), moto_s3)
    return Checkpoint(f"uniproto/ckpt/{name}", filesystem=moto_s3)


def test_the_ranks_of_a_node_share_one_complete_download(moto_s3, tmp_path):
    ckpt = _upload(moto_s3, tmp_path, "a")
    downloads = []
    to_directory = ckpt.to_directory
    ckpt.to_directory = lambda path=None: downloads.append(path) or to_directory(path)
    root = tmp_path / "node-tmp"
    root.mkdir()
    barrier = threading.Barrier(2)
    seen: dict[int, tuple[str, bytes, Path]] = {}

    def rank(local_rank: int) -> None:
        with checkpoint_directory(ckpt, local_rank, barrier.wait, str(root)) as d:
            seen[local_rank] = ((d / "meta.json").read_text(), (d / "shard.pt").read_bytes(), d)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]  # rank 1 asks first
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seen) == [0, 1]
    for meta, shard, _ in seen.values():
        assert meta == '{"step": 7}' and shard == SHARD
    assert seen[0][2] == seen[1][2]  # one copy per node
    assert len(downloads) == 1  # by local rank 0 only
    assert list(root.iterdir()) == []  # removed once both ranks left


def test_a_partial_copy_left_by_a_dead_attempt_is_replaced(moto_s3, tmp_path):
    ckpt = _upload(moto_s3, tmp_path, "b")
    root = tmp_path / "node-tmp"
    with checkpoint_directory(ckpt, 0, lambda: None, str(root)) as d:
        local = d
    local.mkdir(parents=True)  # what a download killed half-way leaves behind
    (local / "meta.json").write_text("")
    with checkpoint_directory(ckpt, 0, lambda: None, str(root)) as d:
        assert (d / "meta.json").read_text() == '{"step": 7}'
        assert (d / "shard.pt").read_bytes() == SHARD


def test_a_local_checkpoint_is_read_in_place(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    with checkpoint_directory(Checkpoint.from_directory(str(tmp_path)), 0, lambda: None) as d:
        assert d == tmp_path
    assert (tmp_path / "meta.json").is_file()  # nothing of the caller's is removed


def test_stage2_copies_only_the_weights_of_a_remote_checkpoint(moto_s3, tmp_path):
    ckpt = _upload(moto_s3, tmp_path, "w")  # meta.json and a 2 MiB DeepSpeed shard
    with moto_s3.open_output_stream("uniproto/ckpt/w/model.pt") as f:
        f.write(b"weights")
    assert checkpoint_url(ckpt) == "s3://uniproto/ckpt/w"
    with checkpoint_weights(ckpt) as d:
        assert sorted(p.name for p in d.iterdir()) == ["meta.json", "model.pt"]  # not the shard
        assert (d / "model.pt").read_bytes() == b"weights" and (d / "meta.json").read_text() == '{"step": 7}'
    assert not d.exists()
    local = Checkpoint(str(tmp_path / "w"), filesystem=pafs.LocalFileSystem())
    assert checkpoint_url(local) == str(tmp_path / "w")
    with checkpoint_weights(local) as d:
        assert d == tmp_path / "w"  # read in place
    assert d.exists()


def test_a_trials_outputs_on_object_storage_are_copied_and_removed_at_exit(moto_s3, tmp_path, monkeypatch):
    import atexit

    from system.runtime.sweep import trial_outputs

    ckpt = _upload(moto_s3, tmp_path, "t")
    at_exit = []
    monkeypatch.setattr(atexit, "register", lambda *a, **k: at_exit.append((a, k)))
    local = trial_outputs(ckpt)
    assert (local / "meta.json").read_text() == '{"step": 7}' and (local / "shard.pt").read_bytes() == SHARD
    [(args, kwargs)] = at_exit
    args[0](*args[1:], **kwargs)  # what runs when the driver exits
    assert not local.exists()
    in_place = Checkpoint(str(tmp_path / "t"), filesystem=pafs.LocalFileSystem())
    assert trial_outputs(in_place) == tmp_path / "t" and not at_exit[1:]
