"""``largeout.nn.Linear``: a drop-in ``nn.Linear`` whose weight may be bf16, fp16 or fp8."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import fp8, lowp

__all__ = ["Linear"]


def _default_activation_dtype(weight_dtype: torch.dtype, in_features: int) -> Optional[torch.dtype]:
    """``Linear``'s default ``activation_dtype``: for e4m3 weights e4m3 where ``in_features`` is
    a multiple of 16 (FP8 GEMMs), else bf16; None for other weight dtypes."""
    if weight_dtype != torch.float8_e4m3fn:
        return None
    return torch.float8_e4m3fn if in_features % 16 == 0 else torch.bfloat16


class Linear(lowp.ScaledWeightMixin, nn.Module):
    r"""``y = x W^T + b`` with the weight stored in ``weight_dtype``.

    Args:
        in_features, out_features, bias, device: as ``nn.Linear``.
        dtype: dtype of the bias (and of the weight when ``weight_dtype`` is None);
            default float32, or bf16 when the weight is fp8.
        weight_dtype: float32, bfloat16, float16, float8_e4m3fn or float8_e5m2. The
            matmuls run in the weight's dtype; e5m2 weights are upcast to bf16 on the fly
            (see :mod:`largeout.nn.lowp`), e4m3 weights multiply e4m3 inputs by default
            (``activation_dtype``). The input is cast to the compute dtype and the output
            cast back to the input's dtype. Train low-precision weights with
            ``largeout.optim`` (stochastic rounding; fp8 weights receive bf16 gradients;
            freeze any weight with ``requires_grad_(False)``). A cast (``.float()``,
            ``.to(dtype)``, ...) gives the layer the constructor gives for the new weight
            dtype (see :class:`largeout.nn.lowp.ScaledWeightMixin`).
        activation_dtype: for e4m3 weights, what the input is multiplied as:
            ``torch.float8_e4m3fn`` (the input scaled into e4m3, FP8 tensor cores, see
            :mod:`largeout.nn.fp8`; the default for e4m3 weights when ``in_features`` is
            a multiple of 16, which FP8 GEMMs need) or ``torch.bfloat16`` (the weight
            upcast, bf16 tensor cores; the default otherwise). Must be None for other
            weight dtypes.
        generator: random source of the initial values.
        weight_scale: None, or ``"label"`` for an fp8 weight: one float32 power-of-two
            scale per output row (``weight_scale`` buffer; the layer's weights are
            ``weight * weight_scale[:, None]``; see :mod:`largeout.nn.lowp`), which keeps the
            values in the format's normal range; ``rescale_weight_()`` re-chooses the scales
            during training. Needs ``in_features`` a multiple of 8. With e4m3 activations the
            FP8 GEMM applies one scale per label in its epilogue.

    Initialization as ``nn.Linear`` (``U(-1/sqrt(in_features), 1/sqrt(in_features))``),
    drawn in fp32 chunks and rounded (stochastically for fp8), never as a full fp32 copy.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 weight_dtype: Optional[torch.dtype] = None, generator: Optional[torch.Generator] = None,
                 activation_dtype: Optional[torch.dtype] = None, weight_scale: Optional[str] = None) -> None:
        super().__init__()
        in_features, out_features = lowp.check_layer_args(
            "Linear", dict(in_features=in_features, out_features=out_features), dtype, generator).values()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: in_features and out_features must be >= 1; got {in_features}, {out_features}")
        if weight_dtype is None:
            weight_dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.weight_dtype = lowp.check_weight_dtype("Linear", weight_dtype)
        if dtype is None:
            dtype = torch.bfloat16 if weight_dtype in lowp.FP8_DTYPES else weight_dtype
        e4m3 = weight_dtype == torch.float8_e4m3fn
        if activation_dtype is None:
            activation_dtype = _default_activation_dtype(weight_dtype, in_features)
        allowed = (torch.float8_e4m3fn, torch.bfloat16) if e4m3 else (None,)
        if activation_dtype not in allowed:
            raise ValueError(f"Linear: activation_dtype must be {' or '.join(map(str, allowed))} for weight_dtype "
                             f"{weight_dtype}; got {activation_dtype}")
        if activation_dtype == torch.float8_e4m3fn and in_features % 16:
            raise ValueError(f"Linear: activation_dtype float8_e4m3fn needs in_features divisible by 16 (FP8 "
                             f"GEMMs); got in_features={in_features}; use activation_dtype=torch.bfloat16")
        self.activation_dtype = activation_dtype
        self.in_features, self.out_features = in_features, out_features
        rows = fp8.ROW_MULTIPLE if activation_dtype == torch.float8_e4m3fn else 1  # see fp8.padded_weight
        self.weight = lowp.make_weight((out_features, in_features), weight_dtype, device, row_multiple=rows)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None
        self._init_weight_scale("Linear", weight_scale, device)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            if self.weight_scale is not None:
                self._init_scaled_uniform_(bound, generator)
            else:
                lowp.init_uniform_(self.weight, bound, generator)
            if self.bias is not None:
                lowp.init_uniform_(self.bias, bound, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: x must be [*, in_features = {self.in_features}]; got shape {tuple(x.shape)}")
        lowp.check_input_dtype("Linear", x)
        if self.activation_dtype == torch.float8_e4m3fn:
            return fp8.fp8_linear(x, self.weight, self.bias, self.weight_scale).to(x.dtype)
        cdt = lowp.compute_dtype(self.weight.dtype)
        w = lowp.weight_for_compute(self.weight, self.weight_scale)
        b = self.bias.to(cdt) if self.bias is not None else None
        return nn.functional.linear(x.to(cdt), w, b).to(x.dtype)

    def _weight_dtype_changed(self) -> None:
        # A cast (module.float(), .to(dtype), ...) or an assigned weight of another dtype: the
        # activation dtype the constructor gives that weight dtype (an e4m3 weight's storage
        # padded for the FP8 GEMM, as the constructor allocates it).
        super()._weight_dtype_changed()
        self.activation_dtype = _default_activation_dtype(self.weight.dtype, self.in_features)
        if self.activation_dtype == torch.float8_e4m3fn:
            fp8.padded_weight(self.weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight_dtype={self.weight.dtype}" +
                (f", activation_dtype={self.activation_dtype}" if self.activation_dtype is not None else "") +
                (", weight_scale=label" if self.weight_scale is not None else ""))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        self._check_loaded_scale(state_dict, prefix)  # before anything of this module is written
        if self._state_fits(state_dict, prefix, error_msgs):
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
