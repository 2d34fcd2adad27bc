"""fp8 weights as trainable parameters: freezing them, gradients only where the backward asks
for them, casts between fp8 and 16/32/64-bit layers, and torch.compile (CPU; CUDA too where
present). Every value is checked against float64 references or against a layer constructed
with the same weights."""

import copy
import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from largeout import reference as ref
from largeout.nn import GroupSparseLinear, Linear
from largeout.optim import SGD, AdamW

from conftest import DEVICES, REL_TOL, rel_err

E4, E5 = torch.float8_e4m3fn, torch.float8_e5m2
FP8 = (E4, E5)

# (class, positional args, keyword args) of fp8 layers: every path that takes an fp8 weight
KINDS = {
    "gs-e4m3": (GroupSparseLinear, (64, 40, 16, 16), dict(weight_dtype=E4)),
    "gs-e4m3-label": (GroupSparseLinear, (64, 40, 16, 16), dict(weight_dtype=E4, weight_scale="label")),
    "gs-e5m2": (GroupSparseLinear, (64, 40, 16, 16), dict(weight_dtype=E5)),
    "lin-e4m3": (Linear, (64, 40), dict(weight_dtype=E4)),  # e4m3 activations (FP8 GEMM)
    "lin-e4m3-label": (Linear, (64, 40), dict(weight_dtype=E4, weight_scale="label")),
    "lin-e4m3-bf16": (Linear, (64, 40), dict(weight_dtype=E4, activation_dtype=torch.bfloat16)),
    "lin-e5m2-label": (Linear, (64, 40), dict(weight_dtype=E5, weight_scale="label")),
}


def make(kind, device, seed=0, **over):
    cls, args, kw = KINDS[kind]
    kw = {**kw, **over}
    return cls(*args, device=device, generator=torch.Generator().manual_seed(seed), **kw)


def bits(t):
    """A tensor's bits (fp8 tensors have no torch.equal)."""
    t = t.detach()
    return t.view(torch.uint8) if t.dtype in FP8 else t


def dense64(m):
    """The layer's weights (times their scales) as a dense float64 [L, H] matrix."""
    w = m.weight.detach().to("cpu", torch.float64)
    if m.weight_scale is not None:
        w = w * m.weight_scale.to("cpu", torch.float64)[:, None]
    if isinstance(m, GroupSparseLinear):
        w = ref.group_sparse_to_dense(w, m.indices, m.in_features, m.group_size)
    return w


def dw64(m, x, r):
    """float64 gradient of sum(y * r) with respect to the layer's (scaled) weight."""
    x64, r64 = x.detach().to("cpu", torch.float64), r.to("cpu", torch.float64)
    if isinstance(m, GroupSparseLinear):
        return ref.group_sparse_linear_grads(x64, torch.zeros(m.weight.shape, dtype=torch.float64), m.indices, None,
                                             m.group_size, r64)[1]
    return r64.t() @ x64


def fp8_activations(m):
    return getattr(m, "activation_dtype", None) == E4


def grad_tol(m):
    # dW multiplies the e4m3-quantized input where the layer quantizes it (3 mantissa bits)
    return 6e-2 if fp8_activations(m) else 1e-2


