"""What every stage needs besides its config, built once on the driver and passed through Ray to trials and
Train workers: nothing in it names a driver-local file that a worker on another node could not read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from system.data.dataset_dir import Manifest


@dataclass(frozen=True)
class StageInputs:
    manifest: Manifest
    # shard paths or URLs per split: "train", eval.select_split and eval.report_split
    paths: dict[str, list[str]]
    storage_path: str  # Ray Train's and Tune's storage (ray.storage_path, or <run dir>/ray)
    pools: dict[int, list[str]] = field(default_factory=dict)  # class -> its filtered text sentences
    prototypes: np.ndarray | None = None  # [K, d] the fixed class prototypes (None: stage 2 alone)
    prototype_stats: dict[str, Any] = field(default_factory=dict)
    prototype_seed: int | None = None  # the run.seed the prototypes were drawn with
    # the eval-only lambda of a sweep's space (finetune.blend_weight), or None: chosen on val
    lambda_spec: tuple | None = None

    def replace(self, **changes: Any) -> StageInputs:
        return dataclasses.replace(self, **changes)
