"""Stage 2: the class-feature-prototype-guided classifier (docs/method.md).

A learnable head on frozen image features, blended with a cosine classifier on class-mean feature prototypes:
z = (1 - lam) * head(f) + lam * s_p * cos(f, mu_c). lam only changes inference, so the whole lambda curve is
computed from the two branches' logits without retraining.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HEADS",
    "ClassMeanAccumulator",
    "PrototypeGuidedClassifier",
    "best_lambda",
    "blend_logits",
    "build_head",
    "class_mean_prototypes",
    "lambda_curve",
    "leave_one_out_class_mean_predictions",
    "head_weight_norm",
    "positive_bias",
    "train_head",
]


# ---------------------------------------------------------------------------------------------------------------
# class feature prototypes


class ClassMeanAccumulator:
    """Running per-class sums of normalised features, so prototypes can be built batch by batch and merged
    across workers. Sums are kept in float64 so the batch order barely matters. The one place class means are
    computed: stage 2's prototypes, the stage-1 val probe (`sums`, `counts`), the centroid diagnostics and the
    retrieval scorer's image centroids (`means`)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.sums = torch.zeros(self.num_classes, self.dim, dtype=torch.float64)  # [K, d]
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64)  # [K]

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> ClassMeanAccumulator:
        f = F.normalize(torch.as_tensor(features).detach().cpu().double(), dim=1)  # [B, d]
        y = torch.as_tensor(labels).detach().cpu().long().ravel()  # [B]
        if f.shape != (y.shape[0], self.dim):
            raise ValueError(
                f"features {tuple(f.shape)} do not match labels {tuple(y.shape)} and dim {self.dim}"
            )
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        self.sums.index_add_(0, y, f)
        self.counts += torch.bincount(y, minlength=self.num_classes)
        return self

    def merge(self, other: ClassMeanAccumulator) -> ClassMeanAccumulator:
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError("cannot merge accumulators of different shapes")
        self.sums += other.sums
        self.counts += other.counts
        return self

    def means(self) -> torch.Tensor:
        """Mean of each class's normalised features, float64 [K, d]; zero rows for classes without features."""
        return self.sums / self.counts.clamp(min=1).unsqueeze(1).double()

    def prototypes(self) -> torch.Tensor:
        """mu_c = normalize(mean of class c's normalised features), float32 [K, d]; ValueError for empty classes."""
        empty = torch.nonzero(self.counts == 0).ravel().tolist()
        if empty:
            shown = ", ".join(map(str, empty[:20])) + (" ..." if len(empty) > 20 else "")
            raise ValueError(f"no features for class index {shown} ({len(empty)} empty classes)")
        # normalising the sum equals normalising the mean
        return F.normalize(self.sums, dim=1).float()  # [K, d]


