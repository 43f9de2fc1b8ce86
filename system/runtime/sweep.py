"""Ray Tune sweep: each trial = stage-1 TorchTrainer (Train V2 inside a Tune function) + stage 2 + lambda curve.

The prototype temperature needs training, the blending weight does not: each trial trains once, keeps both
classifier branches' logits on the selection and report splits, and evaluates the whole lambda curve on the
selection split. The driver picks the best trial and lambda on val; test numbers are read only afterwards.

Every report of a trial carries `val_score`, the sweep metric: the probe's leave-one-out nearest-class-mean
top-1 on val after each stage-1 epoch (what ASHA stops trials on), then the chosen classifier's val top-1 in the trial's last report.
Running the same sweep again restores it (`Tuner.restore`): finished trials are kept, unfinished ones go on,
and their TorchTrainers resume from their last stage-1 checkpoint.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import torch
from ray import tune

from system.config import Config, ConfigError, config_from_dict
from system.experiments.spaces import Space, split_space
from system.log_levels import tune_console
from system.method.diagnostics import centroid_geometry_from_sums, geometry_summary
from system.method.finetune import (
    BranchLogits,
    blended_predictions,
    calibrate,
    fit_temperature,
    is_collapsed,
    lambda_bootstrap,
    lambda_candidates,
    logit_adjustment,
    select_lambda,
    top_class_share,
)
from system.method.heads import head_weight_norm
from system.model.checkpoint import MODEL_FILE
from system.model.schedule import stage1_schedule
from system.runtime.cluster import quiet_logs
from system.runtime.data import configure_data_context
from system.runtime.features import class_sums, feature_dataset, fit_head_remote, mean_logits, split_logits
from system.runtime.monitor import EpochReports, TrialLines
from system.runtime.pretrain import run_stage1
from system.runtime.reader import ledger_summary, new_ledger
from system.runtime.resume import checkpoint_weights
from system.runtime.stage_inputs import StageInputs
from system.runtime.trial_slots import FreeSlots, slot_of, slots_name, start_slots

LOGITS_FILE = "logits.npz"
TRIAL_FILE = "trial.json"
METRIC = "val_score"
FINGERPRINT_FILE = "sweep_fingerprint.json"


def run_stage2(cfg: Config, inputs: StageInputs, weights: str, out_dir: Path) -> dict[str, Any]:
    """Features of train/select/report splits, head + class-mean prototypes, lambda curve on the select split."""
    configure_data_context(cfg)
    manifest, paths = inputs.manifest, inputs.paths
    # One ledger per split: stage 2 reads every sample of each split exactly once, so these are the run's data
    # counts (good samples, skips by reason, failed shards) per split.
    sel, rep = cfg.eval.select_split, cfg.eval.report_split
    ledgers = {split: new_ledger() for split in dict.fromkeys(("train", sel, rep))}
    k = manifest.num_classes
    # Every split's features in one pass of one encoder pool, computed once and kept in the object store
    # (spilled to disk when larger): the driver holds block references, the reductions below stream over
    # them, each keeping its split's rows by their shard positions.
    split_feats = feature_dataset(cfg, manifest, {s: paths[s] for s in ledgers}, weights, ledgers)
    feats, rows = split_feats.ds.materialize(), split_feats.ranges
    dim = int(np.asarray(feats.take(1)[0]["feature"]).shape[-1])
    sums = class_sums(feats, k, dim, rows["train"])
    mu = sums.prototypes()  # [K, d]
    head, probe = fit_head_remote(
        feats, k, cfg.finetune, cfg.run.seed, list(manifest.train_counts), rows["train"], rows[sel]
    )
    adjust = logit_adjustment(manifest.train_counts, cfg.finetune.logit_adjust_tau)
    logits = {s: split_logits(feats, head, mu, cfg.finetune.proto_scale, adjust, rows[s]) for s in (sel, rep)}
    temperatures: dict[str, float | None] = {"temperature_head": None, "temperature_proto": None}
    if cfg.finetune.calibrate:
        # Fitted on the selection split only; both splits are scaled alike, so the saved logits (and whatever
        # rereads them) are the calibrated ones.
        t_head = fit_temperature(logits[sel].head, logits[sel].labels)
        t_proto = fit_temperature(logits[sel].proto, logits[sel].labels)
        logits = {s: calibrate(z, t_head, t_proto) for s, z in logits.items()}
        temperatures = {"temperature_head": t_head, "temperature_proto": t_proto}
        print(
            f"[stage2] temperatures fitted on {sel}: head {t_head:.4g}, prototypes {t_proto:.4g}", flush=True
        )
    candidates = lambda_candidates(cfg.finetune.lambda_points, cfg.finetune.blend_weight, inputs.lambda_spec)
    lam, acc, grid, curve = select_lambda(logits[sel], cfg.finetune.lambda_points, candidates)
    boot = None
    if cfg.finetune.bootstrap > 0:
        boot = lambda_bootstrap(
            logits[sel], candidates, cfg.finetune.lambda_points, cfg.finetune.bootstrap, cfg.run.seed
        )
    shares = {
        "val_top_class_share_head": top_class_share(blended_predictions(logits[sel], 0.0), k),
        "val_top_class_share": top_class_share(blended_predictions(logits[sel], lam), k),
    }
    for key, what in (
        ("val_top_class_share_head", "learnable head"),
        ("val_top_class_share", "chosen blend"),
    ):
        if is_collapsed(shares[key], k):
            print(
                f"[stage2] warning: the {what} predicts one class for {100 * shares[key]:.0f}% of "
                f"{sel}: it collapsed, and its accuracy says nothing about the features (stage 1 or the head "
                "trained far too few steps? raise train.steps)",
                flush=True,
            )
    # Diagnostics: class-centroid geometry of the stage-1 features, and the head's positive bias.
    geometry = centroid_geometry_from_sums(
        sums, manifest.train_counts, cfg.eval.many_threshold, cfg.eval.few_threshold
    )
    bias = {"weight_norm": head_weight_norm(head, k), "mean_logit": mean_logits(feats, head, rows["train"])}
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
        nearest_centroid=geometry["nearest"],
        mean_logit=bias["mean_logit"],
        **({"weight_norm": bias["weight_norm"]} if bias["weight_norm"] is not None else {}),
    )
    return {
        "best_lambda": lam,
        "val_top1": acc,
        "val_top1_head": float(curve[0]),
        "val_top1_proto": float(curve[-1]),
        "calibrate": cfg.finetune.calibrate,
        **temperatures,
        "lambda_bootstrap": boot,
        **(
            {
                "head_l2": probe.l2,
                "head_l2_grid": list(probe.grid),
                "head_l2_val_top1": list(probe.select_top1),
            }
            if probe is not None
            else {}
        ),
        **shares,
        "geometry_after": geometry_summary(geometry),
        "data": {split: ledger_summary(ledger) for split, ledger in ledgers.items()},
    }


def geometry_before(cfg: Config, inputs: StageInputs) -> dict[str, Any]:
    """Class-centroid geometry of the train split under the model stage 1 starts from (same seed, same
    initial or pretrained weights), for the before/after comparison."""
    from system.model.factory import create_clip, embed_dim

    configure_data_context(cfg)
    manifest = inputs.manifest
    torch.manual_seed(cfg.run.seed)  # the train loop seeds the same way before building the model
    model = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.data.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / MODEL_FILE)
        train = feature_dataset(cfg, manifest, {"train": inputs.paths["train"]}, str(Path(tmp) / MODEL_FILE))
        sums = class_sums(train.ds, manifest.num_classes, embed_dim(model))
    g = centroid_geometry_from_sums(
        sums, manifest.train_counts, cfg.eval.many_threshold, cfg.eval.few_threshold
    )
    return {"summary": geometry_summary(g), "nearest": g["nearest"]}


def seed_prototypes(cfg: Config, inputs: StageInputs) -> StageInputs:
    """`inputs` with the prototypes of cfg.run.seed: a sweep over run.seed (the ablation's seeds) varies the
    code and its assignment as separate runs would, instead of every seed sharing the base seed's."""
    if inputs.prototype_seed in (None, cfg.run.seed):
        return inputs
    from system.method.class_prototypes import make_class_prototypes

    prototypes, stats = make_class_prototypes(cfg, inputs.manifest.class_names, save=False)
    return inputs.replace(prototypes=prototypes, prototype_stats=stats, prototype_seed=cfg.run.seed)


def trial(
    params: dict[str, Any], base: dict[str, Any], inputs: StageInputs, slots: str | None = None
) -> None:
    """One Tune trial. `params` maps dotted config keys to this trial's values; `slots` names the sweep's
    `TrialSlots` actor, from which the trial takes a slot for its stages."""
    cfg = config_from_dict(base, params)
    quiet_logs(cfg.run.verbose)
    trial_id = tune.get_context().get_trial_id()
    with slot_of(slots, trial_id):
        _run_trial(cfg, params, inputs, trial_id)


def _run_trial(cfg: Config, params: dict[str, Any], inputs: StageInputs, trial_id: str) -> None:
    t0 = time.perf_counter()
    inputs = seed_prototypes(cfg, inputs)
    # The Train run's name comes from the trial id, so a restored trial resumes its own stage-1 checkpoints.
    result = run_stage1(cfg, inputs, name=f"{cfg.run.name}-stage1-{trial_id}", callbacks=[EpochReports()])
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, checkpoint_weights(result.checkpoint) as ckpt:
        out = Path(tmp) / "stage2"
        metrics = run_stage2(cfg, inputs, str(ckpt / MODEL_FILE), out)
        metrics.update(stage1_s=t1 - t0, stage2_s=time.perf_counter() - t1, params=params, trial_id=trial_id)
        metrics["prototypes"] = {
            k: v for k, v in inputs.prototype_stats.items() if isinstance(v, (int, float, str))
        }
        metrics.update({f"final_{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))})
        metrics[METRIC] = metrics["val_top1"]
        (out / TRIAL_FILE).write_text(json.dumps(metrics, default=float))
        tune.report(
            {k: v for k, v in metrics.items() if k not in ("params", "data", "prototypes")},
            checkpoint=tune.Checkpoint.from_directory(out),
        )


def tune_param_space(space: Space) -> dict[str, Any]:
    builders = {
        "grid": lambda a: tune.grid_search(a),
        "choice": lambda a: tune.choice(a),
        "uniform": lambda a: tune.uniform(a[0], a[1]),
        "loguniform": lambda a: tune.loguniform(a[0], a[1]),
        "quniform": lambda a: tune.quniform(a[0], a[1], a[2] if len(a) > 2 else 1.0),
        "randint": lambda a: tune.randint(a[0], a[1]),
    }
    return {key: builders[kind](args) for key, (kind, args) in space.items()}


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial holds while it runs: its Train workers plus the CPUs its data pipeline keeps busy."""
    # read/decode tasks (about one CPU busy) + the text-filter actors at their reserved CPUs (the pool's minimum:
    # Ray Data grows it past that only into CPUs that are free)
    data_cpus = 1.0 + cfg.data.filter_actor_cpus * cfg.data.filter_actors
    need = {"CPU": cfg.train.num_workers * cfg.train.cpus_per_worker + data_cpus}
    if cfg.train.use_gpu:
        need["GPU"] = float(cfg.train.num_workers)
    return need


MAX_AUTO_CONCURRENCY = 256  # an autoscaler without limits: more trials at once than any sweep here runs


def max_concurrent_trials(
    cfg: Config, cluster: dict[str, float], autoscaler_max: dict[str, float] | None = None
) -> int:
    """sweep.max_concurrent, or as many trials as the cluster's resources hold at once (at least 1): the
    resources it has now, or those its autoscaler may grow it to (`autoscaler_max`, from the cluster config
    it publishes), whichever hold more. A cluster that starts with no GPU node still runs its GPU trials side
    by side once the autoscaler has added the nodes they ask for.

    Trials started beyond that would each get Train workers but starve their Ray Data pipelines (the 2-core
    hang of docs/stack-notes.md, at cluster scale)."""
    if cfg.sweep.max_concurrent is not None:
        return cfg.sweep.max_concurrent

    def fits(resources: dict[str, float]) -> int:
        n = [math.floor(resources.get(k, 0.0) / v) for k, v in trial_resources(cfg).items() if v > 0]
        return min(n)

    best = fits(cluster)
    if autoscaler_max:
        best = max(best, fits(autoscaler_max))
    return max(1, min(best, MAX_AUTO_CONCURRENCY))


def autoscaler_max_resources() -> dict[str, float] | None:
    """The most resources the cluster's autoscaler may add up to (its node types' max counts times their
    resources, capped by its max_resources), or None without an autoscaler. Ray Train reads the same record
    to refuse a worker group that can never fit; it is Ray-internal, so any failure reads as 'no autoscaler'."""
    try:
        from ray._private.state import state

        out = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an internal API: absent or changed means no limits are known
        return None
    return {k: float(v) for k, v in out.items()} if out else None


def sweep_identity(cfg: Config, space: Space) -> dict[str, Any]:
    """What a sweep's trials depend on: the config (less where Ray runs and how the sweep is run) and the
    search space, as JSON values."""
    d = cfg.to_dict()
    d.pop("ray")
    d["sweep"].pop("max_concurrent")
    d["sweep"].pop("max_failures")  # how a sweep runs, not what its trials compute
    return json.loads(json.dumps({"config": d, "space": space}, sort_keys=True, default=str))


def sweep_fingerprint(cfg: Config, space: Space) -> str:
    """Hash of `sweep_identity`."""
    blob = json.dumps(sweep_identity(cfg, space), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# Keys that change how a trial runs, not what it computes: the size of the stage-2 feature pass's actor pool (the
# head fit is full-batch, and a per-class cap keeps rows by identity, so the order in which the actors return
# features does not change it) and how much the run logs.
PLACEMENT_KEYS = frozenset(
    {
        "finetune.feature_actors_min",
        "finetune.feature_actors_max",
        "finetune.feature_actor_cpus",
        "run.verbose",
    }
)


def sweep_changes(recorded: dict[str, Any], cfg: Config, space: Space) -> list[str]:
    """How (cfg, space) differs from the sweep recorded in its fingerprint file, one line per key; empty when
    the sweep may be resumed. A key the record lacks is a key added to uniproto after the sweep started: at
    its default it computes what the older version did (new keys default to the old behaviour), so it does
    not count; nor do `PLACEMENT_KEYS`. A record from before per-key records holds only the hash."""
    if "identity" not in recorded:
        same = recorded.get("fingerprint") == sweep_fingerprint(cfg, space)
        return [] if same else ["the config or the space (this record holds only a hash)"]
    old, new = recorded["identity"], sweep_identity(cfg, space)
    changes = []
    if old["space"] != new["space"]:
        changes.append(f"the space: {old['space']} -> {new['space']}")
    old_cfg, new_cfg = _flat(old["config"]), _flat(new["config"])
    defaults = _flat(sweep_identity(config_from_dict({}), {})["config"])
    for key in sorted((set(old_cfg) | set(new_cfg)) - PLACEMENT_KEYS):
        if key not in old_cfg and new_cfg[key] == defaults.get(key):
            continue
        if old_cfg.get(key, "<absent>") != new_cfg.get(key, "<absent>"):
            changes.append(f"{key}: {old_cfg.get(key, '<absent>')!r} -> {new_cfg.get(key, '<absent>')!r}")
    return changes


def trial_scheduler(cfg: Config, reports: int):
    if cfg.sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",  # one iteration per stage-1 report, +1 for the stage-2 report
            max_t=reports + 1,
            grace_period=cfg.sweep.asha_grace_epochs,
            reduction_factor=cfg.sweep.asha_reduction_factor,
        )
    return None


def search_algorithm(cfg: Config, max_concurrent: int):
    if cfg.sweep.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.run.seed), max_concurrent=max_concurrent)
    return None


def _trial_dirname(t) -> str:
    return f"trial-{t.trial_id}"


def run_sweep(cfg: Config, space: Space, inputs: StageInputs, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the sweep. Returns {"trials": one record per trial, "sweep": how it ran}."""
    import ray

    tuned, eval_only = split_space(space)
    inputs = inputs.replace(lambda_spec=eval_only.get("finetune.blend_weight"))
    storage = inputs.storage_path
    storage = os.path.abspath(storage) if "://" not in storage else storage
    name = f"{cfg.run.name}-sweep"
    exp_path = f"{storage.rstrip('/')}/{name}"
    concurrency = max_concurrent_trials(cfg, ray.cluster_resources(), autoscaler_max_resources())
    # The trials hold the concurrency limit themselves (a restored sweep starts every unfinished trial at once).
    # Held until the sweep ends: a named actor that is not detached dies with the last handle to it.
    slots = start_slots(exp_path, concurrency)
    trainable = tune.with_parameters(trial, base=cfg.to_dict(), inputs=inputs, slots=slots_name(exp_path))
    # The trial function coordinates its Train run and then fits stage 2 on the features: a sliver of a CPU
    # reserved (Tune refuses an all-zero request), so it lands on a worker node, never on a 0-CPU head.
    trainable = tune.with_resources(trainable, {"cpu": 0.01})
    # Tune's iterations: one per stage-1 report (the base config's schedule: under train.epochs a space that
    # varies the batch changes a trial's count), +1 for the stage-2 report
    reports = stage1_schedule(cfg.train, int(sum(inputs.manifest.train_counts))).reports
    fp_file = run_dir / FINGERPRINT_FILE
    restored = tune.Tuner.can_restore(exp_path)
    if restored:
        changes = sweep_changes(json.loads(fp_file.read_text()), cfg, space) if fp_file.is_file() else []
        if changes:
            raise ConfigError(
                f"run.name: a sweep named {cfg.run.name!r} with a different config or space exists at {exp_path} "
                f"({'; '.join(changes)}); choose another run.name (or delete that directory) to start a new sweep"
            )
        print(f"[uniproto] resuming the sweep at {exp_path} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_param_space(tuned),
            tune_config=tune.TuneConfig(
                metric=METRIC if cfg.eval.stage1_val_samples else None,
                mode="max" if cfg.eval.stage1_val_samples else None,
                num_samples=cfg.sweep.num_samples,
                max_concurrent_trials=concurrency,
                scheduler=trial_scheduler(cfg, reports),
                search_alg=search_algorithm(cfg, concurrency),
                trial_dirname_creator=_trial_dirname,
                trial_name_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                # Tune's status table only when verbose: a trial's epochs print one line each, and every
                # finished trial one more (TrialLines)
                verbose=1 if cfg.run.verbose else 0,
                callbacks=[TrialLines(), FreeSlots(exp_path)],
                # a restarted trial runs trial() again: its Train run (named by the trial id) resumes
                failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            ),
        )
    record = {"fingerprint": sweep_fingerprint(cfg, space), "experiment": exp_path}
    fp_file.write_text(json.dumps(record | {"identity": sweep_identity(cfg, space)}, indent=1))
    t0 = time.perf_counter()
    with tune_console(cfg.run.verbose):  # no experiment header box unless verbose
        grid = tuner.fit()
    wall = time.perf_counter() - t0
    ray.kill(slots)
    return {
        "trials": [trial_record(res) for res in grid],
        "sweep": {
            "experiment": exp_path,
            "restored": restored,
            "wall_s": wall,
            "max_concurrent": concurrency,
            "max_failures": cfg.sweep.max_failures,
            "trial_resources": trial_resources(cfg),
            "search": cfg.sweep.search,
            "scheduler": cfg.sweep.scheduler,
            "max_iterations": reports + 1,
            "eval_only": {k: list(v) for k, v in eval_only.items()},
        },
    }


def trial_record(res) -> dict[str, Any]:
    """One trial: params, status (completed / stopped by the scheduler / error), times and its metrics."""
    m = res.metrics or {}
    rec: dict[str, Any] = {
        "trial_id": m.get("trial_id") or Path(res.path).name.removeprefix("trial-"),
        "params": dict(res.config or {}),
        "iterations": int(m.get("training_iteration", 0)),
        "time_s": float(m.get("time_total_s", 0.0)),
        "last_epoch": m.get("epoch", m.get("final_epoch")),
        METRIC: m.get(METRIC),
    }
    if res.error:
        rec.update(status="error", error=str(res.error)[-2000:])
        return rec
    if res.checkpoint is None or "best_lambda" not in m:
        rec["status"] = "stopped"  # ended by the scheduler before stage 2
        return rec
    local = trial_outputs(res.checkpoint)
    rec.update(json.loads((local / TRIAL_FILE).read_text()))
    rec.update(status="completed", path=str(local))
    return rec


def trial_outputs(checkpoint: tune.Checkpoint) -> Path:
    """A finished trial's stage-2 outputs (trial.json, logits.npz) as a local directory: the checkpoint itself on
    local storage; from object storage, a copy in a temporary directory removed when the driver exits (the
    report reads it until then; at thousands of classes the logits are gigabytes per trial)."""
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(checkpoint.path)
    local = Path(tempfile.mkdtemp(prefix="uniproto-trial-"))
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    checkpoint.to_directory(str(local))
    return local


def load_branch_logits(trial_dir: str | Path, split: str) -> BranchLogits:
    z = np.load(Path(trial_dir) / LOGITS_FILE)
    return BranchLogits(z[f"{split}_head"], z[f"{split}_proto"], z[f"{split}_labels"])
