"""Per-label power-of-two scales of fp8 weights (``weight_scale="label"``): the scale rule,
the layers' compute against float64 references, the optimizers' updates in scaled units,
rescaling, checkpoints and errors."""

import copy
import math

import pytest
import torch

from largeout import optim as lo_optim
from largeout.nn import GroupSparseLinear, Linear, lowp

from conftest import DEVICES, HAS_CUDA, rel_err

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def _is_pow2(t):
    mant, _ = torch.frexp(t)
    return bool((mant == 0.5).all())


def test_pow2_scale_rule():
    # e4m3: amax / s in (8, 16]; e5m2: (512, 1024]; 1 for 0, inf and NaN
    amax = torch.tensor([16.0, 16.0001, 8.0, 8.0001, 1.0, 3e-5, 1e4, 0.0, math.inf, math.nan])
    s = lowp.pow2_scale(amax, torch.float8_e4m3fn)
    assert s.tolist()[:7] == [1.0, 2.0, 0.5, 1.0, 2.0**-4, 2.0**-19, 1024.0]
    assert s.tolist()[7:] == [1.0, 1.0, 1.0]
    r = torch.rand(10000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-20, 20, 10000)
    for dt, T in ((torch.float8_e4m3fn, 16.0), (torch.float8_e5m2, 1024.0)):
        s = lowp.pow2_scale(r, dt)
        assert _is_pow2(s)
        q = r / s
        assert bool(((q > T / 2) & (q <= T)).all())
    # exponents stay in [-100, 100]
    s = lowp.pow2_scale(torch.tensor([1e-38, 3e38]), torch.float8_e4m3fn)
    assert s.tolist() == [2.0**-100, 2.0**100]


def test_check_scale():
    lowp.check_scale("s", torch.tensor([1.0, 0.25, 2.0**-100, 2.0**100]), 4)
    for bad, msg in ((torch.tensor([1.0, 3.0]), "powers of two .* got 3.0 at row 1"),
                     (torch.tensor([1.0, -2.0]), "powers of two"),
                     (torch.tensor([1.0, 0.0]), "powers of two"),
                     (torch.tensor([2.0**101, 1.0]), "powers of two .* e in \\[-100, 100\\]"),
                     (torch.tensor([1.0, float("nan")]), "powers of two"),
                     (torch.ones(3), "shape \\(2,\\)"),
                     (torch.ones(2, dtype=torch.float64), "float32 tensor of shape \\(2,\\); got a torch.float64")):
        with pytest.raises(ValueError, match=msg):
            lowp.check_scale("s", bad, 2)


def test_scaled_init_keeps_values_normal():
    # U(-1/sqrt(K), 1/sqrt(K)) at K = 128 in e4m3: unscaled, most values are subnormal or
    # within 4 binades of the smallest normal (few mantissa bits); scaled, codes fill the format
    gen = torch.Generator().manual_seed(1)
    plain = GroupSparseLinear(512, 4000, 128, 32, weight_dtype=torch.float8_e4m3fn, generator=gen)
    scaled = GroupSparseLinear(512, 4000, 128, 32, weight_dtype=torch.float8_e4m3fn, generator=gen,
                               weight_scale="label")
    bound = 1 / math.sqrt(128)
    s = scaled.weight_scale
    assert s.shape == (4000,) and s.dtype == torch.float32 and _is_pow2(s)
    assert bool((s == s[0]).all())  # one bound: one scale at init
    codes = scaled.weight.detach().float()
    assert 8 < float(codes.abs().max()) <= 16
    w = lowp.dequantize(scaled.weight, s)
    assert float(w.abs().max()) <= bound * 1.125  # U(-bound, bound), stochastically rounded: up to one code step (1/8) above
    sub = lambda c: float(((c != 0) & (c.abs() < 2.0**-6)).float().mean())  # noqa: E731
    assert sub(plain.weight.detach().float()) > 0.12  # 16% (and 1% zeros)
    assert sub(codes) < 0.002
    # the scaled init is unbiased and uniform: the mean |w| of U(-b, b) is b / 2
    assert abs(float(w.abs().mean()) / (bound / 2) - 1) < 0.01


