"""Stage-1 losses (docs/method.md): class-wise image-text contrastive, prototype-guided matching, distillation.

All features are L2-normalised. `Stage1Loss` returns a dict of weighted `*_loss` terms; the training step sums
every key ending in `_loss`, so adding a term never touches the loop.

Weights follow docs/method.md's L = (1 - beta) L_con + beta L_distill + lambda_p L_proto: `distill_weight` is beta,
and when it is > 0 the contrastive term is scaled by (1 - beta) on top of `contrastive_weight`.

Image-text logits always have this rank's rows (local loss: b, global loss: B) and the global batch as columns
(B), in both directions, for the student and the teacher alike; so with equal local batches the mean over ranks
of the local-mode loss is the global-mode loss, for the contrastive and the distillation term.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather [b, d] -> [B, d] whose backward hands each rank the summed gradient of its own rows.

    The backward is a reduce-scatter, written as an all_reduce plus a slice so that every backend (gloo too) has
    it; the features are small next to the model's gradients. torch.distributed.nn.functional.all_gather does the
    same math, but with gloo a process that used it aborted at interpreter exit ("terminate called without an
    active exception": a gloo worker thread taking the GIL during finalisation), so it is not used here.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]  # W x [b, d]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)  # [B, d]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # [B, d]; all_reduce works in place
        dist.all_reduce(grad)  # every rank's gradient w.r.t. every row
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]  # [b, d]


def gather_features(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `x` [b, d] from every rank into [B, d] (B = sum of b); identity when not distributed.

    With `with_grad`, gradients flow back to the rank that produced each row, summed over the ranks whose loss
    used it, which is what makes the global contrastive loss exact under data parallelism. Local batches must
    have equal sizes (all_gather's requirement).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if with_grad:
        return _AllGatherWithGrad.apply(x)
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


def image_text_logits(
    img_rows: torch.Tensor,
    txt_rows: torch.Tensor,
    img_all: torch.Tensor,
    txt_all: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i) = (s img_rows txt_all^T, s txt_rows img_all^T): rows [r, d] against the global batch [B, d].

    Both directions are built explicitly rather than by transposing one matrix: with local rows (r = b < B) the
    transpose of i2t would be a softmax over the local images only, a different loss from the global one.
    """
    i2t = logit_scale * img_rows @ txt_all.T  # [r, B]
    t2i = logit_scale * txt_rows @ img_all.T  # [r, B]
    return i2t, t2i


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
    logits_i2t, logits_t2i = image_text_logits(img, txt, img_all, txt_all, logit_scale)  # [b, B] each
    return contrastive_from_logits(logits_i2t, logits_t2i, labels, labels_all, label_smoothing)


def contrastive_from_logits(
    i2t: torch.Tensor,
    t2i: torch.Tensor,
    labels: torch.Tensor,
    labels_all: torch.Tensor,
    label_smoothing: float,
) -> torch.Tensor:
    """1/2 [softCE(i2t, T) + softCE(t2i, T)] with T the multi-positive targets of `labels` [r] vs `labels_all` [B]."""
    targets = multi_positive_targets(labels, labels_all, label_smoothing).to(i2t.dtype)  # [r, B]
    return 0.5 * (soft_cross_entropy(i2t, targets) + soft_cross_entropy(t2i, targets))


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


