"""Stage-1 losses (METHOD.md): class-wise image-text contrastive, prototype-guided matching, distillation.

All features are L2-normalised. `Stage1Loss` returns a dict of weighted `*_loss` terms; the training step sums
every key ending in `_loss`, so adding a term never touches the loop.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_features(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `x` [b, d] from every rank into [B, d] (B = sum of b); identity when not distributed.

    With `with_grad`, gradients flow back to the rank that produced each row (all_gather's backward is a
    reduce-scatter), which is what makes the global contrastive loss exact under data parallelism.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        with warnings.catch_warnings():
            # Deprecated in favour of a private functional-collectives API; still the public autograd path.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_fn.all_gather(x), dim=0)
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    parts[dist.get_rank()] = x  # keep the local rows differentiable
    return torch.cat(parts, dim=0)


def gather_labels(y: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return y
    parts = [torch.zeros_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, y)
    return torch.cat(parts, dim=0)


def multi_positive_targets(labels: torch.Tensor, labels_all: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Row-normalised same-class targets [b, B], label-smoothed towards uniform over the B columns."""
    pos = (labels[:, None] == labels_all[None, :]).to(torch.float32)  # [b, B]
    targets = pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)  # [b, B]
    if smoothing > 0:
        targets = (1.0 - smoothing) * targets + smoothing / labels_all.numel()
    return targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j t_ij log softmax(z)_ij."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def classwise_contrastive_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
    label_smoothing: float = 0.1,
    img_all: torch.Tensor | None = None,
    txt_all: torch.Tensor | None = None,
    labels_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric multi-positive image-text contrastive loss (VL-LTR's class-wise loss).

    Rows are the local batch (img, txt: [b, d]); columns the global batch (`*_all`: [B, d], default = local).
    Every same-class pair is a positive. With rows = columns this is the full B x B loss; with rows local it is
    the memory-saving "local loss" (b x B per rank), whose mean over ranks equals the full loss.
    """
    img_all = img if img_all is None else img_all
    txt_all = txt if txt_all is None else txt_all
    labels_all = labels if labels_all is None else labels_all
    logits_i2t = logit_scale * img @ txt_all.T  # [b, B]
    logits_t2i = logit_scale * txt @ img_all.T  # [b, B]
    targets = multi_positive_targets(labels, labels_all, label_smoothing)  # [b, B]
    return 0.5 * (soft_cross_entropy(logits_i2t, targets) + soft_cross_entropy(logits_t2i, targets))


def prototype_loss(
    img: torch.Tensor,
    txt: torch.Tensor | None,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """L_proto = 1/2 [CE(f P^T / tau, y) + CE(g P^T / tau, y)]: pull both modalities to their fixed prototype.

    With `txt=None` only the image term: CE(f P^T / tau, y) (the no-text control of the ablation).
    """
    logits_img = img @ prototypes.T / temperature  # [b, K]
    if txt is None:
        return F.cross_entropy(logits_img, labels)
    logits_txt = txt @ prototypes.T / temperature  # [b, K]
    return 0.5 * (F.cross_entropy(logits_img, labels) + F.cross_entropy(logits_txt, labels))


def cosine_ce_loss(
    img: torch.Tensor, class_weights: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Plain cross-entropy of a cosine classifier: CE(f normalize(W)^T / tau, y) with learnable W [K, d].

    The same form as the prototype loss's image term with the prototypes learned instead of fixed, so the
    baseline differs from the prototype variant in exactly one thing.
    """
    logits = img @ F.normalize(class_weights, dim=1).T / temperature  # [b, K]
    return F.cross_entropy(logits, labels)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy to the frozen teacher's image-text logits, both directions ([b, B] each)."""
    t_i2t = F.softmax(teacher_logits, dim=1)
    t_t2i = F.softmax(teacher_logits.T, dim=1)
    return 0.5 * (soft_cross_entropy(student_logits, t_i2t) + soft_cross_entropy(student_logits.T, t_t2i))


class Stage1Loss(nn.Module):
    """Weighted stage-1 objective. forward() returns {`contrastive_loss`, `proto_loss`[, `ce_loss`, `distill_loss`]}
    (a term whose weight is zero is absent).

    Keys: each value is already multiplied by its weight; the step sums the `*_loss` entries.
    """

    def __init__(
        self,
        prototypes: torch.Tensor | None,
        contrastive_weight: float = 1.0,
        proto_weight: float = 1.0,
        proto_temperature: float = 0.1,
        distill_weight: float = 0.0,
        label_smoothing: float = 0.1,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        proto_modalities: str = "image_text",
        ce_weight: float = 0.0,
    ):
        super().__init__()
        if prototypes is not None:
            self.register_buffer("prototypes", prototypes.float(), persistent=False)  # [K, d]
        else:
            self.prototypes = None
        self.contrastive_weight = contrastive_weight
        self.proto_weight = proto_weight
        self.proto_temperature = proto_temperature
        self.distill_weight = distill_weight
        self.label_smoothing = label_smoothing
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.proto_text = proto_modalities == "image_text"
        self.ce_weight = ce_weight

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        labels: torch.Tensor,
        logit_scale: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`class_weights` [K, d]: the learnable classifier of the cross-entropy term (ce_weight > 0)."""
        out: dict[str, torch.Tensor] = {}
        img_all = gather_features(image_features, self.gather_with_grad)  # [B, d]
        txt_all = gather_features(text_features, self.gather_with_grad)  # [B, d]
        labels_all = gather_labels(labels)  # [B]
        if self.local_loss:
            rows = (image_features, text_features, labels)
        else:
            rows = (img_all, txt_all, labels_all)
        if self.contrastive_weight > 0:
            out["contrastive_loss"] = self.contrastive_weight * classwise_contrastive_loss(
                *rows, logit_scale, self.label_smoothing, img_all, txt_all, labels_all
            )
        if self.proto_weight > 0 and self.prototypes is not None:
            out["proto_loss"] = self.proto_weight * prototype_loss(
                image_features,
                text_features if self.proto_text else None,
                labels,
                self.prototypes,
                self.proto_temperature,
            )
        if self.ce_weight > 0:
            if class_weights is None:
                raise ValueError("ce_weight > 0 needs the classifier's class_weights [K, d]")
            out["ce_loss"] = self.ce_weight * cosine_ce_loss(
                image_features, class_weights, labels, self.proto_temperature
            )
        if self.distill_weight > 0 and teacher_logits is not None:
            student = logit_scale * rows[0] @ txt_all.T  # [b or B, B]
            out["distill_loss"] = self.distill_weight * distillation_loss(student, teacher_logits)
        return out


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of every `*_loss` entry (the one place the step combines terms)."""
    losses = [v for k, v in terms.items() if k.endswith("_loss")]
    if not losses:
        raise ValueError("no *_loss terms: every loss weight is zero")
    return torch.stack([v.reshape(()) for v in losses]).sum()
