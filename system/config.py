"""Typed run configuration: one dataclass per concern, loaded from YAML with `--set a.b=value` overrides.

Every value is checked before any Ray worker starts: unknown keys, wrong types and out-of-range values raise
`ConfigError` naming the dotted key, so a typo in a sweep or a job spec fails on the driver in milliseconds
instead of on a worker after the cluster has spun up.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from system.model.text_towers import bundled_text_model


class ConfigError(ValueError):
    """A config value was refused; the message names the dotted key."""


def knob(default: Any, *, lo: float | None = None, hi: float | None = None, gt: float | None = None) -> Any:
    """A dataclass field with an allowed range: lo <= v <= hi, v > gt (checked by `validate`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"lo": lo, "hi": hi, "gt": gt})
    return field(default=default, metadata={"lo": lo, "hi": hi, "gt": gt})


@dataclass
class RunSection:
    name: str = "demo"  # run directory: <output_dir>/<name>
    output_dir: str = "runs"
    seed: int = knob(0, lo=0)
    # Third-party INFO logs (Ray Train, Tune, Data, DeepSpeed, open_clip) and Tune's status table; `--verbose`
    # sets it. Off: our own lines only (system/log_levels.py).
    verbose: bool = False


@dataclass
class DataSection:
    root: str = "runs/datasets/demo"  # dataset directory (manifest.json + train/ val/ test/ shards + text/)
    image_size: int = knob(64, lo=8, hi=1024)  # model input side; images are resized in the decode stage
    resample: Literal["none", "sqrt", "balanced"] = "sqrt"  # class resampling while streaming
    text_scorer: str = "lexical"  # relevance scorer of the text-filter stage (system.text.scorer_registry)
    filter_threshold: float = 0.0  # sentences scoring below are dropped
    filter_top_k: int | None = knob(None, lo=1)  # keep at most this many sentences per class
    # Model scorers' inputs (local paths only, nothing downloaded): retrieval needs the trained model (a
    # stage-1 checkpoint, run dir or exported .safetensors); clip_text uses it instead of model.pretrained.
    text_scorer_model: str | None = None
    # retrieval: class image centroids, an .npy [K, d]; None computes them from the train split of data.root
    text_scorer_centroids: str | None = None
    attribute_prompts: bool = True  # add "a photo of a {name}, which has {attribute}." prompts
    caption_prob: float = knob(0.5, lo=0.0, hi=1.0)  # chance a row keeps its own (relevant) caption
    # The text-filter stage's actor pool: Ray Data starts filter_actors and grows it up to filter_actors_max
    # (None: fixed at filter_actors) while rows wait for it and CPUs are free.
    filter_actors: int = knob(1, lo=1)
    filter_actors_max: int | None = knob(None, lo=1)
    # rows per block the tar reader yields = rows per decode batch (read and decode run fused in one task), and
    # rows per text-pairing batch
    decode_batch_size: int = knob(128, lo=1)
    # Logical CPUs Ray reserves per read+decode task and per text-filter actor. A task waits part of its life
    # (scheduling, object-store puts), so N CPUs keep N cores busy only with about two decode tasks per CPU
    # beside the actor: measured on 2 cores (`uniproto benchmark data`), 0.375 gave 1,510-1,650 images/s, 0.5
    # 900-1,140, 0.75 840-1,000; 0.25 (7 tasks) fell back to 650. Two decode tasks and the actor fit in one CPU.
    decode_cpus: float = knob(0.375, gt=0.0)
    filter_actor_cpus: float = knob(0.25, gt=0.0)
    shuffle_buffer: int = knob(512, lo=0)  # local shuffle buffer on each train worker (rows)
    # batches each train worker's iterator fetches ahead of the one it is on (Ray's iter_torch_batches)
    prefetch_batches: int = knob(1, lo=0)
    # bad samples (corrupt image, missing text/label, unknown label, duplicate or scattered tar members) and bad
    # shards (missing, unreadable, not a tar, truncated, empty) are skipped and counted into the reports; strict:
    # the first one stops the run with an error naming the shard and key
    strict: bool = False
    # A tar member declaring more bytes than this is never read into memory: its bytes are passed over and its
    # sample counted as oversized_member (a shard's header cannot make a read task allocate what it claims).
    # 64 MiB is far above any real image; a gzip shard of a few hundred KB can declare gigabytes.
    max_member_bytes: int = knob(64 * 2**20, lo=1)
    # Train-stream augmentation in the decode stage (val/test/features stay a plain resize): a random-resized
    # crop with area fraction in [crop_scale_min, crop_scale_max] and aspect ratio in [crop_ratio_min,
    # crop_ratio_max] (log-uniform), flipped left-right with probability flip_prob. Seeded from run.seed per row.
    # Off by default (the demo's figures were measured without it); the scale default is open_clip's (0.9, 1).
    augment: bool = False
    crop_scale_min: float = knob(0.9, gt=0.0, hi=1.0)
    crop_scale_max: float = knob(1.0, gt=0.0, hi=1.0)
    crop_ratio_min: float = knob(3 / 4, gt=0.0)
    crop_ratio_max: float = knob(4 / 3, gt=0.0)
    flip_prob: float = knob(0.5, lo=0.0, hi=1.0)


