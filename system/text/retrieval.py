"""VL-LTR's retrieval relevance: a sentence is relevant to class c when, under the TRAINED model, its text
embedding points at class c's images (anchor sentence selection, VL-LTR section 3.2).

    score(s, c) = cos(t_s, mu_c) - mean_{c' != c} cos(t_s, mu_c')      (contrast=True, the default)
    score(s, c) = cos(t_s, mu_c)                                         (contrast=False)

mu_c is class c's image centroid: the mean of the normalised image features of its train images (renormalised
for the cosine). Cross-modal cosines sit on their own scale (the modality gap), so the calibration is the other
classes rather than text anchors: a sentence about nothing is about as close to every class (score ~ 0), one
about another class scores below 0. The scores are meant to be ranked per class and cut with a per-class top-k
(`data.filter_top_k`), as VL-LTR keeps its top sentences per class.

Centroids come from an .npy [K, d] file or are computed here from the dataset's train split with plain torch
(no Ray: shards are read with the stdlib tar reader and decoded with the data plane's own decode).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from system.text.scorers import BatchScorer, register_scorer

if TYPE_CHECKING:
    from system.config import Config
    from system.text.encoders import ClipTextEncoder


def raw_batches(paths: list[str], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Shard rows in decode_batch's raw column format (`json` back to text, as the Ray reader hands it over)."""
    from system.data.dataset_dir import iter_shard_samples

    rows: list[dict[str, Any]] = []
    for sample in iter_shard_samples(paths):
        meta = sample.get("json")
        rows.append({**sample, "json": json.dumps(meta) if isinstance(meta, dict) else meta})
        if len(rows) == batch_size:
            yield _columns(rows)
            rows = []
    if rows:
        yield _columns(rows)


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = {k for row in rows for k in row}
    columns = {}
    for k in keys:
        column = np.empty(len(rows), dtype=object)
        column[:] = [row.get(k) for row in rows]
        columns[k] = column
    return columns


def image_centroids(
    encoder: ClipTextEncoder, root: str | Path, image_size: int, split: str = "train", batch_size: int = 64
) -> np.ndarray:
    """Mean normalised image feature per class of `split` [K, d]; a class without images gets a zero row."""
    import torch

    from system.data.dataset_dir import load_manifest
    from system.data.decode import decode_batch
    from system.method.heads import ClassMeanAccumulator

    manifest = load_manifest(root)
    k = manifest.num_classes
    acc: ClassMeanAccumulator | None = None
    for raw in raw_batches(manifest.shard_paths(root, split), batch_size):
        batch = decode_batch(raw, image_size, k)
        if not len(batch["label"]):
            continue
        features = encoder.encode_images(batch["image"])  # [B, d]
        if acc is None:
            acc = ClassMeanAccumulator(k, features.shape[1])
        acc.update(torch.as_tensor(features), torch.as_tensor(batch["label"]))
    if acc is None:
        raise ValueError(f"{root}: split {split!r} has no decodable images to compute class centroids from")
    return acc.means().float().numpy()


def load_centroids(path: str | Path, num_classes: int) -> np.ndarray:
    centroids = np.load(str(path), allow_pickle=False)
    if centroids.ndim != 2 or centroids.shape[0] != num_classes:
        raise ValueError(f"{path}: centroids must be [K={num_classes}, d], got {list(centroids.shape)}")
    return centroids.astype(np.float32)


@register_scorer("retrieval")
class RetrievalScorer(BatchScorer):
    """Text embedding of a trained model vs class image centroids (module docstring).

    `model`: a stage-1 checkpoint (model.pt, its directory, or a run directory) or an exported .safetensors;
    `arch` and `image_size` default to what the checkpoint records. `centroids`: an .npy [K, d] file or an
    array; without it they are computed from `dataset_root`'s train split.
    """

    def __init__(
        self,
        class_names: list[str],
        model: str | None = None,
        centroids: str | np.ndarray | None = None,
        dataset_root: str | None = None,
        arch: str | None = None,
        image_size: int | None = None,
        contrast: bool = True,
        batch_size: int = 64,
    ) -> None:
        super().__init__(class_names)
        from system.text.encoders import ClipTextEncoder, checkpoint_file

        if not model:
            raise ValueError(
                "the retrieval scorer needs a trained model: set data.text_scorer_model to a stage-1 "
                "checkpoint or an exported .safetensors file"
            )
        weights, meta = checkpoint_file(model)
        # what the checkpoint records wins: its weights only fit that arch and input size
        arch = meta.get("arch") or arch
        if not arch:
            raise ValueError(f"{model}: records no architecture; pass it (model.arch)")
        size = int(meta.get("image_size") or image_size or 0) or None
        self.encoder = ClipTextEncoder(arch, None, weights, image_size=size, batch_size=batch_size)
        if isinstance(centroids, np.ndarray):
            mu = centroids.astype(np.float32)
        elif centroids is not None:
            mu = load_centroids(centroids, len(class_names))
        elif dataset_root is not None:
            mu = image_centroids(self.encoder, dataset_root, size or 224, batch_size=batch_size)
        else:
            raise ValueError("the retrieval scorer needs class centroids: an .npy file or the dataset root")
        if mu.shape[0] != len(class_names):
            raise ValueError(f"centroids have {mu.shape[0]} rows for {len(class_names)} classes")
        self.centroids = mu / np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)  # [K, d]
        self.contrast = contrast

    @classmethod
    def options_from_config(cls, cfg: Config) -> dict[str, Any]:
        return {
            "model": cfg.data.text_scorer_model,
            "centroids": cfg.data.text_scorer_centroids,
            "dataset_root": cfg.data.root,
            "arch": cfg.model.arch,
            "image_size": cfg.data.image_size,
        }

    def score_batch(self, sentences: list[str], label: int) -> np.ndarray:
        sims = self.encoder.encode(sentences) @ self.centroids.T  # [N, K]
        score = sims[:, label].copy()
        if self.contrast and len(self.class_names) > 1:
            score -= np.delete(sims, label, axis=1).mean(1)
        return score
