"""Ray Data plane: WebDataset shards -> decode/resize/resample -> text-filter actor pool -> tokenized batches.

Raw bytes are read by our tolerant tar reader (system.runtime.reader: one task per shard, bad samples and bad shards
counted and skipped, local paths or object-store URLs) and decoded in `map_batches` with our own error handling:
Ray's default decoder decodes inside the read task, skips `.jpeg`/`.webp`, and fails a whole shard on one
corrupt JPEG. Skip counts go to an optional ledger actor (`ledger=`), which the stages write into their reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy

from system.config import Config
from system.data.augment import Augment
from system.data.dataset_dir import Manifest
from system.data.decode import resample_factors
from system.model.schedule import Schedule
from system.runtime.reader import decode_and_record, read_shards
from system.runtime.stream_cursor import StreamState
from system.text.pairing import TextPairer
from system.text.scorers import scorer_options


def configure_data_context(cfg: Config) -> None:
    ctx = ray.data.DataContext.get_current()
    # Fail in minutes, not after Ray's 30-minute default, when the pipeline is starved (docs/stack-notes.md).
    ctx.execution_no_progress_timeout_s = float(cfg.ray.no_progress_timeout_s)
    ctx.enable_progress_bars = cfg.ray.data_progress_bars


def train_augment(cfg: Config) -> Augment | None:
    """The train stream's augmentation from `data.*`, seeded with the run seed; None when data.augment is off."""
    d = cfg.data
    if not d.augment:
        return None
    return Augment(
        scale=(d.crop_scale_min, d.crop_scale_max),
        ratio=(d.crop_ratio_min, d.crop_ratio_max),
        flip_prob=d.flip_prob,
        seed=cfg.run.seed,
    )


def decoded_split(
    cfg: Config,
    manifest: Manifest,
    paths: Sequence[str],
    resample: str = "none",
    sample_fraction: float | None = None,
    augment: bool = False,
    *,
    ledger=None,
    filesystem=None,
    first_index: int = 0,
    skip: dict[int, dict[int, int]] | None = None,
) -> ray.data.Dataset:
    """Decoded rows of `paths`; `augment` (the train stream only) applies the config's random crop + flip.
    Skip counts (reader and decoder) go to `ledger` when given; `data.strict` raises at the first fault.
    `first_index` and `skip`: a resumed stream's first shard position and the rows already trained on."""
    factors = None if resample == "none" else resample_factors(manifest.train_counts, resample)
    # Read and decode run as one task per shard, so raw bytes never go through the object store. Ray Data fuses
    # them only when both ask for the same resources and the decode stage sets no batch size (a read may change
    # the row count, and Ray does not fuse it into a map that wants fixed batches): the reader's blocks are the
    # decode batches instead.
    raw = read_shards(
        paths,
        filesystem,
        ledger,
        cfg.data.strict,
        num_cpus=cfg.data.decode_cpus,
        rows_per_block=cfg.data.decode_batch_size,
        max_member_bytes=cfg.data.max_member_bytes,
        first_index=first_index,
    )
    if sample_fraction is not None and sample_fraction < 1.0:
        # Sample raw rows before decoding: only the kept images are decoded. Seeded, so every trial of a
        # sweep sees the same subset.
        raw = raw.random_sample(sample_fraction, seed=cfg.run.seed)
    return raw.map_batches(
        decode_and_record,
        fn_kwargs={
            "ledger": ledger,
            "skip": skip,
            "strict": cfg.data.strict,
            "image_size": cfg.data.image_size,
            "num_classes": manifest.num_classes,
            "repeat_factors": factors,
            # Seeded per row from the run seed, the shard's position in the stream (so every epoch draws
            # anew) and the key: reproducible runs, and no two rows or epochs share a draw.
            "seed": cfg.run.seed,
            "augment": train_augment(cfg) if augment else None,
        },
        batch_size=None,  # whole reader blocks (decode_batch_size rows), see above
        batch_format="numpy",
        num_cpus=cfg.data.decode_cpus,
    )


