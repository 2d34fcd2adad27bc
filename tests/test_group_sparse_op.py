"""largeout.functional.group_sparse_linear against the float64 reference."""

import pytest
import torch

import largeout
from largeout import functional as F
from largeout import reference as ref
from largeout.nn import random_group_indices

from conftest import DEVICES, HAS_CUDA, REL_TOL, rel_err

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# (B, H, L, K, G): odd B and L, partial last groups, single-group layers, the largest K.
SHAPES = [
    (1, 64, 50, 8, 16),
    (7, 97, 129, 24, 32),
    (33, 200, 1000, 64, 64),
    (65, 300, 77, 128, 128),
    (130, 520, 333, 512, 16),
    (1000, 256, 300, 40, 32),
    (3, 4100, 40, 4096, 32),
]


def make_inputs(B, H, L, K, G, dtype, device, seed, bias=True, lead=None):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, H) if lead is None else (*lead, H)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    w = (torch.randn(L, K, generator=gen, dtype=torch.float64) / K**0.5).to(device, dtype)
    b = torch.randn(L, generator=gen, dtype=torch.float64).to(device, dtype) if bias else None
    idx = random_group_indices(-(-L // G), H, K, generator=gen).to(device)
    return x, w, b, idx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_forward_backward_match_reference(shape, dtype, device, poison):
    B, H, L, K, G = shape
    if device == "cpu" and B * L * K > 5e7 and dtype != torch.float32:
        pytest.skip("large CPU case covered in float32")
    seed = hash((shape, str(dtype), device)) % 2**31
    x, w, b, idx = make_inputs(B, H, L, K, G, dtype, device, seed)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    y = F.group_sparse_linear(x, w, idx, b, G)
    assert y.dtype == dtype and y.device == x.device and y.shape == (B, L)
    y_ref = ref.group_sparse_linear(x, w, idx, b, G)
    assert rel_err(y, y_ref) < REL_TOL[dtype]

    gen = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(B, L, generator=gen, dtype=torch.float64).to(device, dtype)
    y.backward(dy)
    dx_ref, dw_ref, db_ref = ref.group_sparse_linear_grads(x, w, idx, b, G, dy)
    assert rel_err(x.grad, dx_ref) < REL_TOL[dtype]
    assert rel_err(w.grad, dw_ref) < REL_TOL[dtype]
    assert rel_err(b.grad, db_ref) < REL_TOL[dtype]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="the CPU has no AVX2")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_cpu_kernels_same_bits_on_every_isa(shape, dtype, monkeypatch):
    # The CPU kernels' AVX2 copies (the default where the CPU has AVX2) and their baseline-ISA
    # copies (LARGEOUT_CPU_ISA=base) come from one body in one order of operations: forward,
    # dx, dW and dbias bit-identical.
    B, H, L, K, G = shape
    if B * L * K > 5e7 and dtype != torch.float32:
        pytest.skip("large CPU case covered in float32")
    x, w, b, idx = make_inputs(B, H, L, K, G, dtype, "cpu", 17)
    dy = torch.randn(B, L, generator=torch.Generator().manual_seed(18), dtype=torch.float64).to(dtype)
    ops = torch.ops.largeout

    def passes():
        return (ops.group_sparse_linear(x, w, idx, b, G), ops.group_sparse_linear_backward_input(dy, w, idx, G, H),
                *ops.group_sparse_linear_backward_weight(dy, x, idx, G))

    wide = passes()
    monkeypatch.setenv("LARGEOUT_CPU_ISA", "base")
    base = passes()
    for name, u, v in zip(("forward", "dx", "dW", "dbias"), wide, base):
        assert torch.isfinite(u).all(), name
        assert torch.equal(u, v), name


@pytest.mark.parametrize("device", DEVICES)
def test_no_labels_is_refused(device):
    # L = 0: each op refuses it with an error naming the argument (the CUDA dx path used to
    # divide by the zero group count).
    x = torch.randn(3, 16, device=device)
    w = torch.randn(0, 8, device=device)
    idx = torch.zeros(0, 8, dtype=torch.int32, device=device)
    dy = torch.randn(3, 0, device=device)
    ops = torch.ops.largeout
    with pytest.raises(RuntimeError, match=r"weight must have at least one row"):
        ops.group_sparse_linear(x, w, idx, None, 32)
    with pytest.raises(RuntimeError, match=r"weight must have at least one row"):
        ops.group_sparse_linear_backward_input(dy, w, idx, 32, 16)
    with pytest.raises(RuntimeError, match=r"grad_out must be 2-D \[B, L\] with L >= 1"):
        ops.group_sparse_linear_backward_weight(dy, x, idx, 32)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_and_no_bias(device, poison):
    x, w, _, idx = make_inputs(0, 48, 70, 16, 32, torch.float32, device, 3, bias=False, lead=(2, 3, 5))
    y = F.group_sparse_linear(x, w, idx, None, group_size=32)
    assert y.shape == (2, 3, 5, 70)
    assert rel_err(y, ref.group_sparse_linear(x, w, idx, None, 32)) < REL_TOL[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
def test_only_some_inputs_need_grad(device):
    x, w, b, idx = make_inputs(9, 64, 40, 16, 16, torch.float32, device, 4)
    b.requires_grad_(True)
    y = F.group_sparse_linear(x, w, idx, b, 16)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert x.grad is None and w.grad is None
    assert rel_err(b.grad, dy.double().sum(0)) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck_float64(device):
    # First and second derivatives (a gradient penalty, a Hessian-vector product) against
    # finite differences; L = 37 is not a multiple of G. (The second derivatives were zeros
    # with only a warning before the backward ops had derivatives of their own.)
    x, w, b, idx = make_inputs(3, 24, 37, 8, 16, torch.float64, device, 5)
    for t in (x, w, b):
        t.requires_grad_(True)

    def f(x, w, b):
        return F.group_sparse_linear(x, w, idx, b, 16)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))
    # the gradient penalty's own gradient, against the dense layer's
    dense_w = torch.zeros(37, 24, dtype=torch.float64, device=device)
    labels = torch.arange(37, device=device)
    rows, cols = labels[:, None].expand(37, 8), idx.long()[labels // 16]
    for use_dense in (False, True):
        wd = dense_w.index_put((rows, cols), w) if use_dense else w
        y = (x @ wd.t() + b) if use_dense else f(x, w, b)
        gx, = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
        gw, = torch.autograd.grad((gx ** 2).sum(), w)
        if use_dense:
            assert rel_err(gw_sparse, gw) < 1e-12
        gw_sparse = gw
    assert gw_sparse.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x, w, b, idx = make_inputs(5, 64, 45, 16, 16, torch.float32, device, 6)
    w.requires_grad_(True)

    def step(x, w, b):
        return F.group_sparse_linear(torch.tanh(x), w, idx, b, 16).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, w, b)
    loss.backward()
    w_grad = w.grad.clone()
    w.grad = None
    loss_eager = step(x, w, b)
    loss_eager.backward()
    assert torch.allclose(loss, loss_eager, rtol=1e-5)
    assert torch.allclose(w_grad, w.grad, rtol=1e-5, atol=1e-6)

    fwd = torch.compile(lambda x: F.group_sparse_linear(x, w, idx, b, 16) * 2, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(fwd(x), F.group_sparse_linear(x, w, idx, b, 16) * 2, rtol=1e-5)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_cuda_input_gradient_is_deterministic(dtype):
    x, w, b, idx = make_inputs(257, 128, 5000, 32, 32, dtype, "cuda", 7)
    dy = torch.randn(257, 5000, device="cuda", dtype=dtype)
    ops = torch.ops.largeout
    first = ops.group_sparse_linear_backward_input(dy, w, idx, 32, 128)
    for _ in range(3):
        again = ops.group_sparse_linear_backward_input(dy, w, idx, 32, 128)
        assert torch.equal(first, again)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_matches_cpu_float64():
    x, w, b, idx = make_inputs(70, 150, 260, 48, 64, torch.float64, "cpu", 8)
    y_cpu = F.group_sparse_linear(x, w, idx, b, 64)
    y_gpu = F.group_sparse_linear(x.cuda(), w.cuda(), idx.cuda(), b.cuda(), 64)
    assert rel_err(y_gpu, y_cpu) < 1e-12


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_64bit_offsets():
    """B * L > 2^31: outputs and gradients far into the tensors are right."""
    B, H, L, K, G = 2100, 64, 1_050_001, 16, 16
    assert B * L > 2**31
    dtype = torch.bfloat16
    x, w, b, idx = make_inputs(B, H, L, K, G, dtype, "cuda", 9)
    y = F.group_sparse_linear(x, w, idx, b, G)
    rows = torch.tensor([0, 1234, B - 1])
    y_ref = ref.group_sparse_linear(x[rows], w, idx, b, G)
    assert rel_err(y[rows], y_ref) < REL_TOL[dtype]
    del y
    dy = torch.randn(B, L, device="cuda", dtype=dtype)
    dw, db = torch.ops.largeout.group_sparse_linear_backward_weight(dy, x, idx, G)
    labels = torch.tensor([0, 777_777, L - 1])
    xs = x.double().cpu()
    for l in labels.tolist():
        g = l // G
        xg = xs[:, idx[g].long().cpu()]  # [B, K]
        dyl = dy[:, l].double().cpu()
        assert rel_err(dw[l], dyl @ xg) < REL_TOL[dtype]
        assert rel_err(db[l : l + 1], dyl.sum().reshape(1)) < REL_TOL[dtype]
    dx = torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H)
    for r in rows.tolist():
        dx_ref, _, _ = ref.group_sparse_linear_grads(x[r : r + 1], w, idx, None, G, dy[r : r + 1])
        assert rel_err(dx[r : r + 1], dx_ref) < REL_TOL[dtype]


