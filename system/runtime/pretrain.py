"""Stage 1 on Ray Train: one DeepSpeed engine per worker, fed by the streaming Ray Data pipeline.

Checkpoints follow the ZeRO pattern (docs/stack-notes.md): every rank saves its files into a local directory, then every
rank calls `ray.train.report(..., checkpoint=...)`, and Ray merges the rank files. Rank 0 also writes a
consolidated `model.pt` so stage 2 needs no DeepSpeed to read the encoder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from system.config import Config, config_from_dict
from system.log_levels import VERBOSE_ENV, drop_expected_prints
from system.method.losses import Stage1Loss
from system.method.stage1_step import (
    Stage1Step,
    clamp_logit_scale_,
    configure_device_math,
    module_of,
)
from system.model.checkpoint import META_FILE, MODEL_FILE, weights_only_loads
from system.model.ds_config import deepspeed_config, skip_single_rank_allreduce, warmup_cosine
from system.model.factory import add_class_head, create_clip, preprocess_for
from system.model.optim import build_adamw
from system.model.schedule import Schedule, stage1_schedule
from system.runtime.cluster import quiet_logs
from system.runtime.data import configure_data_context, train_batches, train_dataset, val_probe
from system.runtime.epoch_metrics import EpochMeter, StageOneProbe
from system.runtime.monitor import TrainMonitor
from system.runtime.resume import checkpoint_directory
from system.runtime.stage_inputs import StageInputs
from system.runtime.stream_cursor import STREAM_FILE, ResumableTrainStream, StreamCursor, StreamState


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import deepspeed  # imported on the worker: the driver never needs DeepSpeed

    cfg = config_from_dict(loop_config["cfg"])
    quiet_logs(cfg.run.verbose)  # after DeepSpeed's import, which sets its own logger's level
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.run.seed)  # identical init everywhere; DeepSpeed also broadcasts rank 0's weights
    prototypes = torch.tensor(
        np.asarray(ray.get(loop_config["prototypes_ref"])), dtype=torch.float32
    )  # [K, d]

    model = create_clip(
        cfg.model.arch, cfg.model.pretrained, cfg.data.image_size, lock_text=cfg.model.lock_text
    )
    if cfg.loss.ce_weight > 0:
        add_class_head(model, prototypes.shape[0])
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    preprocess = preprocess_for(model)
    loss_fn = Stage1Loss(
        prototypes,
        contrastive_weight=cfg.loss.contrastive_weight,
        proto_weight=cfg.loss.proto_weight,
        proto_temperature=cfg.loss.proto_temperature,
        distill_weight=cfg.loss.distill_weight,
        label_smoothing=cfg.loss.label_smoothing,
        local_loss=cfg.loss.local_loss,
        gather_with_grad=cfg.loss.gather_with_grad,
        proto_modalities=cfg.loss.proto_modalities,
        ce_weight=cfg.loss.ce_weight,
    )
    schedule: Schedule = loop_config["schedule"]
    optimizer = build_adamw(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(schedule.total_steps, cfg.optim.warmup_fraction)
    )
    with drop_expected_prints(cfg.run.verbose):  # the CPU all-reduce op's "built successfully" line
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg.train, cfg.optim),
        )
    skip_single_rank_allreduce(engine, world, cfg.train.zero_stage)
    if cfg.train.compile:
        # in place: the state-dict keys (checkpoints, export) stay those of the module
        engine.compile(backend=cfg.train.compile_backend)
    device = engine.device
    configure_device_math(device)
    loss_fn.to(device)
    teacher = frozen_teacher(cfg, device) if cfg.loss.distill_weight > 0 else None
    step_fn = Stage1Step(engine, module_of(engine), loss_fn, preprocess, cfg.train.precision, teacher)

    probe = StageOneProbe.build(
        loop_config, cfg.model.arch, preprocess, device, rank, world, cfg.train.precision
    )
    step = 0
    resumed: StreamState | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        # one local copy per node, complete before any rank reads it; weights only: storage cannot run code
        with checkpoint_directory(checkpoint) as ckpt_dir, weights_only_loads():
            engine.load_checkpoint(str(ckpt_dir))
            meta = json.loads((ckpt_dir / META_FILE).read_text())
            stream_file = ckpt_dir / STREAM_FILE
            resumed = StreamState.from_json(stream_file.read_text()) if stream_file.is_file() else None
        step = meta["step"]
        if rank == 0:
            print(f"[stage1] resumed after epoch {meta['epoch']} (step {step})", flush=True)
    # what the stream has delivered (the dataset was built from the same checkpoint's stream state)
    cursor = StreamCursor(loop_config.get("ledger"), resumed, rank)
    trace = _row_trace(cfg, rank)
    micro = step * cfg.train.grad_accum  # micro-batches consumed; `step` counts optimizer steps

    meter = EpochMeter(resumed_from_step=step)
    total_steps, resumed_at = schedule.total_steps, step
    if rank == 0 and schedule.warning():
        print(f"[stage1] warning: {schedule.warning()}", flush=True)
    batches = train_batches(ray.train.get_dataset_shard("train"), cfg, device)
    engine.train()
    t_wait = time.perf_counter()
    for batch in batches:
        # Stop at the planned length (a run without a stream cursor re-reads the stream from its start).
        if step >= total_steps:
            break
        meter.wait(time.perf_counter() - t_wait)
        if "shard" in batch:
            cursor.note(batch["shard"], batch["row"])
            if trace is not None:
                rows = zip(batch["shard"].tolist(), batch["row"].tolist(), strict=True)
                trace.write("".join(f"{step + 1} {p} {r}\n" for p, r in rows))
        result = step_fn(batch["image"], batch["text"], batch["label"])
        engine.backward(result.loss)
        engine.step()  # DeepSpeed steps the optimizer only at accumulation boundaries
        meter.add(result, batch["label"].shape[0])
        micro += 1
        if micro % cfg.train.grad_accum:
            t_wait = time.perf_counter()
            continue
        clamp_logit_scale_(module_of(engine))  # after the optimizer step, as open_clip
        step += 1
        if step >= total_steps:
            pass  # the last report is made after the loop
        elif schedule.is_report_step(step):
            _end_epoch(
                engine, cfg, schedule, meter, probe, schedule.report_of(step), step, world, rank, cursor
            )
        elif cfg.train.checkpoint_every_steps and step % cfg.train.checkpoint_every_steps == 0:
            # Between reports: Tune does not see it (EpochReports forwards reports only).
            epoch = step * schedule.reports / schedule.total_steps  # fractional: between two reports
            _save_and_report(engine, cfg, {"kind": "checkpoint", "epoch": epoch, "step": step}, rank, cursor)
        t_wait = time.perf_counter()
    if step > resumed_at and (step == total_steps or not schedule.is_report_step(step)):
        # The last report, at the run's last step (or where a stream that stochastic resampling made a little
        # short ended).
        _end_epoch(engine, cfg, schedule, meter, probe, schedule.reports, step, world, rank, cursor)
    if trace is not None:
        trace.close()


def _row_trace(cfg: Config, rank: int):
    """train.trace_rows_dir: this worker's file of trained rows (one per worker process: a restarted worker
    group writes new files), lines of `step shard_position reader_row`."""
    if not cfg.train.trace_rows_dir:
        return None
    out = Path(cfg.train.trace_rows_dir)
    out.mkdir(parents=True, exist_ok=True)
    return open(out / f"rank{rank}-{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115 - closed by the loop


def _end_epoch(
    engine,
    cfg: Config,
    schedule: Schedule,
    meter: EpochMeter,
    probe,
    epoch: int,
    step: int,
    world: int,
    rank: int,
    cursor: StreamCursor,
) -> None:
    """Reduce metrics, print progress on rank 0, checkpoint (all ranks save, then all report) or just report."""
    metrics = meter.reduce(world)
    if probe is not None:
        metrics.update(probe.evaluate(module_of(engine), len(probe.tokens)))
        # val_score is the sweep metric in every report: here the leave-one-out class-mean top-1 of the
        # probe (how well the features separate classes, what stage 2's prototype branch uses, defined for
        # every loss variant); in the trial's final report the chosen classifier's val top-1 (runtime.sweep).
        metrics["val_score"] = metrics["val_ncm_top1"]
    metrics.update(
        resumed_from_step=meter.resumed_from_step,
        epoch=epoch,  # the report's index (the epoch under train.epochs; system/model/schedule.py)
        data_epoch=schedule.epoch_of(step),
        step=step,
        lr=float(engine.get_lr()[0]),
    )
    if rank == 0:
        terms = " ".join(f"{k}={metrics[k]:.3f}" for k in sorted(metrics) if k.endswith("loss"))
        probe_txt = (
            f" val class-mean {metrics['val_ncm_top1']:.1f}% zero-shot {metrics['val_zs_top1']:.1f}%"
            if "val_ncm_top1" in metrics
            else ""
        )
        print(
            f"[stage1] epoch {epoch}/{schedule.reports} step {step}/{schedule.total_steps} {terms}{probe_txt} "
            f"{metrics['samples_per_s']:.0f} samples/s, data-wait {100 * metrics['data_wait_fraction']:.0f}%",
            flush=True,
        )
    metrics["kind"] = "epoch"
    if epoch == schedule.reports or epoch % cfg.train.checkpoint_every_epochs == 0:
        _save_and_report(engine, cfg, metrics, rank, cursor)
    else:
        _report(cfg, metrics)
    meter.reset()


def _report(cfg: Config, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
    """One `ray.train.report`. Under train.async_checkpoint_upload every report is asynchronous (Ray orders
    reports, so a synchronous one would wait for the upload before it); the checkpoint's local directory is
    then deleted by Ray once uploaded."""
    from ray.train import CheckpointUploadMode

    checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    if cfg.train.async_checkpoint_upload:
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )
    else:
        ray.train.report(metrics, checkpoint=checkpoint)


def _save_and_report(engine, cfg: Config, metrics: dict[str, Any], rank: int, cursor: StreamCursor) -> None:
    """ZeRO checkpoint: every rank saves its files, then every rank reports (docs/stack-notes.md); Ray merges
    them. Rank 0 adds the stream's state (system/runtime/stream_cursor.py), pooled from every rank."""
    stream = cursor.checkpoint()  # collective: every rank, same step
    if stream is not None:
        metrics = {**metrics, "stream_start": stream.start, "stream_consumed_rows": stream.consumed_rows}
    # an asynchronous upload reads the directory after this returns: Ray deletes it once uploaded
    tmp, handed_to_ray = tempfile.mkdtemp(prefix="uniproto-ckpt-"), False
    try:
        engine.save_checkpoint(tmp, tag=f"step{metrics['step']}")
        engine.save_16bit_model(tmp, MODEL_FILE)  # consolidated weights (rank 0 writes)
        if rank == 0:
            meta = {
                "epoch": metrics["epoch"],
                "step": metrics["step"],
                "arch": cfg.model.arch,
                "image_size": cfg.data.image_size,
                "precision": cfg.train.precision,
            }
            (Path(tmp) / META_FILE).write_text(json.dumps(meta))
            if stream is not None:
                (Path(tmp) / STREAM_FILE).write_text(stream.to_json())
        _report(cfg, metrics, tmp)
        handed_to_ray = cfg.train.async_checkpoint_upload
    finally:
        if not handed_to_ray:
            shutil.rmtree(tmp, ignore_errors=True)


