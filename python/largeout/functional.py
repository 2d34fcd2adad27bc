"""Functional interface of largeout's layers."""

import numbers
import warnings
from typing import Optional

import torch

__all__ = ["group_sparse_linear", "validate_indices", "GROUP_SIZES", "MAX_FAN_IN"]

#: Group sizes the kernels are compiled for.
GROUP_SIZES = (16, 32, 64, 128)
#: Largest fan-in K (K must also be a multiple of 8).
MAX_FAN_IN = 4096


def group_sparse_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    indices: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    group_size: Optional[int] = None,
) -> torch.Tensor:
    """Group-shared fixed fan-in linear layer.

    ``y[..., l] = bias[l] + sum_k weight[l, k] * x[..., indices[l // G, k]]``

    Labels (output features) are split into groups of ``G = group_size``; every
    label of a group reads the same ``K`` inputs ``indices[g]`` but has its own
    weights. The last group may be partial.

    Args:
        x: ``[*, H]`` input, float32, float64, bfloat16 or float16.
        weight: ``[L, K]``, same dtype and device as ``x``.
        indices: ``[ceil(L / G), K]`` int32, each row unique values in ``[0, H)``
            (checked by :func:`validate_indices` and by the module when indices are
            set; on the CPU each call also checks that the values lie in ``[0, H)``,
            on CUDA not: that would copy a result to the host at every call).
        bias: optional ``[L]``.
        group_size: ``G``, one of 16, 32, 64, 128.

    Returns:
        ``[*, L]`` in the dtype of ``x``. Accumulation is fp32 (fp64 for fp64).
        Gradients flow to ``x``, ``weight`` and ``bias``; the input gradient is
        deterministic.

    Under forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``) and
    ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ...), which largeout's
    kernels do not define, the same product runs as plain torch ops (a gather of
    ``x[..., indices]``, ``[*, ceil(L / G), K]``, and a batched matmul), with a warning:
    slower, and that gather's memory.
    """
    _check_args(x, weight, indices, bias, group_size)
    group_size = int(group_size)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if transforms_active():
        y = _plain(x2, weight, indices, bias, group_size)
    else:
        y = torch.ops.largeout.group_sparse_linear(x2, weight, indices, bias, group_size)
    return y.reshape(*lead, y.shape[-1])