FREEZES = {
    "module": lambda m: m.requires_grad_(False),
    "parent": lambda m: torch.nn.Sequential(m).requires_grad_(False),
    "weight": lambda m: m.weight.requires_grad_(False),
    "attribute": lambda m: setattr(m.weight, "requires_grad", False),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", list(FREEZES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_frozen_fp8_weight_gets_no_gradient_and_no_step(kind, how, device):
    m = make(kind, device)
    assert m.weight.requires_grad  # trainable by default, as any parameter
    FREEZES[how](m)
    bias_trains = how in ("weight", "attribute")
    assert not m.weight.requires_grad and m.bias.requires_grad == bias_trains
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 64, generator=gen).to(device).requires_grad_()
    r = torch.randn(6, 40, generator=gen)
    opts = [SGD(m.parameters(), lr=0.5, momentum=0.9), AdamW(m.parameters(), lr=0.1)]
    w0, b0 = bits(m.weight).clone(), m.bias.detach().clone()
    for _ in range(2):
        (m(x).float() * r.to(device)).sum().backward()
        assert m.weight.grad is None
        for opt in opts:
            opt.step()
        assert torch.equal(bits(m.weight), w0)  # the frozen weight never moves
    # the other gradients as torch's rules give them (two backward passes accumulated)
    assert rel_err(x.grad, 2 * r.double() @ dense64(m)) < 1e-2
    if bias_trains:
        assert rel_err(m.bias.grad, 2 * r.double().sum(0)) < 1e-2
        assert not torch.equal(m.bias.detach(), b0)
    else:
        assert m.bias.grad is None and torch.equal(m.bias.detach(), b0)
        assert not m(x.detach()).requires_grad  # nothing to differentiate: no graph
    # unfrozen, it trains again
    m.requires_grad_(True)
    (m(x).float() * r.to(device)).sum().backward()
    assert m.weight.grad.dtype == torch.bfloat16 and rel_err(m.weight.grad, dw64(m, x, r)) < grad_tol(m)
    opts[0].step()
    assert not torch.equal(bits(m.weight), w0)