def frozen_teacher(cfg: Config, device) -> torch.nn.Module:
    """The pretrained model, frozen: the distillation target (docs/method.md, beta)."""
    teacher = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.data.image_size).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def tensorboard_dir(storage: str, name: str) -> str:
    """TensorBoard events of a Train run live beside its checkpoints, on the (shared) storage."""
    return f"{storage.rstrip('/')}/{name}/tensorboard"


def build_trainer(
    cfg: Config,
    train_dataset: ray.data.Dataset | ResumableTrainStream,
    prototypes: np.ndarray,
    schedule: Schedule,
    name: str,
    storage_path: str,
    callbacks: list | None = None,
    probe: dict[str, np.ndarray] | None = None,
    class_names: list[str] | None = None,
    ledger=None,
) -> TorchTrainer:
    """A TorchTrainer for stage 1. Running it again with the same name and storage resumes (Train V2)."""
    # Workers inherit the driver's environment only on a local Ray (docs/stack-notes.md): pass what they need.
    env = {k: str(v) for k, v in cfg.train.worker_env.items()}
    if not cfg.train.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # the process-group backend follows use_gpu: gloo on CPU, NCCL on GPU
    # Train patches `print` on its workers to log through the root logger and, where Ray has wrapped stdout
    # (always, on a Ray worker), to print as well: every line twice. Our lines are plain prints.
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    env.setdefault(VERBOSE_ENV, "1" if cfg.run.verbose else "0")
    storage = os.path.abspath(storage_path) if "://" not in storage_path else storage_path
    in_tune = any(isinstance(c, TuneReportCallback) for c in callbacks or [])  # Tune shows trial progress
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "prototypes_ref": ray.put(prototypes),
            "schedule": schedule,
            "probe_ref": ray.put(probe) if probe is not None else None,
            "class_names": list(class_names or []),
            "ledger": ledger,  # the stream cursor's source of each shard's final row count
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker}
            | ({"GPU": 1} if cfg.train.use_gpu else {}),
        ),
        datasets={"train": train_dataset},
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=[
                TrainMonitor(name, schedule.reports, tensorboard_dir(storage, name), bar=not in_tune),
                *(callbacks or []),
            ],
            worker_runtime_env={"env_vars": env},
            # Train's own INFO lines (worker group start, every report and checkpoint) only when verbose
            logging_config=LoggingConfig(log_level="INFO" if cfg.run.verbose else "WARNING"),
        ),
    )


