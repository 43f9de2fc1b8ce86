"""Stage 2's feature pass as Ray Data batch inference, and everything read from it without gathering the
train split's features on the driver.

The frozen stage-1 image encoder runs in an autoscaling actor pool (one GPU per actor under `train.use_gpu`,
`finetune.feature_actor_cpus` CPUs otherwise; `finetune.feature_actors_min`/`_max`, the max sized from the
cluster when unset). A split's features are materialized in Ray's object store (spilled to disk when larger
than it), and then:
- class sums and counts (the class-mean prototypes and the centroid geometry) and the head's mean logit per
  class are streaming reductions: the driver holds one running [K, d] sum, whatever the split's size;
- the head is fitted in a Ray task that gathers the train features (at most `finetune.max_per_class` per class,
  chosen by a hash of each row's identity) and the selection split's, so they never reach the driver;
- only the selection and report splits' logits ([N, K] each, the small splits) come back to the driver.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import ray
import ray.data
import torch
from ray.data import ActorPoolStrategy

from system.config import Config, FinetuneSection
from system.data.dataset_dir import Manifest
from system.method.finetune import BranchLogits, fit_head
from system.method.heads import ClassMeanAccumulator
from system.method.linear_probe import ProbeFit

# Rows per streaming-reduction batch: each batch sends one partial sum ([K, d] floats) to the driver, so large
# batches keep that traffic small next to the features themselves.
REDUCE_BATCH = 4096


@dataclass(frozen=True)
class FeaturePool:
    """The feature pass's actor pool: its size range and what each actor holds."""

    min_size: int
    max_size: int
    num_cpus: float
    num_gpus: float