def class_mean_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mu_c = normalize(mean of the normalised features of class c), float32 [K, d]."""
    return ClassMeanAccumulator(num_classes, features.shape[1]).update(features, labels).prototypes()


# ---------------------------------------------------------------------------------------------------------------
# heads


def leave_one_out_class_mean_predictions(
    features: torch.Tensor, labels: torch.Tensor, class_sums: torch.Tensor, class_counts: torch.Tensor
) -> torch.Tensor:
    """Nearest class mean by cosine, each sample's own class mean computed without it.

    `class_sums` [K, d] / `class_counts` [K] are sums of the L2-normalised features of a labelled set that holds
    `features` (possibly summed over many workers). A class left with no other sample cannot be predicted for
    that sample. This measures how well the feature space separates classes with no training at all, which is
    what the stage-2 prototype branch relies on; it is the per-epoch stage-1 sweep metric.
    """
    f = F.normalize(features.double(), dim=1)  # [n, d]
    y = labels.long()  # [n]
    sums = class_sums.double()  # [K, d]
    counts = class_counts.double()  # [K]
    mu = sums / counts.clamp(min=1).unsqueeze(1)  # [K, d]
    scores = F.normalize(f, dim=1) @ F.normalize(mu, dim=1).T  # [n, K]
    scores[:, counts == 0] = -torch.inf
    own = sums[y] - f  # [n, d] own class without the sample
    own_n = counts[y] - 1  # [n]
    own_score = (f * F.normalize(own, dim=1)).sum(dim=1)  # [n] (direction only: the count does not matter)
    scores[torch.arange(len(y)), y] = torch.where(
        own_n > 0, own_score, torch.full_like(own_score, -torch.inf)
    )
    return scores.argmax(dim=1)


def _linear_head(dim: int, num_classes: int, bias: bool = True) -> nn.Module:
    return nn.Linear(dim, num_classes, bias=bias)


def _mlp_head(dim: int, num_classes: int, hidden_dim: int = 1024, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
    )


# name -> fn(dim, num_classes, **kwargs) -> module mapping features [N, d] to logits [N, K]
HEADS: dict[str, Callable[..., nn.Module]] = {"linear": _linear_head, "mlp": _mlp_head}


def build_head(name: str, dim: int, num_classes: int, **head_kwargs) -> nn.Module:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {sorted(HEADS)}")
    return HEADS[name](dim, num_classes, **head_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# blending


def blend_logits(head_logits: torch.Tensor, proto_logits: torch.Tensor, lam: float) -> torch.Tensor:
    """(1 - lam) * head + lam * proto; exactly head_logits at lam=0 and exactly proto_logits at lam=1."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    # explicit ends: lerp would turn an infinite logit of the unused branch into nan
    if lam == 0.0:
        return head_logits.clone()
    if lam == 1.0:
        return proto_logits.clone()
    return torch.lerp(head_logits, proto_logits, lam)  # [N, K]


