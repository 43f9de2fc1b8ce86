"""Every rule a config value must meet: its type (`build`), its range (`validate`, from the fields' `knob`
metadata), and the rules that tie keys together (`validate_cross`), each raising ConfigError naming the key."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

from system.config.sections import Config, ConfigError
from system.model.text_towers import bundled_text_model


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


def build(cls: type, data: dict[str, Any], prefix: str) -> Any:
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
            kwargs[f.name] = build(tp, data[f.name] if data[f.name] is not None else {}, key)
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
        validate_cross(cfg)


def validate_cross(cfg: Config) -> None:
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
