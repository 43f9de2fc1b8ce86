"""Declarative search spaces (tune_spaces/*.yaml), validated against the config schema before anything starts.

A space file maps dotted config keys (the same as `--set`) to one distribution:

    loss.proto_temperature: {grid: [0.05, 0.1]}
    optim.lr: {loguniform: [1.0e-4, 1.0e-2]}

Kinds: grid, choice (lists); uniform, loguniform, quniform (low, high[, q]); randint (low, high).
Each sampled value must itself pass the config's type and range checks, so a bad range is refused up front.

`finetune.blend_weight` (lambda) changes only how a trained trial is evaluated, so it is never a Tune
parameter: every trial evaluates it on its stored val logits (listed values, or the range at
`finetune.lambda_points` values) at no training cost. See `split_space`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from system.config import Config, ConfigError, config_from_dict, is_config_key, read_yaml

KINDS = {"grid", "choice", "uniform", "loguniform", "quniform", "randint"}
# Keys evaluated on each trial's stored logits instead of trained per value.
EVAL_ONLY = {"finetune.blend_weight"}

Space = dict[str, tuple[str, list[Any]]]


def _tau_p_unused(cfg: Config) -> str | None:
    if cfg.loss.proto_weight == 0 and cfg.loss.ce_weight == 0:
        return "loss.proto_weight = 0 and loss.ce_weight = 0"
    return None


# Keys that change nothing under some configs: (the keys the rule reads, rule -> why, or None when it matters).
# A trial per value of such a key would train the same model again.
UNUSED_WHEN: dict[str, tuple[set[str], Callable[[Config], str | None]]] = {
    # tau_p scales the prototype loss and the baseline's cosine cross-entropy, nothing else
    "loss.proto_temperature": ({"loss.proto_weight", "loss.ce_weight"}, _tau_p_unused),
}


def unused_keys(space: Space, cfg: Config) -> dict[str, str]:
    """{key: why} for the space's keys that cannot change a trial under `cfg`, unless the space also searches a
    key the rule reads (then some samples may use it)."""
    out = {}
    for key in space:
        if key in UNUSED_WHEN:
            reads, why_unused = UNUSED_WHEN[key]
            why = None if reads & set(space) else why_unused(cfg)
            if why:
                out[key] = why
    return out


def load_space(path: str | Path, base: Config | None = None) -> Space:
    """Parse and validate a space file into {dotted key: (kind, args)}; errors name the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep.space: search space file not found: {p}")
    raw = read_yaml(p) or {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: a search space is a non-empty mapping of config keys to distributions")
    base_dict = (base or Config()).to_dict()
    space: Space = {}
    for key, spec in raw.items():
        if not is_config_key(str(key)):
            raise ConfigError(
                f"{p}: {key}: not a config key (use the dotted keys of --set, e.g. loss.proto_temperature)"
            )
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"{p}: {key}: expected one of {sorted(KINDS)} with its arguments, got {spec!r}")
        ((kind, args),) = spec.items()
        if kind not in KINDS:
            raise ConfigError(f"{p}: {key}: unknown distribution {kind!r} (known: {sorted(KINDS)})")
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{p}: {key}: {kind} takes a non-empty list, got {args!r}")
        if kind in {"uniform", "loguniform", "quniform", "randint"}:
            if len(args) not in (2, 3) or not args[0] < args[1]:
                raise ConfigError(f"{p}: {key}: {kind} needs [low, high] with low < high, got {args}")
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(f"{p}: {key}: loguniform needs low > 0, got {args[0]}")
            probes = args[:2]
        else:
            probes = args
        for value in probes:  # every end point / listed value must be a valid config value
            try:
                config_from_dict(base_dict, {key: value})
            except ConfigError as e:
                raise ConfigError(f"{p}: {key}: value {value!r} refused: {e}") from None
        if kind == "grid" and (base or Config()).sweep.search == "optuna" and key not in EVAL_ONLY:
            raise ConfigError(
                f"{p}: {key}: sweep.search=optuna samples its space and cannot take grid; use choice"
            )
        if key in EVAL_ONLY and kind == "randint":
            raise ConfigError(f"{p}: {key}: a blending weight is a float in [0, 1]; randint makes no sense")
        space[str(key)] = (kind, list(args))
    unused = unused_keys(space, base) if base is not None else {}
    if unused:
        key, why = next(iter(unused.items()))
        raise ConfigError(f"{p}: {key}: has no effect with {why}; every trial would train the same model")
    return space


def split_space(space: Space) -> tuple[Space, Space]:
    """(what Tune trains a trial per sample of, what each trial evaluates on its stored logits)."""
    tuned = {k: v for k, v in space.items() if k not in EVAL_ONLY}
    return tuned, {k: v for k, v in space.items() if k in EVAL_ONLY}


def grid_size(space: Space) -> int:
    """Trials per sample of the basic search: the product of the grid sizes (evaluate-only keys cost none)."""
    n = 1
    for key, (kind, args) in space.items():
        if kind == "grid" and key not in EVAL_ONLY:
            n *= len(args)
    return n
