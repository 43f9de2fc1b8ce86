"""One stage-1 training step, shared by the Ray Train loop and the bare benchmark loops.

Mixed precision is torch autocast over fp32 master weights (`train.precision=bf16`): the encoders' matmuls and
convolutions run in bf16, the features are cast back to fp32 before the loss, so logits, softmaxes and the
prototype buffer stay fp32. The same code runs on CPU (CPU autocast) and GPU, so CI exercises the bf16 path.

The logit scale is limited the way open_clip does it: clamped in place after each optimizer step
(`clamp_logit_scale_`), never inside the forward pass, where a clamp would zero its gradient once above the
limit and leave it stuck there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from system.method.losses import Stage1Loss, teacher_logit_pair, total_loss

# log(100): open_clip's limit on the learnable temperature of the contrastive logits.
LOGIT_SCALE_MAX = math.log(100.0)


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device's type (cpu or cuda) when `precision` is bf16; a no-op for fp32."""
    device_type = torch.device(device).type
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def configure_device_math(device: torch.device | str) -> None:
    """TF32 for the fp32 matmuls and convolutions left outside autocast on a GPU (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@torch.no_grad()
def clamp_logit_scale_(model: nn.Module, max_log: float = LOGIT_SCALE_MAX) -> None:
    """Clamp `model.logit_scale` (log s) to [0, max_log] in place, after an optimizer step (as open_clip).

    Under DeepSpeed ZeRO the optimizer steps an fp32 master copy and writes it back into the module: the clamp
    goes to both, each rank clamping its own piece (clamping is elementwise, so no collective is needed).
    """
    p = getattr(model, "logit_scale", None)
    if not isinstance(p, torch.Tensor):
        return
    if hasattr(p, "ds_tensor"):  # ZeRO-3: the module holds an empty placeholder; values live in partitions
        p.ds_tensor.clamp_(0.0, max_log)
        z3 = getattr(p, "_z3_optimizer", None)
        master = z3.get_local_fp32_param(p) if z3 is not None else None
        if master is not None and master.numel():
            z3.set_local_hp_param(master.clamp(0.0, max_log), p)
        return
    p.data.clamp_(0.0, max_log)
    mapping = getattr(p, "_hp_mapping", None)  # ZeRO-1/2: this rank's fragment of the fp32 master, if any
    if mapping is not None:
        mapping.get_hp_fragment().clamp_(0.0, max_log)


@dataclass
class StepResult:
    """What one forward produced: the summed loss (for backward), its weighted `*_loss` terms, and the logit
    scale s the contrastive logits used (read here: under ZeRO-3 the parameter is a placeholder outside forward).
    """

    loss: torch.Tensor  # []
    terms: dict[str, torch.Tensor]  # each []
    logit_scale: torch.Tensor  # [1]


class Stage1Step:
    """The forward half of a stage-1 step: images, tokens, labels -> the weighted `*_loss` terms and their sum.

    `model` is whatever runs the CLIP forward (a DeepSpeed engine or a plain module); `module` is the module
    itself (the class head's weights are read from it). The caller runs backward and the optimizer step, then
    `clamp_logit_scale_(module)`.
    """

    def __init__(
        self,
        model: Callable[..., dict[str, torch.Tensor]],
        module: nn.Module,
        loss_fn: Stage1Loss,
        preprocess: Callable[[torch.Tensor], torch.Tensor],
        precision: str = "fp32",
        teacher: nn.Module | None = None,
    ) -> None:
        self.model, self.module, self.loss_fn = model, module, loss_fn
        self.preprocess, self.precision, self.teacher = preprocess, precision, teacher

    def __call__(self, images: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """uint8 images [b, S, S, 3], tokens [b, L], labels [b] -> the loss, its terms and the logit scale."""
        with autocast(self.precision, images.device):
            x = self.preprocess(images)  # [b, 3, S, S]
            out = self.model(x, text)
            t_logits = self.teacher_logits(x, text)
        class_head = getattr(self.module, "class_head", None)
        scale = out["logit_scale"].float()  # [1] s = exp(log s): open_clip returns it exponentiated
        terms = self.loss_fn(
            out["image_features"].float(),  # [b, d]
            out["text_features"].float(),  # [b, d]
            labels,
            scale,
            t_logits,
            class_head.weight.float() if class_head is not None else None,  # [K, d]
        )
        return StepResult(total_loss(terms), terms, scale.detach())

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The frozen teacher's (image->text, text->image) logits for this batch, or None without a teacher."""
        if self.teacher is None:
            return None
        out = self.teacher(x, text)
        return teacher_logit_pair(
            out["image_features"].float(),
            out["text_features"].float(),
            out["logit_scale"].float(),
            self.loss_fn.local_loss,
        )


def module_of(model: Any) -> nn.Module:
    """The plain module under a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)
