"""Ray Tune sweep: each trial = stage-1 TorchTrainer (Train V2 inside a Tune function) + stage 2 + lambda curve.

The prototype temperature needs training, the blending weight does not: each trial trains once, keeps both
classifier branches' logits on the selection and report splits, and evaluates the whole lambda curve on the
selection split. The driver picks the best trial and lambda on val; test numbers are read only afterwards.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from system.config import Config, config_from_dict
from system.data.dataset_dir import Manifest
from system.finetune import BranchLogits, branch_logits, fit_stage2, select_lambda
from system.ray_data import configure_data_context, extract_features
from system.ray_pretrain import MODEL_FILE, run_stage1

LOGITS_FILE = "logits.npz"
TRIAL_FILE = "trial.json"


def run_stage2(cfg: Config, shared: dict[str, Any], weights: str, out_dir: Path) -> dict[str, Any]:
    """Features of train/select/report splits, head + class-mean prototypes, lambda curve on the select split."""
    configure_data_context(cfg)
    manifest: Manifest = shared["manifest"]
    paths = shared["paths"]
    feats = {split: extract_features(cfg, manifest, paths[split], weights) for split in paths}
    head, mu = fit_stage2(*feats["train"], manifest.num_classes, cfg.finetune, cfg.run.seed)
    sel, rep = cfg.eval.select_split, cfg.eval.report_split
    logits = {s: branch_logits(head, mu, *feats[s], cfg.finetune.proto_scale) for s in (sel, rep)}
    lam, acc, grid, curve = select_lambda(logits[sel], cfg.finetune.lambda_points)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / LOGITS_FILE,
        **{
            f"{s}_{part}": getattr(logits[s], part)
            for s in (sel, rep)
            for part in ("head", "proto", "labels")
        },
        lambda_grid=grid,
        lambda_curve=curve,
    )
    return {
        "best_lambda": lam,
        "val_top1": acc,
        "val_top1_head": float(curve[0]),
        "val_top1_proto": float(curve[-1]),
    }


def trial(params: dict[str, Any], base: dict[str, Any], shared: dict[str, Any]) -> None:
    """One Tune trial. `params` maps dotted config keys to this trial's values."""
    cfg = config_from_dict(base, params)
    trial_id = tune.get_context().get_trial_id()
    t0 = time.perf_counter()
    result = run_stage1(
        cfg, shared, name=f"{cfg.run.name}-stage1-{trial_id}", callbacks=[TuneReportCallback()]
    )
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with result.checkpoint.as_directory() as ckpt:
            weights = Path(tmp) / MODEL_FILE
            shutil.copy(Path(ckpt) / MODEL_FILE, weights)
        out = Path(tmp) / "stage2"
        metrics = run_stage2(cfg, shared, str(weights), out)
        metrics.update(stage1_s=t1 - t0, stage2_s=time.perf_counter() - t1, params=params)
        metrics.update({f"final_{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))})
        (out / TRIAL_FILE).write_text(json.dumps(metrics, default=float))
        tune.report(
            {k: v for k, v in metrics.items() if k != "params"},
            checkpoint=tune.Checkpoint.from_directory(out),
        )


def tune_param_space(space: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    builders = {
        "grid": lambda a: tune.grid_search(a),
        "choice": lambda a: tune.choice(a),
        "uniform": lambda a: tune.uniform(a[0], a[1]),
        "loguniform": lambda a: tune.loguniform(a[0], a[1]),
        "quniform": lambda a: tune.quniform(a[0], a[1], a[2] if len(a) > 2 else 1.0),
        "randint": lambda a: tune.randint(a[0], a[1]),
    }
    return {key: builders[kind](args) for key, (kind, args) in space.items()}


def run_sweep(
    cfg: Config, space: dict[str, tuple[str, list[Any]]], shared: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run every trial; return one record per trial: params, metrics and the local path of its stage-2 output."""
    trainable = tune.with_parameters(trial, base=cfg.to_dict(), shared=shared)
    # The trial function only coordinates: its Train workers and Data tasks hold the CPUs.
    trainable = tune.with_resources(trainable, {"cpu": 0.01})
    tuner = tune.Tuner(
        trainable,
        param_space=tune_param_space(space),
        tune_config=tune.TuneConfig(
            num_samples=cfg.sweep.num_samples, max_concurrent_trials=cfg.sweep.max_concurrent
        ),
        run_config=tune.RunConfig(
            name=f"{cfg.run.name}-sweep", storage_path=shared["storage_path"], verbose=1
        ),
    )
    grid = tuner.fit()
    records = []
    for res in grid:
        if res.error or res.checkpoint is None:
            records.append(
                {"params": res.config, "error": str(res.error)[-2000:] if res.error else "no checkpoint"}
            )
            continue
        local = Path(tempfile.mkdtemp(prefix="uniproto-trial-"))
        with res.checkpoint.as_directory() as d:
            shutil.copytree(d, local, dirs_exist_ok=True)
        rec = json.loads((local / TRIAL_FILE).read_text())
        rec["path"] = str(local)
        records.append(rec)
    return records


def load_branch_logits(trial_dir: str | Path, split: str) -> BranchLogits:
    z = np.load(Path(trial_dir) / LOGITS_FILE)
    return BranchLogits(z[f"{split}_head"], z[f"{split}_proto"], z[f"{split}_labels"])
