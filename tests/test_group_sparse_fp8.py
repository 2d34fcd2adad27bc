"""The group-sparse layer with an fp8 weight through largeout's fp8 ops
(``group_sparse_linear_fp8`` and its input gradient): the layer's values are the weight
times its row scale in bf16 (the ``fp8_to_bf16`` op). On an sm_90 GPU the Hopper kernels
upcast the codes inside (the forward; dx v3 or v2 where dY's rows are a multiple of 8), so
their results must be bit for bit those of the bf16 kernels on the upcast weight; on the
CPU and elsewhere the ops upcast first. Both are also checked against float64."""

import pytest
import torch

from largeout import kernels
from largeout import reference as ref
from largeout.nn import GroupSparseLinear, random_group_indices

from conftest import DEVICES, rel_err

IS_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
ops = torch.ops.largeout


def make(B, H, L, K, G, wdt, scaled, seed, device):
    """bf16 x and dY, fp8 weight codes spread over the format's whole range (normal,
    subnormal and zero: magnitudes from the largest down to below the smallest subnormal),
    power-of-two row scales 2^-6 .. 2^5 (or None), a bias and random indices."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, generator=gen).to(torch.bfloat16)
    top, octaves = (448, 20.0) if wdt == torch.float8_e4m3fn else (57344, 34.0)
    mag = torch.exp2(torch.empty(L, K).uniform_(-octaves, 0.0, generator=gen)) * top
    w = (mag * torch.randn(L, K, generator=gen).sign()).clamp(-top, top).to(wdt)
    # (powers of two, as largeout's layers choose them: 2^-6 .. 2^5 over 2^8 / 2^15, about the format's largest)
    scale = torch.exp2(torch.randint(-6, 6, (L,), generator=gen).float() - top.bit_length() + 1) if scaled else None
    if scaled == "odd":  # scales the Hopper kernels' one-multiply path does not take: powers of two
        # beyond 2^+-100 (products subnormal in bf16 among them) and non-powers of two
        far = torch.where(torch.rand(L, generator=gen) < 0.5, torch.randint(-125, -100, (L,), generator=gen),
                          torch.randint(101, 105, (L,), generator=gen))
        scale = torch.where(torch.rand(L, generator=gen) < 0.7, torch.exp2(far.float()),
                            torch.rand(L, generator=gen) * 0.3 + 0.01)
    b = torch.randn(L, generator=gen).to(torch.bfloat16)
    idx = random_group_indices(-(-L // G), H, K, generator=gen)
    dy = torch.randn(B, L, generator=gen).to(torch.bfloat16)
    move = (lambda t: None if t is None else t.to(device))
    return tuple(move(t) for t in (x, w, scale, b, idx, dy))


def upcast(w, scale):
    return ops.fp8_to_bf16(w, scale)


def counts():
    return kernels.launch_counts() if IS_SM90 else None


def row_padded(t):
    """t [B, L] as a view into rows of a multiple of 8 elements (as the layer's backward pads dY)."""
    rows = t.new_full((t.shape[0], -(-t.shape[1] // 8) * 8), float("nan"))[:, : t.shape[1]]
    rows.copy_(t)
    return rows


def check_ops(B, H, L, K, G, wdt, scaled, seed, device, float64=True):
    """Both fp8 ops bit for bit the bf16 ops on the upcast weight (and, unless not float64,
    near float64: a CPU reference); on the GPU also with dY row-padded. Returns the launch
    counts before and after the fp8 ops."""
    x, w, scale, b, idx, dy = make(B, H, L, K, G, wdt, scaled, seed, device)
    wb = upcast(w, scale)
    before = counts()
    y = ops.group_sparse_linear_fp8(x, w, scale, idx, b, G)
    dx = ops.group_sparse_linear_fp8_backward_input(dy, w, scale, idx, G, H)
    dx_pad = ops.group_sparse_linear_fp8_backward_input(row_padded(dy), w, scale, idx, G, H) if B > 1 else dx
    after = counts()
    y_bf = ops.group_sparse_linear(x, wb, idx, b, G)
    dx_bf = ops.group_sparse_linear_backward_input(dy, wb, idx, G, H)
    # (a row-padded dY can take another dx kernel than a contiguous one: compare like with like)
    dx_pad_bf = ops.group_sparse_linear_backward_input(row_padded(dy), wb, idx, G, H) if B > 1 else dx_bf
    assert y.dtype == torch.bfloat16 and y.shape == (B, L) and dx.shape == (B, H)
    assert torch.equal(y, y_bf)
    assert torch.equal(dx, dx_bf)
    assert torch.equal(dx_pad, dx_pad_bf)
    if not float64:
        assert torch.isfinite(y).all() and torch.isfinite(dx).all() and torch.isfinite(dx_pad).all()
        return before, after
    y64 = ref.group_sparse_linear(x, wb, idx, b, G)
    dx64, _, _ = ref.group_sparse_linear_grads(x, wb, idx, b, G, dy)
    assert rel_err(y, y64) < 1e-2
    assert rel_err(dx, dx64) < 1e-2
    assert rel_err(dx_pad, dx64) < 1e-2
    return before, after


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "scaled"])
@pytest.mark.parametrize("B,H,L,K,G", [(1, 64, 40, 64, 16), (33, 200, 333, 128, 32), (7, 256, 130, 256, 64),
                                       (5, 128, 257, 64, 128)])
def test_fp8_ops_equal_bf16_ops_on_the_upcast_weight(B, H, L, K, G, wdt, scaled, device, poison):
    check_ops(B, H, L, K, G, wdt, scaled, 3, device)


def test_fp8_ops_check_their_arguments():
    x, w, scale, b, idx, dy = make(4, 64, 40, 64, 32, torch.float8_e4m3fn, True, 0, "cpu")
    with pytest.raises(TypeError, match="weight must be float8"):
        ops.group_sparse_linear_fp8(x, w.to(torch.bfloat16), scale, idx, b, 32)
    with pytest.raises(TypeError, match="x must be bfloat16"):
        ops.group_sparse_linear_fp8(x.float(), w, scale, idx, b, 32)
    with pytest.raises(TypeError, match="grad_out must be bfloat16"):
        ops.group_sparse_linear_fp8_backward_input(dy.half(), w, scale, idx, 32, 64)
    with pytest.raises(TypeError, match="weight_scale must be float32"):
        ops.group_sparse_linear_fp8(x, w, scale.double(), idx, b, 32)
    with pytest.raises(RuntimeError, match=r"weight_scale must be a \[40\] tensor"):
        ops.group_sparse_linear_fp8(x, w, scale[:39], idx, b, 32)
    with pytest.raises(RuntimeError, match="weight must be \\[L, K\\] with K = indices.shape\\[1\\]"):
        ops.group_sparse_linear_fp8(x, w[:, :56], scale, idx, b, 32)
    with pytest.raises(RuntimeError, match="bias must be 1-D"):
        ops.group_sparse_linear_fp8(x, w, scale, idx, b[:5], 32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("weight_scale", [None, "label"])
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_fp8_layer_equals_the_upcast_layer(wdt, weight_scale, x_dtype, device):
    """The layer's output and its gradients (x, bias, and weight.grad: bf16, of the scaled
    weight) bit for bit those of the bf16 computation on the upcast weight."""
    gen = torch.Generator().manual_seed(5)
    layer = GroupSparseLinear(256, 333, 128, 32, weight_dtype=wdt, generator=gen, weight_scale=weight_scale)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(333, generator=gen))
    layer = layer.to(device)
    x = torch.randn(3, 5, 256, generator=gen).to(device, x_dtype).requires_grad_()
    gy = torch.randn(3, 5, 333, generator=gen).to(device, x_dtype)
    y = layer(x)
    y.backward(gy)
    with torch.no_grad():
        y_nograd = layer(x)
    # the same computation with the weight upcast first, by torch autograd through the bf16 op
    wb = upcast(layer.weight.detach(), layer.weight_scale).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    br = layer.bias.detach().clone().requires_grad_()
    from largeout import functional as F
    yr = F.group_sparse_linear(xr.to(torch.bfloat16), wb, layer.indices, br.to(torch.bfloat16), 32).to(x_dtype)
    yr.backward(gy)
    assert y.dtype == x_dtype and torch.equal(y, yr) and torch.equal(y_nograd, yr)
    assert torch.equal(x.grad, xr.grad)
    assert torch.equal(layer.bias.grad, br.grad)
    assert layer.weight.grad.dtype == torch.bfloat16 and torch.equal(layer.weight.grad, wb.grad)
    # a second backward accumulates
    layer(x).backward(gy)
    assert torch.equal(layer.weight.grad, wb.grad + wb.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_layer_weight_gradient_without_input_gradient(device):
    """x without grad (a frozen encoder): weight.grad and bias.grad still come, from dY
    row-padded for the Hopper kernels where L % 8 != 0 (against float64; on the CPU bit for
    bit the bf16 op's on the upcast weight)."""
    gen = torch.Generator().manual_seed(8)
    layer = GroupSparseLinear(256, 333, 128, 32, weight_dtype=torch.float8_e4m3fn, generator=gen,
                              weight_scale="label").to(device)
    x = torch.randn(40, 256, generator=gen).to(device, torch.bfloat16)
    gy = torch.randn(40, 333, generator=gen).to(device, torch.bfloat16)
    layer(x).backward(gy)
    wb = upcast(layer.weight.detach(), layer.weight_scale)
    _, dw64, db64 = ref.group_sparse_linear_grads(x, wb, layer.indices, layer.bias, 32, gy)
    assert rel_err(layer.weight.grad, dw64) < 1e-2 and rel_err(layer.bias.grad, db64) < 1e-2
    if device == "cpu":
        dw, db = ops.group_sparse_linear_backward_weight(gy, x, layer.indices, 32)
        assert torch.equal(layer.weight.grad, dw) and torch.equal(layer.bias.grad, db.to(layer.bias.dtype))


@pytest.mark.parametrize("change", ["weight", "scale"])
def test_fp8_layer_backward_refuses_a_weight_changed_after_forward(change):
    layer = GroupSparseLinear(64, 40, 64, 32, weight_dtype=torch.float8_e4m3fn, weight_scale="label")
    x = torch.randn(3, 64, requires_grad=True)
    y = layer(x)
    with torch.no_grad():
        if change == "weight":
            layer.weight.copy_(layer.weight.float().neg().to(torch.float8_e4m3fn))
        else:
            layer.weight_scale.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_fp8_layer_checks_its_input():
    layer = GroupSparseLinear(64, 40, 64, 32, weight_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"x must be \[\*, in_features = 64\]"):
        layer(torch.randn(2, 48))
    with pytest.raises(TypeError, match="x must be float32, float64, bfloat16 or float16; got torch.int64"):
        layer(torch.ones(2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"in_features = 64"):
        GroupSparseLinear(64, 40, 64, 32)(torch.randn(2, 63))
    with pytest.raises(ValueError, match="x must be on the layer's device"):
        layer(torch.randn(2, 64, device="meta"))


# ---------------------------------------------------------------------------- sm_90
sm90 = pytest.mark.skipif(not IS_SM90, reason="needs an sm_90 GPU (H100/H200)")


@sm90
@pytest.mark.parametrize("wdt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("scaled", [False, True, "odd"], ids=["unscaled", "scaled", "odd-scales"])
@pytest.mark.parametrize("B,H,L,K,G", [
    (1, 768, 333, 128, 32), (130, 768, 4099, 128, 32), (1000, 300, 2049, 256, 64), (64, 512, 1000, 64, 16),
    (257, 768, 3001, 128, 128), (96, 384, 640, 256, 32), (1, 256, 1, 128, 32),
    (64, 256, 1000, 64, 32), (130, 384, 777, 64, 32),  # dx v2 with two groups per unit
])
def test_hopper_fp8_kernels_equal_bf16_kernels(B, H, L, K, G, wdt, scaled, poison):
    # dx's fp8 kernels (v3, else v2) need G >= 32 and dY rows of a multiple of 8 elements
    # (contiguous here; check_ops also passes a row-padded dY where B > 1)
    # (the fp8 forward runs where the bf16 Hopper forward does: not at B = 1000, H = 300, K = 256,
    # whose x^T tile and stages do not fit)
    fp8_dx = G >= 32
    bf16_fwd, bf16_dx = (kernels.path(p, torch.bfloat16, B, H, L, K, G) for p in ("forward", "input"))
    fp8_fwd = bf16_fwd == "sm90"
    want = {"forward": "sm90-fp8" if fp8_fwd else bf16_fwd, "input": "sm90-fp8" if fp8_dx and L % 8 == 0 else bf16_dx}
    for p, path in want.items():
        assert kernels.path(p, wdt, B, H, L, K, G) == path, (p, B, H, L, K, G)
    before, after = check_ops(B, H, L, K, G, wdt, scaled, 7, "cuda")
    assert after["forward"]["sm90-fp8"] == before["forward"]["sm90-fp8"] + fp8_fwd
    ran_fp8_dx = (L % 8 == 0) + (B > 1)
    assert after["input"]["sm90-fp8"] - before["input"]["sm90-fp8"] == (ran_fp8_dx if fp8_dx else 0)


@sm90
@pytest.mark.parametrize("cons", ["2", "3"])
@pytest.mark.parametrize("stages", ["2", "8"])
@pytest.mark.parametrize("tma_store", ["0", "1"])
@pytest.mark.parametrize("L,K,G", [(8192, 128, 32), (8191, 256, 32), (4096, 256, 128), (2000, 128, 16),
                                   (6144, 64, 64)])
def test_hopper_fp8_forward_ring_and_store_paths(cons, stages, tma_store, L, K, G, poison, monkeypatch):
    """Every forward variant with fp8 weights (two or three computing warpgroups, rings of 2
    or 8 stages so that the upcast wraps around its slots many times, TMA or plain stores)."""
    monkeypatch.setenv("LARGEOUT_SM90_FWD_CONS", cons)
    monkeypatch.setenv("LARGEOUT_SM90_FWD_STAGES", stages)
    monkeypatch.setenv("LARGEOUT_SM90_FWD_TMA_STORE", tma_store)
    before, after = check_ops(256, 768, L, K, G, torch.float8_e4m3fn, True, G + K, "cuda")
    assert after["forward"]["sm90-fp8"] == before["forward"]["sm90-fp8"] + 1


@sm90
@pytest.mark.parametrize("version", ["v3", "v2", "v1"])
@pytest.mark.parametrize("wdt", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("B,H,L,K,G", [(130, 768, 4096, 128, 32), (64, 300, 2056, 256, 64)])
def test_hopper_fp8_dx_versions(version, wdt, B, H, L, K, G, poison, monkeypatch):
    """dx with fp8 weights on v3 and on v2 forced (LARGEOUT_SM90_DX), and on v1 forced (no fp8
    kernel: the weight is upcast first)."""
    monkeypatch.setenv("LARGEOUT_SM90_DX", version)
    before, after = check_ops(B, H, L, K, G, wdt, True, 9, "cuda")
    ran = after["input"]["sm90-fp8"] - before["input"]["sm90-fp8"]
    assert ran == (0 if version == "v1" else 2)


@sm90
@pytest.mark.parametrize("wdt", FP8, ids=["e4m3", "e5m2"])
def test_hopper_fp8_kernels_at_scale(wdt):
    """Many units and splits: every label and feature of a large layer (the headline's H and
    K, a partial last group, dY row-padded by the layer's backward)."""
    B, H, L, K, G = 512, 768, 200_003, 128, 32
    check_ops(B, H, L, K, G, wdt, True, 11, "cuda", float64=False)  # (the bf16 kernels' own tests cover float64)
    layer = GroupSparseLinear(H, L, K, G, weight_dtype=wdt, weight_scale="label", device="cuda")
    x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    before = kernels.launch_counts()
    layer(x).float().square().mean().backward()
    after = kernels.launch_counts()
    assert after["forward"]["sm90-fp8"] > before["forward"]["sm90-fp8"]
    assert after["input"]["sm90-fp8"] > before["input"]["sm90-fp8"]
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad.float()).all()


@sm90
def test_hopper_fp8_kernels_off_under_generic_policy():
    assert kernels.path("forward", torch.float8_e4m3fn, 8, 256, 100, 128, 32) == "sm90-fp8"
    with kernels.policy("generic"):
        assert kernels.path("forward", torch.float8_e4m3fn, 8, 256, 100, 128, 32) == "generic"
        before = kernels.launch_counts()
        check_ops(8, 256, 100, 128, 32, torch.float8_e4m3fn, False, 1, "cuda")
        after = kernels.launch_counts()
    assert after["forward"]["sm90-fp8"] == before["forward"]["sm90-fp8"]
    assert after["forward"]["generic"] > before["forward"]["generic"]