@torch.no_grad()
def teacher_logit_pair(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float, local_loss: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen teacher's (i2t, t2i) logits from its features of this rank's batch (img, txt: [b, d]).

    Rows as the student's: this rank's b rows with `local_loss`, else the gathered B; columns the gathered B.
    Gathered without gradients: the teacher is a fixed target. Autocast is off here, so a caller inside a bf16
    region still gets targets in the features' precision, like the student's logits.
    """
    img_all = gather_features(img.detach(), with_grad=False)  # [B, d]
    txt_all = gather_features(txt.detach(), with_grad=False)  # [B, d]
    rows = (img, txt) if local_loss else (img_all, txt_all)  # [b, d] each, or [B, d] each
    with torch.autocast(device_type=img.device.type, enabled=False):
        return image_text_logits(*rows, img_all, txt_all, logit_scale)  # [b or B, B] each


def distillation_loss(
    student_i2t: torch.Tensor,
    student_t2i: torch.Tensor,
    teacher_i2t: torch.Tensor,
    teacher_t2i: torch.Tensor,
) -> torch.Tensor:
    """1/2 [softCE(student_i2t, softmax(teacher_i2t)) + softCE(student_t2i, softmax(teacher_t2i))].

    Each matrix [r, B]: rows this rank's (local) or the global batch, columns the global batch; the softmax runs
    over the B columns in both directions, so local and global mode are one objective.
    """
    t_i2t = F.softmax(teacher_i2t.detach(), dim=1)  # [r, B]
    t_t2i = F.softmax(teacher_t2i.detach(), dim=1)  # [r, B]
    return 0.5 * (soft_cross_entropy(student_i2t, t_i2t) + soft_cross_entropy(student_t2i, t_t2i))


class Stage1Loss(nn.Module):
    """Weighted stage-1 objective: (1 - beta) L_con + beta L_distill + lambda_p L_proto [+ ce_weight L_ce].

    forward() returns {`contrastive_loss`, `proto_loss`[, `ce_loss`, `distill_loss`]}, each value already
    multiplied by its weight (the step sums the `*_loss` entries); a term whose weight is zero is absent.

    Weights: `distill_weight` is beta in [0, 1]. When it is > 0 the contrastive term's weight is
    (1 - beta) * contrastive_weight, so `distill_weight=0.5` alone gives 0.5 L_con + 0.5 L_distill; with beta = 0
    the contrastive weight is `contrastive_weight` unchanged. The (1 - beta) factor follows the configuration, not
    whether teacher logits are passed: without them the distillation term is simply absent.
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
        if not 0.0 <= distill_weight <= 1.0:
            # beta > 1 would give the contrastive term a negative weight.
            raise ValueError(f"distill_weight is beta in [0, 1], got {distill_weight}")
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

    @property
    def effective_contrastive_weight(self) -> float:
        """(1 - beta) * contrastive_weight when distilling (beta > 0), else contrastive_weight."""
        if self.distill_weight > 0:
            return (1.0 - self.distill_weight) * self.contrastive_weight
        return self.contrastive_weight

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        labels: torch.Tensor,
        logit_scale: torch.Tensor,
        teacher_logits: tuple[torch.Tensor, torch.Tensor] | None = None,
        class_weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features [b, d] of this rank, labels [b], logit_scale s ([1] or scalar).

        `teacher_logits`: the (i2t, t2i) pair from `teacher_logit_pair(..., local_loss=self.local_loss)`.
        `class_weights` [K, d]: the learnable classifier of the cross-entropy term (ce_weight > 0).
        """
        if isinstance(teacher_logits, torch.Tensor):
            # A single matrix cannot hold both directions under the local loss; fail rather than guess.
            raise TypeError("teacher_logits must be the (i2t, t2i) pair from teacher_logit_pair()")
        out: dict[str, torch.Tensor] = {}
        img_all = gather_features(image_features, self.gather_with_grad)  # [B, d]
        txt_all = gather_features(text_features, self.gather_with_grad)  # [B, d]
        labels_all = gather_labels(labels)  # [B]
        if self.local_loss:
            img_rows, txt_rows, label_rows = image_features, text_features, labels  # [b, d], [b, d], [b]
        else:
            img_rows, txt_rows, label_rows = img_all, txt_all, labels_all  # [B, d], [B, d], [B]
        distill = self.distill_weight > 0 and teacher_logits is not None
        con_weight = self.effective_contrastive_weight
        if con_weight > 0 or distill:
            # One student logit pair serves both the contrastive and the distillation term.
            i2t, t2i = image_text_logits(img_rows, txt_rows, img_all, txt_all, logit_scale)  # [r, B] each
        if con_weight > 0:
            con = contrastive_from_logits(i2t, t2i, label_rows, labels_all, self.label_smoothing)
            out["contrastive_loss"] = con_weight * con
        if self.proto_weight > 0 and self.prototypes is not None:
            out["proto_loss"] = self.proto_weight * prototype_loss(
                image_features,
                text_features if self.proto_text else None,
                labels,
                self.prototypes.to(image_features.dtype),  # [K, d]
                self.proto_temperature,
            )
        if self.ce_weight > 0:
            if class_weights is None:
                raise ValueError("ce_weight > 0 needs the classifier's class_weights [K, d]")
            out["ce_loss"] = self.ce_weight * cosine_ce_loss(
                image_features, class_weights, labels, self.proto_temperature
            )
        if distill:
            t_i2t, t_t2i = teacher_logits  # [r, B] each
            if t_i2t.shape != i2t.shape or t_t2i.shape != t2i.shape:
                raise ValueError(
                    f"teacher logits {tuple(t_i2t.shape)}/{tuple(t_t2i.shape)} do not match the student's "
                    f"{tuple(i2t.shape)}: build them with local_loss={self.local_loss}"
                )
            out["distill_loss"] = self.distill_weight * distillation_loss(i2t, t2i, t_i2t, t_t2i)
        return out


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of every `*_loss` entry (the one place the step combines terms)."""
    losses = [v for k, v in terms.items() if k.endswith("_loss")]
    if not losses:
        raise ValueError("no *_loss terms: every loss weight is zero")
    return torch.stack([v.reshape(()) for v in losses]).sum()
