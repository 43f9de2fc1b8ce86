"""Typed run configuration: one dataclass per concern, loaded from YAML with `--set a.b=value` overrides.

Every value is checked before any Ray worker starts: unknown keys, wrong types and out-of-range values raise
`ConfigError` naming the dotted key, so a typo in a sweep or a job spec fails on the driver in milliseconds
instead of on a worker after the cluster has spun up.

- sections.py: the sections (one dataclass per concern) and each field's default and range;
- rules.py: every rule of a config (types, ranges, the rules between keys, the secret and run-name rules);
- files.py: YAML in (strict: no aliases, no duplicate keys), overrides, YAML out.
"""

from system.config.files import (
    apply_overrides,
    config_from_dict,
    is_config_key,
    load_config,
    parse_override,
    parse_yaml,
    read_yaml,
    save_config,
)
from system.config.rules import RUN_NAME_RE, SECRET_NAME_RE, WORKER_ENV_DENIED, validate
from system.config.sections import (
    Config,
    ConfigError,
    DataSection,
    EvalSection,
    FinetuneSection,
    LossSection,
    ModelSection,
    OptimSection,
    RaySection,
    RunSection,
    SweepSection,
    TrainSection,
    knob,
)

__all__ = [
    "RUN_NAME_RE",
    "SECRET_NAME_RE",
    "WORKER_ENV_DENIED",
    "Config",
    "ConfigError",
    "DataSection",
    "EvalSection",
    "FinetuneSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "RaySection",
    "RunSection",
    "SweepSection",
    "TrainSection",
    "apply_overrides",
    "config_from_dict",
    "is_config_key",
    "knob",
    "load_config",
    "parse_override",
    "parse_yaml",
    "read_yaml",
    "save_config",
    "validate",
]
