"""Float64 reference implementations (oracles for the tests).

Written for clarity, not speed: every function here upcasts to float64 on the
CPU and uses plain torch ops, independently of largeout's kernels.
"""

from typing import Optional, Tuple

import torch

__all__ = ["group_sparse_linear", "group_sparse_linear_grads", "group_sparse_to_dense", "representable_values",
           "rounding_neighbours"]


def _padded_weight(weight: torch.Tensor, num_groups: int, group_size: int) -> torch.Tensor:
    L, K = weight.shape
    w = torch.zeros(num_groups * group_size, K, dtype=torch.float64)
    w[:L] = weight.detach().to("cpu", torch.float64)
    return w.view(num_groups, group_size, K)


def group_sparse_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    indices: torch.Tensor,
    bias: Optional[torch.Tensor],
    group_size: int,
) -> torch.Tensor:
    """``y[..., l] = bias[l] + sum_k weight[l, k] x[..., indices[l // G, k]]`` in float64 on the CPU."""
    L = weight.shape[0]
    idx = indices.to("cpu", torch.long)
    num_groups = idx.shape[0]
    x64 = x.to("cpu", torch.float64)
    lead = x64.shape[:-1]
    x2 = x64.reshape(-1, x64.shape[-1])
    xg = x2[:, idx]  # [B, num_groups, K]
    w = _padded_weight(weight, num_groups, group_size)  # [num_groups, G, K]
    y = torch.einsum("bgk,gjk->bgj", xg, w).reshape(x2.shape[0], -1)[:, :L]
    if bias is not None:
        y = y + bias.to("cpu", torch.float64)
    return y.reshape(*lead, L)


def group_sparse_linear_grads(
    x: torch.Tensor,
    weight: torch.Tensor,
    indices: torch.Tensor,
    bias: Optional[torch.Tensor],
    group_size: int,
    grad_out: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(dx, dweight, dbias) in float64 from explicit formulas (no autograd):
    ``dx[b, idx[g,k]] += sum_j dy[b, gG+j] w[gG+j, k]``, ``dw[l, k] = sum_b dy[b, l] x[b, idx[l/G, k]]``."""
    L, K = weight.shape
    idx = indices.to("cpu", torch.long)
    num_groups = idx.shape[0]
    H = x.shape[-1]
    x2 = x.to("cpu", torch.float64).reshape(-1, H)
    B = x2.shape[0]
    dy = torch.zeros(B, num_groups * group_size, dtype=torch.float64)
    dy[:, :L] = grad_out.to("cpu", torch.float64).reshape(B, L)
    dy = dy.view(B, num_groups, group_size)
    w = _padded_weight(weight, num_groups, group_size)
    part = torch.einsum("bgj,gjk->bgk", dy, w)  # [B, num_groups, K]
    dx = torch.zeros(B, H, dtype=torch.float64)
    dx.index_add_(1, idx.reshape(-1), part.reshape(B, -1))
    xg = x2[:, idx]  # [B, num_groups, K]
    dw = torch.einsum("bgj,bgk->gjk", dy, xg).reshape(-1, K)[:L]
    db = dy.reshape(B, -1)[:, :L].sum(0) if bias is not None else None
    return dx.reshape(x.shape), dw, db


def group_sparse_to_dense(weight: torch.Tensor, indices: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """The equivalent dense ``[L, H]`` float64 weight."""
    L, K = weight.shape
    idx = indices.to("cpu", torch.long)
    rows = idx.repeat_interleave(group_size, dim=0)[:L]  # [L, K]
    dense = torch.zeros(L, in_features, dtype=torch.float64)
    dense.scatter_(1, rows, weight.detach().to("cpu", torch.float64))
    return dense


def representable_values(dtype: torch.dtype) -> torch.Tensor:
    """All finite values of a 16- or 8-bit float format, sorted, as float64 (from every
    bit pattern, through torch's own decoding); zero once, as +0.0."""
    nbits = torch.finfo(dtype).bits
    raw = torch.arange(2**nbits, dtype=torch.int32).to(torch.int16 if nbits == 16 else torch.uint8)
    vals = raw.view(dtype).to(torch.float64)
    vals = vals[torch.isfinite(vals)]
    vals = torch.unique(vals)  # sorted; -0 and +0 merge (into either)
    return torch.where(vals == 0, torch.zeros_like(vals), vals)  # the zero is +0.0


def rounding_neighbours(x: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(toward zero, away from zero) representable neighbours of finite float values x
    whose magnitude is at most the format's largest finite value (equal when x is
    representable), in float64."""
    vals = representable_values(dtype)
    x64 = x.detach().to("cpu", torch.float64).reshape(-1)
    i = torch.searchsorted(vals, x64, right=True) - 1  # vals[i] <= x
    i = i.clamp(0, len(vals) - 1)
    below = vals[i]
    exact = below == x64
    above = torch.where(exact, below, vals[(i + 1).clamp(max=len(vals) - 1)])
    neg = x64 < 0
    toward = torch.where(neg, above, below)
    away = torch.where(neg, below, above)
    return toward.reshape(x.shape), away.reshape(x.shape)
