"""Low-precision primitives: stochastic rounding.

``stochastic_round(x, dtype)`` rounds float32 values to bfloat16, float16,
float8_e4m3fn or float8_e5m2 *stochastically*: each value becomes one of its two
representable neighbours, the upper one with probability proportional to how close
it is, so the result is unbiased (``E[y] = x``). Updates much smaller than half an
ulp then still move a low-precision weight on average, which is what makes pure
BF16/FP8 training without FP32 master weights work.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["stochastic_round", "SR_DTYPES"]

#: Target formats of :func:`stochastic_round`.
SR_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)
_OP = "largeout.stochastic_round"


def _draw_key(generator: Optional[torch.Generator], device: torch.device) -> Tuple[int, int]:
    """(seed, offset) of the Philox stream, drawn from the generator (this advances it)."""
    if generator is None:
        generator = torch.default_generator if device.type == "cpu" else torch.cuda.default_generators[
            device.index if device.index is not None else torch.cuda.current_device()]
    key = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=generator, device=generator.device)
    seed, offset = key.tolist()
    return seed, offset


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Stochastically round float32 ``x`` to ``dtype``.

    Args:
        x: float32 tensor (CPU or CUDA).
        dtype: ``torch.bfloat16``, ``torch.float16``, ``torch.float8_e4m3fn`` or
            ``torch.float8_e5m2``.
        generator: where the random key (a Philox seed and offset) is drawn from;
            default: the default generator of ``x``'s device. The bits depend only on
            the key, so the same generator state gives the same result on the CPU and
            on a GPU when ``generator`` is a CPU generator.

    Returns:
        A tensor of ``dtype`` and ``x``'s shape. Every element is one of the two
        representable neighbours of ``x`` (or ``x`` itself when representable), the
        upper one with probability ``(|x| - |lo|) / (|hi| - |lo|)``, in the normal and
        subnormal ranges alike. Edges: magnitudes above the largest finite value
        saturate to it (rounding never overflows); ``+-inf`` stays infinite where the
        format has infinities and becomes ``+-max`` in ``float8_e4m3fn``; NaN stays NaN;
        zeros keep their sign.

    Rounding has no gradient: an ``x`` that requires grad is an error while grad mode is
    on (detach it, or call this under ``torch.no_grad()``, as optimizers do).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_OP}: x must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{_OP}: x must be float32; got {x.dtype}")
    if dtype not in SR_DTYPES:
        raise ValueError(f"{_OP}: dtype must be one of {', '.join(map(str, SR_DTYPES))}; got {dtype}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{_OP}: generator must be a torch.Generator or None; got {type(generator).__name__}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{_OP}: x must be on the CPU or a CUDA device; got {x.device}")
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{_OP}: x requires grad, but rounding has no gradient (the result would silently "
                           f"cut x off from backward); pass x.detach() or call it under torch.no_grad()")
    seed, offset = _draw_key(generator, x.device)
    return torch.ops.largeout.stochastic_round(x, dtype, seed, offset)