def run_stage1(cfg: Config, inputs: StageInputs, name: str, callbacks: list | None = None, ledger=None):
    """Fit stage 1 and return the Ray Train Result (its checkpoint holds model.pt). With a `ledger`
    (system.runtime.reader.new_ledger), the train stream's skip counts are recorded in it."""
    configure_data_context(cfg)
    manifest = inputs.manifest
    # resampling keeps the epoch size in expectation
    schedule = stage1_schedule(cfg.train, int(sum(manifest.train_counts)))
    if ledger is None:
        from system.runtime.reader import new_ledger

        ledger = new_ledger()  # the stream cursor needs each shard's row count
    paths, pools = inputs.paths["train"], inputs.pools

    def stream(resume: StreamState | None):
        # Train calls this in its controller process, whose DataContext is Ray's default: the dataset takes
        # a copy of the current one when it is built (no-progress timeout, progress bars)
        configure_data_context(cfg)
        return train_dataset(cfg, schedule, manifest, paths, pools, ledger=ledger, resume=resume)

    storage = inputs.storage_path
    storage = os.path.abspath(storage) if "://" not in storage else storage
    ds = ResumableTrainStream(stream, storage, name)
    probe = None
    if cfg.eval.stage1_val_samples:
        split = cfg.eval.select_split
        probe = val_probe(cfg, manifest, inputs.paths[split], split)
    trainer = build_trainer(
        cfg,
        ds,
        inputs.prototypes,
        schedule,
        name=name,
        storage_path=inputs.storage_path,
        callbacks=callbacks,
        probe=probe,
        class_names=manifest.class_names,
        ledger=ledger,
    )
    return trainer.fit()
