"""largeout.stochastic_round against neighbours found by enumerating every value of
each format (largeout.reference.rounding_neighbours)."""

import math

import pytest
import torch

import largeout
from largeout import reference as ref

from conftest import DEVICES, HAS_CUDA

FORMATS = [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]


def fmt_params(dtype):
    fi = torch.finfo(dtype)
    return float(fi.tiny), float(fi.max), float(fi.smallest_normal) * float(fi.eps)  # min normal, max, min subnormal


def sample(dtype, n, seed):
    """Fresh random values across the subnormal and normal ranges of the format, both signs."""
    tiny, big, sub = fmt_params(dtype)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log2(sub), math.log2(big)
    e = torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    mag = torch.exp2(e)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    x = (sign * mag).float()
    return x[x.abs() < big]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_only_neighbours_and_both_used(dtype, device):
    x = sample(dtype, 200_000, seed=hash(str(dtype)) % 2**31).to(device)
    y = largeout.stochastic_round(x, dtype, generator=torch.Generator().manual_seed(1))
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    lo, hi = ref.rounding_neighbours(x, dtype)
    y64 = y.to("cpu", torch.float64)
    is_lo, is_hi = y64 == lo, y64 == hi
    assert bool((is_lo | is_hi).all()), x[~(is_lo | is_hi).cpu()][:5]
    # Signs are kept (zeros included).
    assert bool((torch.signbit(y.float().cpu()) == torch.signbit(x.cpu())).all())
    between = lo != hi
    assert 0.2 < float(is_hi[between].double().mean()) < 0.8  # both neighbours occur


