"""Assigning the uniform prototypes to classes: at random, or aligned to the classes' text embeddings (an
orthogonal Procrustes rotation alternated with a linear assignment: align_to_text), by name through ASSIGNERS."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from system.method.sphere_codes import seeded_generator


def _assign_random(
    prototypes: torch.Tensor, class_embeddings: torch.Tensor | None, seed: int
) -> torch.Tensor:
    return torch.randperm(prototypes.shape[0], generator=seeded_generator(seed))  # [K]


def _unit64(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().double().cpu(), dim=1)


def _check_embeddings(prototypes: torch.Tensor, class_embeddings: torch.Tensor | None) -> None:
    if class_embeddings is None:
        raise ValueError("assignment method 'text' needs class_embeddings [K, e]")
    if class_embeddings.dim() != 2 or class_embeddings.shape[0] != prototypes.shape[0]:
        raise ValueError(
            f"class_embeddings shape {tuple(class_embeddings.shape)} must be [K, e] with K = "
            f"{prototypes.shape[0]} rows, one per prototype"
        )


def linear_assignment_order(prototypes: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """LongTensor [K]: the one-to-one class -> prototype map maximising the total cosine between class c's
    embedding and its prototype (scipy's linear_sum_assignment; embeddings [K, d] in the prototypes' space)."""
    _check_embeddings(prototypes, class_embeddings)
    if class_embeddings.shape != prototypes.shape:
        raise ValueError(
            f"class_embeddings shape {tuple(class_embeddings.shape)} must equal prototypes shape "
            f"{tuple(prototypes.shape)}"
        )
    sim = (_unit64(class_embeddings) @ _unit64(prototypes).T).numpy()  # [K classes, K prototypes]
    rows, cols = linear_sum_assignment(sim, maximize=True)
    order = np.empty_like(cols)
    order[rows] = cols  # class rows[i] gets prototype cols[i]
    return torch.from_numpy(order).long()  # [K]


def procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """R [e, d] maximising trace(R^T source^T target) over R with orthonormal columns (e >= d) or rows (e < d):
    the orthogonal Procrustes map from source rows [K, e] onto target rows [K, d], U V^T of the SVD of
    source^T target (Schoenemann 1966). float64."""
    m = source.double().T @ target.double()  # [e, d]
    u, _, vh = torch.linalg.svd(m, full_matrices=False)  # [e, r], [r], [r, d]
    return u @ vh  # [e, d]


def _random_frame(e: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """A random [e, d] map with orthonormal columns (e >= d) or rows (e < d)."""
    q, _ = torch.linalg.qr(torch.randn(max(e, d), min(e, d), generator=gen, dtype=torch.float64))
    return q if e >= d else q.T  # [e, d]


def align_to_text(
    prototypes: torch.Tensor,
    class_embeddings: torch.Tensor,
    seed: int = 0,
    restarts: int | None = None,
    max_iter: int = 50,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(order [K], rotation R [e, d], mean cosine): which prototype each class gets, and the orthogonal map
    that carries the class embeddings [K, e] onto their prototypes [K, d].

    A uniform code has no orientation of its own, so matching embeddings to prototypes as they happen to lie
    (linear_assignment_order) mostly measures the code's arbitrary rotation. Here the rotation is a free
    variable: alternate the best assignment for a fixed R with the best R for a fixed assignment (orthogonal
    Procrustes). Both steps maximise sum_c <e_c R, p_order(c)>, so it rises monotonically to a fixed point;
    `restarts` random starting maps (the identity first when e = d) guard against a poor one: the joint problem
    is a quadratic assignment (NP-hard), so this is a local optimum, never worse than the best start. Default
    restarts: 32, fewer where a K x K assignment gets dear (1e8 / K^2: 25 at K = 2000, 1 at K = 8142); 32 found
    the exact map of a rotated, shuffled random code in every case we tried at K = 6, 8 in 7 of 10. The mean cosine
    between e_c R and p_order(c) says how well the code can carry the classes' text geometry: near 1 when the
    text embeddings already look like a uniform code, low when similar classes must share a neighbourhood the
    code does not have. With a simplex ETF every pair of prototypes is equidistant, so every assignment is as
    good as any other (only the rotation changes): class semantics need K > d + 1.
    Cost per iteration: one K x K linear assignment and one SVD of [e, d].
    """
    _check_embeddings(prototypes, class_embeddings)
    e_unit, p_unit = _unit64(class_embeddings), _unit64(prototypes)  # [K, e], [K, d]
    e_dim, d_dim = e_unit.shape[1], p_unit.shape[1]
    gen = seeded_generator(seed)
    k = p_unit.shape[0]
    restarts = max(1, min(32, 10**8 // (k * k))) if restarts is None else max(1, restarts)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for r in range(restarts):
        rot = (
            torch.eye(e_dim, dtype=torch.float64)
            if r == 0 and e_dim == d_dim
            else _random_frame(e_dim, d_dim, gen)
        )
        order = None
        for _ in range(max_iter):
            new_order = linear_assignment_order(p_unit, e_unit @ rot)  # [K]
            rot = procrustes(e_unit, p_unit[new_order])  # [e, d]
            if order is not None and torch.equal(new_order, order):
                break
            order = new_order
        assert order is not None
        score = float(((e_unit @ rot) * p_unit[order]).sum())
        if best is None or score > best[0] + 1e-12:
            best = (score, order, rot)
    _, order, rot = best  # type: ignore[misc]
    return order, rot.float(), alignment_cosine(p_unit[order], e_unit, rot)


def alignment_cosine(
    assigned: torch.Tensor, class_embeddings: torch.Tensor, rotation: torch.Tensor | None = None
) -> float:
    """Mean cosine between each class's rotated embedding e_c R and its prototype (row c of `assigned` [K, d]);
    R is the Procrustes map for this assignment when not given."""
    e_unit, p_unit = _unit64(class_embeddings), _unit64(assigned)
    rot = procrustes(e_unit, p_unit) if rotation is None else rotation.double()
    return float(F.cosine_similarity(e_unit @ rot, p_unit, dim=1).mean())


def _assign_text(prototypes: torch.Tensor, class_embeddings: torch.Tensor | None, seed: int) -> torch.Tensor:
    _check_embeddings(prototypes, class_embeddings)
    return align_to_text(prototypes, class_embeddings, seed=seed)[0]  # type: ignore[arg-type]


# name -> fn(prototypes, class_embeddings, seed) -> LongTensor [K]: the prototype index of each class
ASSIGNERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor]] = {
    "random": _assign_random,
    "text": _assign_text,
}


def assignment_order(
    prototypes: torch.Tensor,
    class_embeddings: torch.Tensor | None = None,
    method: str = "random",
    seed: int = 0,
) -> torch.Tensor:
    """LongTensor [K]: entry c is the index of the prototype that class c gets.

    "text": align_to_text, the assignment and rotation that carry class_embeddings [K, e] onto the prototypes,
    so classes with similar text get nearby prototypes (where the code has nearer and farther pairs). Each
    linear assignment holds a dense K x K float64 matrix: 530 MB at K = 8142. "random": a seeded permutation.
    """
    if method not in ASSIGNERS:
        raise ValueError(f"unknown prototype assignment method {method!r}; choose from {sorted(ASSIGNERS)}")
    return ASSIGNERS[method](prototypes, class_embeddings, seed)


def assign_prototypes(
    prototypes: torch.Tensor,
    class_embeddings: torch.Tensor | None = None,
    method: str = "random",
    seed: int = 0,
) -> torch.Tensor:
    """P with rows permuted so that row c is class c's prototype (see assignment_order)."""
    order = assignment_order(prototypes, class_embeddings, method=method, seed=seed)  # [K]
    return prototypes[order.to(prototypes.device)]  # [K, d]
