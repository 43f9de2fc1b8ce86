"""Embedding relevance scorers: a frozen sentence encoder compares each sentence with its class's anchor.

    score(s, c) = cos(e_s, a_c) - max_j cos(e_s, o_j)
                  [- contrast * relu(max_{c' != c} cos(e_s, a_c') - cos(e_s, a_c))]

a_c is the class anchor: the mean normalised embedding of the prompt templates filled with the class name (plus
any extra anchor texts, e.g. the class's attribute phrases), renormalised. o_j are off-topic anchors: short
descriptions of the kinds of web text that describe no class at all (cookie notices, shop adverts, navigation,
wiki maintenance notes, ...). They are the calibration: a sentence scores >= 0 when it is at least as close to
its class as to the nearest kind of boilerplate, so the filter's default threshold 0 means the same thing for
every encoder and no threshold is fitted to any corpus's labels. `contrast` (off by default) also penalises a
sentence that is closer to another class's anchor than to its own; it is off because sibling classes share
attributes ("a red star" is relevant to both red star classes), and a description file is about its own class.

`minilm` uses all-MiniLM-L6-v2 from its offline wheel; `clip_text` uses a frozen open_clip text tower (the
teacher: `model.arch` + `model.pretrained`, a local file).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from system.text.filter import PROMPT_TEMPLATES
from system.text.scorers import BatchScorer, register_scorer

if TYPE_CHECKING:
    from system.config import Config

# Kinds of web text that say nothing about how any class looks. Written as descriptions of each kind (the
# families the lexical scorer's patterns cover), not as examples copied from a corpus.
OFF_TOPIC_ANCHORS: tuple[str, ...] = (
    "a website cookie and privacy notice.",
    "an online shop advert with prices, discounts and shipping.",
    "a call to action to subscribe, sign up, follow or share on social media.",
    "site navigation and page furniture: menus, links and page numbers.",
    "a wikipedia maintenance note asking for citations or edits.",
    "a copyright, licence or legal notice.",
    "a date, time or publication record of a web page.",
    "contact details: an email, phone number or web address.",
    "a photo credit or image metadata.",
)


class SentenceEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...  # [N, d], rows L2-normalised


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class AnchorScorer(BatchScorer):
    """Scores by cosine to class anchors, calibrated against off-topic anchors (module docstring)."""

    def __init__(
        self,
        class_names: list[str],
        encoder: SentenceEncoder,
        anchor_texts: dict[int, list[str]] | None = None,
        off_topic: Sequence[str] = OFF_TOPIC_ANCHORS,
        contrast: float = 0.0,
    ) -> None:
        super().__init__(class_names)
        if contrast < 0:
            raise ValueError(f"contrast must be >= 0, got {contrast}")
        self.encoder = encoder
        self.contrast = contrast
        extra = anchor_texts or {}
        self.anchors = np.stack(  # [K, d]
            [
                _unit(
                    encoder.encode([t.format(name=name) for t in PROMPT_TEMPLATES] + extra.get(c, [])).mean(0)
                )
                for c, name in enumerate(self.class_names)
            ]
        )
        self.off_topic = encoder.encode(list(off_topic)) if off_topic else None  # [J, d]

    def score_batch(self, sentences: list[str], label: int) -> np.ndarray:
        e = self.encoder.encode(sentences)  # [N, d]
        sims = e @ self.anchors.T  # [N, K]
        own = sims[:, label]  # [N]
        score = own - (e @ self.off_topic.T).max(1) if self.off_topic is not None else own.copy()
        if self.contrast > 0 and len(self.class_names) > 1:
            nearest_other = np.delete(sims, label, axis=1).max(1)  # [N]
            score -= self.contrast * np.maximum(nearest_other - own, 0.0)
        return score


@register_scorer("minilm")
class MiniLMScorer(AnchorScorer):
    """all-MiniLM-L6-v2 (offline wheel) as the sentence encoder."""

    def __init__(
        self,
        class_names: list[str],
        model_dir: str | None = None,
        batch_size: int = 64,
        **anchor_options: Any,
    ) -> None:
        from system.text.encoders import MiniLMEncoder

        super().__init__(class_names, MiniLMEncoder(model_dir, batch_size), **anchor_options)


@register_scorer("clip_text")
class ClipTextScorer(AnchorScorer):
    """A frozen open_clip text tower as the sentence encoder (the teacher: `arch` + `pretrained`)."""

    def __init__(
        self,
        class_names: list[str],
        arch: str = "uniproto-tiny-rn",
        pretrained: str | None = None,
        batch_size: int = 128,
        **anchor_options: Any,
    ) -> None:
        if not pretrained:
            # a randomly initialised tower would score noise without complaint
            raise ValueError(
                "the clip_text scorer needs a teacher: set model.pretrained (or data.text_scorer_model)"
            )
        super().__init__(class_names, teacher_text_encoder(arch, pretrained, batch_size), **anchor_options)

    @classmethod
    def options_from_config(cls, cfg: Config) -> dict[str, Any]:
        # data.text_scorer_model overrides the teacher (e.g. a different local checkpoint for filtering only)
        return {"arch": cfg.model.arch, "pretrained": cfg.data.text_scorer_model or cfg.model.pretrained}


def teacher_text_encoder(arch: str, pretrained: str | None, batch_size: int = 128) -> SentenceEncoder:
    """A uniproto checkpoint (stage-1 dir/run dir/model.pt with meta.json, or exported .safetensors) loads with
    the arch and input size it records; anything else (an open_clip tag or checkpoint file) goes through
    open_clip's own loader, as `model.pretrained` does."""
    from system.text.encoders import ClipTextEncoder, checkpoint_file

    meta: dict[str, Any] = {}
    weights = None
    if pretrained and Path(pretrained).exists():
        weights, meta = checkpoint_file(pretrained)
    if meta.get("arch"):
        size = int(meta.get("image_size") or 0) or None
        return ClipTextEncoder(str(meta["arch"]), None, weights, image_size=size, batch_size=batch_size)
    return ClipTextEncoder(arch, pretrained, batch_size=batch_size)
