"""largeout's layers under torch's other modes: forward-mode AD and torch.func transforms,
autocast, the meta device, inference_mode, and weight assignments that drop a per-label
scale. Each against the float64 reference of the dense expansion of the weight."""

import copy

import pytest
import torch
import torch.func as tf
from torch.autograd import forward_ad

from largeout.nn import GroupSparseLinear, Linear

from conftest import DEVICES, rel_err

WEIGHTS = [torch.float32, torch.bfloat16, torch.float8_e4m3fn]


def _gsl(wdt, device, scale=None, seed=0, L=40):
    gen = torch.Generator().manual_seed(seed)
    return GroupSparseLinear(32, L, 16, 16, weight_dtype=wdt, generator=gen, weight_scale=scale).to(device)


def _dense64(m):
    """The layer's weight as a float64 dense [L, H] matrix (scales applied) and its bias."""
    d = m.to_dense() if isinstance(m, GroupSparseLinear) else m
    w = d.weight.detach().double()
    if getattr(d, "weight_scale", None) is not None:
        w = w * d.weight_scale.double()[:, None]
    return w, d.bias.detach().double()


def _tol(wdt):
    return 1e-5 if wdt == torch.float32 else 2e-2


@pytest.mark.filterwarnings("ignore:largeout.group_sparse_linear under forward-mode AD")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", WEIGHTS, ids=str)
@pytest.mark.parametrize("scale", [None, "label"])
def test_group_sparse_forward_ad_and_func_transforms(device, wdt, scale):
    """jvp (forward_ad in and out of grad mode, frozen layer, torch.func.jvp, jacfwd), vmap,
    torch.func.grad and jacrev give the reference's values (they lost the tangent or raised
    deep inside torch before)."""
    if scale and wdt not in (torch.float8_e4m3fn,):
        pytest.skip("per-label scales are for fp8 weights")
    m = _gsl(wdt, device, scale, L=37)  # (L not a multiple of G)
    w64, b64 = _dense64(m)
    cdt = torch.bfloat16 if wdt == torch.float8_e4m3fn else wdt
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 32, generator=gen).to(device, cdt)
    t = torch.randn(3, 32, generator=gen).to(device, cdt)
    jvp64 = t.double() @ w64.T
    for grad_mode, frozen in ((True, False), (False, False), (True, True)):
        m.requires_grad_(not frozen)
        with torch.set_grad_enabled(grad_mode), forward_ad.dual_level():
            out = m(forward_ad.make_dual(x, t))
            y, tangent = forward_ad.unpack_dual(out)
        assert tangent is not None, (grad_mode, frozen)
        assert rel_err(tangent, jvp64) < _tol(wdt) and rel_err(y, x.double() @ w64.T + b64) < _tol(wdt)
    m.requires_grad_(True)
    _, jt = tf.jvp(m, (x,), (t,))
    assert rel_err(jt, jvp64) < _tol(wdt)
    assert rel_err(tf.jacfwd(m)(x[0]), w64) < _tol(wdt)
    assert rel_err(tf.jacrev(m)(x[0]), w64) < _tol(wdt)
    assert rel_err(tf.vmap(m)(x.unsqueeze(1)).squeeze(1), x.double() @ w64.T + b64) < _tol(wdt)
    if wdt not in (torch.float8_e4m3fn,):  # (a gradient with respect to an fp8 weight: the eager path's own tests)
        params = {k: v.detach() for k, v in m.named_parameters()}
        g = tf.grad(lambda p: torch.func.functional_call(m, p, (x,)).float().square().sum())(params)
        y64 = x.double() @ w64.T + b64
        dense_g = 2 * y64.T @ x.double()  # [L, H]; the layer's weight gradient is its gathered columns
        idx = m.indices.long().repeat_interleave(m.group_size, 0)[: m.out_features]
        assert rel_err(g["weight"], dense_g.cpu().gather(1, idx.cpu())) < _tol(wdt)
        assert rel_err(g["bias"], 2 * y64.sum(0)) < _tol(wdt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", ["gsl", "linear"])
@pytest.mark.parametrize("wdt", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn,
                                 torch.float8_e5m2, torch.float64], ids=str)
