"""``largeout.nn.Linear``: a drop-in ``nn.Linear`` whose weight may be bf16, fp16 or fp8."""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
from torch import nn

from ..functional import is_exporting, transforms_active
from . import fp8, lowp

__all__ = ["Linear"]


def _default_activation_dtype(weight_dtype: torch.dtype, in_features: int) -> Optional[torch.dtype]:
    """``Linear``'s default ``activation_dtype``: for e4m3 weights e4m3 where ``in_features`` is
    a multiple of 16 (FP8 GEMMs), else bf16; None for other weight dtypes."""
    if weight_dtype != torch.float8_e4m3fn:
        return None
    return torch.float8_e4m3fn if in_features % 16 == 0 else torch.bfloat16


def _output_multiple(cdt: torch.dtype) -> int:
    """Output columns per 16 bytes in the compute dtype ``cdt``: cuBLAS runs several times
    slower on rows that are not 16-byte aligned (bench/bench_linear_pad.py)."""
    return 16 // cdt.itemsize


def _pads_output(weight: torch.Tensor, cdt: torch.dtype) -> bool:
    """Whether the layer's forward writes a ``[M, L_pad]`` output (16-byte aligned rows) and
    returns its first L columns (:class:`_PaddedLinearFn`). ``LARGEOUT_LINEAR_PAD`` = ``auto``
    (the default: on CUDA, for 16-bit compute, where L is not a multiple of 16 bytes' worth of
    columns), ``1`` (on any device and dtype, e.g. to test it on the CPU) or ``0`` (never:
    ``nn.functional.linear``). Also
    ``nn.functional.linear`` under ``torch.func`` transforms and forward-mode AD, and in eager
    mode for a weight that is not in padded storage of its own (``has_padded_storage`` exact:
    e.g. one assigned or loaded with ``assign=True``, until the module is moved or cast).
    ``torch.compile`` takes the ops ``padded_linear`` (which test the storage when they run:
    a compiled graph outlives a weight's ``.data``) for any weight but an fp8 one."""
    env = os.environ.get("LARGEOUT_LINEAR_PAD", "auto")
    if env not in ("auto", "0", "1"):
        raise ValueError(f"LARGEOUT_LINEAR_PAD must be auto, 0 or 1; got {env!r}")
    if env == "0" or weight.shape[0] % _output_multiple(cdt) == 0 or (env == "auto" and not weight.is_cuda):
        return False
    if env == "auto" and cdt in (torch.float32, torch.float64):  # (cuBLAS's fp32 GEMMs lose little at odd L:
        return False  # the path cost 5% of the step and 18% more memory, bench/results/linear_pad_s48_h100.json)
    if torch.compiler.is_compiling():  # (the op padded_linear; its storage test runs inside it)
        # (not in an exported graph: a Python op that runtimes without Python, AOTInductor, lack)
        return weight.dtype not in lowp.FP8_DTYPES and not is_exporting()
    if transforms_active():
        return False
    return fp8.has_padded_storage(weight, exact=True)


def _first_columns(y: torch.Tensor, L: int) -> torch.Tensor:
    """``y [M, L_pad]``'s first L columns as a tensor of their own (strides ``(L_pad, 1)``, the
    same storage), not a view: autograd lets a caller modify it in place, which it refuses for
    a view made inside an autograd Function."""
    if y.shape[1] == L:
        return y
    return torch.empty((0,), dtype=y.dtype, device=y.device).set_(y.untyped_storage(), y.storage_offset(),
                                                                  (y.shape[0], L), (y.stride(0), 1))


def _aligned_rows(weight: torch.Tensor, Lp: int) -> torch.Tensor:
    """``weight [L, H]`` as ``[Lp, H]`` with zero rows after its last: a view of its padded
    storage where it has such storage of its own (``has_padded_storage``, exact: as the layer
    allocates it), else a padded copy (a weight that is not, reached through the op
    ``padded_linear`` of a compiled graph)."""
    if fp8.has_padded_storage(weight, exact=True):
        return fp8.padded_weight(weight)[:Lp]
    return torch.nn.functional.pad(weight.detach(), (0, 0, 0, Lp - weight.shape[0]))