def train_batches(stream, cfg: Config, device="auto"):
    """The training's batches from a Dataset or a Train worker's DataIterator shard: micro batches of uint8
    images [b, S, S, 3], int64 tokens [b, L] and labels [b], through the local shuffle buffer. One place, so
    `uniproto benchmark data` consumes the stream exactly as a Train worker does."""
    import torch

    # On a GPU the batches are collated into pinned host memory, so the copy to the device is asynchronous.
    on_gpu = str(device).startswith("cuda")
    return stream.iter_torch_batches(
        batch_size=cfg.train.micro_batch_size,
        drop_last=True,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        prefetch_batches=cfg.data.prefetch_batches,
        # shard/row: where each row came from (the stream cursor's count)
        dtypes={
            "image": torch.uint8,
            "text": torch.int64,
            "label": torch.int64,
            "shard": torch.int64,
            "row": torch.int64,
        },
        device=device,
        pin_memory=on_gpu,
    )


def val_probe(cfg: Config, manifest: Manifest, paths: Sequence[str], split: str) -> dict[str, np.ndarray]:
    """About `eval.stage1_val_samples` decoded images of `split` (a seeded random subset when the split is
    larger), as numpy arrays: image [N, 3, S, S] uint8, label [N] int64. Small enough to ship to every worker."""
    n = cfg.eval.stage1_val_samples
    size = manifest.splits[split].num_samples
    ds = decoded_split(cfg, manifest, paths, sample_fraction=min(1.0, n / max(size, 1)))
    batches = list(ds.iter_batches(batch_format="numpy", batch_size=None))
    if not batches:
        raise RuntimeError(f"stage-1 probe: no decodable samples in split {split!r} ({list(paths)[:3]}...)")
    return {
        "image": np.concatenate([b["image"] for b in batches])[:n],
        "label": np.concatenate([b["label"] for b in batches]).astype(np.int64)[:n],
    }


def epoch_shard_order(paths: Sequence[str], epochs: int, seed: int) -> list[str]:
    """All epochs' shards as one list: a seeded permutation of the shards per epoch, concatenated."""
    rng = np.random.default_rng(seed)
    return [paths[i] for _ in range(epochs) for i in rng.permutation(len(paths))]


def train_dataset(
    cfg: Config,
    schedule: Schedule,
    manifest: Manifest,
    paths: Sequence[str],
    pools: dict[int, list[str]],
    ledger=None,
    resume: StreamState | None = None,
) -> ray.data.Dataset:
    """The stage-1 stream for the whole run: decoded + resampled images paired with filtered class text.

    One stream covers every epoch (shards re-listed once per epoch, each time in a new seeded order); the
    train loop cuts it into epochs by sample count. Iterating once per epoch instead would rebuild the
    pipeline, text-filter actors included, at every epoch boundary (about half of each epoch on 2 cores).
    `resume` (a checkpoint's stream state) starts the stream at the first shard not trained on to its end,
    less the rows of it and later shards already trained on: what the uninterrupted run would still read.
    """
    ordered = epoch_shard_order(list(paths), schedule.stream_epochs, cfg.run.seed)
    start = min(resume.start, len(ordered) - 1) if resume is not None else 0
    ds = decoded_split(
        cfg,
        manifest,
        ordered[start:],
        resample=cfg.data.resample,
        augment=True,
        ledger=ledger,
        first_index=start,
        skip=resume.consumed if resume is not None and resume.consumed else None,
    )
    return with_text_pairing(cfg, manifest, ds, pools)


def filter_pool(cfg: Config) -> ActorPoolStrategy:
    """The text-filter stage's actor pool: data.filter_actors, autoscaling up to data.filter_actors_max."""
    return ActorPoolStrategy(
        min_size=cfg.data.filter_actors, max_size=cfg.data.filter_actors_max or cfg.data.filter_actors
    )


def with_text_pairing(
    cfg: Config, manifest: Manifest, ds: ray.data.Dataset, pools: dict[int, list[str]]
) -> ray.data.Dataset:
    """The text-filter stage: an actor pool pairing each decoded row with filtered class text, tokenized."""
    return ds.map_batches(
        TextPairer,
        fn_constructor_kwargs={
            "pools": pools,
            "class_names": manifest.class_names,
            "arch": cfg.model.arch,
            "scorer": cfg.data.text_scorer,
            "scorer_options": scorer_options(cfg),  # model scorers' paths and arch
            "threshold": cfg.data.filter_threshold,
            "caption_prob": cfg.data.caption_prob,
            "seed": cfg.run.seed,
        },
        compute=filter_pool(cfg),
        batch_size=cfg.data.decode_batch_size,
        batch_format="numpy",
        num_cpus=cfg.data.filter_actor_cpus,
    )