@dataclass
class ModelSection:
    arch: str = "uniproto-tiny-rn"  # any open_clip architecture name, or one of system/model/configs/*.json
    pretrained: str | None = None  # open_clip tag or a local checkpoint file
    # freeze the text tower (a Hugging Face tower keeps its projection trainable): a pretrained text encoder
    # keeps what it knows instead of being pulled by a few hundred captions
    lock_text: bool = False


@dataclass
class LossSection:
    # weight of the class-wise contrastive term; with distillation it is further multiplied by (1 - beta)
    contrastive_weight: float = knob(1.0, lo=0.0)
    # beta of (1 - beta) L_con + beta L_distill; needs model.pretrained (the frozen teacher)
    distill_weight: float = knob(0.0, lo=0.0, hi=1.0)
    proto_weight: float = knob(1.0, lo=0.0)  # lambda_p
    proto_temperature: float = knob(0.1, gt=0.0, hi=10.0)  # tau_p
    label_smoothing: float = knob(0.1, lo=0.0, hi=0.99)
    # rows = the local batch, columns = the global batch: logits and targets take local x global memory per rank
    # instead of global x global, and the mean over ranks is the same loss with the same gradient
    local_loss: bool = True
    # all-gather features with gradients (exact data-parallel gradient); false is refused with several workers
    gather_with_grad: bool = True
    # text: prototypes aligned to the class names' embeddings under a pretrained text tower (a rotation and a
    # linear assignment, alternated: system/method/prototypes.py), so similar classes get nearby prototypes
    prototype_assign: Literal["random", "text"] = "random"
    # the text side of the prototype loss; "image" (with contrastive_weight 0) is the ablation's no-text control
    proto_modalities: Literal["image_text", "image"] = "image_text"
    # plain cross-entropy on the images (cosine softmax over learnable class weights, temperature
    # proto_temperature): the ablation's baseline. Not with ZeRO-3 (the class weights live outside forward).
    ce_weight: float = knob(0.0, lo=0.0)


@dataclass
class OptimSection:
    lr: float = knob(2e-3, gt=0.0)
    weight_decay: float = knob(0.05, lo=0.0)
    warmup_fraction: float = knob(0.1, lo=0.0, hi=1.0)
    grad_clip: float = knob(1.0, lo=0.0)  # 0 disables
    # torch's fused AdamW kernel (CPU and CUDA); false: torch's default implementation (for-loop on CPU)
    fused: bool = True