class _WeightProducts(TorchDispatchMode):
    """Counts the products that make a weight gradient (matmuls, largeout's dW op) of a shape."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.count = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) else out
        if (func.overloadpacket.__name__ in ("mm", "addmm", "bmm", "group_sparse_linear_backward_weight")
                and tuple(first.shape) == self.shape):
            self.count += 1
        return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["backward", "grad-x", "backward-inputs-x", "grad-x-and-weight"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_fp8_weight_gradient_only_where_asked(kind, how, device):
    # torch.autograd.grad(loss, x) and backward(inputs=[x]) neither compute the fp8 weight's
    # gradient nor write weight.grad; autograd.grad(loss, weight) returns it (bf16).
    m = make(kind, device)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 64, generator=gen).to(device).requires_grad_()
    r = torch.randn(6, 40, generator=gen)
    loss = (m(x).float() * r.to(device)).sum()
    with _WeightProducts(m.weight.shape) as products:
        if how == "backward":
            loss.backward()
            gx, gw = x.grad, m.weight.grad
        elif how == "grad-x":
            (gx,), gw = torch.autograd.grad(loss, [x]), None
        elif how == "backward-inputs-x":
            loss.backward(inputs=[x])
            gx, gw = x.grad, None
        else:
            gx, gw = torch.autograd.grad(loss, [x, m.weight])
    assert rel_err(gx, r.double() @ dense64(m)) < 1e-2
    if how == "backward":
        assert m.bias.grad is not None
    else:
        assert m.weight.grad is None and m.bias.grad is None
    if gw is None:
        assert products.count == 0  # not computed
    else:
        assert products.count >= 1 and gw.dtype == torch.bfloat16
        assert rel_err(gw, dw64(m, x, r)) < grad_tol(m)


@pytest.mark.parametrize("kind", list(KINDS))
def test_frozen_state_survives_copies_and_loads(kind):
    m = make(kind, "cpu")
    m.weight.requires_grad_(False)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    copies = [copy.deepcopy(m), torch.load(buf, weights_only=False)]
    for assign in (False, True):
        c = make(kind, "cpu", seed=5)
        c.weight.requires_grad_(False)
        c.load_state_dict(copy.deepcopy(m.state_dict()), assign=assign)
        copies.append(c)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    for c in copies:
        assert not c.weight.requires_grad and torch.equal(bits(c.weight), bits(m.weight))
        c(x).float().sum().backward()
        assert c.weight.grad is None and c.bias.grad is not None
    # a trainable layer's copies (whose parameters are made anew) train as it does
    m.weight.requires_grad_(True)
    twins = [copy.deepcopy(m), copy.deepcopy(m)]
    twins[1].weight = torch.nn.Parameter(twins[1].weight.detach().clone())  # an assigned parameter
    r = torch.randn(4, 40, generator=torch.Generator().manual_seed(4))
    for c in [m] + twins:
        (c(x).float() * r).sum().backward()
        assert c.weight.grad.dtype == torch.bfloat16
    assert rel_err(m.weight.grad, dw64(m, x, r)) < grad_tol(m)
    for c in twins:
        assert torch.equal(c.weight.grad, m.weight.grad)


def _twin(m, kind, weight_dtype, bias_dtype, device):
    """A layer of ``kind``'s shape constructed with ``weight_dtype`` (no scale) and m's values."""
    cls, args, kw = KINDS[kind]
    kw = {k: v for k, v in kw.items() if k not in ("weight_dtype", "weight_scale", "activation_dtype")}
    t = cls(*args, device=device, dtype=bias_dtype, weight_dtype=weight_dtype, **kw)
    with torch.no_grad():
        t.weight.copy_(m.weight)
        t.bias.copy_(m.bias)
    if isinstance(t, GroupSparseLinear):
        t.set_indices(m.indices)
    t.weight.requires_grad_(m.weight.requires_grad)
    return t


def _run(m, x, r):
    """(y, x.grad, weight.grad, bias.grad) of sum(m(x) * r)."""
    x = x.detach().clone().requires_grad_()
    y = m(x)
    (y.float() * r).sum().backward()
    return tuple(None if t is None else t.detach().clone() for t in (y, x.grad, m.weight.grad, m.bias.grad))


def _same(a, b):
    return all((u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))
               for u, v in zip(a, b))


CASTS = {
    "float": (lambda m: m.float(), torch.float32),
    "half": (lambda m: m.half(), torch.float16),
    "bfloat16": (lambda m: m.bfloat16(), torch.bfloat16),
    "double": (lambda m: m.double(), torch.float64),
    "to-float32": (lambda m: m.to(torch.float32), torch.float32),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("cast", list(CASTS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_cast_from_fp8_gives_a_layer_of_the_new_dtype(kind, cast, frozen, device):
    m = make(kind, device)
    if frozen:
        m.weight.requires_grad_(False)
    fn, dtype = CASTS[cast]
    fn(m)
    assert m.weight.dtype == dtype and m.weight_dtype == dtype and m.bias.dtype == dtype
    assert m.weight.requires_grad == (not frozen)  # trains unless it was frozen
    twin = _twin(m, kind, dtype, dtype, device)
    assert getattr(m, "activation_dtype", None) is None and repr(m) == repr(twin)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 64, generator=gen).to(device, dtype)
    r = torch.randn(5, 40, generator=gen).to(device)
    got = _run(m, x, r)
    assert _same(got, _run(twin, x, r))
    # the new dtype's precision (no e4m3 input quantization left)
    y64 = x.double() @ dense64(m).to(device).t() + m.bias.double()
    assert rel_err(got[0], y64) < REL_TOL[dtype]
    if not frozen:
        assert got[2].dtype == dtype and rel_err(got[2], dw64(m, x, r)) < REL_TOL[dtype]
    else:
        assert got[2] is None


# fp32 layers (the label count 37 gives the e4m3 Linear's storage padding, in_features 72 its
# bf16 activations) cast to an fp8 dtype
FP32_KINDS = {
    "gs": (GroupSparseLinear, (64, 40, 16, 16)),
    "lin": (Linear, (64, 40)),
    "lin-37": (Linear, (64, 37)),
    "lin-72": (Linear, (72, 40)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("dst", FP8, ids=str)
@pytest.mark.parametrize("kind", list(FP32_KINDS))
def test_cast_to_fp8_gives_a_layer_of_that_fp8_dtype(kind, dst, frozen, device):
    # module.to(<fp8 dtype>): the weight rounded to nearest (as torch casts), the bias and its
    # gradient kept as they were (the constructor keeps biases in 16/32 bits), the weight's
    # gradient in bf16; then the layer is one constructed with weight_dtype=<fp8 dtype>.
    cls, args = FP32_KINDS[kind]
    m = cls(*args, device=device, generator=torch.Generator().manual_seed(7))
    H, L = m.in_features, m.out_features
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, H, generator=gen).to(device)
    r = torch.randn(5, L, generator=gen).to(device)
    (m(x) * r).sum().backward()
    w32, b32 = m.weight.detach().clone(), m.bias.detach().clone()
    gw32, gb32 = m.weight.grad.clone(), m.bias.grad.clone()
    if frozen:
        m.weight.requires_grad_(False)
    m.to(dst)
    assert m.weight.dtype == dst and m.weight_dtype == dst and m.weight.requires_grad == (not frozen)
    assert torch.equal(bits(m.weight), bits(w32.to(dst)))
    assert m.bias.dtype == torch.float32 and torch.equal(m.bias.detach(), b32) and torch.equal(m.bias.grad, gb32)
    assert m.weight.grad.dtype == torch.bfloat16 and torch.equal(m.weight.grad, gw32.to(torch.bfloat16))
    twin = cls(*args, device=device, dtype=torch.float32, weight_dtype=dst)
    with torch.no_grad():
        twin.weight.copy_(m.weight)
        twin.bias.copy_(m.bias)
    if isinstance(m, GroupSparseLinear):
        twin.set_indices(m.indices)
    twin.weight.requires_grad_(not frozen)
    assert getattr(m, "activation_dtype", None) == getattr(twin, "activation_dtype", None)
    assert repr(m) == repr(twin)
    m.zero_grad()
    got = _run(m, x, r)
    assert _same(got, _run(twin, x, r))
    y64 = x.double() @ dense64(m).to(device).t() + b32.double()
    assert rel_err(got[0], y64) < (6e-2 if fp8_activations(m) else 1e-2)
    w0 = bits(m.weight).clone()
    SGD(m.parameters(), lr=0.5).step()
    assert torch.equal(bits(m.weight), w0) == frozen
    if not frozen:
        assert rel_err(got[2], dw64(m, x, r)) < grad_tol(m)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dst", FP8, ids=str)
@pytest.mark.parametrize("kind", ["gs-e4m3", "gs-e5m2", "lin-e4m3", "lin-e4m3-bf16", "lin-e5m2-label"])
def test_cast_between_fp8_dtypes(kind, dst, device):
    # .to(<an fp8 dtype>) of an fp8 layer: its own dtype changes nothing (the bf16 bias is not
    # cast to fp8); the other one gives the layer constructed with it (the codes re-rounded to
    # nearest, the bias and the bf16 gradients kept)
    m = make(kind, device)
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(5, 64, generator=gen).to(device)
    r = torch.randn(5, 40, generator=gen).to(device)
    before = _run(m, x, r)
    src = m.weight.dtype
    w0 = m.weight.detach().clone()
    b0 = m.bias.detach().clone()
    s0 = None if m.weight_scale is None else m.weight_scale.clone()
    m.to(dst)
    assert m.weight.dtype == dst and m.weight_dtype == dst and m.weight.requires_grad
    assert m.bias.dtype == torch.bfloat16 and torch.equal(m.bias.detach(), b0)
    assert torch.equal(m.weight.grad, before[2]) and torch.equal(m.bias.grad, before[3])
    if dst == src:
        assert torch.equal(bits(m.weight), bits(w0))
        assert (m.weight_scale is None) == (s0 is None) and (s0 is None or torch.equal(m.weight_scale, s0))
        m.zero_grad()
        assert _same(_run(m, x, r), before)
        return
    w64 = w0.double() * (1.0 if s0 is None else s0.double()[:, None])
    assert m.weight_scale is None and torch.equal(bits(m.weight), bits(w64.float().to(dst)))
    twin = _twin(m, kind, dst, torch.bfloat16, device)
    assert getattr(m, "activation_dtype", None) == getattr(twin, "activation_dtype", None) and repr(m) == repr(twin)
    m.zero_grad()
    assert _same(_run(m, x, r), _run(twin, x, r))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["gs-e4m3-label", "lin-e5m2-label", "lin-e4m3-bf16"])
def test_torch_compile_fullgraph_of_fp8_layers(kind):
    # fullgraph compiles (no tensor creation with requires_grad inside the forward): inference,
    # and training with the fp8 weight frozen, give the eager layer's bits. Training the fp8
    # weight itself is refused with fullgraph (the compiled backward would cast its gradient to
    # fp8); without fullgraph the layer then runs eagerly, with its bf16 gradient.
    torch._dynamo.reset()
    m = make(kind, "cpu")
    c = copy.deepcopy(m)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(5, 64, generator=gen)
    r = torch.randn(5, 40, generator=gen)
    f = torch.compile(c, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(f(x), m(x))
    for t in (m, c):
        t.weight.requires_grad_(False)
    assert _same(_run(f, x, r)[:2], _run(m, x, r)[:2])
    assert c.weight.grad is None and torch.equal(c.bias.grad, m.bias.grad)
    c.weight.requires_grad_(True)
    # compiled anew: torch 2.11 (not 2.14) reuses a graph compiled with a frozen parameter after
    # requires_grad_(True), a plain nn.Linear's too (bench/diag/compile_frozen_flip_plain.py)
    torch._dynamo.reset()
    f = torch.compile(c, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="fp8 weight that requires grad"):
        f(x.clone().requires_grad_())
    torch._dynamo.reset()
    m.weight.requires_grad_(True)
    m.zero_grad()
    c.zero_grad()
    g = torch.compile(c, backend="aot_eager")
    got = _run(g, x, r)
    assert _same(got[:2], _run(m, x, r)[:2])
    assert c.weight.grad.dtype == torch.bfloat16 and torch.equal(c.weight.grad, m.weight.grad)
    assert rel_err(c.weight.grad, dw64(m, x, r)) < grad_tol(m)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("device", DEVICES)
def test_backward_asks_about_the_right_inputs(kind, device, monkeypatch):
    # ctx.next_functions lists the tensor arguments only: wants_grad must find each argument's
    # own node (it read a shifted one, whose index ran past the end for the bias: then "yes")
    from largeout.nn import lowp

    answers = []
    real = lowp.wants_grad

    def spy(ctx, i):
        answers.append((i, real(ctx, i)))
        return answers[-1][1]

    monkeypatch.setattr(lowp, "wants_grad", spy)
    for frozen in (False, True):
        m = make(kind, device)
        m.weight.requires_grad_(not frozen)
        x = torch.randn(6, 64, device=device, requires_grad=True)
        answers.clear()
        m(x).square().sum().backward(inputs=[x])
        # (the bf16-activation Linears upcast through _FromStored, whose node autograd prunes)
        assert bool(answers) == (kind.startswith("gs") or kind.startswith("lin-e4m3") and kind != "lin-e4m3-bf16")
        assert all(ok == (i == 0) for i, ok in answers), (frozen, answers)
        assert m.weight.grad is None and m.bias.grad is None and x.grad is not None
        answers.clear()
        x.grad = None
        m(x).square().sum().backward(inputs=[m.bias])
        assert not any(ok for i, ok in answers if i in (0, 2)), (frozen, answers)
        assert x.grad is None and m.weight.grad is None and m.bias.grad is not None


@pytest.mark.parametrize("kind", ["gs-e4m3-label", "lin-e5m2-label"])
def test_layer_pickled_before_trainable_fp8_weights_trains(kind):
    # a pickle of the earlier form holds an fp8 weight with requires_grad False that trained all
    # the same (its gradient went to weight.grad by hand): it loads trainable; a frozen layer of
    # the current form stays frozen
    m = make(kind, "cpu")
    old = copy.deepcopy(m)
    del old.__dict__["_lowp_format"]
    old.weight.requires_grad_(False)
    frozen = copy.deepcopy(m)
    frozen.weight.requires_grad_(False)
    for layer, trains in ((old, True), (frozen, False)):
        buf = io.BytesIO()
        torch.save(layer, buf)
        buf.seek(0)
        back = torch.load(buf, weights_only=False)
        assert back.weight.requires_grad is trains and back.weight.dtype in FP8
        before = bits(back.weight).clone()
        opt = SGD(back.parameters(), lr=0.5)
        back(torch.randn(5, 64)).square().sum().backward()
        opt.step()
        assert (back.weight.grad is not None) is trains
        assert (not torch.equal(bits(back.weight), before)) is trains
