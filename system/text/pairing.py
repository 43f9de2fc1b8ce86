"""Text stage of the data plane: pair each image with clean class text and tokenize it.

Runs as a Ray Data actor-pool UDF (the scorer and tokenizer are built once per actor). Each row keeps its own
caption with probability `caption_prob` when the relevance scorer accepts it; otherwise, or when the caption is
irrelevant web boilerplate, it gets a sentence sampled from its class's filtered, attribute-enhanced pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from system.data.row_draws import RowDraws
from system.model.factory import tokenizer_for
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
        # Tokens of each class's pool, tokenized on the class's first use: a pool sentence is drawn again and
        # again, and open_clip's tokenizer (ftfy clean + BPE) is most of this stage's work.
        self._pool_tokens: dict[int, np.ndarray] = {}  # label -> [len(pool), L] int32 (vocabulary < 2**31)
        # Rows carry their own seed (`draw`, from the decode stage), so the pairing does not depend on which
        # actor gets a batch; this stream only serves rows without one (direct calls).
        self.rng = np.random.default_rng(seed)
        self.replaced = 0
        self.rows = 0

    def pick(self, caption: str, label: int, rng: RowDraws | np.random.Generator | None = None) -> str | int:
        """The row's own caption (a str), or the index of the pool sentence that replaces it (an int)."""
        rng = rng or self.rng
        self.rows += 1
        if caption and rng.random() < self.caption_prob:
            if is_relevant_caption(self.scorer, caption, label, self.threshold):
                return caption
            self.replaced += 1
        return int(rng.integers(len(self.pools[label])))

    def choose(self, caption: str, label: int, rng: RowDraws | np.random.Generator | None = None) -> str:
        """The text a row is paired with."""
        picked = self.pick(caption, label, rng)
        return picked if isinstance(picked, str) else self.pools[label][picked]

    def pool_tokens(self, label: int) -> np.ndarray:
        """[len(pool), L] tokens of a class's pool (cached)."""
        tokens = self._pool_tokens.get(label)
        if tokens is None:
            tokens = self._pool_tokens[label] = self.tokenizer(self.pools[label]).numpy().astype(np.int32)
        return tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        draws = batch.get("draw")
        labels = [int(y) for y in batch["label"]]
        # Each row's seed keys a counter-based stream (a hash, not a numpy Generator per row: this is per row).
        rngs = [RowDraws(int(d)) for d in draws] if draws is not None else [None] * len(labels)
        picks = [self.pick(str(c), y, r) for c, y, r in zip(batch["caption"], labels, rngs, strict=True)]
        # where each row came from travels on to the train loop (the stream cursor of a resumable run)
        origin = {k: batch[k] for k in ("shard", "row") if k in batch}
        if not picks:
            return {
                "image": batch["image"],
                "label": batch["label"],
                "text": np.zeros((0, 1), np.int64),
                **origin,
            }
        tokens = np.empty((len(picks), self.pool_tokens(labels[0]).shape[1]), np.int64)  # [N, L]
        captions = [i for i, p in enumerate(picks) if isinstance(p, str)]
        if captions:  # the rows' own captions: tokenized once, as a batch
            tokens[captions] = self.tokenizer([picks[i] for i in captions]).numpy()
        for i, (p, y) in enumerate(zip(picks, labels, strict=True)):
            if not isinstance(p, str):
                tokens[i] = self.pool_tokens(y)[p]
        return {"image": batch["image"], "label": batch["label"], "text": tokens, **origin}  # text: [N, L]