# ----------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, and nothing written.
# ----------------------------------------------------------------------------------
def _good(device="cpu"):
    return make_inputs(4, 64, 40, 16, 16, torch.float32, device, 10)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x, w, b, i: (x, w.double(), b, i), "weight must have the dtype of x"),
        (lambda x, w, b, i: (x.int(), w, b, i), "x must be float32"),
        (lambda x, w, b, i: (x, w, b, i.long()), "indices must be int32"),
        (lambda x, w, b, i: (x, w, b, i[:-1]), "indices must have ceil"),
        (lambda x, w, b, i: (x, w[:, :8], b, i), "weight must be \\[L, K\\]"),
        (lambda x, w, b, i: (x, w, b[:-1], i), "bias must be 1-D"),
        (lambda x, w, b, i: (x, w, b.half(), i), "bias must have the dtype of x"),
        (lambda x, w, b, i: (x, w[:, :12], b, i[:, :12]), "fan-in K"),
        (lambda x, w, b, i: (x[:, :8], w, b, i), "cannot exceed in_features"),
    ],
)
def test_bad_input_errors(mutate, match):
    x, w, b, i = mutate(*_good())
    before = [t.clone() for t in (x, w, b, i)]
    # The Python layer raises TypeError / ValueError ...
    with pytest.raises((TypeError, ValueError), match=match):
        F.group_sparse_linear(x, w, i, b, 16)
    # ... and the native op checks the same things itself (TypeError / RuntimeError).
    with pytest.raises((TypeError, RuntimeError), match=match):
        torch.ops.largeout.group_sparse_linear(x, w, i, b, 16)
    for t, t0 in zip((x, w, b, i), before):
        assert torch.equal(t, t0)


