"""Declarative search spaces (tune_spaces/*.yaml), validated against the config schema before anything starts.

A space file maps dotted config keys (the same as `--set`) to one distribution:

    loss.proto_temperature: {grid: [0.05, 0.1]}
    optim.lr: {loguniform: [1.0e-4, 1.0e-2]}

Kinds: grid, choice (lists); uniform, loguniform, quniform (low, high[, q]); randint (low, high).
Each sampled value must itself pass the config's type and range checks, so a bad range is refused up front.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from system.config import Config, ConfigError, config_from_dict, is_config_key

KINDS = {"grid", "choice", "uniform", "loguniform", "quniform", "randint"}


def load_space(path: str | Path, base: Config | None = None) -> dict[str, tuple[str, list[Any]]]:
    """Parse and validate a space file into {dotted key: (kind, args)}; errors name the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep.space: search space file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: a search space is a non-empty mapping of config keys to distributions")
    base_dict = (base or Config()).to_dict()
    space: dict[str, tuple[str, list[Any]]] = {}
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
        space[str(key)] = (kind, list(args))
    return space


def grid_size(space: dict[str, tuple[str, list[Any]]]) -> int:
    n = 1
    for kind, args in space.values():
        if kind == "grid":
            n *= len(args)
    return n