@dataclass
class TrainSection:
    num_workers: int = knob(2, lo=1)
    cpus_per_worker: float = knob(1.0, gt=0.0)
    use_gpu: bool = False
    # The run's length: train.steps optimizer steps (samples seen = steps x global batch; epochs derived, the
    # last one partial), the same on any dataset size, or train.epochs passes over the train split. Set one;
    # the other null (system/model/schedule.py).
    epochs: int | None = knob(6, lo=1)
    steps: int | None = knob(None, lo=1)
    # under train.steps: reports in the run (val probe, checkpoint, one Tune iteration each), evenly spaced;
    # under train.epochs the run reports at every epoch end
    reports: int = knob(10, lo=1)
    micro_batch_size: int = knob(64, lo=2)  # per worker; global batch = micro x accum x workers
    grad_accum: int = knob(1, lo=1)
    zero_stage: int = knob(0, lo=0, hi=3)
    # bf16: torch autocast over fp32 master weights (matmuls and convolutions in bf16, losses in fp32), on GPU or
    # CPU alike; fp16 is not offered (loss scaling, and no gain over bf16 on the GPUs this targets)
    precision: Literal["fp32", "bf16"] = "fp32"
    # recompute the encoders' transformer blocks in backward (open_clip's set_grad_checkpointing): less
    # activation memory for about a third more compute
    grad_checkpointing: bool = False
    compile: bool = (
        False  # torch.compile the model (DeepSpeed's engine.compile); the first steps pay the compile
    )
    # inductor generates fused kernels (the speed-up); aot_eager traces forward and backward without generating
    # code (seconds instead of minutes to compile: checks that a model compiles)
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    # ZeRO-3 keeps parameters smaller than this many elements whole on every rank (DeepSpeed's
    # stage3_param_persistence_threshold; None: DeepSpeed's default, 1e5). 0 partitions every parameter.
    zero3_persistence_threshold: int | None = knob(None, lo=0)
    checkpoint_every_epochs: int = knob(1, lo=1)
    # also checkpoint every N optimizer steps inside an epoch (None: epoch ends only); a lost worker then costs
    # at most N steps
    checkpoint_every_steps: int | None = knob(None, lo=1)
    keep_checkpoints: int | None = knob(2, lo=1)  # newest checkpoints kept in storage (None: all)
    # upload checkpoints to ray.storage_path in a background thread (Ray Train's ASYNC report mode): training
    # goes on while one uploads; a worker lost mid-upload resumes from the checkpoint before it
    async_checkpoint_upload: bool = False
    max_failures: int = knob(0, lo=-1)
    # a local directory where every Train worker writes the rows it trains on, one line per row: the step,
    # the shard's position in the stream and the row's ordinal in its shard (data-order audits; resume tests)
    trace_rows_dir: str | None = None
    # extra environment for the Train workers (e.g. NCCL_SOCKET_IFNAME); never secrets: those come from the
    # cluster's own environment or secret store, not from a config that is saved in every run directory
    worker_env: dict[str, str] = knob({})