class PrototypeGuidedClassifier(nn.Module):
    """Learnable head + cosine classifier on fixed class-mean prototypes (a buffer, never trained).

    forward(f) -> {'logits': blended, 'head_logits', 'proto_logits': proto_scale * cos(f, mu_c)}.
    Logit adjustment (Menon et al., post-hoc form): when logit_adjust_tau > 0, tau * log(prior_c) is subtracted
    from the head logits in eval mode only (training sees the raw head, as the post-hoc method prescribes). The
    prototype branch is left alone: class means carry no class-frequency scale. Counts are clamped to >= 1.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        head: str = "linear",
        prototypes: torch.Tensor | None = None,
        lam: float = 0.5,
        proto_scale: float = 16.0,
        logit_adjust_tau: float = 0.0,
        class_counts: Sequence[int] | None = None,
        **head_kwargs,
    ) -> None:
        super().__init__()
        self.dim, self.num_classes = int(dim), int(num_classes)
        self.lam, self.proto_scale, self.logit_adjust_tau = (
            float(lam),
            float(proto_scale),
            float(logit_adjust_tau),
        )
        self.head = build_head(head, self.dim, self.num_classes, **head_kwargs)
        self.register_buffer("prototypes", torch.zeros(self.num_classes, self.dim))  # [K, d]
        # a buffer, so a loaded state dict also says whether prototypes were set
        self.register_buffer("has_prototypes", torch.zeros(1, dtype=torch.bool))
        if prototypes is not None:
            self.set_prototypes(prototypes)
        if self.logit_adjust_tau > 0 and class_counts is None:
            raise ValueError("logit_adjust_tau > 0 needs class_counts")
        log_prior = torch.zeros(self.num_classes)  # [K]
        if class_counts is not None:
            counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp(min=1.0)  # [K]
            if counts.shape != (self.num_classes,):
                raise ValueError(f"class_counts has {counts.numel()} entries, expected {self.num_classes}")
            log_prior = (counts / counts.sum()).log().float()
        self.register_buffer("log_prior", log_prior)

    @torch.no_grad()
    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        if prototypes.shape != (self.num_classes, self.dim):
            raise ValueError(f"prototypes {tuple(prototypes.shape)}, expected {(self.num_classes, self.dim)}")
        self.prototypes.copy_(F.normalize(prototypes.float(), dim=1))
        self.has_prototypes.fill_(True)

    def forward(self, features: torch.Tensor, lam: float | None = None) -> dict[str, torch.Tensor]:
        if not bool(self.has_prototypes):
            raise RuntimeError(
                "prototypes are not set: call set_prototypes(class_mean_prototypes(...)) first"
            )
        head_logits = self.head(features)  # [N, K]
        if self.logit_adjust_tau > 0 and not self.training:
            head_logits = head_logits - self.logit_adjust_tau * self.log_prior  # [N, K]
        proto_logits = self.proto_scale * F.normalize(features, dim=1) @ self.prototypes.T  # [N, K]
        logits = blend_logits(head_logits, proto_logits, self.lam if lam is None else lam)  # [N, K]
        return {"logits": logits, "head_logits": head_logits, "proto_logits": proto_logits}


# ---------------------------------------------------------------------------------------------------------------
# training the head on frozen features


def _sample_weights(labels: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    """Per-sample weight n_c^-q: q = 0 'none' (None: plain shuffling), 1/2 'sqrt', 1 'balanced'."""
    powers = {"none": None, "sqrt": 0.5, "balanced": 1.0}
    if mode not in powers:
        raise ValueError(f"unknown balanced_sampling {mode!r}; choose from {sorted(powers)}")
    if powers[mode] is None:
        return None
    counts = torch.bincount(labels, minlength=num_classes).double().clamp(min=1.0)  # [K]
    return counts.pow(-powers[mode])[labels]  # [N]


def train_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    head: str = "linear",
    epochs: int = 30,
    lr: float = 1e-2,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    balanced_sampling: str = "none",
    label_smoothing: float = 0.0,
    seed: int = 0,
    **head_kwargs,
) -> nn.Module:
    """Train a head (HEADS[head]) with AdamW + cross-entropy on frozen features [N, d], labels [N].

    Features are used as given (stage-1 features are already normalised). Each epoch draws N samples: a
    shuffle for 'none', with replacement by n_c^-1/2 ('sqrt') or n_c^-1 ('balanced') otherwise. Deterministic
    for a seed (the global RNG is left untouched). Returns the head in eval mode, on CPU.
    """
    x = torch.as_tensor(features).detach().float().cpu()  # [N, d]
    y = torch.as_tensor(labels).detach().long().cpu().ravel()  # [N]
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"features {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    weights = _sample_weights(y, num_classes, balanced_sampling)  # [N] or None
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # module init uses the global RNG; fork_rng restores it afterwards
        model = build_head(head, x.shape[1], num_classes, **head_kwargs)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        model.train()
        n = x.shape[0]
        for _ in range(int(epochs)):
            if weights is None:
                order = torch.randperm(n, generator=gen)  # [N]
            else:
                order = torch.multinomial(weights, n, replacement=True, generator=gen)  # [N]
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = loss_fn(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# the lambda curve


def _lambda_correct_naive(h: torch.Tensor, p: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    return blend_logits(h, p, lam).argmax(dim=1) == y  # [N]


def _solve_chunk(
    h: torch.Tensor, p: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, err: float
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Which samples are right at each lam of the sorted grid [L], solved as intervals, plus the (sample, grid)
    pairs whose answer float32 rounding could flip and must be re-checked. err bounds the logits' rounding error.

    Each logit is a line in lam: z_c = h_c + lam (p_c - h_c). The label beats class c where a_c + lam b_c >= 0,
    with a_c = h_y - h_c and b_c = (p_y - h_y) - (p_c - h_c): a half-line, so the set of lam where it beats every
    class is an interval [lo, hi]. A class with h_c < h_y and p_c < p_y is below the label on all of [0, 1] (a
    convex combination), so only the other entries, usually few, are solved. Returns correct [n, L] and the
    near pairs as (rows, grid indices).
    """
    n = h.shape[0]
    hy, py = h.gather(1, y[:, None]), p.gather(1, y[:, None])  # [n, 1]
    maybe = torch.ge(h, hy).logical_or_(torch.ge(p, py))  # [n, K]
    rows, cols = torch.nonzero(maybe, as_tuple=True)  # [E] entries that may beat the label
    hr, pr = h[rows, cols].double(), p[rows, cols].double()  # [E]
    hyr, pyr = hy[rows, 0].double(), py[rows, 0].double()  # [E]
    a = hyr - hr  # [E]
    b = (pyr - hyr) - (pr - hr)  # [E]
    root = -a / b  # [E], +-inf or nan where b == 0
    lo = torch.full((n,), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, rows, torch.where(b > 0, root, -torch.inf), "amax"
    )  # [n]
    hi = torch.full((n,), torch.inf, dtype=torch.float64).scatter_reduce(
        0, rows, torch.where(b < 0, root, torch.inf), "amin"
    )  # [n]
    # parallel lines: a class always above the label rules it out; one always equal to it does so when its index
    # comes first, as argmax returns the first maximum
    never_entry = (b == 0) & ((a < 0) | ((a == 0) & (cols < y[rows])))  # [E]
    lo[rows[never_entry]] = torch.inf
    correct = (grid[None, :] >= lo[:, None]) & (grid[None, :] <= hi[:, None])  # [n, L]

    # A logit error e moves a crossing by e / |b|. Crossings within that band (plus 1e-5) of a grid point are
    # re-checked with blend_logits itself, for its tie rule and float32 rounding. Only crossings at an end of
    # their sample's interval (lower-bound roots are <= lo, upper-bound roots >= hi) can change its answer.
    band = 1e-5 + err / b.abs()  # [E], inf where b == 0 (never a crossing: filtered by the next line)
    rel = (b != 0) & (((root - lo[rows]).abs() <= band) | ((root - hi[rows]).abs() <= band))  # [E]
    r, band, rrows = root[rel], band[rel], rows[rel]  # [E']
    first = torch.searchsorted(grid, r - band, side="left")  # [E']
    last = torch.searchsorted(grid, r + band, side="right")  # [E'], grid[first:last] is near the crossing
    width = (last - first).clamp(min=0)  # [E']
    near_rows = rrows.repeat_interleave(width)  # [M]
    # [M]: where each crossing's run begins
    starts = (torch.cumsum(width, 0) - width).repeat_interleave(width)
    offsets = torch.arange(int(width.sum())) - starts  # [M], 0, 1, .. within each run
    near_grid = first.repeat_interleave(width) + offsets  # [M]
    return correct, (near_rows, near_grid)


