"""Registrations of the native ops with torch.library: fake (meta) kernels for
tracing and the autograd formulas. The schemas are in csrc/ops/module.cpp."""

import os

import torch

_lib = torch.ops.largeout


@torch.library.register_fake("largeout::group_sparse_linear")
def _gsl_fake(x, weight, indices, bias, group_size):
    torch._check(x.dim() == 2, lambda: "x must be 2-D")
    torch._check(weight.dim() == 2, lambda: "weight must be 2-D")
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("largeout::group_sparse_linear_backward_input")
def _gsl_dx_fake(grad_out, weight, indices, group_size, in_features):
    return grad_out.new_empty((grad_out.shape[0], in_features))


@torch.library.register_fake("largeout::group_sparse_linear_backward_weight")
def _gsl_dw_fake(grad_out, x, indices, group_size):
    num_labels = grad_out.shape[1]
    return grad_out.new_empty((num_labels, indices.shape[1])), grad_out.new_empty((num_labels,))


@torch.library.register_fake("largeout::group_sparse_linear_fp8")
def _gsl_fp8_fake(x, weight, weight_scale, indices, bias, group_size):
    torch._check(x.dim() == 2, lambda: "x must be 2-D")
    torch._check(weight.dim() == 2, lambda: "weight must be 2-D")
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("largeout::group_sparse_linear_fp8_backward_input")
def _gsl_fp8_dx_fake(grad_out, weight, weight_scale, indices, group_size, in_features):
    return grad_out.new_empty((grad_out.shape[0], in_features))


@torch.library.register_fake("largeout::fp8_to_bf16")
def _fp8_to_bf16_fake(x, row_scale=None):
    return x.new_empty(x.shape, dtype=torch.bfloat16)


