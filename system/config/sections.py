"""The config's sections: one dataclass per concern, each field with its default and allowed range (`knob`).

What each key means is said beside it; the rules that tie keys together are in rules.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


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
    # linear assignment, alternated: system/method/prototype_assignment.py), so similar classes get nearby prototypes
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