def _lambda_inputs(
    head_logits: torch.Tensor, proto_logits: torch.Tensor, labels: torch.Tensor, lams: Sequence[float] | None
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lams [L], head [N, K], proto [N, K], labels [N]) on CPU, checked."""
    lam_arr = np.linspace(0.0, 1.0, 101) if lams is None else np.asarray(lams, dtype=np.float64).ravel()
    if lam_arr.size == 0 or lam_arr.min() < 0.0 or lam_arr.max() > 1.0:
        raise ValueError("lams must be a non-empty sequence of values in [0, 1]")
    h = torch.as_tensor(head_logits).detach().cpu()  # [N, K]
    p = torch.as_tensor(proto_logits).detach().cpu()  # [N, K]
    y = torch.as_tensor(labels).detach().cpu().long().ravel()  # [N]
    if h.shape != p.shape or h.ndim != 2 or h.shape[0] != y.shape[0] or y.numel() == 0:
        raise ValueError(
            f"logits {tuple(h.shape)}, {tuple(p.shape)} and labels {tuple(y.shape)} do not match"
        )
    return lam_arr, h, p, y


def _correct_chunks(
    h: torch.Tensor, p: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, chunk_size: int
) -> Iterator[torch.Tensor]:
    """correct [n, L] (bool, grid order) for each chunk of `chunk_size` samples, in sample order.

    Solved per sample as an interval of lam (about O(n K) instead of O(n K L)); the (sample, lam) pairs near a
    crossing are re-checked with blend_logits itself, so ties and float32 rounding match the naive loop.
    Chunks with non-finite logits fall back to the naive loop."""
    for s in range(0, y.numel(), chunk_size):
        hc, pc, yc = h[s : s + chunk_size], p[s : s + chunk_size], y[s : s + chunk_size]
        # ~16 float32 ulps of the largest logit; nan or inf when a logit is not finite
        err = 1e-6 * sum(float(v.abs()) for t in (hc, pc) for v in torch.aminmax(t))
        if not np.isfinite(err):  # inf or nan logits: the naive loop (max propagates nan)
            yield torch.stack([_lambda_correct_naive(hc, pc, yc, float(lam)) for lam in grid], dim=1)
            continue
        correct, (near_rows, near_grid) = _solve_chunk(hc, pc, yc, grid, err)  # [n, L]
        for j in torch.unique(near_grid).tolist():
            rows = torch.unique(near_rows[near_grid == j])
            correct[rows, j] = _lambda_correct_naive(hc[rows], pc[rows], yc[rows], float(grid[j]))
        yield correct


def lambda_correct(
    head_logits: torch.Tensor,
    proto_logits: torch.Tensor,
    labels: torch.Tensor,
    lams: Sequence[float] | None = None,
    chunk_size: int = 4096,
) -> np.ndarray:
    """correct[i, g]: blend_logits(head, proto, lams[g]) ranks sample i's label first ([N, L] bool, in the
    order of lams): the per-sample view of lambda_curve (a bootstrap over samples resamples its rows)."""
    lam_arr, h, p, y = _lambda_inputs(head_logits, proto_logits, labels, lams)
    order = np.argsort(lam_arr, kind="stable")
    grid = torch.from_numpy(lam_arr[order])  # [L], sorted for searchsorted
    correct = torch.cat(list(_correct_chunks(h, p, y, grid, chunk_size))).numpy()  # [N, L], sorted order
    out = np.empty_like(correct)
    out[:, order] = correct
    return out


def lambda_curve(
    head_logits: torch.Tensor,
    proto_logits: torch.Tensor,
    labels: torch.Tensor,
    lams: Sequence[float] | None = None,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 accuracy (percent) of blend_logits(head, proto, lam) for each lam (default 101 points on [0, 1]),
    exact as the naive loop (see _correct_chunks), in memory one chunk at a time. Returns (lams, accuracies),
    in the order of lams.
    """
    lam_arr, h, p, y = _lambda_inputs(head_logits, proto_logits, labels, lams)
    order = np.argsort(lam_arr, kind="stable")
    grid = torch.from_numpy(lam_arr[order])  # [L], sorted for searchsorted
    hits = torch.zeros(len(lam_arr), dtype=torch.int64)  # [L], sorted order
    for correct in _correct_chunks(h, p, y, grid, chunk_size):
        hits += correct.sum(dim=0)
    acc = np.empty(len(lam_arr))
    acc[order] = hits.double().numpy() * 100.0 / y.numel()
    return lam_arr, acc


