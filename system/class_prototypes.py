"""Fixed class prototypes for stage 1: uniform on the sphere, assigned to classes (METHOD.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import open_clip
import torch

from system.config import Config
from system.models import create_clip, register_model_configs, tokenizer_for
from system.prototypes import assign_prototypes, prototype_stats, uniform_prototypes


def arch_embed_dim(arch: str) -> int:
    register_model_configs()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"model.arch: unknown open_clip architecture {arch!r}")
    return int(cfg["embed_dim"])


@torch.no_grad()
def class_text_embeddings(cfg: Config, class_names: list[str]) -> torch.Tensor:
    """Normalised text embeddings [K, d] of "a photo of a {name}." under the (pretrained) text tower."""
    model = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.data.image_size).eval()
    tokens = tokenizer_for(cfg.model.arch)([f"a photo of a {n}." for n in class_names])
    return model.encode_text(tokens, normalize=True).float()


def make_class_prototypes(cfg: Config, class_names: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Prototypes [K, d] (row c belongs to class c) and their geometry stats."""
    k, d = len(class_names), arch_embed_dim(cfg.model.arch)
    protos = uniform_prototypes(k, d, seed=cfg.run.seed)  # [K, d]
    emb = class_text_embeddings(cfg, class_names) if cfg.loss.prototype_assign == "text" else None
    protos = assign_prototypes(protos, emb, method=cfg.loss.prototype_assign, seed=cfg.run.seed)
    stats = {k_: float(v) for k_, v in prototype_stats(protos).items()}
    stats.update(num_classes=k, dim=d, assign=cfg.loss.prototype_assign)
    return protos.numpy().astype(np.float32), stats