def test_autocast_dtype_as_nn_linear(device, layer, wdt):
    """Under autocast both layers multiply in (and return) the autocast dtype, as nn.Linear
    (fp8 weights multiply in bf16; float64 layers ignore autocast); gradients keep the
    parameters' dtypes. Outside autocast the input's dtype comes back."""
    gen = torch.Generator().manual_seed(2)
    if layer == "gsl":
        m = GroupSparseLinear(32, 24, 16, 16, weight_dtype=wdt, generator=gen).to(device)
    else:
        m = Linear(32, 24, weight_dtype=wdt, generator=gen).to(device)
    w64, b64 = _dense64(m)
    x = torch.randn(5, 32, generator=gen).to(device).requires_grad_()
    for ac in (torch.bfloat16, torch.float16):
        with torch.autocast(device, dtype=ac):
            y = m(x)
        want_dtype = torch.float32 if wdt == torch.float64 else ac
        assert y.dtype == want_dtype, (wdt, ac, y.dtype)
        tol = {torch.float64: 1e-6, torch.float8_e4m3fn: 6e-2}.get(wdt, 2e-2)
        assert rel_err(y, x.double() @ w64.T + b64) < tol
        if wdt in (torch.float8_e4m3fn, torch.float8_e5m2):  # bf16 products under any autocast dtype
            with torch.no_grad():
                assert torch.equal(y.detach(), m(x).to(ac))
        y.float().sum().backward()
        assert x.grad.dtype == torch.float32
        assert m.bias.grad.dtype == m.bias.dtype
        assert m.weight.grad.dtype == (torch.bfloat16 if wdt in (torch.float8_e4m3fn, torch.float8_e5m2) else wdt)
        x.grad = None
        m.zero_grad()
    assert m(x).dtype == torch.float32


@pytest.mark.parametrize("make", ["gsl", "linear"])
def test_assigned_float_weight_drops_the_scale(make):
    """A non-fp8 weight assigned to a layer built with per-label scales: the scale buffer
    goes (the forward never applied it to such a weight), so a later cast keeps the values
    (it folded the stale scale into them before)."""
    gen = torch.Generator().manual_seed(3)
    if make == "gsl":
        m = GroupSparseLinear(32, 24, 16, 16, weight_dtype=torch.float8_e4m3fn, weight_scale="label", generator=gen)
    else:
        m = Linear(32, 24, weight_dtype=torch.float8_e4m3fn, weight_scale="label", generator=gen)
    assert m.weight_scale is not None and not torch.all(m.weight_scale == 1)
    w = torch.randn(m.weight.shape, generator=gen) * 0.1
    m.weight = torch.nn.Parameter(w.clone())
    assert m.weight_scale is None and "weight_scale" not in m.state_dict()
    x = torch.randn(4, 32, generator=gen)
    before = m(x).double()
    m.half()
    assert m.weight_scale is None
    assert rel_err(m.weight, w.double()) < 1e-3
    assert rel_err(m(x.half()), before) < 2e-3


@pytest.mark.parametrize("make", ["gsl", "linear"])
@pytest.mark.parametrize("wdt", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16], ids=str)
@pytest.mark.parametrize("scale", [None, "label"])
def test_layers_built_on_the_meta_device(make, wdt, scale):
    """Built on meta (no initialization there), then materialized and reset: the same layer
    as one built on the CPU from the same generator state."""
    if scale and wdt == torch.bfloat16:
        pytest.skip("per-label scales are for fp8 weights")
    kw = dict(weight_dtype=wdt, weight_scale=scale)
    cls = (lambda **k: GroupSparseLinear(32, 24, 16, 16, **k)) if make == "gsl" else (lambda **k: Linear(32, 24, **k))
    for meta in (cls(device="meta", **kw), _in_meta_context(cls, kw)):
        assert meta.weight.is_meta and meta.weight.dtype == wdt
        real = meta.to_empty(device="cpu")
        if make == "gsl":
            real.set_indices(cls(generator=torch.Generator().manual_seed(4), **kw).indices)
        real.reset_parameters(torch.Generator().manual_seed(5))
        ref = cls(generator=torch.Generator().manual_seed(4), **kw)
        ref.reset_parameters(torch.Generator().manual_seed(5))
        for (k, a), (_, b) in zip(real.state_dict().items(), ref.state_dict().items()):
            assert torch.equal(a.view(torch.uint8) if a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else a,
                               b.view(torch.uint8) if b.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else b), k