def _dense64(layer):
    """The layer's weight as a dense float64 [L, H] (dequantized; scattered for group-sparse)."""
    w = lowp.dequantize(layer.weight, layer.weight_scale, torch.float64)
    if isinstance(layer, GroupSparseLinear):
        full = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64, device=w.device)
        rows = layer.indices.long().repeat_interleave(layer.group_size, dim=0)[: layer.out_features]
        return full.scatter_(1, rows, w), rows
    return w, None


def _spread_scales(layer, gen):
    """Different scales per label (as after training and rescale_weight_): codes unchanged."""
    e = torch.randint(-12, 4, (layer.out_features,), generator=gen)
    layer.weight_scale.copy_(torch.ldexp(torch.ones(layer.out_features), e))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L", [333, 40])  # 40: 8-aligned, padded to 48 rows for FP8 GEMMs
@pytest.mark.parametrize("kind", ["linear-e4m3-fp8act", "linear-e4m3-bf16act", "linear-e5m2", "group-sparse-e4m3",
                                  "group-sparse-e5m2"])
def test_scaled_layer_matches_reference(kind, L, device):
    gen = torch.Generator().manual_seed(11)
    if kind.startswith("linear"):
        wdt = torch.float8_e5m2 if kind.endswith("e5m2") else torch.float8_e4m3fn
        act = {"fp8act": torch.float8_e4m3fn, "bf16act": torch.bfloat16}.get(kind.split("-")[-1])
        layer = Linear(96, L, weight_dtype=wdt, activation_dtype=act, generator=gen, weight_scale="label")
    else:
        wdt = torch.float8_e5m2 if kind.endswith("e5m2") else torch.float8_e4m3fn
        layer = GroupSparseLinear(96, L, 64, 32, weight_dtype=wdt, generator=gen, weight_scale="label")
    _spread_scales(layer, gen)
    layer = layer.to(device)
    x = (2 * torch.randn(7, 96, generator=gen)).to(device).requires_grad_()
    y = layer(x)
    w64, rows = _dense64(layer)
    w64.requires_grad_()
    x64 = x.detach().double()
    if kind == "linear-e4m3-fp8act":  # the input quantized as documented (one scale, e4m3)
        sx = (x64.abs().amax() / 448).float().double()
        x64 = (x64 / sx).float().to(torch.float8_e4m3fn).double() * sx
    x64.requires_grad_()
    y64 = x64 @ w64.T + layer.bias.detach().double()
    # scales 2^-12..2^3 make the labels' outputs differ by 2^15: compare label by label
    err = ((y.detach().double().cpu() - y64.detach().cpu()).abs().amax(0) /
           y64.detach().cpu().abs().amax(0).clamp_min(1e-30))
    assert float(err.max()) < 2 ** -6
    gy = torch.randn(y.shape, generator=gen).to(device)
    y.backward(gy)
    y64.backward(gy.double())
    assert rel_err(x.grad, x64.grad) < 1e-2
    g = layer.weight.grad
    assert g.dtype == torch.bfloat16 and g.shape == layer.weight.shape
    want = w64.grad if rows is None else torch.gather(w64.grad, 1, rows)
    assert rel_err(g, want) < 1e-2  # with respect to the scaled weight, not the codes