def best_lambda(
    head_logits: torch.Tensor,
    proto_logits: torch.Tensor,
    labels: torch.Tensor,
    lams: Sequence[float] | None = None,
) -> tuple[float, float]:
    """(lam, accuracy) with the highest accuracy on the lambda curve; among equal accuracies the smallest lam."""
    lam_arr, acc = lambda_curve(head_logits, proto_logits, labels, lams)
    best = np.flatnonzero(acc == acc.max())
    i = best[np.argmin(lam_arr[best])]
    return float(lam_arr[i]), float(acc[i])


# ---------------------------------------------------------------------------------------------------------------
# diagnostics


def _last_linear(head: nn.Module) -> nn.Linear | None:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def head_weight_norm(head: nn.Module, num_classes: int) -> np.ndarray | None:
    """Per-class weight norm of the head's last linear layer [K] (None without one)."""
    last = _last_linear(head)
    if last is None or last.out_features != num_classes:
        return None
    return last.weight.norm(dim=1).cpu().numpy()  # [K]


@torch.no_grad()
def positive_bias(head: nn.Module, features: torch.Tensor, num_classes: int) -> dict[str, np.ndarray | None]:
    """Per-class weight norm of the head's last linear layer (None without one) and per-class mean logit over
    features [N, d]: both grow with n_c in a head-biased classifier. (Stage 2 streams the mean logit over the
    train split instead: system.runtime.features.mean_logits.)"""
    weight_norm = head_weight_norm(head, num_classes)
    was_training = head.training
    head.eval()
    logits = head(torch.as_tensor(features).float())  # [N, K]
    head.train(was_training)
    return {"weight_norm": weight_norm, "mean_logit": logits.mean(dim=0).cpu().numpy()}
