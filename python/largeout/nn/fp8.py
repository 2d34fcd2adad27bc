"""FP8 matmuls of ``largeout.nn.Linear`` with e4m3 weights (``activation_dtype=e4m3``).

Forward: the input is quantized to e4m3 with one fp32 scale (``scale = amax / 448``,
round to nearest; by default one scale for the whole input, as torchao's tensorwise
float8 recipe) and multiplied by the stored e4m3 weight on FP8 tensor cores
(``torch._scaled_mm`` with Hopper's fast accumulation, scale and bias applied in the
epilogue, bf16 output). ``LARGEOUT_FP8_GEMM`` picks another recipe: ``tensor`` (fp32
promotion of the accumulator), ``row`` / ``row-fast`` (one scale per input row).
On sm_90 the default recipe runs largeout's own FP8 GEMM (``torch.ops.largeout.fp8_gemm``:
CUTLASS wgmma kernels whose persistent scheduler walks the batch's tiles of one label tile
together, so each weight tile is read from DRAM once; bench/bench_fp8.py times it against
``_scaled_mm``); ``LARGEOUT_FP8_KERNEL`` = ``cublas`` takes ``_scaled_mm`` instead and
``largeout:N`` a given kernel configuration (``torch.ops.largeout.fp8_gemm_configs()``).
On the CPU and on GPUs without FP8 tensor cores (before sm_89) the same product is
emulated: the e4m3 operands (exact in bf16) multiply on bf16 units with fp32
accumulation, then the scales and the bias are applied.

FP8 GEMMs take both operands K-major. The forward's are (the input ``[M, H]`` and the
label-major weight ``[L, H]`` both run along H); the backward's are not (dx reduces over
L, dW over the batch), and making them so means a transposed fp8 copy of the weight or of
``dY`` per step, which costs about what the bf16 GEMMs it would replace cost. So the
backward runs bf16 tensor cores: dx as ``dY @ W`` over label chunks upcast to bf16 (no
full bf16 copy of the weight), dW as ``dY^T @ x_hat`` with ``x_hat`` the dequantized
input the forward multiplied, into ``weight.grad`` (bf16). When L is not a multiple of 8,
``dY`` is first copied into a zero-padded ``[M, L_pad]`` buffer: cuBLAS runs several
times slower on a leading dimension that is not 16-byte aligned. That copy and the bias
gradient (dY's column sums) are one pass over dY (``torch.ops.largeout.pad_columns_sum``).

With per-label weight scales (``weight_scale="label"``, powers of two, see
:mod:`largeout.nn.lowp`) the forward's epilogue applies one scale per label (the input's
scale times the label's: largeout's FP8 GEMM takes such a vector; ``_scaled_mm`` takes
row-wise scales on both sides, the input's repeated per row), and dx's upcast of each
weight chunk applies its labels' scales in the same pass (exact in bf16). dW is the
gradient of the scaled weight, as ``largeout.optim`` expects.

``_scaled_mm`` needs the label count to be a multiple of 16: a weight whose label count
is not is stored with up to 15 zero rows after its last row (``weight`` is a view of the
first L rows; :func:`padded_weight` restores the padding after ``module.to()`` or a
replaced ``.data``), and the output is a ``[M, L]`` view of a ``[M, L_pad]`` result.
largeout's GEMM takes any label count: it reads the first L rows of the weight, the bias
and the scales as they are (no padded copies per call) and writes a ``[M, L]`` view of a
``[M, L8]`` result (L rounded up to 8, for 16-byte aligned rows).
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Tuple

import torch

from . import lowp

__all__ = ["E4M3_MAX", "ROW_MULTIPLE", "gemm_mode", "kernel_choice", "quantize", "padded_weight", "has_padded_storage",
           "fp8_linear", "fp8_tensor_cores", "restore_lead"]

E4M3_MAX = 448.0
ROW_MULTIPLE = 16  # label-count multiple that _scaled_mm takes (the weight's storage is padded to it)
_DX_CHUNK = 1 << 18  # labels upcast to bf16 at once for dx (400 MB at H = 768)


def _dx_chunk() -> int:
    """Labels per dx chunk: ``_DX_CHUNK``, or ``LARGEOUT_FP8_DX_CHUNK`` (a positive multiple
    of 8; timing comparisons, bench/bench_fp8.py: fewer, larger GEMMs against a larger bf16
    buffer)."""
    env = os.environ.get("LARGEOUT_FP8_DX_CHUNK")
    if env is None:
        return _DX_CHUNK
    if not env.isdigit() or int(env) < 8 or int(env) % 8:
        raise ValueError(f"LARGEOUT_FP8_DX_CHUNK must be a positive multiple of 8 (labels); got {env!r}")
    return int(env)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def fp8_tensor_cores(device: torch.device) -> bool:
    """Whether ``device`` runs e4m3 GEMMs on FP8 tensor cores (CUDA sm_89 and later)."""
    return device.type == "cuda" and _capability(device.index) >= (8, 9)


@functools.lru_cache(maxsize=None)
def _capability(index: Optional[int]) -> Tuple[int, int]:
    return torch.cuda.get_device_capability(index)


# The FP8 recipe (LARGEOUT_FP8_GEMM; bench/bench_fp8.py times each): "tensor" / "row":
# one input scale, or one per input row; "-fast": use_fast_accum (Hopper accumulates the
# MMA chain without promoting to fp32: fastest, used by torchao for forward GEMMs).
_GEMM_MODES = ("tensor-fast", "tensor", "row", "row-fast")


def kernel_choice(device: torch.device) -> Optional[int]:
    """The configuration of largeout's FP8 GEMM that the default recipe runs on ``device``
    (-1: its default), or None for ``torch._scaled_mm``: ``LARGEOUT_FP8_KERNEL`` = ``auto``
    (largeout's where it runs: sm_90 in a build with the 90a target), ``cublas``, or
    ``largeout:N``."""
    choice = os.environ.get("LARGEOUT_FP8_KERNEL", "auto")
    configs = _largeout_configs(device.index) if device.type == "cuda" else ()
    if choice == "auto":
        return -1 if configs else None
    if choice == "cublas":
        return None
    if choice.startswith("largeout:") and choice[9:].isdigit():
        n = int(choice[9:])
        if n >= len(configs):
            raise ValueError(f"LARGEOUT_FP8_KERNEL={choice!r}: {device} runs {len(configs)} largeout FP8 GEMM "
                             f"configurations (torch.ops.largeout.fp8_gemm_configs(): {list(configs)})")
        return n
    raise ValueError(f"LARGEOUT_FP8_KERNEL must be auto, cublas or largeout:N; got {choice!r}")


@functools.lru_cache(maxsize=None)
def _largeout_configs(index: Optional[int]) -> Tuple[str, ...]:
    with torch.cuda.device(index):
        return tuple(torch.ops.largeout.fp8_gemm_configs())


def gemm_mode() -> str:
    """The FP8 recipe in force: ``LARGEOUT_FP8_GEMM`` or ``tensor-fast``."""
    mode = os.environ.get("LARGEOUT_FP8_GEMM", "tensor-fast")
    if mode not in _GEMM_MODES:
        raise ValueError(f"LARGEOUT_FP8_GEMM must be one of {', '.join(_GEMM_MODES)}; got {mode!r}")
    return mode


def _fp8_gemm(q: torch.Tensor, sx: torch.Tensor, w_full: torch.Tensor, b: Optional[torch.Tensor],
              sw: Optional[torch.Tensor] = None) -> torch.Tensor:
    """bf16 ``(q * sx) @ (w_full * sw)^T + b`` emulated or through ``torch._scaled_mm`` (the
    layer calls largeout's own GEMM directly): q e4m3 [M, H], sx fp32 [M, 1] or [1, 1], w_full
    e4m3 [Lp, H], sw None or fp32 [1, Lp] (per-label weight scales)."""
    Lp = w_full.shape[0]
    mode = gemm_mode()
    if not fp8_tensor_cores(q.device):  # emulated: exact bf16 operands, fp32 accumulation, bf16 result
        y = torch.mm(q.to(torch.bfloat16), w_full.to(torch.bfloat16).t()).float() * sx
        if sw is not None:
            y = y * sw
        return (y + b.float() if b is not None else y).to(torch.bfloat16)
    if sw is not None:  # torch._scaled_mm: row-wise scales on both sides
        return torch._scaled_mm(q, w_full.t(), scale_a=sx.expand(q.shape[0], 1).contiguous(), scale_b=sw,
                                bias=b, out_dtype=torch.bfloat16, use_fast_accum=mode.endswith("fast"))
    if mode.startswith("row"):
        sx, sw = sx, torch.ones(1, Lp, dtype=torch.float32, device=q.device)
    else:
        sx, sw = sx.reshape(()), torch.ones((), dtype=torch.float32, device=q.device)
    return torch._scaled_mm(q, w_full.t(), scale_a=sx, scale_b=sw, bias=b, out_dtype=torch.bfloat16,
                            use_fast_accum=mode.endswith("fast"))


def quantize(x: torch.Tensor, rowwise: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x [M, H]`` -> (e4m3 ``q [M, H]``, fp32 ``scale``) with ``q * scale ~ x``:
    ``scale = amax / 448`` per row (``[M, 1]``) or for the whole input (``[1, 1]``), 1
    where that is 0 (an all-zero row or input, or a tiny subnormal amax) or NaN; round to
    nearest, saturating (beyond +-448, possible only with scale 1 from a NaN amax: +-448,
    inf included). A NaN input gives e4m3's NaN code (0x7F, sign dropped)."""
    # one op (two kernels on CUDA); it reads fp32, bf16 and fp16, other dtypes as fp32
    xs = x if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else x.float()
    return torch.ops.largeout.fp8_quantize(xs, rowwise)


def has_padded_storage(weight: torch.Tensor, exact: bool = False) -> bool:
    """Whether ``weight [L, H]`` is contiguous and its storage holds the rows up to L rounded
    up to ``ROW_MULTIPLE`` after it (as :func:`padded_weight` leaves it). ``exact``: and the
    storage is exactly that, starting at the weight, and one the layers allocated
    (``lowp.owns_storage``), so that the rows after L are zeros nobody else writes (a view
    into a user's tensor is not, whatever its size)."""
    if exact:
        return _exactly_padded_size(weight) and lowp.owns_storage(weight)
    L, H = weight.shape
    need = (weight.storage_offset() + _round_up(L, ROW_MULTIPLE) * H) * weight.element_size()
    return weight.is_contiguous() and weight.untyped_storage().nbytes() >= need


def _exactly_padded_size(weight: torch.Tensor) -> bool:
    """``weight [L, H]`` is contiguous at offset 0 of a storage of exactly L rounded up to
    ``ROW_MULTIPLE`` rows."""
    L, H = weight.shape
    need = _round_up(L, ROW_MULTIPLE) * H * weight.element_size()
    return weight.is_contiguous() and weight.storage_offset() == 0 and weight.untyped_storage().nbytes() == need


def padded_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight ``[L, H]`` (e4m3, or any dtype: ``largeout.nn.Linear`` pads every weight's
    storage) as a ``[L_pad, H]`` tensor whose first L rows are ``weight`` and whose other rows
    are zero (same storage; L_pad = L rounded up to ``ROW_MULTIPLE``). Re-pads ``weight`` in
    place (its ``.data``) when its storage has no padding, e.g. after ``module.to()``."""
    L, H = weight.shape
    Lp = _round_up(L, ROW_MULTIPLE)
    if Lp == L:
        return weight if weight.is_contiguous() else weight.contiguous()
    if not has_padded_storage(weight):
        weight.data = _pad_storage(weight.detach())
    return weight.detach().as_strided((Lp, H), (H, 1), weight.storage_offset())


def adopt_padded_storage(weight: torch.Tensor) -> bool:
    """Marks ``weight``'s storage as the layer's own (``lowp.mark_own_storage``) where it is
    exactly the padded size, starts at the weight and its rows after L are zero bytes (as the
    layers leave them: an unpickled layer's storage, which pickling gives no mark); returns
    whether it did. (Reads the at most 15 pad rows.)"""
    if not _exactly_padded_size(weight):
        return False
    L, H = weight.shape
    Lp = _round_up(L, ROW_MULTIPLE)
    if Lp > L:
        pad = weight.detach().as_strided((Lp - L, H), (H, 1), L * H)
        if bool(pad.view(torch.uint8).any()):
            return False
    lowp.mark_own_storage(weight)
    return True


def _pad_storage(weight: torch.Tensor) -> torch.Tensor:
    """A zero-padded copy of ``weight`` stored as :func:`padded_weight` expects (first L rows)."""
    L, H = weight.shape
    # (a parameter's data: a normal tensor even inside inference_mode, unless the parameter is an
    # inference tensor itself, made inside it)
    with torch.inference_mode(weight.is_inference()):
        full = torch.zeros(_round_up(L, ROW_MULTIPLE), H, dtype=weight.dtype, device=weight.device)
        full[:L].copy_(weight)
        lowp.mark_own_storage(full)
    return full[:L]


def _forward(x2: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             scale: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's forward: (y, the quantized input q, its scale sx)."""
    L = weight.shape[0]
    mode = gemm_mode()
    q, sx = quantize(x2, mode.startswith("row"))
    config = kernel_choice(q.device) if mode == "tensor-fast" and fp8_tensor_cores(q.device) else None
    if config is not None:
        # largeout's GEMM takes any label count (its output rows are L rounded up to 8 apart):
        # the weight, bias and scales go in as they are, with no padded copies per call; with
        # label scales, one scale per column: the input's times the label's
        w = weight if weight.is_contiguous() else padded_weight(weight)[:L]
        b = bias.to(torch.bfloat16) if bias is not None else None
        if b is not None and (not b.is_contiguous() or b.data_ptr() % 16):
            b = b.clone(memory_format=torch.contiguous_format)  # (a fresh block: aligned)
        alpha = sx if scale is None else (scale.float() * sx.reshape(())).contiguous()
        return torch.ops.largeout.fp8_gemm(q, w, alpha, b, config), q, sx
    w_full = padded_weight(weight)
    Lp = w_full.shape[0]
    b = None
    if bias is not None:
        b = bias.to(torch.bfloat16)
        if Lp != L:
            b = torch.nn.functional.pad(b, (0, Lp - L))
    sw = None
    if scale is not None:  # [1, Lp], ones on the padding rows
        sw = torch.nn.functional.pad(scale.float(), (0, Lp - L), value=1.0).view(1, Lp)
    y = _fp8_gemm(q, sx, w_full, b, sw)
    return (y[:, :L] if Lp != L else y), q, sx


def dx_through_upcast(g: torch.Tensor, w_full: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    """fp32 ``g @ (w_full * scale[:, None])`` for a bf16 ``g [M, Lg]`` and an fp8 ``w_full``
    whose first Lg rows it reads (zero-padded rows past the labels, if any; ``scale`` None
    or float32 ``[L]``, L <= Lg, ones past it): over label chunks upcast to bf16 (no full
    bf16 copy of the weight)."""
    Lg = g.shape[1]
    acc = torch.zeros(g.shape[0], w_full.shape[1], dtype=torch.float32, device=g.device)
    sw = None  # the label scales, ones on the padding rows
    if scale is not None:
        sw = torch.nn.functional.pad(scale.float(), (0, Lg - scale.shape[0]), value=1.0)
    chunk = _dx_chunk()
    for c in range(0, Lg, chunk):
        wc = lowp.dequantize(w_full[c : min(c + chunk, Lg)], sw[c : c + chunk] if sw is not None else None,
                             torch.bfloat16)
        acc += (g[:, c : c + chunk] @ wc).float()
    return acc


class _Fp8LinearFn(torch.autograd.Function):
    """y = quant(x) W^T + b; gradients as in the module notes. W's gradient is returned in
    bf16 (``weight.grad_dtype`` None: autograd accumulates it into ``weight.grad`` as it is),
    and computed only where the backward wants it: ``probe`` (``lowp.prepare_fp8_weight``,
    None for a frozen weight) tells."""

    @staticmethod
    def forward(ctx, x2, weight, probe, bias, scale):
        lowp.note_inputs(ctx, x2, weight, probe, bias, scale)
        y, q, sx = _forward(x2, weight, bias, scale)
        ctx.save_for_backward(q, sx)
        ctx.scale = scale  # (live, as ctx.weight: both change only in the optimizer's step, after backward)
        ctx.x_dtype = x2.dtype
        ctx.weight = weight
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    def backward(ctx, gy):
        q, sx = ctx.saved_tensors
        w = ctx.weight
        L = w.shape[0]
        # Every GEMM on 16-byte aligned rows and reductions of multiples of 8: dY copied
        # into [M, L8] with zero columns after L (when needed), the weight's zero pad rows.
        # The copy and the bias gradient's column sums are one pass over dY (pad_columns_sum).
        L8 = _round_up(L, 8)
        want_dx, want_dw = lowp.wants_grad(ctx, 0), lowp.wants_grad(ctx, 2)
        want_db = ctx.bias_dtype is not None and lowp.wants_grad(ctx, 3)
        if not (want_dx or want_dw or want_db):
            return None, None, None, None, None
        g = gy.to(torch.bfloat16)
        pad = L8 != L or g.stride(1) != 1 or g.stride(0) % 8 or g.data_ptr() % 16
        if pad or want_db:
            gp, colsum = torch.ops.largeout.pad_columns_sum(g, 8, bool(pad), want_db)
            g = gp if pad else g
        w_full = padded_weight(w)[:L8]
        dx = dw = None
        if want_dx:
            dx = dx_through_upcast(g, w_full, ctx.scale).to(ctx.x_dtype)
        if want_dw:
            x_hat = (q.float() * sx).to(torch.bfloat16)
            dw = (g.t() @ x_hat)[:L]
        db = colsum.to(ctx.bias_dtype) if want_db else None
        return dx, dw, None, db, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x (W * scale[:, None])^T + b`` on FP8 tensor cores (see the module notes); ``x [...,
    H]`` any float dtype, ``weight [L, H]`` e4m3, ``scale`` None or float32 ``[L]`` (powers of
    two, see :mod:`largeout.nn.lowp`); returns bf16 ``[..., L]``. Where ``weight`` requires grad,
    ``weight.grad`` receives the gradient (bf16) with respect to the scaled weight."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if lowp.records_graph(x, weight, bias):
        y = _Fp8LinearFn.apply(x2, weight, lowp.prepare_fp8_weight(weight), bias, scale)
    else:  # (no graph to record: the forward without the autograd Function's host work)
        y = _forward(x2, weight, bias, scale)[0]
    return restore_lead(y, lead)


def restore_lead(y: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """A layer's ``[M, L]`` output for an input whose leading dimensions were ``lead``
    (flattened to M rows; ``()``: a 1-D input, M = 1) as ``[*lead, L]``."""
    if len(lead) == 1:
        return y
    return y[0] if not lead else y.unflatten(0, lead)
