"""Model factory over open_clip: any architecture name, our small CPU configs, pretrained tag or local file.

DeepSpeed's `_broadcast_model` cannot handle 0-dim parameters (docs/stack-notes.md), so every model built here keeps
its learnable scalars (logit_scale, logit_bias) as 1-element tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make system/model_configs/*.json visible to open_clip by name (idempotent)."""
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


def create_clip(arch: str, pretrained: str | None = None, image_size: int | None = None) -> nn.Module:
    """Build an open_clip CLIP model returning dicts (`image_features`, `text_features`, `logit_scale`).

    `pretrained` is an open_clip tag or a local checkpoint path (no download happens for local files).
    `image_size` overrides the architecture's input size (positional embeddings are resized by open_clip).
    """
    register_model_configs()
    if arch not in open_clip.list_models():
        raise ValueError(f"model.arch: unknown open_clip architecture {arch!r}; see `uniproto models`")
    if pretrained and not Path(pretrained).is_file() and "/" in pretrained:
        raise FileNotFoundError(f"model.pretrained: checkpoint file not found: {pretrained}")
    model = open_clip.create_model(
        arch,
        pretrained=pretrained,
        force_image_size=image_size,
        output_dict=True,
        nonscalar_logit_scale=True,
    )
    _scalars_to_vectors(model)
    return model


def preprocess_for(model: nn.Module) -> Preprocess:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return Preprocess(mean=mean, std=std)  # type: ignore[arg-type]


def tokenizer_for(arch: str):
    """open_clip's tokenizer for `arch` (bundled BPE vocabulary: no download)."""
    register_model_configs()
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
    non-finite weights (system.checkpoint.CheckpointError)."""
    from system.checkpoint import check_meta, read_weights

    state, meta = read_weights(path)
    check_meta(meta, path, arch=arch, image_size=image_size)
    model.load_state_dict(encoder_state(state))
    return model
