"""Stage 1 on Ray Train: one DeepSpeed engine per worker, fed by the streaming Ray Data pipeline.

Checkpoints follow the ZeRO pattern (FIELD_NOTES): every rank saves its files into a local directory, then every
rank calls `ray.train.report(..., checkpoint=...)`, and Ray merges the rank files. Rank 0 also writes a
consolidated `model.pt` so stage 2 needs no DeepSpeed to read the encoder.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from system.config import Config, config_from_dict
from system.data.dataset_dir import Manifest
from system.ds_config import deepspeed_config, warmup_cosine
from system.losses import Stage1Loss, total_loss
from system.models import create_clip, preprocess_for
from system.ray_data import configure_data_context, train_dataset

MODEL_FILE = "model.pt"
META_FILE = "meta.json"


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases and the logit scale (1-dim tensors), as open_clip does."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import deepspeed  # imported on the worker: the driver never needs DeepSpeed

    cfg = config_from_dict(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.run.seed)  # identical init everywhere; DeepSpeed also broadcasts rank 0's weights
    prototypes = torch.tensor(
        np.asarray(ray.get(loop_config["prototypes_ref"])), dtype=torch.float32
    )  # [K, d]

    model = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.data.image_size)
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
    )
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum * world
    steps_per_epoch = max(int(loop_config["rows_per_epoch"]) // global_batch, 1)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps_per_epoch * cfg.train.epochs, cfg.optim.warmup_fraction)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg.train, cfg.optim),
    )
    device = engine.device
    loss_fn.to(device)

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            engine.load_checkpoint(ckpt_dir)
            meta = json.loads((Path(ckpt_dir) / META_FILE).read_text())
        step = meta["step"]
        if rank == 0:
            print(f"[stage1] resumed after epoch {meta['epoch']} (step {step})", flush=True)

    meter = EpochMeter()
    total_steps = steps_per_epoch * cfg.train.epochs
    shard = ray.train.get_dataset_shard("train")
    batches = shard.iter_torch_batches(
        batch_size=cfg.train.micro_batch_size,
        drop_last=True,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        dtypes={"image": torch.uint8, "text": torch.int64, "label": torch.int64},
        device=device,
    )
    engine.train()
    t_wait = time.perf_counter()
    for batch in batches:
        # A resumed run re-reads the stream from its start: stop at the planned length.
        if step >= total_steps:
            break
        meter.wait(time.perf_counter() - t_wait)
        images = preprocess(batch["image"])  # [b, 3, S, S]
        out = engine(images, batch["text"])
        logit_scale = out["logit_scale"].clamp(max=100.0)  # [1]
        terms = loss_fn(out["image_features"], out["text_features"], batch["label"], logit_scale)
        loss = total_loss(terms)
        engine.backward(loss)
        engine.step()
        meter.add(terms, loss, batch["label"].shape[0])
        step += 1
        if step % steps_per_epoch == 0:
            _end_epoch(engine, cfg, meter, step // steps_per_epoch, step, world, rank)
        t_wait = time.perf_counter()
    if step % steps_per_epoch and step < total_steps:
        # Stochastic resampling made the stream a little short: close the last epoch where it ended.
        _end_epoch(engine, cfg, meter, cfg.train.epochs, step, world, rank)


class EpochMeter:
    """Per-epoch sums on one rank: loss terms, samples, steps, time blocked on data, wall time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.samples, self.steps, self.wait_s = 0, 0, 0.0
        self.t0 = time.perf_counter()

    def wait(self, seconds: float) -> None:
        self.wait_s += seconds

    def add(self, terms: dict[str, torch.Tensor], loss: torch.Tensor, samples: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(loss.detach())
        self.samples += samples
        self.steps += 1

    def reduce(self, world: int) -> dict[str, float]:
        """Metrics over all ranks (only rank 0's report survives in Ray, so reduce before reporting)."""
        keys = sorted(self.sums)
        elapsed = time.perf_counter() - self.t0
        vals = _all_reduce_sum(
            [self.sums[k] for k in keys] + [self.steps, self.samples, self.wait_s, elapsed]
        )
        steps, samples, wait_s, elapsed_sum = vals[-4:]
        out = {k: v / max(steps, 1) for k, v in zip(keys, vals[: len(keys)], strict=True)}
        out.update(
            samples=int(samples),
            samples_per_s=samples / max(elapsed_sum / world, 1e-9),
            samples_per_s_per_worker=samples / max(elapsed_sum, 1e-9),
            data_wait_fraction=wait_s / max(elapsed_sum, 1e-9),
            epoch_s=elapsed_sum / world,
        )
        return out


def _end_epoch(engine, cfg: Config, meter: EpochMeter, epoch: int, step: int, world: int, rank: int) -> None:
    """Reduce metrics, print progress on rank 0, checkpoint (all ranks save, then all report) or just report."""
    metrics = meter.reduce(world)
    metrics.update(
        epoch=epoch,
        step=step,
        lr=float(engine.get_lr()[0]),
        logit_scale=float(_unwrap(engine).logit_scale.detach().exp().reshape(-1)[0]),
    )
    if rank == 0:
        terms = " ".join(f"{k}={metrics[k]:.3f}" for k in sorted(metrics) if k.endswith("loss"))
        print(
            f"[stage1] epoch {epoch}/{cfg.train.epochs} step {step} {terms} "
            f"{metrics['samples_per_s']:.0f} samples/s, data-wait {100 * metrics['data_wait_fraction']:.0f}%",
            flush=True,
        )
    if epoch == cfg.train.epochs or epoch % cfg.train.checkpoint_every_epochs == 0:
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag=f"epoch{epoch}")
            engine.save_16bit_model(tmp, MODEL_FILE)  # consolidated weights (rank 0 writes)
            if rank == 0:
                meta = {
                    "epoch": epoch,
                    "step": step,
                    "arch": cfg.model.arch,
                    "image_size": cfg.data.image_size,
                }
                (Path(tmp) / META_FILE).write_text(json.dumps(meta))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)
    meter.reset()


def _unwrap(engine) -> torch.nn.Module:
    return getattr(engine, "module", engine)


def build_trainer(
    cfg: Config,
    train_dataset: ray.data.Dataset,
    prototypes: np.ndarray,
    rows_per_epoch: int,
    name: str,
    storage_path: str,
    callbacks: list | None = None,
) -> TorchTrainer:
    """A TorchTrainer for stage 1. Running it again with the same name and storage resumes (Train V2)."""
    env = {"DS_ACCELERATOR": "cpu"} if not cfg.train.use_gpu else {}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "prototypes_ref": ray.put(prototypes),
            "rows_per_epoch": rows_per_epoch,
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
            storage_path=os.path.abspath(storage_path) if "://" not in storage_path else storage_path,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks or [],
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )


def run_stage1(cfg: Config, shared: dict[str, Any], name: str, callbacks: list | None = None):
    """Fit stage 1 and return the Ray Train Result (its checkpoint holds model.pt)."""
    configure_data_context(cfg)
    manifest: Manifest = shared["manifest"]
    ds = train_dataset(cfg, manifest, shared["paths"]["train"], shared["pools"])
    trainer = build_trainer(
        cfg,
        ds,
        shared["prototypes"],
        int(sum(manifest.train_counts)),  # resampling keeps the epoch size in expectation
        name=name,
        storage_path=shared["storage_path"],
        callbacks=callbacks,
    )
    return trainer.fit()
