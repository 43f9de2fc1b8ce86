"""Text stage of the data plane: pair each image with clean class text and tokenize it.

Runs as a Ray Data actor-pool UDF (the scorer and tokenizer are built once per actor). Each row keeps its own
caption with probability `caption_prob` when the relevance scorer accepts it; otherwise, or when the caption is
irrelevant web boilerplate, it gets a sentence sampled from its class's filtered, attribute-enhanced pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from system.models import tokenizer_for
from system.text.filter import is_relevant_caption, make_scorer


class TextPairer:
    def __init__(
        self,
        pools: dict[int, list[str]],
        class_names: list[str],
        arch: str,
        scorer: str = "lexical",
        scorer_options: dict[str, Any] | None = None,
        threshold: float = 0.0,
        caption_prob: float = 0.5,
        seed: int | None = None,
    ):
        missing = [c for c in range(len(class_names)) if not pools.get(c)]
        if missing:
            raise ValueError(f"text pools: classes without any text: {missing[:10]}")
        self.pools = {int(c): list(p) for c, p in pools.items()}
        self.scorer = make_scorer(scorer, class_names, **(scorer_options or {}))
        self.threshold = threshold
        self.caption_prob = caption_prob
        self.tokenizer = tokenizer_for(arch)
        # Rows carry their own seed (`draw`, from the decode stage), so the pairing does not depend on which
        # actor gets a batch; this stream only serves rows without one (direct calls).
        self.rng = np.random.default_rng(seed)
        self.replaced = 0
        self.rows = 0

    def choose(self, caption: str, label: int, rng: np.random.Generator | None = None) -> str:
        rng = rng or self.rng
        self.rows += 1
        if caption and rng.random() < self.caption_prob:
            if is_relevant_caption(self.scorer, caption, label, self.threshold):
                return caption
            self.replaced += 1
        pool = self.pools[label]
        return pool[int(rng.integers(len(pool)))]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        draws = batch.get("draw")
        rngs = (
            [np.random.default_rng(int(d)) for d in draws]
            if draws is not None
            else [None] * len(batch["label"])
        )
        texts = [
            self.choose(str(c), int(y), r)
            for c, y, r in zip(batch["caption"], batch["label"], rngs, strict=True)
        ]
        tokens = self.tokenizer(texts).numpy().astype(np.int64) if texts else np.zeros((0, 1), np.int64)
        return {"image": batch["image"], "label": batch["label"], "text": tokens}  # text: [N, L]