def _padded_forward(x2, weight, bias, scale, cdt):
    """:class:`_PaddedLinearFn`'s forward: (the ``[M, L]`` columns of the ``[M, L_pad]`` result,
    L_pad, the ``[L_pad, H]`` weight it multiplied, in ``cdt``)."""
    L = weight.shape[0]
    Lp = fp8._round_up(L, _output_multiple(cdt))
    w_full = _aligned_rows(weight, Lp)
    if weight.dtype in lowp.FP8_DTYPES:
        sw = None if scale is None else torch.nn.functional.pad(scale.float(), (0, Lp - L), value=1.0)
        w_full = lowp.dequantize(w_full, sw, cdt)
    else:
        w_full = w_full.to(cdt)  # (a copy under autocast only: see lowp.matmul_dtypes)
    xc = x2.detach().to(cdt)
    if bias is not None:
        y = torch.addmm(torch.nn.functional.pad(bias.detach().to(cdt), (0, Lp - L)), xc, w_full.t())
    else:
        y = xc @ w_full.t()
    return _first_columns(y, L), Lp, w_full


class _PaddedLinearFn(torch.autograd.Function):
    """``y = x W^T + b`` at a label count L whose output rows would not be 16-byte aligned,
    on aligned GEMMs only: the forward multiplies the weight's zero-padded ``[L_pad, H]``
    storage into an ``[M, L_pad]`` result and returns its first L columns; the backward copies
    dY into a zero-padded ``[M, L_pad]`` buffer (bf16/fp16: in one pass that also sums the
    bias gradient, ``torch.ops.largeout.pad_columns_sum``) and runs dx and dW on it. fp8
    weights (bf16 compute) are upcast for the forward and, in label chunks, again for dx;
    their gradient is bf16, with respect to the scaled weight, as on the layer's other paths.
    A backward that builds a graph (``create_graph=True``: double backward) runs the plain
    differentiable formulas instead."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x2, weight, probe, bias, scale, cdt):
        lowp.note_inputs(ctx, x2, weight, probe, bias, scale)
        y, Lp, w_full = _padded_forward(x2, weight, bias, scale, cdt)
        is_fp8 = weight.dtype in lowp.FP8_DTYPES
        # under autocast, the weight cast to the compute dtype, kept for dx as autocast keeps
        # nn.Linear's (not cast again in the backward: at millions of labels a cast costs ms)
        ctx.w_cast = w_full if not is_fp8 and weight.dtype != cdt and ctx.needs_input_grad[0] else None
        ctx.save_for_backward(x2 if ctx.needs_input_grad[2] else None,
                              weight if ctx.needs_input_grad[0] and not is_fp8 else None)
        ctx.weight = weight if is_fp8 else None  # (live, as on the fp8 path: changed only by the step)
        ctx.scale, ctx.cdt, ctx.Lp = scale, cdt, Lp
        ctx.x_dtype = x2.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")  # (under the forward's autocast state, as nn.functional.linear's)
    def backward(ctx, gy):
        x2, w = ctx.saved_tensors
        if ctx.weight is not None:
            w = ctx.weight
        Lp, cdt = ctx.Lp, ctx.cdt
        want_dx, want_dw = lowp.wants_grad(ctx, 0), lowp.wants_grad(ctx, 2)
        want_db = ctx.bias_dtype is not None and lowp.wants_grad(ctx, 3)
        if not (want_dx or want_dw or want_db):
            return None, None, None, None, None, None
        g = gy.to(cdt)
        if torch.is_grad_enabled():  # create_graph: differentiable ops on the inputs themselves
            dx = (g @ lowp.weight_for_compute(w, ctx.scale).to(cdt)).to(ctx.x_dtype) if want_dx else None
            dw = g.t() @ x2.to(cdt) if want_dw else None
            db = gy.sum(0).to(ctx.bias_dtype) if want_db else None
            return dx, dw, None, db, None, None
        dx, dw, colsum = _padded_backward(g, x2, w, ctx.scale, cdt, Lp, want_dx, want_dw, want_db, ctx.w_cast)
        ctx.w_cast = None
        return (dx.to(ctx.x_dtype) if want_dx else None, dw, None,
                colsum.to(ctx.bias_dtype) if want_db else None, None, None)


def _padded_backward(g, x2, w, scale, cdt, Lp, want_dx, want_dw, want_db, w_cast=None):
    """The backward of :func:`_padded_forward` for dY ``g [M, L]`` (in ``cdt``) on aligned GEMMs:
    (dx in ``cdt`` or fp32, dW ``[L, H]``, dY's column sums), each None where not wanted.
    ``w_cast``: the forward's ``[L_pad, H]`` weight in ``cdt`` where it kept it."""
    L = g.shape[1]
    colsum = None
    if cdt in (torch.bfloat16, torch.float16):
        g, colsum = torch.ops.largeout.pad_columns_sum(g, _output_multiple(cdt), True, want_db)  # -> [M, Lp]
    else:
        if want_db:
            colsum = g.sum(0)
        g = torch.nn.functional.pad(g, (0, Lp - L))
    dx = dw = None
    if want_dx:
        w_full = w_cast if w_cast is not None else _aligned_rows(w, Lp)
        dx = fp8.dx_through_upcast(g, w_full, scale) if w.dtype in lowp.FP8_DTYPES else g @ w_full.to(cdt)
    if want_dw:
        dw = (g.t() @ x2.to(cdt))[:L]
    return dx, dw, colsum if want_db else None


# torch.compile's path (``_pads_output``): the same forward and backward as two ops that it
# does not trace into, since it cannot follow the weight's padded storage. fp8 weights, whose
# bf16 gradient a compiled backward would cast to fp8, stay on ``nn.functional.linear`` there.
@torch.library.custom_op("largeout::padded_linear", mutates_args=())
def _padded_linear_op(x2: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      cdt: torch.dtype) -> torch.Tensor:
    return _padded_forward(x2, weight, bias, None, cdt)[0]


@_padded_linear_op.register_fake
def _(x2, weight, bias, cdt):
    Lp = fp8._round_up(weight.shape[0], _output_multiple(cdt))
    return x2.new_empty_strided((x2.shape[0], weight.shape[0]), (Lp, 1), dtype=cdt)


@torch.library.custom_op("largeout::padded_linear_backward", mutates_args=())
def _padded_linear_backward_op(gy: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, cdt: torch.dtype,
                               want_dx: bool, want_dw: bool,
                               want_db: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dW, dY's column sums) of ``padded_linear`` (dtypes: ``_backward_dtypes``); an
    empty tensor for each not wanted."""
    Lp = fp8._round_up(weight.shape[0], _output_multiple(cdt))
    out = _padded_backward(gy.to(cdt), x2, weight, None, cdt, Lp, want_dx, want_dw, want_db)
    return tuple(t if t is not None else gy.new_empty(0, dtype=dt) for t, dt in zip(out, _backward_dtypes(cdt)))


def _backward_dtypes(cdt: torch.dtype):
    """dtypes of ``padded_linear_backward``'s three results (pad_columns_sum sums 16-bit dY in fp32)."""
    return cdt, cdt, (torch.float32 if cdt in (torch.bfloat16, torch.float16) else cdt)


@_padded_linear_backward_op.register_fake
def _(gy, x2, weight, cdt, want_dx, want_dw, want_db):
    (M, H), L = x2.shape, weight.shape[0]
    dx_dt, dw_dt, db_dt = _backward_dtypes(cdt)
    return (gy.new_empty((M, H) if want_dx else (0,), dtype=dx_dt),
            gy.new_empty((L, H) if want_dw else (0,), dtype=dw_dt),
            gy.new_empty((L,) if want_db else (0,), dtype=db_dt))


def _padded_linear_setup(ctx, inputs, output):
    x2, weight, bias, cdt = inputs
    ctx.save_for_backward(x2, weight)
    ctx.cdt, ctx.x_dtype, ctx.w_dtype = cdt, x2.dtype, weight.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _padded_linear_grad(ctx, gy):
    x2, w = ctx.saved_tensors
    want_dx, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    want_db = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
    dx, dw, db = torch.ops.largeout.padded_linear_backward(gy, x2, w, ctx.cdt, want_dx, want_dw, want_db)
    return (dx.to(ctx.x_dtype) if want_dx else None, dw.to(ctx.w_dtype) if want_dw else None,
            db.to(ctx.bias_dtype) if want_db else None, None)


_padded_linear_op.register_autograd(_padded_linear_grad, setup_context=_padded_linear_setup)


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
            cast back to the input's dtype; under ``torch.autocast`` the layer multiplies in
            the autocast dtype and returns it, as ``nn.Linear`` does (fp8 weights multiply
            in bf16 there; float64 layers ignore autocast). Train low-precision weights with
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
    drawn in fp32 chunks and rounded (stochastically for fp8), never as a full fp32 copy;
    float32 weights get the same values as ``nn.Linear``'s from the same random state.

    Unaligned label counts: cuBLAS runs several times slower when the output's rows are not
    16 bytes apart (``out_features`` not a multiple of 8 in bf16/fp16, of 4 in fp32). The
    weight is stored with up to 15 zero rows after its last one (``weight`` is the
    ``[out_features, in_features]`` part; a move or cast, ``module.to()``, re-pads it), and
    on CUDA at such a label count, in 16-bit compute (fp32 GEMMs lose little there), the layer multiplies into an ``[M, L_pad]`` result and
    returns its first ``out_features`` columns (row stride ``L_pad``: ``y.is_contiguous()``
    is False; ``y.contiguous()`` copies; in-place changes are fine), and its backward pads dY
    into an aligned buffer (one more dY-sized buffer at the peak). ``LARGEOUT_LINEAR_PAD=0``
    turns this off (``nn.functional.linear``), ``1`` turns it on for the CPU too.
    ``torch.compile`` runs it through two ops of its own (``torch.ops.largeout.padded_linear``
    and its backward), except for fp8 weights. The layer calls ``nn.functional.linear`` under
    ``torch.func`` transforms and forward-mode AD, for fp8 weights under ``torch.compile``, and
    in eager mode for a weight assigned or loaded with ``assign=True`` (its storage is not
    padded) until the module is moved or cast. Measurements: ``bench/bench_linear_pad.py``.
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
        # the weight's storage padded to whole 16-row blocks (zero rows after the last label): the
        # FP8 GEMMs' operand, and the aligned GEMMs of _PaddedLinearFn (see fp8.padded_weight)
        self.weight = lowp.make_weight((out_features, in_features), weight_dtype, device,
                                       row_multiple=fp8.ROW_MULTIPLE)
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
        cdt, out_dtype = lowp.matmul_dtypes(self.weight.dtype, x)
        with lowp.autocast_off(x.device.type):  # (the dtypes are chosen: fp8 weights multiply in bf16)
            return self._forward(x, cdt, out_dtype)

    def _forward(self, x: torch.Tensor, cdt: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor:
        if self.activation_dtype == torch.float8_e4m3fn:
            return fp8.fp8_linear(x, self.weight, self.bias, self.weight_scale).to(out_dtype)
        if _pads_output(self.weight, cdt):
            lead = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features)
            if torch.compiler.is_compiling():
                y = torch.ops.largeout.padded_linear(x2, self.weight, self.bias, cdt)
            elif lowp.records_graph(x, self.weight, self.bias):
                y = _PaddedLinearFn.apply(x2, self.weight, lowp.prepare_fp8_weight(self.weight), self.bias,
                                          self.weight_scale, cdt)
            else:  # (no graph to record: the forward without the autograd Function's host work)
                y = _padded_forward(x2, self.weight, self.bias, self.weight_scale, cdt)[0]
            return fp8.restore_lead(y.to(out_dtype), lead)
        w = lowp.weight_for_compute(self.weight, self.weight_scale)
        b = self.bias.to(cdt) if self.bias is not None else None
        return nn.functional.linear(x.to(cdt), w.to(cdt), b).to(out_dtype)

    def _apply(self, fn, *args, **kwargs):
        # A move or cast that gave the weight new storage (module.to(), .cuda(), .half(), ...)
        # gives it padded storage again; the forward never re-pads a weight (its storage may be
        # shared: a weight tied through .data or loaded with assign=True)
        ptr = self.weight.data_ptr()
        out = super()._apply(fn, *args, **kwargs)
        if self.weight.data_ptr() != ptr:
            self._repad_weight()
        return out

    def __setstate__(self, state):  # unpickling and copy.deepcopy (which copies the weight unpadded)
        super().__setstate__(state)
        if self._parameters.get("weight") is not None:
            self._repad_weight()

    def _repad_weight(self) -> None:
        """The weight moved into padded storage of its own (fp8.has_padded_storage, exact),
        where it is not in such storage already; storage of exactly that size with zero pad
        rows (an unpickled or loaded layer's, a storage shared between processes) is adopted,
        not copied."""
        w = self.weight
        if not w.is_meta and not fp8.has_padded_storage(w, exact=True) and not fp8.adopt_padded_storage(w):
            w.data = fp8._pad_storage(w.detach())

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
