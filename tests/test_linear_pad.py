"""largeout.nn.Linear at label counts whose output rows are not 16-byte aligned: the padded
path (the forward into an [M, L_pad] result, dY padded for the backward; on CUDA by default,
on the CPU with LARGEOUT_LINEAR_PAD=1) against the float64 reference and against
nn.functional.linear (LARGEOUT_LINEAR_PAD=0)."""

import copy

import pytest
import torch

import largeout.nn.linear as lin
from largeout.nn import Linear
from largeout.nn import fp8 as lo_fp8

from conftest import DEVICES, rel_err

# weight dtype -> activation_dtype (e4m3 weights: the bf16 upcast path; FP8 compute has its own tests)
WEIGHTS = {torch.float32: None, torch.bfloat16: None, torch.float16: None, torch.float64: None,
           torch.float8_e5m2: None, torch.float8_e4m3fn: torch.bfloat16}
TOL = {torch.float32: 1e-5, torch.float64: 1e-6}  # (float32 inputs and outputs); others: 16-bit matmuls


def _cdt(wdt):
    return torch.bfloat16 if wdt in (torch.float8_e4m3fn, torch.float8_e5m2) else wdt


@pytest.fixture
def padded(monkeypatch):
    monkeypatch.setenv("LARGEOUT_LINEAR_PAD", "1")  # the padded path on the CPU too