@dataclass
class FinetuneSection:
    head: Literal["linear", "mlp"] = "linear"
    # convex: the linear head as class-weighted logistic regression, solved full-batch (L-BFGS) at each L2
    # strength of a log grid [l2_min, l2_max] and chosen on the selection split (system/method/linear_probe.py): no
    # epoch count, the same on any dataset size. sgd: AdamW for `epochs` epochs (the mlp head's only fit).
    head_fit: Literal["convex", "sgd"] = "convex"
    l2_min: float = knob(1e-6, gt=0.0)
    l2_max: float = knob(1e-1, gt=0.0)
    l2_points: int = knob(6, lo=1)
    probe_max_iter: int = knob(
        500, lo=1
    )  # L-BFGS iterations per grid point (a tolerance ends most fits sooner)
    # the sgd fit: epochs over the train features, AdamW lr and weight decay, batch (below)
    epochs: int = knob(40, lo=1)
    lr: float = knob(1e-2, gt=0.0)
    weight_decay: float = knob(5e-4, lo=0.0)
    # class balance of the head's loss: resampling by n_c^-q (sgd) or class weights n_c^-q (convex); q = 0, 1/2, 1
    balanced_sampling: Literal["none", "sqrt", "balanced"] = "sqrt"
    proto_scale: float = knob(16.0, gt=0.0)  # s_p: scale of the cosine prototype logits
    # post-hoc logit adjustment of the learnable head (Menon et al.): tau * log(prior) subtracted at inference
    logit_adjust_tau: float = knob(0.0, lo=0.0)
    batch_size: int = knob(128, lo=1)  # head training batch (small data wants more steps per epoch)
    lambda_points: int = knob(101, lo=2)  # resolution of the lambda curve evaluated on val
    # lambda: None = chosen on the selection split from the curve; a number fixes it (best.yaml sets it)
    blend_weight: float | None = knob(None, lo=0.0, hi=1.0)
    # Temperature-scale each branch on the selection split before blending (Guo et al. 2017): the head's and
    # the prototypes' logit scales are arbitrary (L2 strength, proto_scale), so without it the same lambda
    # weighs the branches differently from run to run.
    calibrate: bool = True
    # Resamples of the selection split behind the spread of the chosen lambda (0 = off); the cap keeps stage 2
    # from spending minutes on a number that settles within a few hundred resamples.
    bootstrap: int = knob(200, lo=0, hi=100_000)
    # The feature pass (system/runtime/features.py): Ray Data batch inference in an actor pool that autoscales
    # between min and max actors (max None: one per GPU under train.use_gpu, else one per feature_actor_cpus
    # CPUs of the cluster), each holding one GPU under train.use_gpu and feature_actor_cpus CPUs.
    feature_batch_size: int = knob(256, lo=1)
    feature_actors_min: int = knob(1, lo=1)
    feature_actors_max: int | None = knob(None, lo=1)
    feature_actor_cpus: float = knob(1.0, gt=0.0)
    # The head is fitted on at most this many train features per class (None: all), in a Ray task's memory;
    # the convex fit's class weights stay those of the whole split. Only the convex fit takes a cap. Which rows
    # are kept follows from each row's identity (shard position, ordinal) and run.seed, not arrival order.
    max_per_class: int | None = knob(None, lo=1)


@dataclass
class EvalSection:
    many_threshold: int = knob(100, lo=1)  # many-shot: n_c > many_threshold
    few_threshold: int = knob(20, lo=1)  # few-shot: n_c < few_threshold
    select_split: str = "val"  # hyperparameters are chosen here ...
    report_split: str = "test"  # ... and numbers reported here, never the reverse
    # Stage-1 probe on this many selection-split images after every epoch (0 = off): its leave-one-out
    # nearest-class-mean top-1 is the per-epoch sweep metric that ASHA stops trials on and Optuna sees (zero-shot
    # top-1 against the class-name prompts is reported beside it).
    stage1_val_samples: int = knob(512, lo=0)


@dataclass
class RaySection:
    address: str | None = None  # RAY_ADDRESS wins when set; None starts a local Ray
    num_cpus: int | None = knob(
        4, lo=1
    )  # logical CPUs of a local Ray (more than cores avoids the 2-core hang)
    no_progress_timeout_s: int = knob(600, lo=10)  # Ray Data fails instead of hanging when starved
    # a local Ray ends task workers idle this long (each wakes 100 times/s and slows training threads ~1%)
    idle_worker_ttl_s: int = knob(10, lo=1)
    # Train/Tune storage; defaults to <run dir>/ray (use shared storage on clusters)
    storage_path: str | None = None
    data_progress_bars: bool = (
        False  # Ray Data's per-operator bars (noisy in logs; epoch lines show progress)
    )