def test_arguments_that_are_not_tensors():
    x, w, b, i = _good()
    for args, name in (((x.tolist(), w, i, b), "x"), ((x, None, i, b), "weight"), ((x, w, i.tolist(), b), "indices"),
                       ((x, w, i, 3.0), "bias")):
        with pytest.raises(TypeError, match=f"{name} must be a torch.Tensor.*; got"):
            F.group_sparse_linear(*args, 16)


def test_bad_group_size():
    x, w, b, i = _good()
    with pytest.raises(ValueError, match="group_size must be one of"):
        F.group_sparse_linear(x, w, i[:20], b, 2)
    with pytest.raises(TypeError, match="group_size is required"):
        F.group_sparse_linear(x, w, i, b)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_device_mismatch_error():
    x, w, b, i = _good()
    with pytest.raises(ValueError, match="weight must be on the device of x"):
        F.group_sparse_linear(x.cuda(), w, i.cuda(), b.cuda(), 16)
    with pytest.raises(RuntimeError, match="weight must be on the device of x"):
        torch.ops.largeout.group_sparse_linear(x.cuda(), w, i.cuda(), b.cuda(), 16)
    with pytest.raises(ValueError, match="indices must be on the device of x"):
        F.group_sparse_linear(x.cuda(), w.cuda(), i, b.cuda(), 16)


def test_validate_indices():
    idx = random_group_indices(3, 50, 16)
    F.validate_indices(idx, 50, 40, 16)  # valid
    before = idx.clone()
    bad = idx.clone()
    bad[1, 3] = 50
    with pytest.raises(ValueError, match="indices must lie in"):
        F.validate_indices(bad, 50, 40, 16)
    bad = idx.clone()
    bad[2, 5] = bad[2, 6]
    with pytest.raises(ValueError, match="row 2 has a repeated value"):
        F.validate_indices(bad, 50, 40, 16)
    with pytest.raises(ValueError, match="indices must have ceil"):
        F.validate_indices(idx, 50, 60, 16)
    assert torch.equal(idx, before)


