"""Fixed class prototypes for stage 1: uniform on the sphere, assigned to classes, saved with the class order
(docs/method.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from system.config import Config
from system.method.prototype_assignment import align_to_text, alignment_cosine, assign_prototypes
from system.method.prototypes import build_prototypes, class_order_digest, prototype_stats, save_prototypes
from system.model.factory import create_clip, pooled_text, register_model_configs, tokenizer_for
from system.model.text_towers import bundled_text_model


def arch_embed_dim(arch: str) -> int:
    register_model_configs()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"model.arch: unknown open_clip architecture {arch!r}")
    return int(cfg["embed_dim"])


@torch.no_grad()
def class_text_embeddings(cfg: Config, class_names: list[str]) -> torch.Tensor:
    """Normalised text embeddings [K, e] of "a photo of a {name}." under the pretrained text tower.

    A bundled text tower (no model.pretrained) gives its own pooled sentence embedding [K, e]: its projection
    into the joint space is freshly initialised and would only scramble it (align_to_text maps e onto d)."""
    model = create_clip(cfg.model.arch, cfg.model.pretrained, cfg.data.image_size).eval()
    tokens = tokenizer_for(cfg.model.arch)([f"a photo of a {n}." for n in class_names])  # [K, L]
    if bundled_text_model(cfg.model.arch) and not cfg.model.pretrained:
        return torch.nn.functional.normalize(pooled_text(model.text, tokens), dim=-1).float()  # [K, e]
    return model.encode_text(tokens, normalize=True).float()  # [K, d]


def make_class_prototypes(
    cfg: Config, class_names: list[str], out: str | Path | None = None, save: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Prototypes [K, d] (row c belongs to class_names[c]) and their geometry stats.

    Saved (unless save=False) with their class order: out (default cfg.run_dir / "prototypes.npy") and the
    sidecar out.json (class names, seed, method, assignment, stats); stats["path"] names the .npy and
    stats["class_names_sha256"] fingerprints the order either way.
    """
    k, d = len(class_names), arch_embed_dim(cfg.model.arch)
    protos, info = build_prototypes(k, d, seed=cfg.run.seed)  # [K, d]
    stats: dict[str, Any] = {}
    if cfg.loss.prototype_assign == "text":
        emb = class_text_embeddings(cfg, class_names)  # [K, e]
        order, _, mean_cos = align_to_text(protos, emb, seed=cfg.run.seed)
        protos = protos[order]  # [K, d]
        # what the alignment bought: the same measure for a seeded random assignment of the same code
        shuffled = assign_prototypes(protos, None, method="random", seed=cfg.run.seed)
        stats.update(alignment_mean_cos=mean_cos, random_alignment_mean_cos=alignment_cosine(shuffled, emb))
        if info["method"] == "simplex_etf":
            print(
                f"[prototypes] note: {k} classes in {d}-d make a simplex ETF, where every pair of prototypes is "
                "equally far apart: the text alignment can rotate the code, not bring similar classes closer",
                flush=True,
            )
    else:
        protos = assign_prototypes(protos, None, method="random", seed=cfg.run.seed)
    stats.update({k_: float(v) for k_, v in prototype_stats(protos).items()})
    stats.update(
        num_classes=k,
        dim=d,
        assign=cfg.loss.prototype_assign,
        method=info["method"],
        seconds=round(float(info["seconds"]), 3),
        class_names_sha256=class_order_digest(class_names),
    )
    arr = protos.numpy().astype(np.float32)
    if save:
        path = Path(out) if out is not None else cfg.run_dir / "prototypes.npy"
        meta = {"seed": cfg.run.seed, "arch": cfg.model.arch, "build": _jsonable(info), "stats": dict(stats)}
        save_prototypes(path, arr, class_names=class_names, meta=meta)
        stats["path"] = str(path)
    return arr, stats


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in info.items()
    }
