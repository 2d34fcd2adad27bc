"""Low-precision weights for the output layers: bf16, fp16 and fp8 (e4m3fn, e5m2).

16-bit weights are ordinary parameters: autograd gives them gradients of their own
dtype. fp8 tensors cannot carry autograd gradients, so an fp8 weight is a parameter
with ``requires_grad=False`` that the layer upcasts to bf16 for the matmuls (the
emulated path: no FP8 tensor cores yet); the gradient of that upcast copy is
accumulated, in bf16, into ``weight.grad``, where ``largeout.optim`` finds it. The
bf16 copy exists only for the duration of a forward/backward; no fp32 copy of the
weights is ever made, initialization included (drawn in chunks and stochastically
rounded).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..precision import stochastic_round

__all__ = ["WEIGHT_DTYPES", "FP8_DTYPES", "compute_dtype", "init_uniform_", "weight_for_compute", "check_weight_dtype"]

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
WEIGHT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16) + FP8_DTYPES
_INIT_CHUNK = 1 << 22  # fp32 elements drawn at once when initialising low-precision weights


def check_weight_dtype(layer: str, weight_dtype) -> torch.dtype:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{layer}: weight_dtype must be one of {', '.join(map(str, WEIGHT_DTYPES))}; "
                         f"got {weight_dtype}")
    return weight_dtype


def compute_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """dtype of the layer's matmuls: the weight's own, bf16 for fp8 weights."""
    return torch.bfloat16 if weight_dtype in FP8_DTYPES else weight_dtype


def init_uniform_(t: torch.Tensor, bound: float, generator: Optional[torch.Generator] = None) -> None:
    """``t ~ U(-bound, bound)`` in ``t``'s dtype, drawn in fp32 chunks (never a full fp32
    copy) and stochastically rounded to fp8 (round to nearest for wider formats)."""
    flat = t.detach().view(-1)
    gen_dev = generator.device if generator is not None else t.device
    for i in range(0, flat.numel(), _INIT_CHUNK):
        part = flat[i : i + _INIT_CHUNK]
        tmp = torch.empty(part.shape, dtype=torch.float32, device=gen_dev).uniform_(-bound, bound, generator=generator)
        if t.dtype in FP8_DTYPES:
            tmp = stochastic_round(tmp, t.dtype, generator=generator)
        part.copy_(tmp.to(part.device))


class _FromStored(torch.autograd.Function):
    """Upcast of a stored low-precision weight whose gradient goes to ``weight.grad`` (bf16).
    ``anchor`` is an empty tensor that requires grad, so autograd calls backward."""

    @staticmethod
    def forward(ctx, anchor, weight, dtype):
        ctx.weight = weight
        return weight.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.weight
        g = grad.to(torch.bfloat16)
        if w.grad is None:
            w.grad = g
        else:
            w.grad = w.grad + g
        return None, None, None


def weight_for_compute(weight: torch.Tensor) -> torch.Tensor:
    """The weight as the layer's matmuls take it: itself, or (fp8) its bf16 upcast whose
    gradient is routed into ``weight.grad`` when grad mode is on."""
    if weight.dtype not in FP8_DTYPES:
        return weight
    if not torch.is_grad_enabled():
        return weight.to(torch.bfloat16)
    anchor = torch.empty(0, device=weight.device, requires_grad=True)
    return _FromStored.apply(anchor, weight, torch.bfloat16)


def make_weight(shape, weight_dtype: torch.dtype, device, row_multiple: int = 1) -> torch.nn.Parameter:
    """An uninitialised weight parameter (fp8: ``requires_grad=False`` and any gradient
    dtype allowed, see the module notes). ``row_multiple`` > 1: the parameter is the
    first ``shape[0]`` rows of a zero-filled storage whose row count is a multiple of it."""
    fp8 = weight_dtype in FP8_DTYPES
    rows = -(-shape[0] // row_multiple) * row_multiple
    if rows == shape[0]:
        data = torch.empty(shape, dtype=weight_dtype, device=device)
    else:
        data = torch.zeros((rows,) + tuple(shape[1:]), dtype=weight_dtype, device=device)[: shape[0]]
    p = torch.nn.Parameter(data, requires_grad=not fp8)
    if fp8:
        p.grad_dtype = None
    return p