@pytest.mark.parametrize("value", [-1, 50, 2**31 - 1])
def test_cpu_ops_check_index_values(value):
    # The CPU kernels index x and dx by the table's values: every CPU call checks them (a value
    # out of [0, H) read past x, or wrote past dx: a segfault or silent garbage), names the place,
    # and writes nothing.
    x, w, b, idx = make_inputs(5, 50, 40, 16, 16, torch.float32, "cpu", 7)
    idx[2, 9] = value
    dy = torch.randn(5, 40)
    msg = rf"indices must lie in \[0, in_features\) = \[0, 50\); found {value} at row 2, column 9"
    with pytest.raises(RuntimeError, match=msg):
        F.group_sparse_linear(x, w, idx, b, group_size=16)
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, 16, 50)
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.largeout.group_sparse_linear_backward_weight(dy, x, idx, 16)
    idx[2, 9] = 49 if 49 not in idx[2].tolist() else 48  # back in range: runs
    assert F.group_sparse_linear(x, w, idx, b, group_size=16).shape == (5, 40)


def test_build_info():
    info = largeout.build_info()
    for key in ("version", "torch", "torch_runtime", "cuda_kernels", "cuda", "cuda_archs", "cutlass", "cpu_threads"):
        assert key in info
    # (CMakeLists.txt requires OpenMP: without it at::parallel_for ran every CPU kernel on one thread)
    assert info["cpu_threads"] == "openmp"
    if info["cuda_kernels"]:
        assert info["cuda"] and info["cutlass"] and info["cuda_archs"]
    if HAS_CUDA:
        assert info["cuda_kernels"], "a CUDA device is present but the CUDA kernels were not built"
    import os

    if os.environ.get("LARGEOUT_EXPECT_CUDA_KERNELS") == "1":
        assert info["cuda_kernels"] and set(info["cuda_archs"]) >= {"80", "90a"}


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_batches_split_over_launches():
    """B past one launch's grid (65535 tiles of 64 rows) and a dx workspace over its
    budget: rows at the launch boundaries are right."""
    ops = torch.ops.largeout
    B, H, L, K, G = 65535 * 64 + 100, 8, 40, 8, 16
    x, w, b, idx = make_inputs(B, H, L, K, G, torch.bfloat16, "cuda", 11)
    y = F.group_sparse_linear(x, w, idx, b, G)
    dy = torch.randn(B, L, device="cuda", dtype=torch.bfloat16)
    dx = ops.group_sparse_linear_backward_input(dy, w, idx, G, H)
    rows = torch.tensor([0, 65535 * 64 - 1, 65535 * 64, B - 1])
    assert rel_err(y[rows], ref.group_sparse_linear(x[rows], w, idx, b, G)) < REL_TOL[torch.bfloat16]
    dx_ref, _, _ = ref.group_sparse_linear_grads(x[rows], w, idx, None, G, dy[rows])
    assert rel_err(dx[rows], dx_ref) < REL_TOL[torch.bfloat16]

    # H large enough that [B, H] fp32 exceeds the 512 MiB workspace budget.
    B, H, L, K, G = 200_000, 800, 40, 16, 16
    _, w, _, idx = make_inputs(1, H, L, K, G, torch.bfloat16, "cuda", 12)
    dy = torch.randn(B, L, device="cuda", dtype=torch.bfloat16)
    dx = ops.group_sparse_linear_backward_input(dy, w, idx, G, H)
    assert torch.isfinite(dx).all()
    rows = torch.tensor([0, 100_031, 100_032, 100_033, B - 1])
    x_dummy = torch.zeros(len(rows), H)
    dx_ref, _, _ = ref.group_sparse_linear_grads(x_dummy, w, idx, None, G, dy[rows])
    assert rel_err(dx[rows], dx_ref) < REL_TOL[torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
def test_backward_ops_accept_row_padded_grad(device):
    # dY as a view [B, L] inside [B, L rounded up to 8] (how the backward pads it for the
    # Hopper kernels that read dY by TMA) gives the bits of the contiguous dY on every
    # path (the others copy it), and the padding columns are never read: NaN there.
    B, H, L, K, G = 37, 96, 203, 64, 32
    x, w, b, idx = make_inputs(B, H, L, K, G, torch.float32, device, seed=12)
    gen = torch.Generator().manual_seed(13)
    dy = torch.randn(B, L, generator=gen).to(device)
    buf = torch.full((B, 208), float("nan"), device=device)
    rows = buf[:, :L]
    rows.copy_(dy)
    assert not rows.is_contiguous() and rows.stride(0) == 208
    ops = torch.ops.largeout
    dx = ops.group_sparse_linear_backward_input(dy, w, idx, G, H)
    dx_rows = ops.group_sparse_linear_backward_input(rows, w, idx, G, H)
    dw, db = ops.group_sparse_linear_backward_weight(dy, x, idx, G)
    dw_rows, db_rows = ops.group_sparse_linear_backward_weight(rows, x, idx, G)
    assert torch.isfinite(dx_rows).all() and torch.isfinite(dw_rows).all()
    assert torch.equal(dx, dx_rows) and torch.equal(dw, dw_rows) and torch.equal(db, db_rows)
    assert torch.isnan(buf[:, L:]).all()  # untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_kernels_give_the_same_bits_on_any_thread_count(dtype):
    # The CPU kernels split their loops over torch's threads (OpenMP); every output element
    # is still computed by one thread in a fixed order, so 1 and 3 threads give the same bits:
    # the layer's three passes, the fused optimizer step over many tensors (its loop spans
    # all of them) and stochastic rounding.
    ops = torch.ops.largeout
    g = torch.Generator().manual_seed(77)
    B, H, L, K, G = 67, 96, 4003, 24, 16
    x = torch.randn(B, H, generator=g).to(dtype)
    w = (torch.randn(L, K, generator=g) / K**0.5).to(dtype)
    b = torch.randn(L, generator=g).to(dtype)
    idx = random_group_indices(-(-L // G), H, K, generator=g)
    dy = torch.randn(B, L, generator=g).to(dtype)
    big = torch.randn(300_001, generator=g) * 3

    def run():
        y = ops.group_sparse_linear(x, w, idx, b, G)
        dx = ops.group_sparse_linear_backward_input(dy, w, idx, G, H)
        dw, db = ops.group_sparse_linear_backward_weight(dy, x, idx, G)
        sr = ops.stochastic_round(big, torch.bfloat16, 5, 9)
        def bf16(n, seed):
            return torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)

        ps = [bf16(n, n) for n in (5, 40_000, 77, 9_001)]
        gs = [bf16(p.numel(), p.numel() + 1) for p in ps]
        ms = [torch.zeros_like(p) for p in ps]
        p0 = [p.clone() for p in ps]
        ops._fused_optim_step_(ps, gs, ms, [], [], [], 0, True, 0.1, 0.9, 0.0, False, True, 0.01, 0.0, 0.0, 0.0,
                               0.0, 0.0, 123, 456)
        assert all(not torch.equal(p, q) for p, q in zip(ps, p0))  # (the step wrote every parameter)
        return [y, dx, dw, db, sr, *ps, *ms]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(before)
    for a, c in zip(one, three):
        assert a.dtype == c.dtype and torch.equal(a, c)


def test_cpu_fused_step_splits_tensors_with_empty_ones_among_them():
    # The CPU step's one loop over the groups of all tensors, with empty tensors at the start,
    # in the middle and at the end and a chunk of 2 threads starting at a tensor's boundary
    # (2,048 groups each): the bits of 1 thread, and of the same call without the empty tensors.
    ops = torch.ops.largeout

    def step(sizes, threads):
        ps = [torch.randn(n, generator=torch.Generator().manual_seed(7 + i)).to(torch.bfloat16)
              for i, n in enumerate(sizes)]
        gs = [torch.randn(n, generator=torch.Generator().manual_seed(70 + i)).to(torch.bfloat16)
              for i, n in enumerate(sizes)]
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            ops._fused_optim_step_(ps, gs, [], [], [], [], 0, True, 0.5, 0.0, 0.0, False, False, 0.0, 0.0, 0.0, 0.0,
                                   0.0, 0.0, 11, 12)
        finally:
            torch.set_num_threads(before)
        return [p for p, n in zip(ps, sizes) if n]

    sizes = [0, 16384, 0, 16384, 0]
    two, one = step(sizes, 2), step(sizes, 1)
    # (the same tensors without the empty ones: seeds follow the position, so rebuild them)
    ps = [torch.randn(16384, generator=torch.Generator().manual_seed(7 + i)).to(torch.bfloat16) for i in (1, 3)]
    gs = [torch.randn(16384, generator=torch.Generator().manual_seed(70 + i)).to(torch.bfloat16) for i in (1, 3)]
    ops._fused_optim_step_(ps, gs, [], [], [], [], 0, True, 0.5, 0.0, 0.0, False, False, 0.0, 0.0, 0.0, 0.0,
                           0.0, 0.0, 11, 12)
    for a, b, c in zip(two, one, ps):
        assert torch.equal(a, b) and torch.equal(a, c)
    start = torch.randn(16384, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    assert not torch.equal(two[0], start)  # (the step wrote it)
