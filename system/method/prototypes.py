"""Uniformly distributed class prototypes on the unit sphere (docs/method.md, stage 1).

K unit vectors in R^d with the largest pairwise cosine as small as possible (a spherical code), by regime:

- K <= d+1: the simplex equiangular tight frame, exact (every pairwise cosine -1/(K-1), the best possible).
- d+1 < K <= 2d: an orthogonal sum of K-d regular simplices (K=2d: the cross-polytope +-e_i). Every cosine across
  blocks is 0, which is optimal (Rankin: more than d+1 unit vectors always have a pair at cosine >= 0), and the
  vectors sum to zero, so the mean cosine is also the best possible, -1/(K-1).
- K > 2d: an optimiser (Adam on a smooth maximum of the pairwise cosines with an annealed temperature, rows
  kept on the sphere) from a seeded Gaussian start, compared with a binary quadratic-form code (Kerdock-type
  mutually unbiased bases in the largest power-of-two subspace, max cosine known exactly): the lower wins
  (build_prototypes). The Gram matrix is computed in row strips of its upper triangle with an online
  log-sum-exp, so memory is a strip (at most 2^23 entries, 32 MiB), never K x K; a step costs 1.5 K^2 d
  multiply-adds, on whatever device the caller passes.

The constructions live in system.method.sphere_codes, the optimiser in system.method.prototype_optimizer; this
module picks by regime (build_prototypes), measures (prototype_stats) and saves them with the class order
(save_prototypes); system.method.prototype_assignment assigns them to classes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from system.method.prototype_optimizer import default_steps, optimize_uniform, strip_rows
from system.method.sphere_codes import binary_code, binary_code_fits, orthoplex, simplex_etf

__all__ = [
    "METHODS",
    "binary_code",
    "binary_code_fits",
    "build_prototypes",
    "class_order_digest",
    "default_steps",
    "load_prototypes",
    "optimize_uniform",
    "orthoplex",
    "prototype_method",
    "prototype_stats",
    "save_prototypes",
    "simplex_etf",
    "uniform_prototypes",
]


# ------------------------------------------------------------------------------------------------- dispatch

METHODS = ("auto", "simplex_etf", "orthoplex", "optimized")


def prototype_method(num_classes: int, dim: int) -> str:
    """The exact construction when there is one: 'simplex_etf' (K <= d+1), 'orthoplex' (K <= 2d), else
    'optimized'."""
    if num_classes <= dim + 1:
        return "simplex_etf"
    return "orthoplex" if num_classes <= 2 * dim else "optimized"


def build_prototypes(
    num_classes: int, dim: int, seed: int = 0, method: str = "auto", **opt_kwargs: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Uniform prototypes [K, d] and how they were made ({"method": ..., "seconds": ..., optimiser info}).

    method "auto" picks prototype_method(K, d); "optimized" forces the optimiser (opt_kwargs go to it). Its init
    defaults to "auto": optimise from a Gaussian start, and return the binary code instead when one exists for
    (K, d) and has the lower max cosine (info then says init "code"; both values are in info).
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown prototype method {method!r}; choose from {METHODS}")
    if method == "auto":
        method = prototype_method(num_classes, dim)
    if method != "optimized" and opt_kwargs:
        raise ValueError(
            f"optimiser options {sorted(opt_kwargs)} only apply to method 'optimized', not {method!r}"
        )
    info: dict[str, Any] = {"method": method}
    if method == "simplex_etf":
        protos = simplex_etf(num_classes, dim, seed=seed)
    elif method == "orthoplex":
        protos = orthoplex(num_classes, dim, seed=seed)
    else:
        auto = opt_kwargs.get("init", "auto") == "auto"
        if auto:
            opt_kwargs["init"] = "gaussian"
        protos, opt_info = optimize_uniform(num_classes, dim, seed=seed, return_info=True, **opt_kwargs)
        info.update(opt_info)
        code = binary_code(num_classes, dim, seed=seed) if auto else None
        if code is not None:
            # Best of both: the optimiser from a Gaussian start wins where it has the steps (K=8142, d=512:
            # 0.053 in 120 steps against the code's 0.0625), the code where it is the tighter (d=1024: 1/32).
            info["optimized_max_cos"], info["code_max_cos"] = opt_info["max_cos"], code[1]
            if code[1] < opt_info["max_cos"]:
                protos = code[0]
                info.update(init="code", max_cos=code[1], picked="code")
    info["seconds"] = time.perf_counter() - t0
    return protos, info


def uniform_prototypes(num_classes: int, dim: int, seed: int = 0, **kwargs: Any) -> torch.Tensor:
    """Uniform prototypes [K, d]: build_prototypes(...) without the info."""
    return build_prototypes(num_classes, dim, seed=seed, **kwargs)[0]


def prototype_stats(prototypes: torch.Tensor, block_size: int | None = None) -> dict[str, float]:
    """min / mean / max cosine over distinct pairs (i < j) of the rows of P [K, d], in float64, one strip of the
    upper triangle at a time (memory a strip, not K x K)."""
    k = prototypes.shape[0]
    if k < 2:
        raise ValueError("prototype_stats needs at least 2 prototypes")
    p = F.normalize(prototypes.detach().double(), dim=1)  # [K, d]
    block = strip_rows(k, block_size)
    lo, hi, total = float("inf"), -float("inf"), 0.0
    for s in range(0, k, block):
        e = min(s + block, k)
        cos = p[s:e] @ p[s:].T  # [b, K-s]
        keep = torch.ones_like(cos, dtype=torch.bool)
        keep[:, : e - s] = torch.ones(e - s, e - s, dtype=torch.bool).triu_(diagonal=1)
        vals = cos[keep]
        if vals.numel():
            lo, hi, total = min(lo, float(vals.min())), max(hi, float(vals.max())), total + float(vals.sum())
    return {"min_cos": lo, "mean_cos": total / (k * (k - 1) / 2), "max_cos": hi}


# --------------------------------------------------------------------------------------------------- saving


def class_order_digest(class_names: Sequence[str]) -> str:
    """sha256 of the class names joined by newlines: a short fingerprint of the class order."""
    return hashlib.sha256("\n".join(class_names).encode("utf-8")).hexdigest()


def save_prototypes(
    path: str | Path,
    prototypes: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write P [K, d] (row c = class c) as float32 .npy at path (.npy appended if missing), and beside it the
    sidecar .json (same stem) with the class order.

    The sidecar holds num_classes, dim, class_names (row c's class; None means the classes are 0..K-1 in
    order), their sha256 and meta (seed, method, stats, ...). Returns the sidecar's path.
    """
    path = _npy(path)
    arr = np.asarray(prototypes.detach().cpu() if isinstance(prototypes, torch.Tensor) else prototypes)
    arr = arr.astype(np.float32)
    if arr.ndim != 2:
        raise ValueError(f"prototypes must be [K, d], got shape {arr.shape}")
    if class_names is not None and len(class_names) != arr.shape[0]:
        raise ValueError(f"{len(class_names)} class names for {arr.shape[0]} prototypes")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    names = None if class_names is None else [str(n) for n in class_names]
    sidecar = {
        "num_classes": int(arr.shape[0]),
        "dim": int(arr.shape[1]),
        "class_order": "row c is the prototype of class_names[c]" if names else "row c is class index c",
        "class_names": names,
        "class_names_sha256": None if names is None else class_order_digest(names),
        **(meta or {}),
    }
    side = path.with_suffix(".json")
    side.write_text(json.dumps(sidecar, indent=1) + "\n")
    return side


def load_prototypes(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(P [K, d] float32, sidecar dict) as written by save_prototypes; the sidecar is {} when missing."""
    path = _npy(path)
    side = path.with_suffix(".json")
    return np.load(path), (json.loads(side.read_text()) if side.exists() else {})


def _npy(path: str | Path) -> Path:
    """path with the .npy suffix np.save gives it anyway."""
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")