def feature_pool(cfg: Config, resources: dict[str, float]) -> FeaturePool:
    """Pool size from the config, or from the cluster's `resources` (ray.cluster_resources()) when
    `finetune.feature_actors_max` is unset: one actor per GPU under train.use_gpu, else one per
    `feature_actor_cpus` CPUs left after one decode task (`data.decode_cpus`), so reading never starves."""
    f = cfg.finetune
    if cfg.train.use_gpu:
        fits = int(resources.get("GPU", 0.0))
    else:
        fits = int((resources.get("CPU", 0.0) - cfg.data.decode_cpus) // f.feature_actor_cpus)
    max_size = f.feature_actors_max if f.feature_actors_max is not None else max(1, fits)
    return FeaturePool(
        min_size=min(f.feature_actors_min, max_size),
        max_size=max_size,
        num_cpus=f.feature_actor_cpus,
        num_gpus=1.0 if cfg.train.use_gpu else 0.0,
    )


class FeatureEncoder:
    """Actor-pool UDF: the stage-1 image encoder as a batch-inference pass (normalised features), under the
    training's precision (bf16 autocast or fp32), on the actor's GPU when it holds one; features leave as
    fp32 on the host."""

    def __init__(
        self, arch: str, image_size: int, state: list[ray.ObjectRef | dict], precision: str = "fp32"
    ):
        from system.method.stage1_step import configure_device_math
        from system.model.factory import create_clip, preprocess_for
        from system.runtime.cluster import quiet_logs

        quiet_logs(None)  # open_clip's model-building lines, unless UNIPROTO_VERBOSE

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []  # outside Ray (a test): the CPU
        self.device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
        configure_device_math(self.device)
        model = create_clip(arch, None, image_size)
        # A reference (in a list, so Ray does not resolve it before the actor starts) or the tensors themselves.
        weights = ray.get(state[0]) if isinstance(state[0], ray.ObjectRef) else state[0]
        model.load_state_dict(weights)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess_for(self.model)
        self.precision = precision

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from system.method.stage1_step import autocast

        # Arrow hands out read-only buffers and torch.from_numpy warns on every such batch; a writable copy is
        # made only when the buffer is read-only (np.require), and the model only reads it anyway.
        images = np.require(batch["image"], requirements=["C", "W"])  # [N, S, S, 3] uint8
        with torch.inference_mode(), autocast(self.precision, self.device):
            x = self.preprocess(torch.from_numpy(images).to(self.device, non_blocking=True))  # [N, 3, S, S]
            f = self.model.encode_image(x, normalize=True)  # [N, d]
        out = {"feature": f.float().cpu().numpy(), "label": batch["label"]}
        # the row's identity: its shard position says which split it belongs to (`SplitFeatures`); with the
        # ordinal in the shard it picks the rows a per-class cap keeps
        for column in ("shard", "row"):
            if column in batch:
                out[column] = batch[column]
        return out


@dataclass(frozen=True)
class SplitFeatures:
    """Several splits' features in one dataset, from one pass of one encoder pool (one model load per actor,
    not one per split). Each split's shards are read at their own range of shard positions, which every row
    carries (`shard`), so a consumer keeps a split's rows by range instead of re-reading or filtering it."""

    ds: ray.data.Dataset  # rows {feature [d] float32, label, shard}
    ranges: dict[str, tuple[int, int]]  # split -> [first, end) shard positions


def feature_dataset(
    cfg: Config,
    manifest: Manifest,
    splits: dict[str, Sequence[str]],
    weights: str,
    ledgers: dict[str, object] | None = None,
) -> SplitFeatures:
    """The features of every split in `splits` (name -> shard paths) under the stage-1 encoder (no
    resampling), lazily; each split's skip counts go to its ledger in `ledgers`. `weights` is read (and
    checked) here, and its tensors reach the actors through the object store: the actors may run on nodes
    that cannot see this process's files."""
    # Imported here, not at the top: the reductions below are pickled by reference to this module, and a
    # fresh worker importing it should not pay for the decode stack (open_clip, the text pools), about 3 s.
    from system.model.factory import create_clip, load_state
    from system.runtime.data import decoded_split

    model = load_state(
        create_clip(cfg.model.arch, None, cfg.data.image_size), weights, cfg.model.arch, cfg.data.image_size
    )
    state = ray.put(model.state_dict())
    del model
    pool = feature_pool(cfg, ray.cluster_resources())
    parts, ranges, first = [], {}, 0
    for name, paths in splits.items():
        ledger = (ledgers or {}).get(name)
        parts.append(decoded_split(cfg, manifest, paths, ledger=ledger, first_index=first))
        ranges[name] = (first, first + len(paths))
        first += len(paths)
    decoded = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = decoded.map_batches(
        FeatureEncoder,
        fn_constructor_kwargs={
            "arch": cfg.model.arch,
            "image_size": cfg.data.image_size,
            # in a list: Ray resolves only top-level references, and the actor fetches the tensors itself
            "state": [state],
            "precision": cfg.train.precision,
        },
        compute=ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        batch_size=cfg.finetune.feature_batch_size,
        batch_format="numpy",
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
    )
    return SplitFeatures(ds, ranges)


def _rows(batch: dict[str, np.ndarray], rows: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """The rows of `batch` whose shard position lies in `rows` ([first, end)); all of them when None."""
    if rows is None:
        return batch
    shard = np.asarray(batch["shard"])
    keep = (shard >= rows[0]) & (shard < rows[1])
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def _class_sum_batch(
    batch: dict[str, np.ndarray], num_classes: int, rows: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    batch = _rows(batch, rows)
    f = torch.from_numpy(np.require(batch["feature"], requirements=["W"]))  # [B, d]
    y = torch.from_numpy(np.require(batch["label"], requirements=["W"]))  # [B]
    acc = ClassMeanAccumulator(num_classes, f.shape[1]).update(f, y)
    return {"sums": acc.sums.numpy()[None], "counts": acc.counts.numpy()[None]}  # [1, K, d], [1, K]


def class_sums(
    ds: ray.data.Dataset, num_classes: int, dim: int, rows: tuple[int, int] | None = None
) -> ClassMeanAccumulator:
    """Per-class sums and counts of the normalised features of `ds` (the rows of shard positions `rows`, or
    all), reduced as they stream in."""
    acc = ClassMeanAccumulator(num_classes, dim)
    partial = ds.map_batches(
        _class_sum_batch,
        fn_kwargs={"num_classes": num_classes, "rows": rows},
        batch_size=REDUCE_BATCH,
        batch_format="numpy",
    )
    for batch in partial.iter_batches(batch_size=1, batch_format="numpy"):
        acc.sums += torch.tensor(batch["sums"][0])
        acc.counts += torch.tensor(batch["counts"][0]).long()
    if int(acc.counts.sum()) == 0:
        raise RuntimeError("the split has no decodable samples")
    return acc


def _logit_sum_batch(
    batch: dict[str, np.ndarray], head: torch.nn.Module, rows: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    batch = _rows(batch, rows)
    with torch.inference_mode():
        z = head(torch.from_numpy(np.require(batch["feature"], requirements=["W"])))  # [B, K]
    return {"logit_sum": z.double().sum(dim=0).numpy()[None], "rows": np.array([len(z)])}  # [1, K], [1]


def mean_logits(
    ds: ray.data.Dataset, head: torch.nn.Module, rows: tuple[int, int] | None = None
) -> np.ndarray:
    """The head's mean logit per class [K] over `ds` (the rows of shard positions `rows`, or all): its
    positive bias toward frequent classes."""
    head = head.eval()
    total, n = None, 0
    partial = ds.map_batches(
        _logit_sum_batch,
        fn_kwargs={"head": head, "rows": rows},
        batch_size=REDUCE_BATCH,
        batch_format="numpy",
    )
    for batch in partial.iter_batches(batch_size=1, batch_format="numpy"):
        total = batch["logit_sum"][0] if total is None else total + batch["logit_sum"][0]
        n += int(batch["rows"][0])
    return (total / n).astype(np.float32)


def _branch_batch(
    batch: dict[str, np.ndarray],
    head: torch.nn.Module,
    mu: torch.Tensor,
    proto_scale: float,
    adjust: torch.Tensor | None,
    rows: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    from system.method.finetune import branch_logits

    batch = _rows(batch, rows)
    if not len(batch["label"]):
        return  # a block of another split: nothing (Arrow cannot hold an empty [0, K] column as a tensor)
    # Arrow's buffers are read-only, and torch.from_numpy warns on them
    f = np.require(batch["feature"], dtype=np.float32, requirements=["C", "W"])  # [B, d]
    z = branch_logits(head, mu, f, np.asarray(batch["label"]), proto_scale, adjust)
    yield {"head": z.head, "proto": z.proto, "label": z.labels}


def split_logits(
    ds: ray.data.Dataset,
    head: torch.nn.Module,
    mu: torch.Tensor,
    proto_scale: float,
    adjust: torch.Tensor | None = None,
    rows: tuple[int, int] | None = None,
) -> BranchLogits:
    """Both branches' logits of a split (the rows of shard positions `rows`, or all), computed beside its
    features; only the logits reach the driver."""
    out = ds.map_batches(
        _branch_batch,
        fn_kwargs={
            "head": head.eval(),
            "mu": mu,
            "proto_scale": proto_scale,
            "adjust": adjust,
            "rows": rows,
        },
        batch_format="numpy",
    )
    parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    return BranchLogits(
        np.concatenate([p["head"] for p in parts]),
        np.concatenate([p["proto"] for p in parts]),
        np.concatenate([p["label"] for p in parts]).astype(np.int64),
    )


def gather_splits(
    ds: ray.data.Dataset, parts: dict[str, tuple[tuple[int, int] | None, int | None]], seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each part name -> (shard-position range or None for all rows, per-class cap or None): features
    [N, d] float32 and labels [N] of those rows of `ds`. Uncapped, in `ds`'s order; capped, the `cap` rows of each
    class with the smallest identity keys under `seed` (`PerClassCap`: the same rows whatever order the blocks
    arrive in, which several encoder actors do not fix), ordered by class. One pass over `ds` serves every part.
    Called inside the head-fit task, not on the driver."""
    from system.data.row_draws import PerClassCap, row_keys

    feats: dict[str, list[np.ndarray]] = {name: [] for name in parts}
    labels: dict[str, list[np.ndarray]] = {name: [] for name in parts}
    capped = {name: PerClassCap(cap) for name, (_, cap) in parts.items() if cap is not None}
    for whole in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for name, (rows, _) in parts.items():
            batch = _rows(whole, rows)
            f, y = np.asarray(batch["feature"], dtype=np.float32), np.asarray(batch["label"], dtype=np.int64)
            if name in capped:
                if "shard" not in batch or "row" not in batch:
                    raise ValueError(
                        "finetune.max_per_class: the features carry no row identity (columns shard and row)"
                    )
                capped[name].add(f, y, row_keys(batch["shard"], batch["row"], seed))
                continue
            feats[name].append(f)
            labels[name].append(y)
    out = {}
    for name in parts:
        if name in capped:
            got = capped[name].result()
        else:
            got = (np.concatenate(feats[name]), np.concatenate(labels[name])) if feats[name] else None
        if got is None or not len(got[1]):
            raise RuntimeError(f"no decodable samples among the {name} rows")
        out[name] = got
    return out


def gather_features(
    ds: ray.data.Dataset, max_per_class: int | None = None, rows: tuple[int, int] | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`gather_splits` for one part: the rows of shard positions `rows` (or all), at most `max_per_class` per
    class."""
    return gather_splits(ds, {"requested": (rows, max_per_class)}, seed)["requested"]


@ray.remote(num_cpus=1)
def _fit_head_task(
    feats: ray.data.Dataset,
    num_classes: int,
    cfg: FinetuneSection,
    seed: int,
    class_counts: list[int],
    train_rows: tuple[int, int],
    select_rows: tuple[int, int],
) -> tuple[torch.nn.Module, ProbeFit | None]:
    parts = gather_splits(
        feats, {"train": (train_rows, cfg.max_per_class), "select": (select_rows, None)}, seed
    )
    return fit_head(parts["train"], parts["select"], num_classes, cfg, seed, class_counts)


def fit_head_remote(
    feats: ray.data.Dataset,
    num_classes: int,
    cfg: FinetuneSection,
    seed: int,
    class_counts: list[int],
    train_rows: tuple[int, int],
    select_rows: tuple[int, int],
) -> tuple[torch.nn.Module, ProbeFit | None]:
    """`system.method.finetune.fit_head` in a Ray task (one CPU on whichever node has it) on the train and selection
    rows of `feats` (their shard-position ranges), gathered in one pass: the train features go to that task's
    memory, never the driver's. `class_counts` are the split's true counts, so a per-class cap keeps the
    convex head's class weights those of the whole split."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # Outside the caller's placement group: a sweep trial holds a 0.01-CPU bundle, which the task cannot fit.
    task = _fit_head_task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    return ray.get(task.remote(feats, num_classes, cfg, seed, class_counts, train_rows, select_rows))
