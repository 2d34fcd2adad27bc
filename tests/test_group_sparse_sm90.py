"""The Hopper (sm_90a) kernels of the group-sparse layer against float64 references.

Skipped unless the GPU is sm_90 (H100/H200). Every test checks through
largeout.kernels.launch_counts() that the Hopper kernels really ran."""

import threading

import pytest
import torch

import largeout
from largeout import kernels
from largeout import reference as ref
from largeout.nn import random_group_indices

from conftest import rel_err

IS_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
pytestmark = pytest.mark.skipif(not IS_SM90, reason="needs an sm_90 GPU (H100/H200)")

# bf16 operands with fp32 accumulation over K (or B, or thousands of groups for dx).
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make(B, H, L, K, G, dtype, seed, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, generator=gen, dtype=torch.float64).to("cuda", dtype)
    w = (torch.randn(L, K, generator=gen, dtype=torch.float64) / K**0.5).to("cuda", dtype)
    b = torch.randn(L, generator=gen, dtype=torch.float64).to("cuda", dtype) if bias else None
    idx = random_group_indices(-(-L // G), H, K, generator=gen).to("cuda")
    dy = torch.randn(B, L, generator=gen, dtype=torch.float64).to("cuda", dtype)
    return x, w, b, idx, dy


def used_sm90(before, after, passes):
    return all(after[p]["sm90"] > before[p]["sm90"] for p in passes)


def check_forward_elementwise(B, H, L, K, G, seed, offset_bias=False):
    """The Hopper forward element by element against float64 (one wrong or unwritten
    group fails). offset_bias: the bias passed as a view starting 2 bytes into its storage."""
    x, w, b, idx, _ = make(B, H, L, K, G, torch.bfloat16, seed)
    bias = b
    if offset_bias:
        bias = torch.empty(L + 1, device="cuda", dtype=torch.bfloat16)[1:]
        bias.copy_(b)
    before = kernels.launch_counts()
    y = torch.ops.largeout.group_sparse_linear(x, w, idx, bias, G)
    assert used_sm90(before, kernels.launch_counts(), ["forward"])
    y_ref = ref.group_sparse_linear(x, w, idx, b, G).cpu()
    err = (y.double().cpu() - y_ref).abs()
    assert torch.isfinite(err).all()
    assert (err <= 0.02 * y_ref.abs() + 0.02).all(), float(err.max())


def check_all(B, H, L, K, G, dtype, seed, bias=True):
    x, w, b, idx, dy = make(B, H, L, K, G, dtype, seed, bias)
    passes = ["forward"] + (["input", "weight"] if G >= 32 else [])
    for p in passes:
        assert kernels.path(p, dtype, B, H, L, K, G) == "sm90", (p, B, H, L, K, G)
    before = kernels.launch_counts()
    y = torch.ops.largeout.group_sparse_linear(x, w, idx, b, G)
    y_ref = ref.group_sparse_linear(x, w, idx, b, G)
    assert rel_err(y, y_ref) < TOL[dtype]
    if G >= 32:
        dx = torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H)
        dw, db = torch.ops.largeout.group_sparse_linear_backward_weight(dy, x, idx, G)
        dx_ref, dw_ref, db_ref = ref.group_sparse_linear_grads(x, w, idx, b, G, dy)
        assert rel_err(dx, dx_ref) < TOL[dtype]
        assert rel_err(dw, dw_ref) < TOL[dtype]
        assert rel_err(db, dy.double().sum(0)) < TOL[dtype]
    assert used_sm90(before, kernels.launch_counts(), passes)


# (B, H, L, K, G): odd B and L, partial last groups, B of 1 and 1000, every G and K.
SHAPES = [
    (1, 768, 1001, 128, 32),
    (7, 768, 4099, 64, 32),
    (64, 768, 333, 256, 32),
    (130, 768, 3001, 128, 64),
    (1000, 768, 2049, 128, 128),
    (65, 768, 5003, 256, 128),
    (129, 768, 777, 64, 64),
    (33, 768, 640, 64, 128),
    (257, 512, 1999, 256, 64),
    (100, 1024, 1000, 128, 32),  # larger H: indices up to 1023
    (3, 768, 2000, 128, 16),     # G = 16: forward only on the Hopper path
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_matches_reference(shape, dtype, poison):
    B, H, L, K, G = shape
    check_all(B, H, L, K, G, dtype, seed=hash((shape, str(dtype))) % 2**31)


def test_sm90_no_bias(poison):
    x, w, _, idx, dy = make(77, 768, 999, 128, 32, torch.bfloat16, 5, bias=False)
    y = torch.ops.largeout.group_sparse_linear(x, w, idx, None, 32)
    assert rel_err(y, ref.group_sparse_linear(x, w, idx, None, 32)) < TOL[torch.bfloat16]


def test_sm90_through_autograd_and_module(poison):
    torch.manual_seed(0)
    layer = largeout.nn.GroupSparseLinear(768, 4001, fan_in=128, group_size=32).to("cuda", torch.bfloat16)
    x = torch.randn(300, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    before = kernels.launch_counts()
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert used_sm90(before, kernels.launch_counts(), ["forward", "input", "weight"])
    b = layer.bias
    dx_ref, dw_ref, db_ref = ref.group_sparse_linear_grads(x, layer.weight, layer.indices, b, 32, dy)
    assert rel_err(y, ref.group_sparse_linear(x, layer.weight, layer.indices, b, 32)) < 1e-2
    assert rel_err(x.grad, dx_ref) < 1e-2
    assert rel_err(layer.weight.grad, dw_ref) < 1e-2
    assert rel_err(layer.bias.grad, db_ref) < 1e-2


def dx_reference_cuda(dy, w, idx, G, H, chunk=2048):
    """float64 dx on the GPU, a chunk of groups at a time (the CPU reference is too slow here)."""
    B, L = dy.shape
    ng, K = idx.shape
    dx = torch.zeros(B, H, dtype=torch.float64, device=dy.device)
    for g0 in range(0, ng, chunk):
        g1 = min(ng, g0 + chunk)
        l0, l1 = g0 * G, min(L, g1 * G)
        d = torch.zeros(B, (g1 - g0) * G, dtype=torch.float64, device=dy.device)
        d[:, : l1 - l0] = dy[:, l0:l1].double()
        wc = torch.zeros((g1 - g0) * G, K, dtype=torch.float64, device=dy.device)
        wc[: l1 - l0] = w[l0:l1].double()
        part = torch.einsum("bgj,gjk->bgk", d.view(B, -1, G), wc.view(-1, G, K))
        dx.index_add_(1, idx[g0:g1].reshape(-1).long(), part.reshape(B, -1))
    return dx


def test_sm90_headline_shape_matches_reference():
    # The headline shape with an odd L (TMA cannot describe y or dY there). float64
    # references on the GPU: dx in full, y, dW and dbias on a sample of labels.
    B, H, L, K, G = 512, 768, 670_091, 128, 32
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 21)
    before = kernels.launch_counts()
    y = torch.ops.largeout.group_sparse_linear(x, w, idx, b, G)
    dx = torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H)
    dw, db = torch.ops.largeout.group_sparse_linear_backward_weight(dy, x, idx, G)
    assert used_sm90(before, kernels.launch_counts(), ["forward", "input", "weight"])
    gen = torch.Generator().manual_seed(3)
    cols = torch.cat([torch.randint(0, L, (3000,), generator=gen), torch.arange(L - 40, L)]).cuda()
    xg = x.double()[:, idx.long()[cols // G]]  # [B, n, K]
    y_ref = b.double()[cols] + torch.einsum("bnk,nk->bn", xg, w.double()[cols])
    assert rel_err(y[:, cols], y_ref) < 1e-2
    dw_ref = torch.einsum("bn,bnk->nk", dy.double()[:, cols], xg)
    assert rel_err(dw[cols], dw_ref) < 1e-2
    assert rel_err(db[cols], dy.double()[:, cols].sum(0)) < 1e-2
    assert rel_err(dx, dx_reference_cuda(dy, w, idx, G, H)) < 1e-2


def test_sm90_input_gradient_is_deterministic():
    x, w, b, idx, dy = make(513, 768, 20011, 128, 32, torch.bfloat16, 8)
    first = torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, 32, 768)
    for _ in range(3):
        again = torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, 32, 768)
        assert torch.equal(first, again)


def test_policy_generic_uses_generic_kernels():
    x, w, b, idx, dy = make(64, 768, 500, 128, 32, torch.bfloat16, 9)
    with kernels.policy("generic"):
        assert kernels.path("forward", torch.bfloat16, 64, 768, 500, 128, 32) == "generic"
        before = kernels.launch_counts()
        torch.ops.largeout.group_sparse_linear(x, w, idx, b, 32)
        after = kernels.launch_counts()
    assert after["forward"]["generic"] == before["forward"]["generic"] + 1
    assert after["forward"]["sm90"] == before["forward"]["sm90"]
    assert kernels.get_policy() == "auto"


def test_unsupported_shapes_take_the_generic_kernels():
    # fan-in not a multiple of 64, fp32, and G = 16 backward run the generic kernels.
    assert kernels.path("forward", torch.bfloat16, 64, 768, 500, 96, 32) == "generic"
    assert kernels.path("forward", torch.float32, 64, 768, 500, 128, 32) == "generic"
    assert kernels.path("input", torch.bfloat16, 64, 768, 500, 128, 16) == "generic"
    assert kernels.path("weight", torch.bfloat16, 64, 768, 500, 512, 32) == "generic"
    # x^T of 64 rows at H = 1536 (192 KB) leaves no room for two weight stages per ring
    assert kernels.path("forward", torch.bfloat16, 64, 1536, 500, 128, 32) == "generic"


@pytest.mark.parametrize("shape", [(128, 768, 131072, 64, 32), (1024, 768, 20000, 64, 32), (192, 768, 30011, 256, 128)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_many_units_per_cta(shape, poison):
    # Many units per CTA and per ring (a bench sweep failed at the first shape with a
    # launch failure, commit 4f3722b; these shapes had no test before). Every pass against
    # float64, on whichever path it takes; the forward must be the Hopper one.
    B, H, L, K, G = shape
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 40 + K)
    before = kernels.launch_counts()
    y = torch.ops.largeout.group_sparse_linear(x, w, idx, b, G)
    assert used_sm90(before, kernels.launch_counts(), ["forward"])
    dx = torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H)
    dw, db = torch.ops.largeout.group_sparse_linear_backward_weight(dy, x, idx, G)
    torch.cuda.synchronize()
    y_ref = ref.group_sparse_linear(x, w, idx, b, G).cpu()
    err = (y.double().cpu() - y_ref).abs()
    assert (err <= 0.02 * y_ref.abs() + 0.02).all(), float(err.max())
    dx_ref, dw_ref, db_ref = ref.group_sparse_linear_grads(x, w, idx, b, G, dy)
    assert rel_err(dx, dx_ref) < 1e-2
    assert rel_err(dw, dw_ref) < 1e-2
    assert rel_err(db, db_ref) < 1e-2


def test_misaligned_views_are_handled(poison):
    # A weight view at an odd element offset cannot feed TMA; the op copies it.
    B, H, L, K, G = 40, 768, 300, 64, 32
    x, w, b, idx, dy = make(B, H, L + 1, K, G, torch.bfloat16, 10)
    wv = w.view(-1)[1 : 1 + L * K].view(L, K)
    idx = idx[: -(-L // G)]
    y = torch.ops.largeout.group_sparse_linear(x, wv, idx, b[:L], G)
    assert rel_err(y, ref.group_sparse_linear(x, wv, idx, b[:L], G)) < 1e-2
    dyv = torch.randn(B * L + 1, device="cuda", dtype=torch.bfloat16)[1:].view(B, L)
    dx = torch.ops.largeout.group_sparse_linear_backward_input(dyv, wv, idx, G, H)
    dw, db = torch.ops.largeout.group_sparse_linear_backward_weight(dyv, x, idx, G)
    dx_ref, dw_ref, db_ref = ref.group_sparse_linear_grads(x, wv, idx, b[:L], G, dyv)
    assert rel_err(dx, dx_ref) < 1e-2
    assert rel_err(dw, dw_ref) < 1e-2
    assert rel_err(db, db_ref) < 1e-2


@pytest.mark.parametrize("cons", ["2", "3"])
@pytest.mark.parametrize("stages", ["2", "8"])
@pytest.mark.parametrize("tma_store", ["0", "1"])
@pytest.mark.parametrize(
    "L,K,G", [(8192, 128, 32), (8191, 256, 32), (4096, 256, 128), (4097, 128, 128), (2000, 128, 16), (6144, 64, 64),
              (4104, 256, 16)]
)
def test_sm90_forward_ring_and_store_paths(cons, stages, tma_store, L, K, G, poison, monkeypatch):
    # Every forward variant (two or three computing warpgroups, LARGEOUT_SM90_FWD_CONS;
    # three only where their rings fit, G <= 64); rings of 2 or 8 stages per computing warpgroup, so
    # that slots wrap around many times (8 asks for as many as fit: 3 at G = 128 and H = 768; G = 128 on
    # its own kernel, LARGEOUT_SM90_FWD_G128_AS_64=0: test_sm90_forward_g128_as_64 covers the other); units of
    # 1-4 stages; the output stored by TMA where L % 8 == 0, else by plain stores, both out of the same
    # swizzled staging boxes, odd L with rows starting at odd elements), element by element against
    # float64: one wrong or unwritten group must fail.
    monkeypatch.setenv("LARGEOUT_SM90_FWD_CONS", cons)
    monkeypatch.setenv("LARGEOUT_SM90_FWD_STAGES", stages)
    monkeypatch.setenv("LARGEOUT_SM90_FWD_TMA_STORE", tma_store)
    monkeypatch.setenv("LARGEOUT_SM90_FWD_G128_AS_64", "0")
    check_forward_elementwise(256, 768, L, K, G, 30 + G + K)


@pytest.mark.parametrize("offset_bias", [False, True])
@pytest.mark.parametrize("prefetch", ["0", "1"])
@pytest.mark.parametrize("B,L,K,G", [(512, 8191, 64, 32), (1024, 4097, 128, 64), (300, 2051, 64, 128), (100, 3001, 256, 16),
                                     (256, 4096, 64, 64)])
def test_sm90_forward_bias_prefetch(offset_bias, prefetch, B, L, K, G, poison, monkeypatch):
    # The L1 prefetch of the next unit's bias (LARGEOUT_SM90_FWD_BIAS_PREFETCH forces it off or on;
    # by default it runs at G = 32 and at G = 64 with B >= 512): many units per warpgroup, the
    # last ones' prefetches past L; the bias read as label pairs (4-byte loads) where it is 4-byte
    # aligned, by label where it starts 2 bytes off its allocation (a view), and a last unit of
    # one label or a whole one; element by element against float64 (a pair read swapped fails).
    monkeypatch.setenv("LARGEOUT_SM90_FWD_BIAS_PREFETCH", prefetch)
    check_forward_elementwise(B, 768, L, K, G, 90 + G, offset_bias=offset_bias)


@pytest.mark.parametrize("B,L,K,dtype,cons", [(256, 8192, 128, "bf16", None), (300, 4097, 256, "bf16", None),
                                             (1, 2000, 64, "bf16", None), (1000, 12352, 256, "bf16", None),
                                             (65, 4160, 128, "fp16", None), (130, 4098, 64, "fp16", None),
                                             (260, 6000, 256, "bf16", "2"), (256, 6000, 256, "bf16", "3"),
                                             (128, 8192, 256, "bf16", None), (256, 8192, 256, "fp16", None)])
def test_sm90_forward_g128_as_64(B, L, K, dtype, cons, poison, monkeypatch):
    # A G = 128 layer through the G = 64 kernel, each group as two 64-label halves reading the same
    # index row (odd L and plain stores, an even L off 8, a last group of one label, of 64 and of
    # 80, B of 1 and 1000, fp16, two computing warpgroups), element by element against float64: a
    # half that read another group's indices fails. The launch counter tells which path ran: never
    # with LARGEOUT_SM90_FWD_G128_AS_64=0, always with 1, by default at K = 256 and B >= 256 with TMA
    # stores where the G = 64 kernel runs three computing warpgroups (not with LARGEOUT_SM90_FWD_CONS=2
    # nor LARGEOUT_SM90_FWD_TMA_STORE=0).
    if cons is not None:
        monkeypatch.setenv("LARGEOUT_SM90_FWD_CONS", cons)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    x, w, b, idx, _ = make(B, 768, L, K, 128, dt, 170 + K)
    expected = ref.group_sparse_linear(x, w, idx, b, 128)
    by_default = K == 256 and B >= 256 and L % 8 == 0 and cons != "2"
    for env, tma, taken in (("0", None, False), (None, None, by_default), (None, "0", False), ("1", None, True)):
        for var, value in (("LARGEOUT_SM90_FWD_G128_AS_64", env), ("LARGEOUT_SM90_FWD_TMA_STORE", tma)):
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)
        before = kernels.launch_counts()["forward"]["sm90-g128-as-64"]
        y = torch.ops.largeout.group_sparse_linear(x, w, idx, b, 128)
        assert kernels.launch_counts()["forward"]["sm90-g128-as-64"] == before + int(taken), (env, tma)
        assert_elementwise_close(y, expected)


@pytest.mark.parametrize("B,H,L,K", [(129, 1024, 2001, 256), (64, 1024, 4096, 128), (7, 1016, 1501, 64),
                                     (33, 1000, 3000, 128)])
def test_sm90_forward_g128_wide_inputs(B, H, L, K, poison):
    # G = 128 with H up to 1024: the unpadded staging boxes make two stages per ring fit beside
    # x^T's H x 128 bytes (with the padded rows of before they did not above H = 1015, and the
    # generic kernel ran at H = 1016 and 1024); element by element against float64, plain stores
    # at odd L (rows starting at odd elements) and TMA stores.
    assert kernels.path("forward", torch.bfloat16, B, H, L, K, 128) == "sm90"
    check_forward_elementwise(B, H, L, K, 128, 80 + K)


def twice_on_sm90(pass_, fn):
    """fn() twice: both on the Hopper kernels of the pass and bit-identical (deterministic)."""
    before = kernels.launch_counts()
    first, again = fn(), fn()
    assert used_sm90(before, kernels.launch_counts(), [pass_])
    for a, b in zip(first if isinstance(first, tuple) else (first,), again if isinstance(again, tuple) else (again,)):
        assert torch.equal(a, b)
    return first


def assert_elementwise_close(got, want):
    """Every element within 2% of the float64 value plus 2% of the values' spread."""
    err = (got.double() - want.to(got.device)).abs()
    assert torch.isfinite(err).all()
    assert (err <= 0.02 * want.to(got.device).abs() + 0.02 * want.std()).all(), float(err.max())


# SHAPES with L rounded up to a multiple of 8 (dY by TMA), plus many units per CTA.
DX2_SHAPES = [(B, H, -(-L // 8) * 8, K, G) for B, H, L, K, G in SHAPES if G >= 32] + [
    (128, 768, 131072, 64, 32),
    (512, 768, 20000, 128, 32),
]


# dx v3 (expanded weights) also on feature counts that are not multiples of its
# 256-feature slices, a label count inside the first 64-label unit, and fp16.
DX3_SHAPES = DX2_SHAPES + [(5, 300, 1000, 64, 32), (200, 1000, 4104, 128, 64), (129, 520, 3000, 256, 128),
                           (1, 768, 40, 128, 32), (300, 1024, 70000, 128, 32),
                           # odd H (scalar partial stores), 96 tiles (one split: dx written directly,
                           # many units per CTA), one partial 256-feature slice
                           (3, 777, 1000, 128, 32), (4096, 768, 20000, 128, 32), (16, 200, 5000, 128, 64)]


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "default"])
@pytest.mark.parametrize("shape", DX3_SHAPES, ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_dx_versions_match_reference(shape, version, poison, monkeypatch):
    # dx v1 (LARGEOUT_SM90_DX=v1; at odd L the path where row classes do not apply), v2 (dY by
    # TMA, the two computing warpgroups on separate batch halves, scattering into an fp32
    # accumulator), v3 (each unit's weights expanded to dense rows in shared memory; the
    # default for G <= 64 and K >= 128) and the default choice, element by element against
    # float64, twice (deterministic).
    if version == "v1" and shape not in DX2_SHAPES:
        pytest.skip("v1's shapes are DX2_SHAPES")
    if version != "default":
        monkeypatch.setenv("LARGEOUT_SM90_DX", version[:2])
    B, H, L, K, G = shape
    dtype = torch.float16 if version in ("v3", "default") and L % 3 == 0 else torch.bfloat16
    x, w, b, idx, dy = make(B, H, L, K, G, dtype, 60 + K + G)
    assert kernels.path("input", dtype, B, H, L, K, G) == "sm90"
    dx = twice_on_sm90("input", lambda: torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H))
    assert_elementwise_close(dx, dx_reference_cuda(dy, w, idx, G, H))


@pytest.mark.parametrize("order", ["shuffled", "banked", "reversed"])
@pytest.mark.parametrize("shape", [(64, 768, 2000, 128, 32), (33, 1000, 3000, 256, 64), (5, 300, 1000, 64, 32)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_dx3_any_index_order(shape, order, poison, monkeypatch):
    # dx v3 with each group's indices in orders other than the sorted one the layers keep
    # (which the other tests use): an expanding thread's chunk of 8 k-slots then mixes
    # features of every 256-feature slice. Against float64.
    monkeypatch.setenv("LARGEOUT_SM90_DX", "v3")
    B, H, L, K, G = shape
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 90 + K + G)
    gen = torch.Generator().manual_seed(K + G)
    if order == "shuffled":
        perm = torch.rand(idx.shape, generator=gen).argsort(dim=1).to(idx.device)
        idx = idx.gather(1, perm)
    elif order == "banked":
        idx = random_group_indices(idx.shape[0], H, K, generator=gen, order="banked").to(idx.device)
    else:
        idx = idx.flip(1).contiguous()
    assert kernels.path("input", torch.bfloat16, B, H, L, K, G) == "sm90"
    dx = twice_on_sm90("input", lambda: torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H))
    assert_elementwise_close(dx, dx_reference_cuda(dy, w, idx, G, H))


def dw_reference_cuda(dy, x, idx, G, chunk=1024):
    """float64 dW [L, K] and dbias on the GPU, a chunk of groups at a time."""
    B, L = dy.shape
    ng, K = idx.shape
    dw = torch.empty(L, K, dtype=torch.float64, device=dy.device)
    xd = x.double()
    for g0 in range(0, ng, chunk):
        g1 = min(ng, g0 + chunk)
        l0, l1 = g0 * G, min(L, g1 * G)
        d = torch.zeros(B, (g1 - g0) * G, dtype=torch.float64, device=dy.device)
        d[:, : l1 - l0] = dy[:, l0:l1].double()
        xg = xd[:, idx[g0:g1].long()]  # [B, groups, K]
        part = torch.einsum("bgj,bgk->gjk", d.view(B, -1, G), xg).reshape(-1, K)
        dw[l0:l1] = part[: l1 - l0]
    return dw, dy.double().sum(0)


def assert_sm90_dw_matches(dy_arg, dy, x, idx, G):
    """dW and dbias from dy_arg (dy itself, or a view holding its values) on the Hopper kernels,
    twice (deterministic), against float64 element by element."""
    dw, db = twice_on_sm90("weight", lambda: torch.ops.largeout.group_sparse_linear_backward_weight(dy_arg, x, idx, G))
    dw_ref, db_ref = dw_reference_cuda(dy, x, idx, G)
    assert_elementwise_close(dw, dw_ref)
    assert_elementwise_close(db, db_ref)


DW_VERSIONS = ["v1", "v2", "v2-2loaders", "v2-4loaders", "v2-dycp", "v2-dbloader", "v2-dbloader-dycp"]


def use_dw_version(version, K, G, monkeypatch):
    """Selects a dW kernel variant of DW_VERSIONS through its environment switches: v1
    (LARGEOUT_SM90_DW=v1; at odd L the path where row classes do not apply), v2 (the default:
    dbias summed by the computing warpgroups, each stage's by the warpgroup that takes it at K
    = 64, reduced over both where they split the batch, else over the group's warpgroup), v2
    with two or four loader warpgroups (LARGEOUT_SM90_DW_LOADERS; four at G = 32, elsewhere the
    request falls back to two or one; two do not apply at G = 128, K = 256, which is skipped;
    the loader sums dbias), v2 with the dY tile by the loader's cp.async instead of TMA
    (LARGEOUT_SM90_DW_DY=cp; at G = 128, K = 256 the dbias default alone), v2 with dbias summed
    by the loader (LARGEOUT_SM90_DW_DBIAS=loader), and each of these with dY by cp.async."""
    if version == "v1":
        monkeypatch.setenv("LARGEOUT_SM90_DW", "v1")
    if version == "v2-2loaders":
        if G == 128 and K == 256:
            pytest.skip("two loader warpgroups do not apply at G=128, K=256 (the one-loader kernel runs)")
        monkeypatch.setenv("LARGEOUT_SM90_DW_LOADERS", "2")
    if version == "v2-4loaders":
        monkeypatch.setenv("LARGEOUT_SM90_DW_LOADERS", "4")
    if version in ("v2-dycp", "v2-dbloader-dycp"):
        monkeypatch.setenv("LARGEOUT_SM90_DW_DY", "cp")
    if version in ("v2-dbloader", "v2-dbloader-dycp"):
        monkeypatch.setenv("LARGEOUT_SM90_DW_DBIAS", "loader")


@pytest.mark.parametrize("version", DW_VERSIONS)
@pytest.mark.parametrize("shape", DX2_SHAPES, ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_dw_versions_match_reference(shape, version, poison, monkeypatch):
    # dW v2 (the default where L % 8 == 0: the dY tile by TMA in the MMA's layout, dbias
    # summed from the landed tile by the computing warpgroups), its variants (use_dw_version:
    # two or four loader warpgroups, dY by cp.async, dbias by the loader) and v1
    # (LARGEOUT_SM90_DW=v1; at odd L the path where row classes do not apply), element by element against float64, twice
    # (deterministic).
    B, H, L, K, G = shape
    use_dw_version(version, K, G, monkeypatch)
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 80 + K + G)
    assert kernels.path("weight", torch.bfloat16, B, H, L, K, G) == "sm90"
    assert_sm90_dw_matches(dy, dy, x, idx, G)


@pytest.mark.parametrize("stages", [4, 5, 8, 11, 16])
@pytest.mark.parametrize("version", DW_VERSIONS)
@pytest.mark.parametrize("shape", [(512, 768, 20000, 128, 32), (128, 768, 131072, 64, 32), (160, 768, 65536, 64, 32),
                                   (512, 768, 65536, 64, 64), (64, 256, 4096, 256, 128)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_dw_ring_sizes(shape, version, stages, poison, monkeypatch):
    # dW with other ring sizes (LARGEOUT_SM90_DW_STAGES; shared memory caps the larger ones):
    # the loader's and the computing warpgroups' slots and phases, kept by increments, wrap
    # the ring many times per CTA (K = 128: both warpgroups on every step; K = 64 at B = 128:
    # alternate groups of 2 batch chunks, the ring rounded to a multiple of two groups' steps
    # in v2; at B = 160 the same with 3 chunks at 11 and 16 stages, split batch over an odd
    # chunk count at 4 and 5; K = 64 at B = 512: split batch, or alternate groups where 16
    # stages fit); K = 256 at its 3-4 stages. Against float64, twice (deterministic).
    monkeypatch.setenv("LARGEOUT_SM90_DW_STAGES", str(stages))
    B, H, L, K, G = shape
    use_dw_version(version, K, G, monkeypatch)
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 90 + stages)
    assert kernels.path("weight", torch.bfloat16, B, H, L, K, G) == "sm90"
    assert_sm90_dw_matches(dy, dy, x, idx, G)


@pytest.mark.parametrize("variant", [("LARGEOUT_SM90_DW_LOADERS", "2"), ("LARGEOUT_SM90_DW_LOADERS", "4"),
                                     ("LARGEOUT_SM90_DW_DY", "cp"), ("LARGEOUT_SM90_DW_DBIAS", "loader"),
                                     ("LARGEOUT_SM90_DW_DBIAS", "computing")],
                         ids=["2loaders", "4loaders", "dycp", "dbloader", "dbc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(512, 768, 20011, 128, 32), (130, 768, 3001, 64, 64), (200, 512, 4099, 256, 32),
                                   (33, 768, 5003, 128, 128)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_dw_variants_dtypes_and_row_padded_dy(shape, dtype, variant, poison, monkeypatch):
    # dW v2 with two or four loader warpgroups (LARGEOUT_SM90_DW_LOADERS; four at G = 32 only),
    # with the dY tile by cp.async (LARGEOUT_SM90_DW_DY=cp: the chunk that holds the last
    # label reads only up to L) or with dbias summed by the loader (LARGEOUT_SM90_DW_DBIAS=loader)
    # or by the computing warpgroups (=computing, the default), in both
    # 16-bit types, on dY as a row-padded view at odd L (NaN in the padding, never read),
    # against float64 element by element, twice (deterministic).
    monkeypatch.setenv(*variant)
    B, H, L, K, G = shape
    x, w, b, idx, dy = make(B, H, L, K, G, dtype, 70 + K + G)
    assert kernels.path("weight", dtype, B, H, L, K, G) == "sm90"
    buf = torch.full((B, -(-L // 8) * 8), float("nan"), device="cuda", dtype=dtype)
    rows = buf[:, :L]
    rows.copy_(dy)
    assert_sm90_dw_matches(rows, dy, x, idx, G)


@pytest.mark.parametrize("shape", [(512, 768, 20011, 128, 32), (130, 768, 3001, 128, 64), (65, 768, 5003, 256, 128),
                                   (129, 768, 777, 64, 64), (256, 1536, 5003, 128, 32)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_row_padded_grad_at_odd_L(shape, poison):
    # Odd L: dY as a row-padded view (row stride a multiple of 8) runs the TMA kernels (dx
    # v3 or v2, dW v2; H = 1,536: v3 alone fits, and the ops keep the view for it), against
    # float64, element by element; NaN in the padding is never read.
    B, H, L, K, G = shape
    for p in ("input", "weight"):
        assert torch.ops.largeout.cuda_reads_dy_by_tma(p, torch.bfloat16, B, H, L, K, G, -(-L // 8) * 8), p
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 90 + K + G)
    Lp = -(-L // 8) * 8
    buf = torch.full((B, Lp), float("nan"), device="cuda", dtype=torch.bfloat16)
    rows = buf[:, :L]
    rows.copy_(dy)
    before = kernels.launch_counts()
    dx = torch.ops.largeout.group_sparse_linear_backward_input(rows, w, idx, G, H)
    dw, db = torch.ops.largeout.group_sparse_linear_backward_weight(rows, x, idx, G)
    assert used_sm90(before, kernels.launch_counts(), ["input", "weight"])
    dx_ref = dx_reference_cuda(dy, w, idx, G, H)
    dw_ref, db_ref = dw_reference_cuda(dy, x, idx, G)
    for got, want in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        assert_elementwise_close(got, want)


@pytest.mark.parametrize("pad", ["default", "1", "default-strided", "1-strided", "v1"])
@pytest.mark.parametrize("shape", [(256, 768, 10_001, 128, 32), (512, 768, 670_091, 128, 32)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_backward_pads_dy_at_odd_L(shape, pad, poison, monkeypatch):
    # The autograd backward at odd L: by default dx and dW read dY as it is through row classes;
    # with LARGEOUT_PAD_DY=1 from one row-padded copy (dx v3 or v2, dW v2;
    # largeout.pad_columns_sum), also from a dY whose rows start one element into a wider buffer
    # ("-strided"); with the row classes switched off and LARGEOUT_PAD_DY=0 ("v1") the v1
    # kernels on dY as it is. Gradients against float64, also at the benchmark's L = 670,091,
    # and the row-class launches counted.
    if pad.startswith("1"):
        monkeypatch.setenv("LARGEOUT_PAD_DY", "1")
    if pad == "v1":
        monkeypatch.setenv("LARGEOUT_PAD_DY", "0")
        monkeypatch.setenv("LARGEOUT_SM90_DW_RC", "0")
        monkeypatch.setenv("LARGEOUT_SM90_DX_RC", "0")
    B, H, L, K, G = shape
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 95)
    if pad.endswith("-strided"):
        wide = torch.empty(B, L + 1, dtype=dy.dtype, device=dy.device)
        wide[:, 1:] = dy
        dy = wide[:, 1:]
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    y = torch.ops.largeout.group_sparse_linear(x, w, idx, b, G)
    before = kernels.launch_counts()
    y.backward(dy)
    after = kernels.launch_counts()
    assert used_sm90(before, after, ["input", "weight"])
    for p in ("input", "weight"):
        ran_rc = after[p]["sm90-row-classes"] - before[p]["sm90-row-classes"]
        assert ran_rc == int(pad.startswith("default")), p
    dx_ref = dx_reference_cuda(dy, w.detach(), idx, G, H)
    dw_ref, db_ref = dw_reference_cuda(dy, x.detach(), idx, G)
    assert rel_err(x.grad, dx_ref) < 1e-2
    assert rel_err(w.grad, dw_ref) < 1e-2
    assert rel_err(b.grad, db_ref) < 1e-2


@pytest.mark.parametrize("rc", ["default", "0"])
@pytest.mark.parametrize("frozen", ["x", "weight"])
@pytest.mark.parametrize("shape", [(256, 768, 10_001, 128, 32), (300, 512, 4_099, 64, 64), (130, 768, 5_003, 128, 128)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_backward_pads_dy_for_one_pass(shape, frozen, rc, poison, monkeypatch):
    # With a frozen weight (dx and dbias only) or a frozen input (dW and dbias only) the
    # autograd backward at odd L keeps dY as it is by default (the pass that runs reads it
    # through row classes). With the row classes switched off (LARGEOUT_SM90_D{W,X}_RC=0) it pads
    # dY (rows of L rounded up to 8, so that the pass reads dY by TMA), except for dW alone at
    # G >= 128 (v1 measured faster there). The gradients against float64, the frozen one's None.
    import largeout._ops as ops

    if rc == "0":
        monkeypatch.setenv("LARGEOUT_SM90_DW_RC", "0")
        monkeypatch.setenv("LARGEOUT_SM90_DX_RC", "0")
    B, H, L, K, G = shape
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 96)
    x.requires_grad_(frozen != "x")
    w.requires_grad_(frozen != "weight")
    b.requires_grad_(True)
    strides = []
    rows_for_tma = ops._rows_for_tma

    def spy(*args, **kwargs):
        out = rows_for_tma(*args, **kwargs)
        strides.append(out.stride(0))
        return out

    monkeypatch.setattr(ops, "_rows_for_tma", spy)
    before = kernels.launch_counts()
    torch.ops.largeout.group_sparse_linear(x, w, idx, b, G).backward(dy)
    after = kernels.launch_counts()
    unpadded = rc == "default" or (frozen == "x" and G >= 128)
    assert strides == [L if unpadded else (L + 7) // 8 * 8]
    ran = "weight" if frozen == "x" else "input"
    for p in ("input", "weight"):
        ran_rc = after[p]["sm90-row-classes"] - before[p]["sm90-row-classes"]
        assert ran_rc == int(p == ran and rc == "default"), p
    dw_ref, db_ref = dw_reference_cuda(dy, x.detach(), idx, G)
    assert rel_err(b.grad, db_ref) < 1e-2
    if frozen == "x":
        assert x.grad is None
        assert rel_err(w.grad, dw_ref) < 1e-2
    else:
        assert w.grad is None
        assert rel_err(x.grad, dx_reference_cuda(dy, w.detach(), idx, G, H)) < 1e-2


@pytest.mark.parametrize("shape", [(512, 768, 20000, 64, 32), (1024, 768, 4104, 64, 64), (777, 768, 3001, 64, 128),
                                   (300, 512, 2000, 64, 32), (320, 768, 65536, 64, 32), (448, 512, 30000, 64, 64),
                                   (320, 768, 40000, 64, 128)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
@pytest.mark.parametrize("dbias", ["loader", "computing"])
def test_sm90_dw_k64_split_batch(shape, dbias, poison, monkeypatch):
    # K = 64 with more batch chunks than half the ring holds (by default both warpgroups on
    # every group, alternate chunks, partials added in a fixed order; LARGEOUT_SM90_DW_SPLITB=0
    # leaves them to the generic kernels; odd chunk counts, 5 and 7, over many groups per CTA:
    # the warpgroups swap chunk parities from group to group so that each keeps its own ring
    # slots; G = 128 over 3 groups per CTA), v2 (even L) and at odd L v2 through row classes
    # (dbias by the computing warpgroups) or v1 (by the loader), with dbias summed by the
    # loader (LARGEOUT_SM90_DW_DBIAS=loader) or by the computing warpgroups (=computing, the
    # default; v2 only: reduced over both), against float64 element by element, twice (deterministic).
    # The shapes need the split on an 8-stage ring (K = 64's default of 16 holds two groups' chunks
    # up to B = 512 at G = 32), so the ring is set to 8.
    monkeypatch.setenv("LARGEOUT_SM90_DW_DBIAS", dbias)
    monkeypatch.setenv("LARGEOUT_SM90_DW_STAGES", "8")
    B, H, L, K, G = shape
    monkeypatch.setenv("LARGEOUT_SM90_DW_SPLITB", "0")
    assert kernels.path("weight", torch.bfloat16, B, H, L, K, G) == "generic"
    monkeypatch.delenv("LARGEOUT_SM90_DW_SPLITB")
    assert kernels.path("weight", torch.bfloat16, B, H, L, K, G) == "sm90"
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 99 + G)
    assert_sm90_dw_matches(dy, dy, x, idx, G)


@pytest.mark.parametrize("shape", [(128, 768, 40000, 64, 128), (128, 768, 65536, 64, 64), (192, 512, 30000, 64, 32)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
@pytest.mark.parametrize("dbias", ["loader", "computing"])
def test_sm90_dw_k64_alternate_groups(shape, dbias, poison, monkeypatch):
    # K = 64 where two groups' batch chunks fit the ring: the computing warpgroups take
    # alternate groups, several per CTA and unequal counts (odd groups per CTA), with dbias
    # summed by the loader (LARGEOUT_SM90_DW_DBIAS=loader) or by the warpgroup that takes the
    # group (=computing, the default: each reduces its own groups' partials), against
    # float64 element by element, twice (deterministic).
    monkeypatch.setenv("LARGEOUT_SM90_DW_DBIAS", dbias)
    B, H, L, K, G = shape
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 77 + G)
    assert kernels.path("weight", torch.bfloat16, B, H, L, K, G) == "sm90"
    assert_sm90_dw_matches(dy, dy, x, idx, G)


# dW and dx v2 through row classes (the default where dY's row stride is not a multiple of 8;
# LARGEOUT_SM90_DW_RC=0 / LARGEOUT_SM90_DX_RC=0 switch them off): odd L
# and L = 2 or 4 mod 8 (even shifts only), B of 1 and below 8 (classes without rows), partial
# last batch chunks and groups, every G and K, K = 64 with alternate groups and with the batch
# split, indices up to 1023.
RC_SHAPES = [(B, H, L, K, G) for B, H, L, K, G in SHAPES if G >= 32 and L % 8 != 0] + [
    (513, 1024, 20011, 128, 32),
    (300, 768, 4098, 64, 64),
    (129, 768, 3004, 64, 128),
    (1024, 768, 4101, 64, 32),
    (128, 768, 40001, 64, 64),
]


def check_row_classes(pass_, shape, dtype, seed, launches):
    """dW and dbias (pass_ "weight") or dx ("input") at odd L on the Hopper kernels, twice
    (deterministic), against float64 element by element; `launches` of them through row
    classes (launch_counts()[pass_]["sm90-row-classes"])."""
    B, H, L, K, G = shape
    assert L % 8 != 0
    x, w, b, idx, dy = make(B, H, L, K, G, dtype, seed)
    assert kernels.path(pass_, dtype, B, H, L, K, G) == "sm90"
    # (the query the autograd backward asks before it pads dY agrees)
    assert torch.ops.largeout.cuda_reads_dy_by_tma(pass_, dtype, B, H, L, K, G, L) == (launches > 0)
    before = kernels.launch_counts()[pass_]["sm90-row-classes"]
    if pass_ == "weight":
        assert_sm90_dw_matches(dy, dy, x, idx, G)
    else:
        dx = twice_on_sm90("input", lambda: torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H))
        assert_elementwise_close(dx, dx_reference_cuda(dy, w, idx, G, H))
    assert kernels.launch_counts()[pass_]["sm90-row-classes"] == before + launches


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", RC_SHAPES, ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
@pytest.mark.parametrize("pass_", ["weight", "input"])
def test_sm90_row_classes_match_reference(pass_, shape, dtype, poison, monkeypatch):
    # dW and dbias (the loader warps issue two of a stage's eight boxes each, thread 0 alone sets
    # the bytes to expect, so the others' may land first; the computing warpgroups shift their
    # dbias chunks from the raw rows into the MMA's tile) or dx v2 (warps 1-3 of its loader
    # warpgroup do) read dY by TMA as eight classes of rows (rows c, c + 8, ..: an aligned stride
    # at any L): against float64 element by element, twice (deterministic), and the row-class
    # kernel really ran (both times).
    check_row_classes(pass_, shape, dtype, 70 + shape[3] + shape[4], 2)


@pytest.mark.parametrize("pass_,switch", [("weight", ("LARGEOUT_SM90_DW_RC", "0")),
                                          ("weight", ("LARGEOUT_SM90_DW", "v1")),
                                          ("weight", ("LARGEOUT_SM90_DW_DBIAS", "loader")),
                                          ("input", ("LARGEOUT_SM90_DX_RC", "0")),
                                          ("input", ("LARGEOUT_SM90_DX", "v1"))], ids=str)
def test_sm90_row_classes_switched_off(pass_, switch, poison, monkeypatch):
    # With LARGEOUT_SM90_DW_RC=0 / LARGEOUT_SM90_DX_RC=0, v1 forced, or (dW) dbias by the loader,
    # which the row-class kernel does not do, v1 runs at odd L: no row-class launch, the same
    # gradients.
    monkeypatch.setenv(*switch)
    check_row_classes(pass_, (300, 768, 5003, 128, 64), torch.bfloat16, 71, 0)


@pytest.mark.parametrize("stages", [4, 5, 11])
@pytest.mark.parametrize("shape", [(512, 768, 20011, 128, 32), (160, 768, 30001, 64, 32), (64, 256, 4095, 256, 128)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_dw_row_classes_ring_sizes(shape, stages, poison, monkeypatch):
    # The row-class kernel with small rings (LARGEOUT_SM90_DW_STAGES) that wrap many times per
    # CTA: a stage's raw rows are rewritten only after every computing thread has placed them.
    monkeypatch.setenv("LARGEOUT_SM90_DW_STAGES", str(stages))
    check_row_classes("weight", shape, torch.bfloat16, 72 + stages, 2)


def test_sm90_reads_dy_by_tma_query(monkeypatch):
    # cuda_reads_dy_by_tma: at odd L both passes read contiguous dY (row classes) and a
    # row-padded one; fp8 weights' dx only the padded one, as the fp8 path says; an ld below L
    # is an error naming it.
    q = torch.ops.largeout.cuda_reads_dy_by_tma
    B, H, L, K, G = 300, 768, 5003, 128, 64
    for p in ("input", "weight"):
        assert q(p, torch.bfloat16, B, H, L, K, G, L) and q(p, torch.bfloat16, B, H, L, K, G, 5008), p
    assert not q("input", torch.float8_e4m3fn, B, H, L, K, G, L)
    assert q("input", torch.float8_e4m3fn, B, H, L, K, G, 5008) == (
        kernels.path("input", torch.float8_e4m3fn, B, H, 5008, K, G) == "sm90-fp8")
    assert q("weight", torch.float8_e4m3fn, B, H, L, K, G, L)
    with pytest.raises(RuntimeError, match="ld must be at least L = 5003; got 5002"):
        q("input", torch.bfloat16, B, H, L, K, G, L - 1)
    monkeypatch.setenv("LARGEOUT_SM90_DX_RC", "0")
    assert not q("input", torch.bfloat16, B, H, L, K, G, L) and q("input", torch.bfloat16, B, H, L, K, G, 5008)


def _in_fresh_thread(fn):
    """fn() on a new host thread (no CUDA context current there yet), its result or error."""
    out = {}

    def run():
        try:
            out["value"] = fn()
            torch.cuda.synchronize()
        except Exception as e:  # reported by the caller's assertion
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert "error" not in out, repr(out.get("error"))
    return out["value"]


@pytest.mark.parametrize("L,rc", [(20_000, "default"), (20_011, "default"), (20_011, "0")],
                         ids=["even_L", "odd_L", "odd_L_v1"])
def test_sm90_ops_on_a_fresh_thread(L, rc, monkeypatch):
    # Each op as the first CUDA work of a new thread (as in autograd's device thread), without
    # the poison fixture (whose fills would run torch kernels there first): the same bits as
    # on this thread. Even L runs the TMA kernels (dx v3, dW v2), odd L their row-class
    # versions, or with those switched off the v1 dx/dW kernels (found failing there with
    # cudaErrorInvalidValue).
    if rc == "0":
        monkeypatch.setenv("LARGEOUT_SM90_DW_RC", "0")
        monkeypatch.setenv("LARGEOUT_SM90_DX_RC", "0")
    B, H, K, G = 256, 768, 128, 32
    x, w, b, idx, dy = make(B, H, L, K, G, torch.bfloat16, 120)
    ops = torch.ops.largeout
    calls = {
        "forward": lambda: ops.group_sparse_linear(x, w, idx, b, G),
        "input": lambda: ops.group_sparse_linear_backward_input(dy, w, idx, G, H),
        "weight": lambda: ops.group_sparse_linear_backward_weight(dy, x, idx, G),
    }
    for name, fn in calls.items():
        assert kernels.path(name, torch.bfloat16, B, H, L, K, G) == "sm90"
        here = fn()
        there = _in_fresh_thread(fn)
        for a, c in zip(here if isinstance(here, tuple) else (here,), there if isinstance(there, tuple) else (there,)):
            assert torch.equal(a, c), name
    # autograd without the padded dY: the backward's first CUDA work is dx (v1 at odd L with "0")
    monkeypatch.setenv("LARGEOUT_PAD_DY", "0")
    xg = x.clone().requires_grad_(True)
    ops.group_sparse_linear(xg, w, idx, None, G).backward(dy)
    torch.cuda.synchronize()
    assert torch.equal(xg.grad, calls["input"]())


@pytest.mark.parametrize("order", ["banked", "balanced"])
@pytest.mark.parametrize("shape", [(512, 768, 20011, 128, 32), (130, 768, 3001, 64, 64), (65, 768, 5003, 256, 128)],
                         ids=lambda s: "B{}_H{}_L{}_K{}_G{}".format(*s))
def test_sm90_index_orders(shape, order, poison):
    # The Hopper forward, dx and dW with each group's indices in the "banked" or "balanced"
    # order (not ascending), element by element against float64.
    B, H, L, K, G = shape
    x, w, b, _, dy = make(B, H, L, K, G, torch.bfloat16, 150 + G)
    idx = random_group_indices(-(-L // G), H, K, generator=torch.Generator().manual_seed(7), order=order).cuda()
    assert not bool((idx[:, 1:] > idx[:, :-1]).all())
    before = kernels.launch_counts()
    y = torch.ops.largeout.group_sparse_linear(x, w, idx, b, G)
    dx = torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H)
    dw, db = torch.ops.largeout.group_sparse_linear_backward_weight(dy, x, idx, G)
    assert used_sm90(before, kernels.launch_counts(), ["forward", "input", "weight"])
    assert_elementwise_close(y, ref.group_sparse_linear(x, w, idx, b, G))
    assert_elementwise_close(dx, dx_reference_cuda(dy, w, idx, G, H))
    dw_ref, db_ref = dw_reference_cuda(dy, x, idx, G)
    assert_elementwise_close(dw, dw_ref)
    assert_elementwise_close(db, db_ref)
