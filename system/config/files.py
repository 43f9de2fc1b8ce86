"""Configs from YAML files and `--set a.b=value` overrides, and back to YAML: strict YAML (no aliases, no
duplicate keys), then every rule of rules.py before a Config is returned."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from system.config.rules import build, validate
from system.config.sections import Config, ConfigError


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
    cfg = build(Config, apply_overrides(data or {}, overrides), "")
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