def _reference(layer, x, gy):
    """float64 y, dx, dW, db of ``x W^T + b`` with the layer's stored (scaled) weight."""
    w = layer.weight.detach().double()
    if layer.weight_scale is not None:
        w = w * layer.weight_scale.double()[:, None]
    w.requires_grad_()
    b = layer.bias.detach().double().requires_grad_() if layer.bias is not None else None
    x64 = x.detach().double().requires_grad_()
    y = x64 @ w.T + (b if b is not None else 0)
    y.backward(gy.double())
    return y, x64.grad, w.grad, (b.grad if b is not None else None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", list(WEIGHTS), ids=str)
@pytest.mark.parametrize("L,shape", [(1, (1, 64)), (21, (64,)), (333, (37, 64)), (4099, (2, 3, 64)),
                                     (1001, (1000, 64))], ids=str)
def test_padded_linear_matches_reference(device, wdt, L, shape, padded, poison):
    gen = torch.Generator().manual_seed(L + len(shape))
    layer = Linear(64, L, weight_dtype=wdt, activation_dtype=WEIGHTS[wdt], generator=gen).to(device)
    assert lin._pads_output(layer.weight, _cdt(wdt)) == (L % lin._output_multiple(_cdt(wdt)) != 0)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    y = layer(x)
    assert y.shape == shape[:-1] + (L,) and y.dtype == torch.float32
    gy = torch.randn(y.shape, generator=gen).to(device)
    y.backward(gy)
    y64, dx64, dw64, db64 = _reference(layer, x, gy)
    tol = TOL.get(wdt, 1e-2)
    assert rel_err(y, y64) < tol
    assert rel_err(x.grad, dx64) < tol
    assert layer.weight.grad.shape == (L, 64)
    assert layer.weight.grad.dtype == (torch.bfloat16 if wdt in lo_fp8.lowp.FP8_DTYPES else wdt)
    assert rel_err(layer.weight.grad, dw64) < tol
    assert rel_err(layer.bias.grad, db64) < tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", [torch.float32, torch.bfloat16, torch.float8_e5m2], ids=str)
def test_padded_linear_returns_a_view_of_aligned_rows(device, wdt, padded):
    """The output (in the compute dtype) is the [M, L] view of an [M, L_pad] result, L_pad
    the multiple of 16 bytes' worth of columns; the same values as nn.functional.linear."""
    gen = torch.Generator().manual_seed(5)
    layer = Linear(32, 45, weight_dtype=wdt, generator=gen).to(device)
    cdt = _cdt(wdt)
    x = torch.randn(6, 32, generator=gen).to(device, cdt)
    y = layer(x)
    m = lin._output_multiple(cdt)
    assert y.dtype == cdt and y.shape == (6, 45) and y.stride() == (-(-45 // m) * m, 1)
    w = layer.weight.detach().to(cdt)
    want = torch.nn.functional.linear(x, w, layer.bias.detach().to(cdt))
    assert rel_err(y, want.double()) < TOL.get(wdt, 1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_kind", ["expanded", "transposed", "offset"])
def test_padded_linear_backward_takes_any_gradient_layout(device, grad_kind, padded):
    gen = torch.Generator().manual_seed(11)
    L = 37
    layer = Linear(48, L, weight_dtype=torch.bfloat16, generator=gen).to(device)
    x = torch.randn(5, 48, generator=gen).to(device, torch.bfloat16)
    c = torch.randn(L, 5, generator=gen).to(device, torch.bfloat16)
    wide = torch.randn(5, L + 1, generator=gen).to(device, torch.bfloat16)

    def loss(y):
        if grad_kind == "expanded":
            return y.float().sum()
        if grad_kind == "transposed":
            return (y.t() * c).float().sum()
        return (y * wide[:, 1:]).float().sum()

    xg = x.clone().requires_grad_()
    y = layer(xg)
    dy = torch.autograd.grad(loss(y), y, retain_graph=True)[0]
    loss(y).backward()
    dy64 = dy.double()
    assert rel_err(layer.bias.grad, dy64.sum(0)) < 1e-2
    assert rel_err(xg.grad, dy64 @ layer.weight.detach().double()) < 1e-2
    assert rel_err(layer.weight.grad, dy64.T @ x.double()) < 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_padded_linear_gradients_only_where_asked(device, padded):
    """A frozen weight gets no gradient, autograd.grad(loss, x) computes none for the weight,
    and a frozen input gets none: each as with nn.functional.linear."""
    gen = torch.Generator().manual_seed(2)
    layer = Linear(32, 19, weight_dtype=torch.bfloat16, generator=gen).to(device)
    x = torch.randn(4, 32, generator=gen).to(device, torch.bfloat16).requires_grad_()
    (dx,) = torch.autograd.grad(layer(x).float().sum(), x)
    assert layer.weight.grad is None and layer.bias.grad is None
    assert rel_err(dx, layer.weight.detach().double().sum(0).expand(4, 32)) < 1e-2
    layer.weight.requires_grad_(False)
    layer(x).float().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is not None and x.grad is not None
    layer.weight.requires_grad_(True)
    layer.bias.grad = None
    layer(x.detach()).float().sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize("device", DEVICES)
def test_padded_linear_storage_restored_and_pad_rows_stay_zero(device, padded):
    """The weight's storage keeps 16-row padding through construction, .to(), deepcopy and a
    state_dict load, is re-padded in place where a cast lost it, and its pad rows stay zero
    through optimizer steps (they meet dY's zero pad columns in dx)."""
    gen = torch.Generator().manual_seed(4)
    layer = Linear(24, 21, weight_dtype=torch.bfloat16, generator=gen)
    assert lo_fp8.has_padded_storage(layer.weight)
    layer = layer.to(device).float()  # a cast: a new, unpadded weight
    other = copy.deepcopy(layer)
    x = torch.randn(3, 24, generator=gen).to(device)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    assert lo_fp8.has_padded_storage(layer.weight)
    pad = lo_fp8.padded_weight(layer.weight)[21:]
    assert pad.shape == (11, 24) and bool((pad == 0).all())
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other(x), layer(x))


def test_padded_linear_setting_checked(monkeypatch):
    layer = Linear(8, 3, weight_dtype=torch.bfloat16)
    monkeypatch.setenv("LARGEOUT_LINEAR_PAD", "yes")
    with pytest.raises(ValueError, match="LARGEOUT_LINEAR_PAD must be auto, 0 or 1; got 'yes'"):
        layer(torch.randn(2, 8))
    monkeypatch.setenv("LARGEOUT_LINEAR_PAD", "0")
    assert not lin._pads_output(layer.weight, torch.bfloat16)
    monkeypatch.setenv("LARGEOUT_LINEAR_PAD", "auto")  # the default: CUDA only
    assert not lin._pads_output(layer.weight, torch.bfloat16)
    monkeypatch.setenv("LARGEOUT_LINEAR_PAD", "1")
    assert lin._pads_output(layer.weight, torch.bfloat16)
    assert not lin._pads_output(layer.weight[:3].clone().requires_grad_() * 1, torch.bfloat16)  # unpadded non-leaf
    assert not lin._pads_output(Linear(8, 16, weight_dtype=torch.bfloat16).weight, torch.bfloat16)  # aligned L


@pytest.mark.parametrize("device", DEVICES)
def test_padded_and_plain_paths_agree(device, monkeypatch):
    """The padded path against nn.functional.linear (LARGEOUT_LINEAR_PAD=0) on the same layer:
    the same products (fp32 here), within rounding of the summation order."""
    gen = torch.Generator().manual_seed(9)
    layer = Linear(40, 333, generator=gen).to(device)
    x = torch.randn(7, 40, generator=gen).to(device)
    gy = torch.randn(7, 333, generator=gen).to(device)
    out = []
    for env in ("1", "0"):
        monkeypatch.setenv("LARGEOUT_LINEAR_PAD", env)
        layer.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_()
        y = layer(xg)
        y.backward(gy)
        out.append((y.detach(), xg.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*out):
        assert rel_err(a, b.double()) < 1e-6


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L", [77, 332])
@pytest.mark.parametrize("compiled", [False, True])
def test_padded_linear_under_autocast(device, L, compiled, padded, monkeypatch):
    """Under autocast an fp32 layer multiplies in bf16 and returns bf16, as nn.Linear there,
    on 16-byte aligned bf16 rows (L = 332: a multiple of 4 fp32 columns, not of 8 bf16 ones);
    compiled, the same bits; gradients match the float64 reference within bf16 rounding. The
    eager backward's dx reuses the forward's bf16 weight (no second cast)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(6)
    layer = Linear(64, L, generator=gen).to(device)
    x = torch.randn(9, 64, generator=gen).to(device).requires_grad_()
    gy = torch.randn(9, L, generator=gen).to(device)
    run = torch.compile(layer, backend="aot_eager", fullgraph=True) if compiled else layer
    with torch.autocast(device, dtype=torch.bfloat16):
        y = run(x)
        want = torch.nn.Linear(64, L).to(device)
        with torch.no_grad():
            want.weight.copy_(layer.weight)
            want.bias.copy_(layer.bias)
        want = want(x.detach())
    assert want.dtype == torch.bfloat16 and y.dtype == torch.bfloat16 and y.stride() == (-(-L // 8) * 8, 1)
    assert rel_err(y, want.double()) < 1e-2
    reads = []
    real_rows = lin._aligned_rows
    monkeypatch.setattr(lin, "_aligned_rows", lambda w, Lp: reads.append(Lp) or real_rows(w, Lp))
    y.backward(gy)
    assert compiled or not reads  # (eager: dx on the kept bf16 weight)
    monkeypatch.setattr(lin, "_aligned_rows", real_rows)
    _, dx64, dw64, db64 = _reference(layer, x, gy)
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    assert rel_err(x.grad, dx64) < 2e-2
    assert rel_err(layer.weight.grad, dw64) < 2e-2
    assert rel_err(layer.bias.grad, db64) < 2e-2
    if compiled:  # the eager layer's bits
        got = (y.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
        layer.zero_grad()
        xe = x.detach().clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16):
            ye = layer(xe)
        ye.backward(gy)
        for a, b in zip(got, (ye.detach(), xe.grad, layer.weight.grad, layer.bias.grad)):
            assert torch.equal(a, b)


def test_linear_under_autocast_returns_the_autocast_dtype():
    """Every weight dtype but float64 returns autocast's dtype under autocast (nn.Linear's
    behaviour); outside autocast the input's dtype."""
    x = torch.randn(3, 32)
    for wdt in (torch.float32, torch.bfloat16, torch.float16, torch.float8_e5m2, torch.float8_e4m3fn, torch.float64):
        layer = Linear(32, 16, weight_dtype=wdt)
        for ac in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=ac):
                y = layer(x)
            want = torch.nn.functional.linear(x, layer.weight.detach().to(lin.lowp.compute_dtype(wdt)).float(),
                                              layer.bias.detach().float())
            assert y.dtype == (torch.float32 if wdt == torch.float64 else ac), (wdt, ac)
            tol = {torch.float64: 1e-6, torch.float8_e4m3fn: 6e-2}.get(wdt, 2e-2)  # (e4m3: the input quantized too)
            assert rel_err(y, want.double()) < tol
        assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_padded_linear_output_can_be_modified_in_place(device, padded):
    gen = torch.Generator().manual_seed(12)
    layer = Linear(16, 21, generator=gen).to(device)
    x = torch.randn(3, 16, generator=gen).to(device).requires_grad_()
    y = layer(x)
    assert not y.is_contiguous() and y._base is None  # the first columns, not a view
    y[:, 0] = -1.0
    y.masked_fill_(y > 10, 0.0)
    y.sum().backward()
    want = layer.weight.detach().double()[1:].sum(0).expand(3, 16)  # column 0 overwritten: no gradient
    assert rel_err(x.grad, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", [torch.float32, torch.bfloat16], ids=str)
def test_padded_linear_double_backward(device, wdt, monkeypatch):
    """A gradient penalty (create_graph=True) gives the same second-order gradients as
    nn.functional.linear (the padded backward runs the plain formulas when it builds a graph)."""
    gen = torch.Generator().manual_seed(13)
    layer = Linear(16, 21, weight_dtype=wdt, generator=gen).to(device)
    x = torch.randn(5, 16, generator=gen).to(device, wdt)
    got = []
    for env in ("1", "0"):
        monkeypatch.setenv("LARGEOUT_LINEAR_PAD", env)
        layer.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_()
        (dx,) = torch.autograd.grad(layer(xg).float().square().sum(), xg, create_graph=True)
        dx.float().square().sum().backward()
        got.append((layer.weight.grad.clone(), layer.bias.grad.clone(), xg.grad.clone()))
    for a, b in zip(*got):
        assert rel_err(a, b.double()) < (1e-5 if wdt == torch.float32 else 2e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_linear_under_function_transforms(device, padded):
    """torch.func transforms and forward-mode AD take nn.functional.linear (the padded
    autograd Function defines neither vmap nor jvp rules): same values as the reference."""
    from torch.autograd import forward_ad
    from torch.func import functional_call, grad, vmap

    gen = torch.Generator().manual_seed(14)
    layer = Linear(16, 21, generator=gen).to(device)
    x = torch.randn(4, 16, generator=gen).to(device)
    params = dict(layer.named_parameters())
    dW = grad(lambda p: functional_call(layer, p, (x,)).square().sum())(params)["weight"]
    y64 = x.double() @ layer.weight.detach().double().T + layer.bias.detach().double()
    assert rel_err(dW, 2 * y64.T @ x.double()) < 1e-5
    assert rel_err(vmap(layer)(x), y64) < 1e-5
    t = torch.randn(4, 16, generator=gen).to(device)
    with forward_ad.dual_level():
        out = layer(forward_ad.make_dual(x, t))
        tangent = forward_ad.unpack_dual(out).tangent
    assert rel_err(tangent, t.double() @ layer.weight.detach().double().T) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_padded_linear_ties_and_copies(device, padded):
    """A weight tied through .data to an embedding's stays tied through training (the forward
    never re-pads: it takes nn.functional.linear for storage not its own); a deepcopy and a
    layer built and cast inside inference_mode run the padded path."""
    gen = torch.Generator().manual_seed(15)
    layer = Linear(16, 21, generator=gen).to(device)
    emb = torch.nn.Embedding(21, 16).to(device)
    layer.weight.data = emb.weight.data
    assert not lin._pads_output(layer.weight, torch.float32)
    opt = torch.optim.SGD(list(layer.parameters()), lr=0.1)
    x = torch.randn(3, 16, generator=gen).to(device)
    for _ in range(2):
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    assert torch.equal(layer.weight.detach(), emb.weight.detach())
    twin = copy.deepcopy(Linear(16, 21, generator=gen).to(device))
    assert lin._pads_output(twin.weight, torch.float32)
    with torch.inference_mode():
        frozen = Linear(16, 21, generator=gen).to(device).to(torch.float64)
        assert lin._pads_output(frozen.weight, torch.float64)
        y = frozen(x.double())
    assert y.shape == (3, 21) and rel_err(y, x.double() @ frozen.weight.T + frozen.bias) < 1e-12


def _count_backward(monkeypatch):
    """Counts the padded backward's runs (eager Function and compiled op alike)."""
    calls = []
    real = lin._padded_backward

    def spy(g, *args):
        calls.append(args[5:8])  # (want_dx, want_dw, want_db)
        return real(g, *args)

    monkeypatch.setattr(lin, "_padded_backward", spy)
    return calls


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("wdt", [torch.float32, torch.bfloat16], ids=str)
def test_padded_linear_under_torch_compile(device, backend, wdt, padded, poison, monkeypatch):
    """torch.compile (fullgraph) runs the padded path too, through the ops padded_linear and
    padded_linear_backward: the output is the [M, L] part of [M, L_pad] rows, forward and
    gradients equal the eager layer's bits, and the backward computes only what is asked."""
    torch._dynamo.reset()
    # (no compiled graphs from the caches: a cached backward would not run this code's op)
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        _compiled_run(device, backend, wdt, monkeypatch)


def _compiled_run(device, backend, wdt, monkeypatch):
    gen = torch.Generator().manual_seed(16)
    L, cdt = 333, wdt
    layer = Linear(48, L, weight_dtype=wdt, generator=gen).to(device)
    twin = copy.deepcopy(layer)
    x = torch.randn(7, 48, generator=gen).to(device, cdt)
    gy = torch.randn(7, L, generator=gen).to(device, cdt)
    calls = _count_backward(monkeypatch)
    f = torch.compile(twin, backend=backend, fullgraph=True)
    got, want = [], []
    for m, out in ((f, got), (layer, want)):
        xg = x.clone().requires_grad_()
        y = m(xg)
        y.backward(gy)
        out.append((y.detach(), xg.grad, m.weight.grad, m.bias.grad))
    Lp = -(-L // lin._output_multiple(cdt)) * lin._output_multiple(cdt)
    assert got[0][0].stride() == (Lp, 1) and calls == [(True, True, True)] * 2
    for a, b in zip(got[0], want[0]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    y64, dx64, dw64, db64 = _reference(layer, x, gy)
    assert rel_err(got[0][0], y64) < TOL.get(wdt, 1e-2) and rel_err(got[0][2], dw64) < TOL.get(wdt, 1e-2)
    # a frozen weight: no dW computed; an input without grad: no dx. (Each compiled afresh:
    # torch 2.11's dynamo keeps the graph compiled for a trainable weight after
    # requires_grad_(False) on it, and so computes dW, which it then drops, as it does for
    # nn.Linear; torch 2.14 recompiles.)
    twin.zero_grad(set_to_none=True)
    twin.weight.requires_grad_(False)
    calls.clear()
    xg = x.clone().requires_grad_()
    torch._dynamo.reset()
    torch.compile(twin, backend=backend, fullgraph=True)(xg).backward(gy)
    assert calls == [(True, False, True)] and twin.weight.grad is None and torch.equal(xg.grad, want[0][1])
    twin.weight.requires_grad_(True)
    calls.clear()
    torch._dynamo.reset()
    torch.compile(twin, backend=backend, fullgraph=True)(x).backward(gy)
    assert calls == [(False, True, True)] and torch.equal(twin.weight.grad, want[0][2])


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("device", DEVICES)
def test_padded_linear_compiled_with_a_weight_not_its_own(device, padded):
    """Compiled, a weight whose storage is not the layer's padded storage (tied through .data
    to an embedding's) is multiplied through a padded copy: right values, the tie kept, the
    embedding's storage untouched; the batch size may change (dynamic shapes)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(17)
    layer = Linear(16, 21, generator=gen).to(device)
    emb = torch.nn.Embedding(21, 16).to(device)
    layer.weight.data = emb.weight.data
    f = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=True)
    for B in (3, 5):
        layer.zero_grad(set_to_none=True)
        x = torch.randn(B, 16, generator=gen).to(device)
        y = f(x)
        assert y.stride() == (24, 1)
        gy = torch.randn(B, 21, generator=gen).to(device)
        y.backward(gy)
        y64, _, dw64, db64 = _reference(layer, x, gy)
        assert rel_err(y, y64) < 1e-5 and rel_err(layer.weight.grad, dw64) < 1e-5 and rel_err(layer.bias.grad, db64) < 1e-5
    assert layer.weight.data_ptr() == emb.weight.data_ptr() and emb.weight.untyped_storage().nbytes() == 21 * 16 * 4


def test_padded_linear_ops_registrations():
    """Schema, fake tensor and autograd registration of the two ops (torch.library.opcheck)."""
    gen = torch.Generator().manual_seed(18)
    layer = Linear(16, 21, weight_dtype=torch.bfloat16, generator=gen)
    x = torch.randn(4, 16, generator=gen).to(torch.bfloat16).requires_grad_()
    gy = torch.randn(4, 21, generator=gen).to(torch.bfloat16)
    torch.library.opcheck(torch.ops.largeout.padded_linear.default, (x, layer.weight, layer.bias, torch.bfloat16))
    for wants in ((True, True, True), (False, True, False), (True, False, True), (False, False, True)):
        for g in (gy, gy.float()):  # (dY of another dtype than the compute dtype: a bf16 layer, fp32 input)
            torch.library.opcheck(torch.ops.largeout.padded_linear_backward.default,
                                  (g, x.detach(), layer.weight.detach(), torch.bfloat16, *wants))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("device", DEVICES)
def test_padded_linear_weight_viewed_into_a_users_table(device, padded):
    """A weight assigned as the first rows of a user's table of exactly L rounded up to 16
    rows is not the layer's own padded storage (its rows after L may hold anything, here
    inf): the forward takes nn.functional.linear in eager mode and a padded copy compiled,
    and dx stays finite and right."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(19)
    layer = Linear(16, 21, generator=gen).to(device)
    big = torch.randn(32, 16, generator=gen).to(device)
    big[21:] = float("inf")
    layer.weight.data = big[:21]
    assert not lin._pads_output(layer.weight, torch.float32)
    for run in (layer, torch.compile(layer, backend="aot_eager", fullgraph=True)):
        x = torch.randn(3, 16, generator=gen).to(device).requires_grad_()
        gy = torch.randn(3, 21, generator=gen).to(device)
        run(x).backward(gy)
        assert torch.isfinite(x.grad).all()
        assert rel_err(x.grad, gy.double() @ big[:21].double()) < 1e-5
    assert torch.isinf(big[21:]).all()  # (the table untouched)


def test_padded_linear_unpickled_keeps_its_storage(monkeypatch):
    """An unpickled layer adopts its weight's exactly padded storage (pickling carries no
    ownership mark): no copy (a storage shared with another process stays shared, torch.load
    makes no second copy); a storage whose pad rows are not zero is copied instead."""
    import pickle

    layer = Linear(16, 21, generator=torch.Generator().manual_seed(20))
    blob = pickle.dumps(layer)
    copies = []
    real = lo_fp8._pad_storage
    monkeypatch.setattr(lo_fp8, "_pad_storage", lambda w: copies.append(1) or real(w))
    twin = pickle.loads(blob)
    assert not copies and lin._pads_output(twin.weight, torch.float32) is False  # (CPU, auto: not padded)
    assert lo_fp8.has_padded_storage(twin.weight, exact=True) and torch.equal(twin.weight, layer.weight)
    lo_fp8.padded_weight(layer.weight)[21] = 1.0  # a non-zero pad row
    twin = pickle.loads(pickle.dumps(layer))
    assert copies == [1] and lo_fp8.has_padded_storage(twin.weight, exact=True)
    assert not lo_fp8.padded_weight(twin.weight)[21:].any()


def test_padded_linear_exported_graph_has_no_python_op(padded):
    """torch.export keeps nn.functional.linear (runtimes without Python cannot run the
    Python op padded_linear)."""
    layer = Linear(16, 21, generator=torch.Generator().manual_seed(21))
    ep = torch.export.export(layer, (torch.randn(3, 16),))
    assert "padded_linear" not in str(ep.graph)
    x = torch.randn(3, 16)
    assert torch.allclose(ep.module()(x), layer(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_padded_linear_auto_takes_16_bit_compute_only(monkeypatch):
    """LARGEOUT_LINEAR_PAD=auto on CUDA: the padded path for bf16 / fp16 / fp8-upcast compute at
    an unaligned L, not for fp32 / fp64 (cuBLAS's fp32 GEMMs lose little there and the path
    costs memory: bench/results/linear_pad_s48_h100.json), nor under fp32 autocast's absence."""
    monkeypatch.setenv("LARGEOUT_LINEAR_PAD", "auto")
    for wdt, cdt, want in ((torch.bfloat16, torch.bfloat16, True), (torch.float16, torch.float16, True),
                           (torch.float8_e5m2, torch.bfloat16, True), (torch.float32, torch.float32, False),
                           (torch.float64, torch.float64, False), (torch.float32, torch.bfloat16, True)):
        layer = Linear(16, 21, weight_dtype=wdt, device="cuda")
        assert lin._pads_output(layer.weight, cdt) == want, (wdt, cdt)