@pytest.mark.parametrize("opt_name", ["sgd", "sgd-momentum-kahan", "adamw"])
@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_updates_scaled_weight_in_its_units(opt_name, fused):
    # rounding to nearest: the new code is the float64 update of the scaled value, divided
    # by the scale and rounded to nearest; a step that ignored the scale would be off by it
    gen = torch.Generator().manual_seed(5)
    layer = GroupSparseLinear(64, 200, 32, 32, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    _spread_scales(layer, gen)
    w0 = lowp.dequantize(layer.weight, layer.weight_scale, torch.float64)
    g = (torch.randn(200, 32, generator=gen) * w0.abs().amax(1, keepdim=True).float()).bfloat16()
    layer.weight.grad = g.clone()
    s64 = layer.weight_scale.double()[:, None]
    lr, wd = 0.05, 0.01
    if opt_name == "adamw":
        opt = lo_optim.AdamW([layer.weight], lr=lr, weight_decay=wd, rounding="nearest", fused=fused,
                             state_dtype=torch.float32)
        g64 = g.double()
        m, v = 0.1 * g64, 0.001 * g64 * g64
        want = w0 - lr / 0.1 * m / ((v / 0.001).sqrt() + 1e-8) - lr * wd * w0
    else:
        mom = 0.9 if opt_name != "sgd" else 0.0
        opt = lo_optim.SGD([layer.weight], lr=lr, momentum=mom, weight_decay=wd, rounding="nearest",
                           kahan=opt_name.endswith("kahan"), fused=fused)
        want = w0 - lr * (g.double() + wd * w0)
    opt.step()
    got = layer.weight.detach().float().double()
    ref_codes = (want / s64).float().to(torch.float8_e4m3fn).float().double()
    same = (got == ref_codes).float().mean()
    assert float(same) > 0.99, float(same)
    ulp = torch.ldexp(torch.ones_like(ref_codes), torch.frexp(ref_codes.abs().clamp_min(2.0**-6))[1] - 4)
    assert bool(((got - ref_codes).abs() <= ulp).all())
    if opt_name == "sgd-momentum-kahan":  # the buffers are in the scaled units too
        buf = opt.state[layer.weight]["momentum_buffer"].double()
        assert rel_err(buf, g.double() + wd * w0) < 1e-2
        comp = opt.state[layer.weight]["kahan_comp"].double()
        lost = got * s64 - want  # what the rounding lost, in the scaled units
        assert rel_err(comp, lost) < 1e-2


def test_optimizer_stochastic_rounding_is_unbiased_in_scaled_units():
    # steps far below the codes' spacing still move the scaled value by lr * g on average
    gen = torch.Generator().manual_seed(6)
    layer = Linear(64, 512, weight_dtype=torch.float8_e4m3fn, activation_dtype=torch.bfloat16, generator=gen,
                   weight_scale="label")
    _spread_scales(layer, gen)
    w0 = lowp.dequantize(layer.weight, layer.weight_scale, torch.float64)
    s64 = layer.weight_scale.double()[:, None]
    g = torch.full((512, 64), 1.0, dtype=torch.bfloat16)
    # a step of 1/8 of a code step at every element's magnitude: lr * g = 2^-6 * code spacing
    lr = float(2.0**-10)
    layer.weight.grad = (g.float() * (s64 * 16).float()).bfloat16()  # the step: lr * g = 2^-6 * s
    opt = lo_optim.SGD([layer.weight], lr=lr, seed=1)
    opt.step()
    moved = (lowp.dequantize(layer.weight, layer.weight_scale, torch.float64) - w0) / s64  # in code units
    # each element moves by -2^-6 codes-units on average (up to the spacing of its code)
    assert abs(float(moved.mean()) + 2.0**-6) < 0.25 * 2.0**-6
    assert float((moved != 0).float().mean()) > 0.001  # some did move: not lost to rounding


def test_scaled_and_unscaled_fp8_params_in_one_optimizer():
    gen = torch.Generator().manual_seed(7)
    a = GroupSparseLinear(64, 100, 32, 32, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    b = GroupSparseLinear(64, 100, 32, 32, weight_dtype=torch.float8_e4m3fn, generator=gen)
    _spread_scales(a, gen)
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    x = torch.randn(16, 64, generator=gen)
    for m in (a, b, a2, b2):
        m(x).square().sum().backward()
    lo_optim.SGD([a.weight, b.weight], lr=0.1, rounding="nearest").step()
    lo_optim.SGD([a2.weight], lr=0.1, rounding="nearest", fused=False).step()
    lo_optim.SGD([b2.weight], lr=0.1, rounding="nearest", fused=False).step()
    assert torch.equal(a.weight.view(torch.uint8), a2.weight.view(torch.uint8))
    assert torch.equal(b.weight.view(torch.uint8), b2.weight.view(torch.uint8))
    assert lowp.row_scale(a2.weight) is a2.weight_scale  # the copy's own scale


@pytest.mark.parametrize("device", DEVICES)
def test_rescale_weight(device):
    gen = torch.Generator().manual_seed(8)
    layer = GroupSparseLinear(64, 96, 32, 32, weight_dtype=torch.float8_e4m3fn, generator=gen,
                              weight_scale="label").to(device)
    with torch.no_grad():
        q = layer.weight.detach()
        # rows 0-9 shrank (codes down to 1/8 of their range), rows 10-19 grew to the format's top, row 20 is zero
        q[:10] = (q[:10].float() / 8).to(q.dtype)
        q[10:20] = (q[10:20].float() * 20).clamp(-448, 448).to(q.dtype)
        q[20] = 0
    before = lowp.dequantize(layer.weight, layer.weight_scale, torch.float64)
    s0 = layer.weight_scale.clone()
    changed = layer.rescale_weight_(generator=torch.Generator().manual_seed(0))
    assert changed == 20
    s1 = layer.weight_scale
    assert _is_pow2(s1) and torch.equal(s1[20:], s0[20:])
    assert bool((s1[:10] < s0[:10]).all()) and bool((s1[10:20] > s0[10:20]).all())
    amax = layer.weight.detach().float().abs().amax(1)
    assert bool(((amax[:20] > 8) & (amax[:20] <= 16)).all())
    after = lowp.dequantize(layer.weight, layer.weight_scale, torch.float64)
    assert torch.equal(after[:10], before[:10])  # a smaller scale: exact
    # a larger scale rounds stochastically: within one new code step
    step = s1[10:20, None].double() * 2.0 ** (torch.frexp(before[10:20].abs() / s1[10:20, None].double())[1] - 4)
    assert bool(((after[10:20] - before[10:20]).abs() <= step.clamp_min(s1[10:20, None].double() * 2.0**-9)).all())
    assert torch.equal(after[20:], before[20:])
    assert layer.rescale_weight_() == 0  # already in place
    with pytest.raises(RuntimeError, match="has no weight scale"):
        GroupSparseLinear(64, 96, 32, 32, weight_dtype=torch.float8_e4m3fn).rescale_weight_()


def test_rescale_rounds_stochastically():
    # rows whose scale grows 32x: codes of 2^-6 become 2^-11 in the new units, below e4m3's
    # smallest subnormal 2^-9: 0 or 2^-9 with probability 1/4, so the values' mean is kept
    # (round to nearest would give all zeros)
    layer = GroupSparseLinear(64, 64, 32, 32, weight_dtype=torch.float8_e4m3fn, weight_scale="label")
    with torch.no_grad():
        layer.weight.fill_(2.0**-6)
        layer.weight[:, 0] = 448.0
        layer.weight_scale.fill_(1.0)
    assert layer.rescale_weight_(generator=torch.Generator().manual_seed(3)) == 64
    assert bool((layer.weight_scale == 32.0).all())
    small = lowp.dequantize(layer.weight, layer.weight_scale, torch.float64)[:, 1:]
    assert set(small.unique().tolist()) <= {0.0, 2.0**-9 * 32}
    frac = float((small != 0).double().mean())  # 64 * 31 draws
    assert abs(frac - 0.25) < 0.05, frac
    assert torch.equal(lowp.dequantize(layer.weight, layer.weight_scale)[:, 0], torch.full((64,), 448.0))


@pytest.mark.parametrize("cast", ["float", "bfloat16", "to-float16"])
def test_dtype_cast_folds_the_scales(cast):
    # module.float() / .bfloat16() / .to(dtype) convert fp8 weights: the scales go into the values
    gen = torch.Generator().manual_seed(13)
    layer = GroupSparseLinear(64, 96, 32, 32, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    _spread_scales(layer, gen)
    want = lowp.dequantize(layer.weight, layer.weight_scale, torch.float64)
    x = torch.randn(5, 64, generator=gen)
    y0 = layer(x).float()
    layer = {"float": lambda m: m.float(), "bfloat16": lambda m: m.bfloat16(),
             "to-float16": lambda m: m.to(torch.float16)}[cast](layer)
    assert layer.weight_scale is None and lowp.row_scale(layer.weight) is None
    assert layer.weight.dtype != torch.float8_e4m3fn
    assert rel_err(layer.weight.double(), want) < 5e-3  # the values, in the new dtype
    assert rel_err(layer(x.to(layer.weight.dtype)).float(), y0) < 2e-2


def test_cast_to_the_weights_own_dtype_keeps_float32_scales():
    gen = torch.Generator().manual_seed(15)
    layer = GroupSparseLinear(64, 96, 32, 32, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    layer.weight_scale.copy_(torch.ldexp(torch.ones(96), torch.randint(-90, 90, (96,), generator=gen)))
    s0 = layer.weight_scale.clone()
    layer.to(torch.float8_e4m3fn)  # .to(dtype) casts buffers too: the scales stay float32, unchanged
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, s0)
    assert lowp.row_scale(layer.weight) is layer.weight_scale


def test_scale_link_follows_copies_assignments_and_moves():
    gen = torch.Generator().manual_seed(14)
    layer = GroupSparseLinear(64, 96, 32, 32, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    assert lowp.row_scale(layer.weight) is layer.weight_scale
    c = copy.deepcopy(layer)  # no forward needed before the optimizer finds the copy's scale
    assert lowp.row_scale(c.weight) is c.weight_scale and c.weight_scale is not layer.weight_scale
    layer.weight_scale = torch.full((96,), 0.5)
    assert lowp.row_scale(layer.weight) is layer.weight_scale
    delattr(layer.weight, "_largeout_row_scale")
    layer.to("cpu")
    assert lowp.row_scale(layer.weight) is layer.weight_scale
    sd = {k: v.clone() for k, v in c.state_dict().items()}
    layer.load_state_dict(sd, assign=True)
    assert lowp.row_scale(layer.weight) is layer.weight_scale and torch.equal(layer.weight_scale, sd["weight_scale"])


def test_fused_op_with_an_empty_scaled_parameter_first():
    # the CPU step knows a launch is scaled from the op's scale list, not from its first slot
    op = torch.ops.largeout._fused_optim_step_
    args = (0, False, 0.5, 0.0, 0.0, False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 2)
    p = torch.full((3, 16), 8.0).to(torch.float8_e4m3fn)
    g = torch.full((3, 16), 2.0**-4).bfloat16()
    s = torch.full((3,), 2.0**-5)
    alone = p.clone()
    op([alone], [g], [], [], [], [s], *args)
    empty = torch.empty(0, 16).to(torch.float8_e4m3fn)
    op([empty, p], [torch.empty(0, 16).bfloat16(), g], [], [], [], [torch.empty(0), s], *args)
    # value 8 * 2^-5 = 0.25, minus 0.5 * 2^-4 = 0.03125: 0.21875 = 7 * 2^-5, code 7
    assert bool((alone.float() == 7.0).all())
    assert torch.equal(p.view(torch.uint8), alone.view(torch.uint8))


def test_scaled_layer_state_dict_round_trip_and_bad_scale():
    gen = torch.Generator().manual_seed(9)
    a = Linear(48, 40, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    _spread_scales(a, gen)
    b = Linear(48, 40, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    sd = a.state_dict()
    assert "weight_scale" in sd
    b.load_state_dict(sd)
    x = torch.randn(5, 48, generator=gen)
    assert torch.equal(a(x), b(x))
    c = Linear(48, 40, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale="label")
    w_before, s_before = c.weight.detach().clone(), c.weight_scale.clone()
    bad = dict(sd)
    bad["weight_scale"] = sd["weight_scale"] * 3
    with pytest.raises(ValueError, match="Linear: weight_scale must hold powers of two"):
        c.load_state_dict(bad)
    assert torch.equal(c.weight.view(torch.uint8), w_before.view(torch.uint8)) and torch.equal(c.weight_scale, s_before)
    with pytest.raises(RuntimeError, match="Unexpected key.*weight_scale"):
        Linear(48, 40, weight_dtype=torch.float8_e4m3fn).load_state_dict(sd)


def test_weight_scale_arguments_checked():
    with pytest.raises(ValueError, match="weight_scale must be None or \"label\"; got 'row'"):
        Linear(16, 4, weight_dtype=torch.float8_e4m3fn, weight_scale="row")
    with pytest.raises(ValueError, match="needs an fp8 weight_dtype .* got weight_dtype=torch.bfloat16"):
        GroupSparseLinear(64, 32, 16, 16, weight_dtype=torch.bfloat16, weight_scale="label")
    with pytest.raises(ValueError, match="rows a multiple of 8 long; got 12"):
        Linear(12, 4, weight_dtype=torch.float8_e5m2, weight_scale="label")
    assert "weight_scale=label" in repr(Linear(16, 4, weight_dtype=torch.float8_e4m3fn, weight_scale="label"))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("wdt", FP8, ids=str)
@pytest.mark.parametrize("opt_name", ["sgd-momentum-kahan", "sgd", "adamw-bf16", "adamw-f32"])
@pytest.mark.parametrize("gdt", [torch.bfloat16, torch.float16], ids=str)  # (fp16: the run-time-typed kernel)
def test_scaled_fused_step_cuda_matches_cpu_bits(wdt, opt_name, gdt):
    gen = torch.Generator().manual_seed(12)
    shapes = [(300, 64), (7, 8), (1000, 128)]
    ps, scales = [], []
    for shp in shapes:
        p = torch.nn.Parameter((torch.randn(shp, generator=gen) * 8).to(wdt), requires_grad=False)
        p.grad_dtype = None  # a bf16 gradient, as the fp8 layers give (or fp16)
        s = torch.ldexp(torch.ones(shp[0]), torch.randint(-10, 3, (shp[0],), generator=gen))
        p.grad = (torch.randn(shp, generator=gen) * s[:, None]).to(gdt)
        ps.append(p)
        scales.append(s)
    runs = {}
    for dev in ("cpu", "cuda"):
        qs = []
        for p, s in zip(ps, scales):
            q = torch.nn.Parameter(p.detach().clone().to(dev), requires_grad=False)
            q.grad_dtype = None
            q.grad = p.grad.to(dev)
            lowp.link_scale(q, s.to(dev))
            qs.append(q)
        if opt_name.startswith("adamw"):
            sdt = torch.bfloat16 if opt_name.endswith("bf16") else torch.float32
            opt = lo_optim.AdamW(qs, lr=1e-2, weight_decay=0.1, seed=4, state_dtype=sdt)
        else:
            opt = lo_optim.SGD(qs, lr=0.1, momentum=0.9 if opt_name != "sgd" else 0.0, weight_decay=0.01,
                               kahan=opt_name.endswith("kahan"), seed=4)
        for _ in range(3):
            opt.step()
        runs[dev] = ([q.detach().cpu() for q in qs],
                     [{k: v.cpu() for k, v in st.items() if torch.is_tensor(v)} for st in opt.state.values()])
    for a, b in zip(runs["cpu"][0], runs["cuda"][0]):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    for sa, sb in zip(runs["cpu"][1], runs["cuda"][1]):
        for k in sa:
            if sa[k].dim():
                w = {1: torch.int8, 2: torch.int16, 4: torch.int32}[sa[k].element_size()]
                assert torch.equal(sa[k].view(w), sb[k].view(w)), k