def _in_meta_context(cls, kw):
    with torch.device("meta"):
        return cls(**kw)


@pytest.mark.parametrize("wdt", [torch.float32, torch.float8_e4m3fn], ids=str)
def test_group_sparse_built_in_inference_mode_runs_in_grad_mode(wdt):
    """A layer built inside inference_mode evaluates in grad mode on an input that needs no
    gradient (nothing of it is saved for a backward), as nn.Linear does."""
    with torch.inference_mode():
        m = _gsl(wdt, "cpu")
    x = torch.randn(3, 32).to(torch.bfloat16 if wdt == torch.float8_e4m3fn else wdt)
    w64, b64 = _dense64(m)
    y = m(x)
    assert rel_err(y, x.double() @ w64.T + b64) < _tol(wdt)


def test_group_sparse_frozen_weight_keeps_no_input_for_backward():
    """With the weight frozen, the op saves no input for the backward (only the weight and
    indices dx needs); the input's gradient is still right."""
    m = _gsl(torch.float32, "cpu")
    m.weight.requires_grad_(False)
    x = torch.randn(3, 32, requires_grad=True)
    y = m(x)
    node = y.grad_fn
    while not hasattr(node, "saved_tensors"):  # (past the reshapes, to the op's node)
        node = node.next_functions[0][0]
    saved = [t for t in node.saved_tensors if t is not None]
    assert len(saved) == 2  # the weight and the indices
    assert not any(t.data_ptr() == x.data_ptr() for t in saved)
    y.sum().backward()
    w64, _ = _dense64(m)
    assert rel_err(x.grad, w64.sum(0).expand(3, 32)) < 1e-5


def test_group_sparse_meta_indices():
    """A meta-device indices table is checked for dtype and shape (it has no values) and
    goes into a meta layer; a bad one still gets the clear error."""
    m = GroupSparseLinear(32, 24, 16, 16, device="meta")
    good = torch.empty(m.indices.shape, dtype=torch.int32, device="meta")
    m.indices = good
    m.set_indices(good)
    with pytest.raises(ValueError, match="indices must have ceil"):
        m.set_indices(torch.empty(5, 16, dtype=torch.int32, device="meta"))
    with pytest.raises(TypeError, match="indices must be int32"):
        m.indices = torch.empty(m.indices.shape, dtype=torch.int64, device="meta")
    cpu = copy.deepcopy(GroupSparseLinear(32, 24, 16, 16))
    before = cpu.indices.clone()
    with pytest.raises(Exception):
        cpu.set_indices(good)  # (values cannot be copied from meta: the layer stays as it was)
    assert torch.equal(cpu.indices, before)


@pytest.mark.parametrize("wdt", [torch.float32, torch.float8_e4m3fn], ids=str)
def test_group_sparse_indices_rewritten_before_backward(wdt):
    """DDP's broadcast_buffers copies the buffers in place at each forward: a backward after
    a later forward (gradient accumulation) must still run, with the indices of its own forward
    (the op keeps a copy; saving the buffer failed autograd's version check on torch 2.11)."""
    m = _gsl(wdt, "cpu")
    cdt = torch.bfloat16 if wdt == torch.float8_e4m3fn else wdt
    x = torch.randn(3, 32).to(cdt).requires_grad_()
    y = m(x)
    w64, _ = _dense64(m)
    with torch.no_grad():
        m.indices.copy_(m.indices.flip(1))  # (an in-place write, other values: the backward must not see them)
    y.float().sum().backward()
    assert rel_err(x.grad, w64.sum(0).expand(3, 32)) < _tol(wdt)