@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_reference_zero_is_positive(dtype):
    # The reference's grid holds zero once, as +0.0 (torch.unique may keep either zero): a
    # positive value below half the smallest subnormal has +0 as its neighbour toward zero,
    # bit for bit what stochastic_round gives for +0 (and, rounding down, for that value).
    vals = ref.representable_values(dtype)
    zero = vals[vals == 0]
    assert zero.numel() == 1 and not bool(torch.signbit(zero).any())
    _, _, sub = fmt_params(dtype)
    x = torch.tensor([0.0, sub / 4], dtype=torch.float32)
    toward, away = ref.rounding_neighbours(x, dtype)
    assert toward.tolist() == [0.0, 0.0] and not bool(torch.signbit(toward).any())
    assert away[0] == 0 and not bool(torch.signbit(away[0])) and float(away[1]) == sub
    y = largeout.stochastic_round(x[:1], dtype, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.signbit(y.double()), torch.signbit(toward[:1]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FORMATS, ids=str)
@pytest.mark.parametrize("where", ["normal", "subnormal"])
def test_unbiased(dtype, where, device):
    tiny, big, sub = fmt_params(dtype)
    gen = torch.Generator().manual_seed(7)
    # A few values strictly between neighbours, each repeated n times.
    base = torch.tensor([1.0 + 1 / 3, -1.0 - 0.71, 1.5 + 0.123, -(1.75 + 0.06)], dtype=torch.float64)
    scale = tiny * 16 if where == "normal" else sub * 2.5
    values = (base * scale).float()
    n = 40_000
    x = values.repeat_interleave(n).to(device)
    y = largeout.stochastic_round(x, dtype, generator=gen).to("cpu", torch.float64).view(len(values), n)
    lo, hi = ref.rounding_neighbours(values, dtype)
    assert bool((lo != hi).all())
    p = ((values.double() - lo) / (hi - lo)).abs()  # probability of `hi`
    freq = (y == hi.unsqueeze(1)).double().mean(1)
    bound = 5 * torch.sqrt(p * (1 - p) / n) + 1e-9
    assert bool(((freq - p).abs() < bound).all()), (freq, p)
    mean = y.mean(1)
    assert bool(((mean - values.double()).abs() <= bound * (hi - lo).abs()).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_boundaries(dtype, device):
    tiny, big, sub = fmt_params(dtype)
    fi = torch.finfo(dtype)
    vals = ref.representable_values(dtype)
    exact = vals[torch.randperm(len(vals), generator=torch.Generator().manual_seed(2))[:2000]]
    exact = exact[exact.abs() <= torch.finfo(torch.float32).max]  # fp32-representable ones
    x = exact.float().to(device)
    y = largeout.stochastic_round(x, dtype, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y.to("cpu", torch.float64), exact), "representable values must stay unchanged"
    over = min(big * 1.001, 3.4e38)  # above the format's max, still a finite float32
    special = torch.tensor([big, -big, over, -over, sub, -sub, sub / 2,
                            0.0, -0.0, float("inf"), float("-inf"), float("nan")], dtype=torch.float32).to(device)
    y = largeout.stochastic_round(special, dtype, generator=torch.Generator().manual_seed(4)).to("cpu").float()
    assert y[0] == big and y[1] == -big
    assert y[2] == big and y[3] == -big, "finite overflow saturates"
    assert y[4] == sub and y[5] == -sub
    assert y[6] in (0.0, sub)
    assert y[7] == 0 and not torch.signbit(y[7]) and y[8] == 0 and torch.signbit(y[8])
    if dtype == torch.float8_e4m3fn:  # no infinities: +-max
        assert y[9] == big and y[10] == -big
    else:
        assert y[9] == float("inf") and y[10] == float("-inf")
    assert torch.isnan(y[11])


@pytest.mark.parametrize("device", DEVICES)
def test_reproducible_and_seed_dependent(device):
    x = sample(torch.bfloat16, 10_000, seed=5).to(device)
    a = largeout.stochastic_round(x, torch.bfloat16, generator=torch.Generator().manual_seed(11))
    b = largeout.stochastic_round(x, torch.bfloat16, generator=torch.Generator().manual_seed(11))
    c = largeout.stochastic_round(x, torch.bfloat16, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    assert not torch.equal(a.view(torch.int16), c.view(torch.int16))
    g = torch.Generator().manual_seed(11)
    d = largeout.stochastic_round(x, torch.bfloat16, generator=g)
    e = largeout.stochastic_round(x, torch.bfloat16, generator=g)  # the generator advanced
    assert torch.equal(a.view(torch.int16), d.view(torch.int16))
    assert not torch.equal(d.view(torch.int16), e.view(torch.int16))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_same_bits_on_cpu_and_gpu(dtype):
    x = sample(dtype, 100_003, seed=9)
    a = largeout.stochastic_round(x, dtype, generator=torch.Generator().manual_seed(21))
    b = largeout.stochastic_round(x.cuda(), dtype, generator=torch.Generator().manual_seed(21))
    bits = torch.int16 if torch.finfo(dtype).bits == 16 else torch.uint8
    assert torch.equal(a.view(bits), b.cpu().view(bits))


def test_bad_input():
    with pytest.raises(TypeError, match="x must be float32; got torch.float64"):
        largeout.stochastic_round(torch.ones(3, dtype=torch.float64), torch.bfloat16)
    with pytest.raises(ValueError, match="dtype must be one of"):
        largeout.stochastic_round(torch.ones(3), torch.int8)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        largeout.stochastic_round(torch.ones(3), torch.bfloat16, generator=3)
    with pytest.raises(ValueError, match="x must be on the CPU or a CUDA device; got meta"):
        largeout.stochastic_round(torch.ones(3, device="meta"), torch.bfloat16)
    with pytest.raises(TypeError, match="x must be float32"):
        torch.ops.largeout.stochastic_round(torch.ones(3, dtype=torch.float16), torch.bfloat16, 1, 2)
    # no gradient: an x that needs one is an error in grad mode, fine detached or without grad
    x = torch.randn(5, requires_grad=True)
    with pytest.raises(RuntimeError, match="x requires grad, but rounding has no gradient"):
        largeout.stochastic_round(x, torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    a = largeout.stochastic_round(x.detach(), torch.bfloat16, generator=g)
    with torch.no_grad():
        b = largeout.stochastic_round(x, torch.bfloat16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not a.requires_grad and not b.requires_grad


def _same_bf16(got, want):
    """Bit for bit, except that NaN need only stay NaN (torch drops a NaN's sign)."""
    nan = torch.isnan(want.float())
    assert torch.equal(torch.isnan(got.float()), nan)
    assert torch.equal(got.view(torch.int16)[~nan], want.view(torch.int16)[~nan])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_fp8_to_bf16_is_exact_on_every_code(dtype, device):
    # All 256 codes, then sizes around the 16-element vector width and a view one byte into
    # its storage (the per-element path), against torch's own conversion.
    codes = torch.arange(256, dtype=torch.uint8).view(dtype).to(device)
    _same_bf16(torch.ops.largeout.fp8_to_bf16(codes), codes.to(torch.bfloat16))
    gen = torch.Generator().manual_seed(5)
    big = torch.randint(0, 256, (100_003,), generator=gen, dtype=torch.uint8).view(dtype).to(device)
    for x in (big[:1], big[:17], big[:4096], big, big[1:], big[3:].view(-1)[:-5]):
        _same_bf16(torch.ops.largeout.fp8_to_bf16(x), x.to(torch.bfloat16))
    m = big[:100_000].view(100, 1000)[:, ::3]  # strided
    _same_bf16(torch.ops.largeout.fp8_to_bf16(m), m.to(torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
@pytest.mark.parametrize("cols", [16, 48, 5, 1])  # multiples of 16: the vector path; others per element
def test_fp8_to_bf16_with_row_scales(dtype, cols, device):
    # times a float32 scale per row: powers of two (the layers' label scales) exactly, other
    # values as the fp32 product rounded to nearest-even (torch's float -> bf16)
    gen = torch.Generator().manual_seed(cols)
    rows = 777
    codes = torch.randint(0, 256, (rows, cols), generator=gen, dtype=torch.uint8)
    codes[(codes & 0x7F) >= (0x7F if dtype == torch.float8_e4m3fn else 0x7C)] = 0x11  # no NaN / inf
    x = codes.view(dtype)
    pow2 = torch.ldexp(torch.ones(rows), torch.randint(-100, 101, (rows,), generator=gen))
    got = torch.ops.largeout.fp8_to_bf16(x.to(device), pow2.to(device)).cpu()
    want = (x.double() * pow2.double()[:, None]).to(torch.bfloat16)
    assert torch.equal((x.double() * pow2.double()[:, None]).to(torch.bfloat16).double(),
                       x.double() * pow2.double()[:, None])  # (exact in bf16)
    _same_bf16(got, want)
    other = torch.rand(rows, generator=gen) * 3 + 0.1
    got = torch.ops.largeout.fp8_to_bf16(x.to(device), other.to(device)).cpu()
    _same_bf16(got, (x.float() * other[:, None]).to(torch.bfloat16))
    # a row slice of a bigger weight, at an offset into its storage (the layer's dx takes chunks of rows)
    xd, pd = x.to(device), pow2.to(device)
    got = torch.ops.largeout.fp8_to_bf16(xd[100:300], pd[100:300]).cpu()
    _same_bf16(got, want[100:300])


def test_fp8_to_bf16_row_scale_checked():
    x = torch.randn(4, 16).to(torch.float8_e4m3fn)
    op = torch.ops.largeout.fp8_to_bf16
    with pytest.raises(RuntimeError, match=r"row_scale must be a \[4\] tensor"):
        op(x, torch.ones(5))
    with pytest.raises(TypeError, match="row_scale must be float32; got Double"):
        op(x, torch.ones(4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"x must be 2-D \[rows, cols\] with row_scale; got 1-D"):
        op(x.view(-1), torch.ones(4))


def test_fp8_to_bf16_rejects_other_dtypes():
    x = torch.randn(10)
    before = x.clone()
    with pytest.raises(TypeError, match="x must be float8_e4m3fn or float8_e5m2; got Float"):
        torch.ops.largeout.fp8_to_bf16(x)
    assert torch.equal(x, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fp8_layer_upcast_matches_torch(monkeypatch):
    # The fp8 layer's weight upcast for dx (largeout's kernel by default) gives the bits of
    # torch's (LARGEOUT_FP8_UPCAST=0).
    from largeout.nn import lowp
    gen = torch.Generator().manual_seed(6)
    w = (torch.randn(3001, 768, generator=gen) * 3).to(torch.float8_e4m3fn).cuda()
    monkeypatch.setenv("LARGEOUT_FP8_UPCAST", "0")
    want = lowp.dequantize(w, None, torch.bfloat16)
    monkeypatch.delenv("LARGEOUT_FP8_UPCAST")
    _same_bf16(lowp.dequantize(w, None, torch.bfloat16), want)