@torch.library.register_fake("largeout::fp8_gemm")
def _fp8_gemm_fake(a, b, scale, bias, config=-1):  # rows of N rounded up to 8, as the kernel writes them
    M, N = a.shape[0], b.shape[0]
    return a.new_empty_strided((M, N), ((N + 7) // 8 * 8, 1), dtype=torch.bfloat16)


@torch.library.register_fake("largeout::pad_columns_sum")
def _pad_columns_sum_fake(x, multiple, pad, sums):
    M, L = x.shape
    Lp = (L + multiple - 1) // multiple * multiple
    return (x.new_empty((M, Lp) if pad else (0, 0)),
            x.new_empty((L,) if sums else (0,), dtype=torch.float32))


@torch.library.register_fake("largeout::fp8_quantize")
def _fp8_quantize_fake(x, rowwise):
    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty((x.shape[0] if rowwise else 1, 1), dtype=torch.float32))


@torch.library.register_fake("largeout::stochastic_round")
def _sr_fake(x, dtype, seed, offset):
    return x.new_empty(x.shape, dtype=dtype)


def savable_indices(indices):
    """A layer's indices as the backward keeps them: a copy (small: [L / G, K] int32). The
    buffer itself may change in place before the backward runs: DDP's broadcast_buffers writes
    it at every forward (gradient accumulation then failed autograd's version check), and a
    layer built under inference_mode has an inference tensor, which cannot be saved."""
    if torch.compiler.is_compiling():  # (a traced buffer: the compiled graph keeps what it reads)
        return indices
    return indices.clone()


def _gsl_setup_context(ctx, inputs, output):
    x, weight, indices, bias, group_size = inputs
    need_x, need_w = ctx.needs_input_grad[:2]
    # only what the backward reads: no input kept alive for a frozen weight, and none of a
    # layer's inference tensors (built under inference_mode) saved where it needs no gradient
    ctx.save_for_backward(x if need_w else None, weight if need_x else None,
                          savable_indices(indices) if need_x or need_w else None)
    ctx.group_size = group_size
    ctx.has_bias = bias is not None
    ctx.dims = (x.shape[1], weight.shape[1], weight.dtype)


def _rows_for_tma(grad_out, dims, group_size, passes=("input", "weight")):
    """dY as the backward passes named in ``passes`` ("input": dx, "weight": dW and dbias)
    read it fastest where L is not a multiple of 8, else contiguous. ``dims``: (H, K, the
    weight's dtype).

    On Hopper those passes read dY by TMA: with rows a multiple of 8 elements apart, or at any
    row stride through row classes (rows c, c + 8, ..., 16-bit weights; the default since
    session 39). Where every pass named reads contiguous dY so, dY stays as it is. Else, where
    they all read a row-padded dY ([B, L] inside [B, L rounded up to 8]) by TMA, one copy
    (largeout.pad_columns_sum, from any strides; as large as dY, alive until the backward
    returns) replaces the slower kernels for unaligned rows, except for dW alone at G >= 128,
    where those measured faster (bench/results/pad_frozen_*_s25_h100.json). LARGEOUT_PAD_DY=0
    never pads, =1 pads wherever the padded dY is read by TMA (to compare). Measured at
    L = 670,091, B = 512, K = 128 with a frozen input (bench/results/pad_frozen_x_*_s39_h100.json):
    the step through row classes 1.92 / 1.34 / 1.24 ms at G = 32 / 64 / 128, padded 2.15 / 1.80 /
    1.77. dx alone and both passes: the passes' times (knob_d{w,x}_rc_s39_h100.json) against the
    aligned kernels' plus the copy favour the row classes too, narrowly for both at G = 32."""
    B, L = grad_out.shape
    pad = os.environ.get("LARGEOUT_PAD_DY")
    if L % 8 == 0 or B < 2 or not grad_out.is_cuda or not passes or pad == "0":
        return grad_out.contiguous()
    H, K, w_dtype = dims

    def by_tma(ld):
        return all(torch.ops.largeout.cuda_reads_dy_by_tma(
            p, w_dtype if p == "input" else grad_out.dtype, B, H, L, K, group_size, ld) for p in passes)

    if pad != "1" and (by_tma(L) or (tuple(passes) == ("weight",) and group_size >= 128)):
        return grad_out.contiguous()
    if grad_out.dtype not in (torch.bfloat16, torch.float16) or not by_tma(-(-L // 8) * 8):
        return grad_out.contiguous()
    return torch.ops.largeout.pad_columns_sum(grad_out, 8, True, False)[0][:, :L]


def _gsl_backward(ctx, grad_out):
    x, weight, indices = ctx.saved_tensors
    dx = dw = db = None
    need_x, need_w, _, need_b = ctx.needs_input_grad[:4]
    # one padded copy for the passes that run, where it pays (also for one: a frozen input or
    # weight), else contiguous
    passes = tuple(p for p, need in (("input", need_x), ("weight", need_w)) if need)
    if torch.is_grad_enabled():  # create_graph: no padded copy (that op has no derivative)
        grad_out = grad_out.contiguous()
    else:
        grad_out = _rows_for_tma(grad_out, ctx.dims, ctx.group_size, passes)
    if need_x:
        dx = _lib.group_sparse_linear_backward_input(grad_out, weight, indices, ctx.group_size, ctx.dims[0])
    if need_w:
        dw, db_all = _lib.group_sparse_linear_backward_weight(grad_out, x, indices, ctx.group_size)
        if need_b:
            db = db_all
    elif need_b:
        db = grad_out.sum(0)
    return dx, dw, None, db, None


torch.library.register_autograd(
    "largeout::group_sparse_linear", _gsl_backward, setup_context=_gsl_setup_context
)


# Derivatives of the backward ops (double backward: gradient penalties, Hessian-vector products).
# Both are bilinear, and each of their derivatives is one of the layer's three ops again:
#   dx = bwd_input(dY, W):   d/d dY of <g, dx> = forward(g, W);        d/dW = bwd_weight(dY, g).dW
#   (dW, db) = bwd_weight(dY, x):  d/d dY of <gW, dW> + <gb, db> = forward(x, gW) + gb;
#                                  d/dx = bwd_input(dY, gW)
def _gsl_dx_setup_context(ctx, inputs, output):
    grad_out, weight, indices, group_size, in_features = inputs
    ctx.save_for_backward(grad_out, weight, indices)
    ctx.group_size = group_size


def _gsl_dx_backward(ctx, g):
    dy, weight, indices = ctx.saved_tensors
    need_dy, need_w = ctx.needs_input_grad[:2]
    g = g.contiguous()
    g_dy = _lib.group_sparse_linear(g, weight, indices, None, ctx.group_size) if need_dy else None
    g_w = _lib.group_sparse_linear_backward_weight(dy, g, indices, ctx.group_size)[0] if need_w else None
    return g_dy, g_w, None, None, None


def _gsl_dw_setup_context(ctx, inputs, output):
    grad_out, x, indices, group_size = inputs
    ctx.save_for_backward(grad_out, x, indices)
    ctx.group_size = group_size


def _gsl_dw_backward(ctx, g_w, g_b):
    dy, x, indices = ctx.saved_tensors
    need_dy, need_x = ctx.needs_input_grad[:2]
    g_w = g_w.contiguous()
    g_dy = _lib.group_sparse_linear(x, g_w, indices, g_b.contiguous(), ctx.group_size) if need_dy else None
    g_x = (_lib.group_sparse_linear_backward_input(dy, g_w, indices, ctx.group_size, x.shape[1])
           if need_x else None)
    return g_dy, g_x, None, None


torch.library.register_autograd(
    "largeout::group_sparse_linear_backward_input", _gsl_dx_backward, setup_context=_gsl_dx_setup_context
)
torch.library.register_autograd(
    "largeout::group_sparse_linear_backward_weight", _gsl_dw_backward, setup_context=_gsl_dw_setup_context
)