def is_exporting() -> bool:
    """Whether ``torch.export`` is tracing. ``torch.compiler.is_exporting()`` is not usable
    inside a function that dynamo traces on torch 2.11: its dynamo folds the call to True,
    under plain ``torch.compile`` too. The flag the call returns, which ``torch.export`` sets
    while it traces, is read directly instead (dynamo reads its true value on 2.11 and 2.14)."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def transforms_active() -> bool:
    """Whether forward-mode AD or a ``torch.func`` transform is active: autograd Functions
    and ops without jvp / vmap rules (largeout's) give errors or lose tangents there."""
    return (getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0
            or torch._C._are_functorch_transforms_active())


def _plain(x2, weight, indices, bias, group_size):
    """``group_sparse_linear`` of ``x2 [M, H]`` as differentiable torch ops (any transform)."""
    warnings.warn("largeout.group_sparse_linear under forward-mode AD or a torch.func transform runs as plain "
                  "torch ops (a [M, L / G, K] gather of x and a batched matmul): slower, more memory", stacklevel=3)
    ng, K = indices.shape
    L = weight.shape[0]
    xg = x2[:, indices.long()]  # [M, ng, K]
    w = torch.nn.functional.pad(weight, (0, 0, 0, ng * group_size - L)).view(ng, group_size, K)
    y = torch.einsum("mnk,ngk->mng", xg, w).reshape(x2.shape[0], ng * group_size)[:, :L]
    return y + bias if bias is not None else y


_OP = "largeout.group_sparse_linear"
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_args(x, weight, indices, bias, group_size) -> None:
    """Shape, dtype and device checks (the values of indices: when they are set, and by the
    CPU op at each call)."""
    for name, t in (("x", x), ("weight", weight), ("indices", indices), ("bias", bias)):
        if not isinstance(t, torch.Tensor) and not (name == "bias" and t is None):
            raise TypeError(f"{_OP}: {name} must be a torch.Tensor{' or None' if name == 'bias' else ''}; got "
                            f"{type(t).__name__}")
    if group_size is None:
        raise TypeError(f"{_OP}: group_size is required (one of {GROUP_SIZES})")
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size not in GROUP_SIZES:
        raise ValueError(f"{_OP}: group_size must be one of {', '.join(map(str, GROUP_SIZES))}; got {group_size!r}")
    if x.dim() < 1:
        raise ValueError(f"{_OP}: x must have at least 1 dimension [*, H]; got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{_OP}: x must be float32, float64, bfloat16 or float16; got {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{_OP}: {name} must have the dtype of x ({x.dtype}); got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{_OP}: {name} must be on the device of x ({x.device}); got {t.device}")
    if weight.dim() != 2 or weight.shape[0] < 1:
        raise ValueError(f"{_OP}: weight must be 2-D [L, K] with L >= 1; got shape {tuple(weight.shape)}")
    if indices.device != x.device:
        raise ValueError(f"{_OP}: indices must be on the device of x ({x.device}); got {indices.device}")
    L, H = weight.shape[0], x.shape[-1]
    K = _check_index_table(indices, H, L, group_size, prefix=f"{_OP}: ")
    if weight.shape[1] != K:
        raise ValueError(f"{_OP}: weight must be [L, K] with K = indices.shape[1] = {K}; got shape {tuple(weight.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != L):
        raise ValueError(f"{_OP}: bias must be 1-D [{L}]; got shape {tuple(bias.shape)}")


def _check_index_table(indices: torch.Tensor, H: int, L: int, group_size: int, prefix: str = "") -> int:
    """Dtype and shape of an indices table (not its values); returns K."""
    if indices.dtype != torch.int32:
        raise TypeError(f"{prefix}indices must be int32; got {indices.dtype}")
    num_groups = -(-L // group_size)
    if indices.dim() != 2 or indices.shape[0] != num_groups:
        raise ValueError(
            f"{prefix}indices must have ceil(out_features / group_size) = ceil({L} / {group_size}) = {num_groups} "
            f"rows and 2 dimensions; got shape {tuple(indices.shape)}"
        )
    K = indices.shape[1]
    if K < 8 or K % 8 or K > MAX_FAN_IN:
        raise ValueError(f"{prefix}fan-in K (indices.shape[1]) must be a multiple of 8 in [8, {MAX_FAN_IN}]; got {K}")
    if K > H:
        raise ValueError(f"{prefix}fan-in K = {K} cannot exceed in_features H = {H} (indices are unique within a group)")
    return K


def validate_indices(indices: torch.Tensor, in_features: int, out_features: int, group_size: int) -> None:
    """Raise ``ValueError`` unless ``indices`` is a valid ``[ceil(L/G), K]`` int32
    table: values in ``[0, in_features)``, unique within each row, K a multiple of
    8 in ``[8, MAX_FAN_IN]`` (a meta tensor: dtype and shape only). Leaves ``indices``
    unchanged."""
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"indices must be a torch.Tensor; got {type(indices).__name__}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}; got {group_size}")
    _check_index_table(indices, in_features, out_features, group_size)
    if indices.numel() == 0 or indices.is_meta:  # (a meta tensor has no values: checked when real ones come)
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= in_features:
        bad = indices[(indices < 0) | (indices >= in_features)][0].item()
        raise ValueError(f"indices must lie in [0, in_features) = [0, {in_features}); found {bad}")
    srt = indices.sort(dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
    if bool(dup.any()):
        g = int(dup.nonzero()[0, 0])
        raise ValueError(f"indices must be unique within each group (row); row {g} has a repeated value")