@dataclass
class SweepSection:
    space: str | None = "tune_spaces/demo.yaml"  # None: a single trial with the config as is
    num_samples: int = knob(1, lo=1)  # samples per grid point (basic) or trials in all (optuna)
    # None: as many trials as the cluster's CPUs/GPUs hold, or can grow to under its autoscaler's limits
    max_concurrent: int | None = knob(None, lo=1)
    # Tune restarts a failed trial (a lost node, a preempted driver) this many times; the restarted trial
    # resumes its stage-1 checkpoint and data stream. 0: a failed trial stays failed; -1: no limit
    max_failures: int = knob(1, lo=-1)
    search: Literal["basic", "optuna"] = "basic"  # basic: grid + random sampling; optuna: seeded TPE
    scheduler: Literal["fifo", "asha"] = "fifo"  # asha stops weak trials at epoch rungs
    asha_grace_epochs: int = knob(1, lo=1)  # no trial is stopped before this many stage-1 reports (epochs)
    asha_reduction_factor: float = knob(2.0, gt=1.0)


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    eval: EvalSection = field(default_factory=EvalSection)
    ray: RaySection = field(default_factory=RaySection)
    sweep: SweepSection = field(default_factory=SweepSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- building


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return `value` coerced to `tp` (only int -> float widening), or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError:
                pass
        names = [_describe(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        raise ConfigError(f"{key}: expected {' or '.join(names)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")  # a schema bug, not a user error


def _describe(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp) or _type_name(
        tp
    )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s} (known keys{' of ' + prefix if prefix else ''}: "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name] if data[f.name] is not None else {}, key)
        else:
            kwargs[f.name] = _check_type(data[f.name], tp, key)
    return cls(**kwargs)


def validate(cfg: Any, prefix: str = "") -> None:
    """Check ranges (field metadata) and cross-field rules; raise ConfigError naming the key."""
    for f in dataclasses.fields(cfg):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, key)
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):  # NaN compares false with every bound, so it would pass them all
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        lo, hi, gt = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("gt")
        if lo is not None and value < lo:
            raise ConfigError(f"{key}: must be >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"{key}: must be <= {hi}, got {value!r}")
        if gt is not None and value <= gt:
            raise ConfigError(f"{key}: must be > {gt}, got {value!r}")
    if isinstance(cfg, Config):
        _validate_cross(cfg)


def _validate_cross(cfg: Config) -> None:
    for lo_key, hi_key in (("crop_scale_min", "crop_scale_max"), ("crop_ratio_min", "crop_ratio_max")):
        if getattr(cfg.data, lo_key) > getattr(cfg.data, hi_key):
            raise ConfigError(
                f"data.{lo_key}: must be <= data.{hi_key} ({getattr(cfg.data, hi_key)}), got {getattr(cfg.data, lo_key)}"
            )
    if cfg.eval.few_threshold > cfg.eval.many_threshold:
        raise ConfigError(
            f"eval.few_threshold: must be <= eval.many_threshold ({cfg.eval.many_threshold}), "
            f"got {cfg.eval.few_threshold}"
        )
    if cfg.loss.distill_weight > 0 and not cfg.model.pretrained:
        raise ConfigError("loss.distill_weight: distillation needs a teacher, set model.pretrained")
    if (
        cfg.loss.prototype_assign == "text"
        and not cfg.model.pretrained
        and not bundled_text_model(cfg.model.arch)
    ):
        # A randomly initialised text tower embeds class names at random: the "semantic" assignment would be a
        # seeded shuffle that only claims to be one.
        raise ConfigError(
            f"loss.prototype_assign: text needs a pretrained text tower, and model.arch={cfg.model.arch} has none "
            "without model.pretrained; set model.pretrained, pick an arch with a bundled text tower (e.g. "
            "uniproto-tiny-rn-minilm) or use prototype_assign=random"
        )
    if cfg.loss.ce_weight > 0 and cfg.train.zero_stage == 3:
        raise ConfigError("loss.ce_weight: the cross-entropy baseline needs train.zero_stage <= 2")
    if (
        cfg.loss.contrastive_weight + cfg.loss.proto_weight + cfg.loss.ce_weight + cfg.loss.distill_weight
        == 0
    ):
        raise ConfigError(
            "loss: every loss weight is zero (contrastive, proto, ce, distill); nothing to train"
        )
    if not cfg.loss.gather_with_grad and cfg.train.num_workers > 1:
        # Without gradients through the all-gather each rank differentiates only its own rows: the global loss
        # then gets 1/W of its true contrastive gradient, the local loss a wrong direction
        # (tests/method/test_grad_equivalence.py).
        raise ConfigError(
            "loss.gather_with_grad: false gives an inexact gradient with several workers (1/W of the "
            "contrastive gradient in global mode, a wrong direction in local mode); keep it true"
        )
    if cfg.train.compile and cfg.train.zero_stage == 3:
        # ZeRO-3 fetches and releases partitioned parameters in module hooks that a compiled graph bypasses.
        raise ConfigError("train.compile: not supported with train.zero_stage=3 (use ZeRO stage 0-2)")
    if cfg.eval.select_split == cfg.eval.report_split:
        raise ConfigError(
            "eval.select_split: must differ from eval.report_split (never select on the test set)"
        )
    if cfg.train.micro_batch_size * cfg.train.num_workers < 4:
        raise ConfigError("train.micro_batch_size: the global batch must hold at least 4 samples")
    if (cfg.sweep.scheduler == "asha" or cfg.sweep.search == "optuna") and cfg.eval.stage1_val_samples == 0:
        raise ConfigError(
            f"eval.stage1_val_samples: sweep.{'scheduler=asha' if cfg.sweep.scheduler == 'asha' else 'search=optuna'}"
            " needs the per-epoch val probe; set eval.stage1_val_samples > 0"
        )
    if cfg.finetune.head_fit == "convex" and cfg.finetune.head != "linear":
        raise ConfigError(
            f"finetune.head_fit: convex fits a linear head only; finetune.head={cfg.finetune.head} needs "
            "finetune.head_fit=sgd"
        )
    d = cfg.data
    if d.filter_actors_max is not None and d.filter_actors > d.filter_actors_max:
        raise ConfigError(
            f"data.filter_actors: must be <= data.filter_actors_max ({d.filter_actors_max}), got {d.filter_actors}"
        )
    f = cfg.finetune
    if f.feature_actors_max is not None and f.feature_actors_min > f.feature_actors_max:
        raise ConfigError(
            f"finetune.feature_actors_min: must be <= finetune.feature_actors_max ({f.feature_actors_max}), "
            f"got {f.feature_actors_min}"
        )
    if f.max_per_class is not None and f.head_fit != "convex":
        raise ConfigError(
            "finetune.max_per_class: only the convex head fit takes a cap (it keeps the whole split's class "
            "weights); the sgd fit resamples by the counts it sees. Use finetune.head_fit=convex or no cap"
        )
    if cfg.finetune.l2_min > cfg.finetune.l2_max:
        raise ConfigError(
            f"finetune.l2_min: must be <= finetune.l2_max ({cfg.finetune.l2_max}), got {cfg.finetune.l2_min}"
        )
    if (cfg.train.steps is None) == (cfg.train.epochs is None):
        raise ConfigError(
            f"train.steps: set either train.steps ({cfg.train.steps}) or train.epochs ({cfg.train.epochs}), "
            "and the other to null (train.steps means the same on any dataset size)"
        )
    # ASHA's rungs are reports: every epoch end under train.epochs, train.reports of them under train.steps
    reports = cfg.train.epochs if cfg.train.steps is None else min(cfg.train.reports, cfg.train.steps)
    if cfg.sweep.scheduler == "asha" and reports is not None and cfg.sweep.asha_grace_epochs > reports:
        raise ConfigError(
            f"sweep.asha_grace_epochs: must be <= the run's {reports} reports (train.epochs, or train.reports "
            f"under train.steps), got {cfg.sweep.asha_grace_epochs}"
        )
    if not RUN_NAME_RE.match(cfg.run.name):
        # One rule for every entry point: the name is a directory under run.output_dir, a Ray Train/Tune run
        # name and part of a submission id, so no path separators and no leading dot.
        raise ConfigError(
            f"run.name: {cfg.run.name!r} must be 1-63 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    for name, value in cfg.train.worker_env.items():
        if SECRET_NAME_RE.search(name):
            raise ConfigError(
                f"train.worker_env.{name}: looks like a secret; configs are saved in every run directory, so "
                "pass it through the cluster's environment or secret store instead"
            )
        if name in WORKER_ENV_DENIED or name.startswith(("LD_", "DYLD_")):
            raise ConfigError(
                f"train.worker_env.{name}: not settable from a config (it changes which code the workers load)"
            )
        if not isinstance(value, str):
            raise ConfigError(
                f'train.worker_env.{name}: must be a string (quote it: {name}: "{value}"), got {value!r}'
            )
    # local import: importing the registry loads the text package (its built-in scorers register themselves)
    from system.text.scorer_registry import SCORERS

    if cfg.data.text_scorer not in SCORERS:
        raise ConfigError(
            f"data.text_scorer: unknown scorer {cfg.data.text_scorer!r} (known: {sorted(SCORERS)})"
        )
    if "://" in str(cfg.train.trace_rows_dir or ""):
        raise ConfigError(
            f"train.trace_rows_dir: must be a local directory (no URLs), got {cfg.train.trace_rows_dir!r}"
        )
    for key in ("text_scorer_model", "text_scorer_centroids"):
        # local files only: nothing is downloaded at run time, and a URL could carry credentials into the
        # config that every run directory keeps
        if "://" in str(getattr(cfg.data, key) or ""):
            raise ConfigError(f"data.{key}: must be a local path (no URLs), got {getattr(cfg.data, key)!r}")


# Names of environment variables whose values are secrets (whole `_`-separated words, so TOKENIZERS_PARALLELISM is
# not one): refused in train.worker_env here and in a job's runtime_env by `uniproto submit`.
SECRET_NAME_RE = re.compile(
    r"(^|_)(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE|KEY|API_?KEY|ACCESS_?KEY|SESSION_?KEY)(_|$)",
    re.I,
)
# Variables that decide which code a worker process loads: never from a config.
WORKER_ENV_DENIED = frozenset(
    {
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONEXECUTABLE",
        "PATH",
        "BASH_ENV",
        "ENV",
    }
)
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class _StrictLoader(yaml.SafeLoader):
    """yaml's SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """Parse YAML data with no aliases and no duplicate keys, or raise ConfigError saying why.

    Aliases are refused before anything is built: a few hundred bytes of nested aliases expand to gigabytes
    (and a recursive one never ends), and no config, space or runtime env of ours needs them.
    """
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise ConfigError(f"YAML aliases (*name) are not accepted (line {mark.line + 1})")
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError("YAML nested too deeply") from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's data (parse_yaml's rules); ConfigError names the file: missing, not UTF-8, not valid."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    try:
        return parse_yaml(text)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML, so 0.1 is a float and null is None)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key {key!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except ConfigError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str] | dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (copied). Accepts 'a.b=v' strings or a {dotted: value} mapping."""
    out = _deepcopy(data)
    items = (
        [(k.split("."), v) for k, v in overrides.items()]
        if isinstance(overrides, dict)
        else [parse_override(s) for s in overrides]
    )
    for parts, value in items:
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {part} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def config_from_dict(data: dict[str, Any] | None, overrides: Iterable[str] | dict[str, Any] = ()) -> Config:
    """Build and fully validate a Config from a plain dict plus overrides."""
    cfg = _build(Config, apply_overrides(data or {}, overrides), "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: Iterable[str] | dict[str, Any] = ()) -> Config:
    """Load YAML (or defaults when path is None), apply overrides, validate. Errors name the file and key."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        data = read_yaml(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def is_config_key(dotted: str) -> bool:
    """True when `dotted` names a leaf field of Config (used to validate sweep spaces)."""
    cls: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
        if i == len(parts) - 1:
            return not dataclasses.is_dataclass(cls)
    return False


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (it loads back to an equal Config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
