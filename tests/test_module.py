"""largeout.nn.GroupSparseLinear."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from largeout import reference as ref
from largeout.nn import GroupSparseLinear, random_group_indices

from conftest import DEVICES, REL_TOL, rel_err


def check_indices_table(idx, num_groups, in_features, fan_in, ascending=True):
    assert idx.dtype == torch.int32 and idx.shape == (num_groups, fan_in)
    assert int(idx.min()) >= 0 and int(idx.max()) < in_features
    if ascending:
        assert bool((idx[:, 1:] > idx[:, :-1]).all()), "indices must be strictly increasing (sorted, unique) per group"
    else:
        s = idx.sort(dim=1).values
        assert bool((s[:, 1:] > s[:, :-1]).all()), "indices must be unique per group"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forward_matches_reference(device, dtype):
    gen = torch.Generator().manual_seed(0)
    layer = GroupSparseLinear(100, 333, fan_in=24, group_size=32, device=device, dtype=dtype, generator=gen)
    check_indices_table(layer.indices, 11, 100, 24)
    assert layer.weight.shape == (333, 24) and layer.bias.shape == (333,)
    assert layer.weight.dtype == dtype and layer.indices.device.type == device
    x = torch.randn(4, 7, 100, generator=gen).to(device, dtype)
    y = layer(x)
    assert y.shape == (4, 7, 333)
    y_ref = ref.group_sparse_linear(x, layer.weight, layer.indices, layer.bias, 32)
    assert rel_err(y, y_ref) < REL_TOL[dtype]


def test_init_is_scaled_for_fan_in():
    layer = GroupSparseLinear(4000, 20000, fan_in=64, group_size=64)
    bound = 1 / math.sqrt(64)
    w = layer.weight.detach()
    assert float(w.abs().max()) <= bound
    # uniform(-b, b) has std b / sqrt(3)
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.02 * bound
    assert float(layer.bias.detach().abs().max()) <= bound


def test_indices_are_uniform_and_seeded():
    a = random_group_indices(2000, 50, 8, generator=torch.Generator().manual_seed(1))
    b = random_group_indices(2000, 50, 8, generator=torch.Generator().manual_seed(1))
    c = random_group_indices(2000, 50, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    check_indices_table(a, 2000, 50, 8)
    counts = torch.bincount(a.flatten().long(), minlength=50).double()
    expected = 2000 * 8 / 50
    assert float(((counts - expected).abs() / expected).max()) < 0.2


def test_from_dense_keeps_top_inputs_per_group_and_to_dense_round_trips():
    torch.manual_seed(3)
    H, L, K, G = 40, 70, 16, 16
    dense = nn.Linear(H, L).double()
    layer = GroupSparseLinear.from_dense(dense, fan_in=K, group_size=G)
    assert layer.weight.dtype == torch.float64
    check_indices_table(layer.indices, 5, H, K, ascending=False)
    w = dense.weight.detach()
    for g in range(5):
        rows = w[g * G : min(L, (g + 1) * G)]
        score = rows.abs().sum(0)
        kept = set(layer.indices[g].tolist())
        # every kept input scores at least as high as every dropped one
        assert min(score[list(kept)]) >= max(score[[h for h in range(H) if h not in kept]])
        assert torch.equal(layer.weight[g * G : min(L, (g + 1) * G)], rows[:, layer.indices[g].long()])
    back = layer.to_dense()
    assert isinstance(back, nn.Linear) and back.weight.shape == (L, H)
    mask = ref.group_sparse_to_dense(torch.ones(L, K), layer.indices, H, G).bool()
    assert torch.equal(back.weight[mask], w[mask])
    assert bool((back.weight[~mask] == 0).all())
    assert torch.equal(back.bias, dense.bias)
    x = torch.randn(6, H, dtype=torch.float64)
    assert rel_err(layer(x), back(x)) < 1e-12
    assert rel_err(back.weight, ref.group_sparse_to_dense(layer.weight, layer.indices, H, G)) == 0.0


@pytest.mark.parametrize("H,K", [(64, 16), (200, 64), (37, 24)])
def test_from_dense_arranges_inputs_across_residues(H, K):
    # Each group's kept inputs in the "banked" order: every run of 8 slots holds each residue mod 8
    # that has K / 8 or more of the group's inputs (all 8 where the residues are even); the layer
    # stays the dense one's restriction to those inputs.
    torch.manual_seed(H + K)
    L, G = 300, 32
    dense = nn.Linear(H, L).double()
    layer = GroupSparseLinear.from_dense(dense, fan_in=K, group_size=G)
    check_indices_table(layer.indices, layer.num_groups, H, K, ascending=False)
    w = dense.weight.detach()
    for g in range(layer.num_groups):
        idx = layer.indices[g].long()
        score = w[g * G : (g + 1) * G].abs().sum(0)
        assert set(idx.tolist()) == set(score.topk(K).indices.tolist())
        counts = torch.bincount(idx % 8, minlength=8)
        runs = (idx.view(-1, 8) % 8).tolist()
        # the residue-major list dealt out in eighths: a residue with K / 8 or more inputs covers
        # K / 8 consecutive places of it, so it is in every run
        full = int((counts >= K // 8).sum())
        assert all(len(set(r)) >= full for r in runs), (g, runs, counts.tolist())
        if bool((counts == K // 8).all()):
            assert all(len(set(r)) == 8 for r in runs)
        assert torch.equal(layer.weight[g * G : (g + 1) * G], w[g * G : (g + 1) * G][:, idx])
    x = torch.randn(7, H, dtype=torch.float64)
    assert rel_err(layer(x), layer.to_dense()(x)) < 1e-12


def test_from_dense_with_full_fan_in_is_exact():
    dense = nn.Linear(32, 50).double()
    layer = GroupSparseLinear.from_dense(dense, fan_in=32, group_size=16)
    x = torch.randn(5, 32, dtype=torch.float64)
    assert rel_err(layer(x), dense(x)) < 1e-12
    assert torch.equal(layer.to_dense().weight, dense.weight)


def test_state_dict_round_trip():
    a = GroupSparseLinear(64, 100, 16, 32, generator=torch.Generator().manual_seed(4))
    b = GroupSparseLinear(64, 100, 16, 32, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(a.indices, b.indices)
    sd = a.state_dict()
    assert set(sd) == {"weight", "bias", "indices"}
    b.load_state_dict(sd)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weight, b.weight)
    x = torch.randn(3, 64)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("kind", ["group-sparse", "linear", "linear-fp8"])
def test_load_state_dict_writes_nothing_of_a_layer_that_does_not_fit(kind):
    # torch's own load would copy the tensors that fit and report the others: a wrong weight shape
    # leaves every tensor of the layer as it was. A missing or unexpected key in a strict load of the
    # layer itself is raised before anything is written; inside a larger model that model's load
    # decides (torch passes every module strict=True and sorts the keys out at the end).
    from largeout.nn import Linear

    def make(seed):
        torch.manual_seed(seed)
        if kind == "group-sparse":
            return GroupSparseLinear(64, 100, 16, 32, generator=torch.Generator().manual_seed(seed))
        return Linear(64, 48, weight_dtype=torch.float8_e4m3fn if kind == "linear-fp8" else torch.float32)

    layer, other = make(1), make(2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    good = other.state_dict()
    wrong_shape = {**good, "weight": good["weight"][:-1].clone()}
    no_bias = {k: v for k, v in good.items() if k != "bias"}
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight.*nothing of .* was loaded"):
        torch.nn.Sequential(layer).load_state_dict({"0." + k: v for k, v in wrong_shape.items()})
    after = layer.state_dict()
    assert all(torch.equal(after[k].view(torch.uint8), before[k].view(torch.uint8)) for k in before)
    # the layer loaded itself, strictly: a missing or unexpected key writes nothing either
    for sd, pattern in ((no_bias, 'Missing key\\(s\\) in state_dict: "bias"'),
                        ({**good, "extra": good["bias"]}, 'Unexpected key\\(s\\) in state_dict: "extra"')):
        with pytest.raises(RuntimeError, match=f"(?s){type(layer).__name__}:\n\t{pattern}.*Nothing was loaded"):
            layer.load_state_dict(sd)
        after = layer.state_dict()
        assert all(torch.equal(after[k].view(torch.uint8), before[k].view(torch.uint8)) for k in before)
    layer.load_state_dict(no_bias, strict=False)  # not strict: loads what is there
    assert torch.equal(layer.weight.view(torch.uint8), good["weight"].view(torch.uint8))
    assert torch.equal(layer.bias, before["bias"])
    layer.load_state_dict(good)  # strict and whole: loads
    assert all(torch.equal(layer.state_dict()[k].view(torch.uint8), v.view(torch.uint8)) for k, v in good.items())
    # a load pre-hook of the layer's own that renames an old checkpoint's key runs first, as in torch
    fresh = make(3)

    def rename(module, state_dict, prefix, *args):
        if prefix + "w" in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "w")

    fresh.register_load_state_dict_pre_hook(rename)
    fresh.load_state_dict({("w" if k == "weight" else k): v for k, v in good.items()})
    assert torch.equal(fresh.weight.view(torch.uint8), good["weight"].view(torch.uint8))


def test_bad_indices_are_rejected_and_nothing_changes():
    layer = GroupSparseLinear(64, 100, 16, 32)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    other = GroupSparseLinear(64, 100, 16, 32).state_dict()
    bad = other["indices"].clone()
    bad[2, 0] = 64
    other["indices"] = bad
    with pytest.raises(ValueError, match="indices must lie in"):
        layer.load_state_dict(other)
    dup = before["indices"].clone()
    dup[1, 1] = dup[1, 0]
    with pytest.raises(ValueError, match="repeated value"):
        layer.set_indices(dup)
    with pytest.raises(ValueError, match="repeated value"):
        layer.indices = dup
    with pytest.raises(TypeError, match="int32"):
        layer.set_indices(before["indices"].long())
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed after a rejected update"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fan_in=12), "fan_in must be a multiple of 8"),
        (dict(fan_in=128), "fan_in must be a multiple of 8"),
        (dict(group_size=48), "group_size must be one of"),
        (dict(out_features=0), "out_features must be >= 1"),
    ],
)
def test_bad_construction(kwargs, match):
    args = dict(in_features=64, out_features=10, fan_in=16, group_size=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GroupSparseLinear(**args)


def test_extra_repr_and_no_bias():
    layer = GroupSparseLinear(768, 1000, 128, 32, bias=False)
    r = repr(layer)
    for part in ("in_features=768", "out_features=1000", "fan_in=128", "group_size=32", "num_groups=32", "bias=False"):
        assert part in r
    assert layer.bias is None
    y = layer(torch.randn(2, 768))
    assert y.shape == (2, 1000)


def test_training_recovers_a_teacher():
    """Gradients are right end to end: SGD on the student recovers a teacher layer
    that reads the same inputs."""
    torch.manual_seed(6)
    teacher = GroupSparseLinear(128, 300, 32, 32)
    student = GroupSparseLinear(128, 300, 32, 32)
    student.set_indices(teacher.indices)
    opt = torch.optim.SGD(student.parameters(), lr=8.0)  # mean over 300 outputs: small gradients
    losses = []
    for _ in range(80):
        x = torch.randn(64, 128)
        with torch.no_grad():
            target = teacher(x)
        loss = nn.functional.mse_loss(student(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]


def test_generator_on_another_device_gives_same_init():
    """A CPU generator seeds a layer the same way whatever device the layer is on
    (on a CPU-only machine: 'meta' stands in for the other device)."""
    dev = "cuda" if torch.cuda.is_available() else None
    a = GroupSparseLinear(64, 100, 16, 32, generator=torch.Generator().manual_seed(7))
    if dev is None:
        from largeout.nn.group_sparse import _uniform_

        t = torch.empty(3000, dtype=torch.float64)
        _uniform_(t, 0.5, torch.Generator().manual_seed(1))
        ref = torch.empty(3000, dtype=torch.float64).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(1))
        assert torch.equal(t, ref)
        return
    b = GroupSparseLinear(64, 100, 16, 32, device=dev, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.weight, b.weight.cpu()) and torch.equal(a.indices, b.indices.cpu())


# -- low-precision weights --------------------------------------------------------------------

LOWP = [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]


def _dense_reference(layer, x):
    """float64 y, dx, dW of ``x W^T + b`` with the layer's stored weight (upcast) and bias."""
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double() if layer.bias is not None else None
    x64 = x.detach().double().requires_grad_()
    y = x64 @ w.T + (b if b is not None else 0)
    return x64, w, y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", LOWP, ids=str)
def test_linear_low_precision_weight_matches_reference(wdt, device):
    from largeout.nn import Linear

    gen = torch.Generator().manual_seed(7)
    # e4m3 with bf16 inputs (weight upcast); its FP8 compute: test_linear_fp8_compute_matches_reference
    act = torch.bfloat16 if wdt == torch.float8_e4m3fn else None
    layer = Linear(96, 333, weight_dtype=wdt, generator=gen, activation_dtype=act).to(device)
    assert layer.weight.dtype == wdt
    assert (layer.weight.detach().float() != 0).float().mean() > 0.9  # the init survives rounding
    x = torch.randn(5, 96, generator=gen).to(device).requires_grad_()
    y = layer(x)
    assert y.dtype == torch.float32
    x64, w64, y64 = _dense_reference(layer, x)
    assert rel_err(y, y64) < 2e-2  # bf16/fp16 matmul of the exact stored weights
    gy = torch.randn(y.shape, generator=gen).to(device)
    y.backward(gy)
    y64.backward(gy.double())
    assert rel_err(x.grad, x64.grad) < 2e-2
    assert layer.weight.grad is not None
    assert layer.weight.grad.dtype == (torch.bfloat16 if wdt in (torch.float8_e4m3fn, torch.float8_e5m2) else wdt)
    assert rel_err(layer.weight.grad.float(), w64.grad) < 2e-2
    # a second backward accumulates
    layer(x.detach()).backward(gy)
    assert rel_err(layer.weight.grad.float(), 2 * w64.grad) < 2e-2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdt", [torch.bfloat16, torch.float8_e4m3fn], ids=str)
def test_group_sparse_low_precision_weight_matches_reference(wdt, device):
    gen = torch.Generator().manual_seed(8)
    # G = 32, K = 64: on Hopper the bf16 compute takes the sm90 kernels
    layer = GroupSparseLinear(96, 70, fan_in=64, group_size=32, generator=gen, weight_dtype=wdt).to(device)
    assert layer.weight.dtype == wdt and layer.bias.dtype == torch.bfloat16
    x = torch.randn(3, 96, generator=gen).to(device).requires_grad_()
    y = layer(x)
    w_full = torch.zeros(70, 96, dtype=torch.float64, device=device)
    rows = layer.indices.long().repeat_interleave(32, dim=0)[:70]
    w_full.scatter_(1, rows, layer.weight.detach().double())
    w_full.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y64 = x64 @ w_full.T + layer.bias.detach().double()
    assert rel_err(y, y64) < 2e-2
    gy = torch.randn(y.shape, generator=gen).to(device)
    y.backward(gy)
    y64.backward(gy.double())
    assert rel_err(x.grad, x64.grad) < 2e-2
    assert rel_err(layer.weight.grad.float(), torch.gather(w_full.grad, 1, rows)) < 2e-2


@pytest.mark.parametrize("weight_scale", [None, "label"])
def test_fp8_layer_trains_with_largeout_optim(weight_scale):
    from largeout import optim as lo_optim
    from largeout.nn import Linear

    gen = torch.Generator().manual_seed(9)
    X = torch.randn(512, 32, generator=gen)
    target = (X @ torch.randn(32, 10, generator=gen)).argmax(1)
    layer = Linear(32, 10, weight_dtype=torch.float8_e4m3fn, generator=gen, weight_scale=weight_scale)
    opt = lo_optim.SGD(layer.parameters(), lr=0.5, seed=3)
    first = None
    for step in range(60):
        loss = torch.nn.functional.cross_entropy(layer(X), target)
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if weight_scale and step % 20 == 19:  # per-label scales re-chosen as rows grow
            layer.rescale_weight_()
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert loss.item() < 0.6 * first


def test_bad_weight_dtype():
    from largeout.nn import Linear

    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        Linear(4, 4, weight_dtype=torch.int8)
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        GroupSparseLinear(16, 16, 8, 16, weight_dtype=torch.int8)


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("x_dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_layers_reject_non_float_inputs(weight_dtype, x_dtype):
    # nn.Linear raises on integer inputs; a cast to the compute dtype and back would truncate the output
    from largeout.nn import Linear

    x = torch.ones(3, 16).to(x_dtype)
    for layer, name in ((GroupSparseLinear(16, 40, 8, 16, weight_dtype=weight_dtype), "GroupSparseLinear"),
                        (Linear(16, 40, weight_dtype=weight_dtype), "Linear")):
        with pytest.raises(TypeError, match=f"{name}: x must be float32, float64, bfloat16 or float16; "
                                            f"got {x_dtype}"):
            layer(x)


def test_constructor_argument_types():
    from largeout.nn import Linear

    cases = [
        (lambda: GroupSparseLinear(16.0, 40, 8, 16),
         TypeError, "GroupSparseLinear: in_features must be an int; got float"),
        (lambda: GroupSparseLinear(16, 40, 8, "16"),
         TypeError, "GroupSparseLinear: group_size must be an int; got str"),
        (lambda: GroupSparseLinear(16, True, 8, 16), TypeError, "out_features must be an int; got bool"),
        (lambda: GroupSparseLinear(16, 40, 8, 16, generator=5), TypeError, "generator must be a torch.Generator"),
        (lambda: GroupSparseLinear(16, 40, 8, 16, dtype=torch.int32), TypeError, "dtype must be None or one of .*; got torch.int32"),
        (lambda: Linear(16, 4.0), TypeError, "Linear: out_features must be an int; got float"),
        (lambda: Linear(16, 4, generator=5), TypeError, "Linear: generator must be a torch.Generator"),
        (lambda: random_group_indices(-1, 10, 8), ValueError, "num_groups must be >= 0"),
        (lambda: random_group_indices(3, 10, 8.0), TypeError, "random_group_indices: fan_in must be an int"),
        (lambda: GroupSparseLinear.from_dense(nn.Conv1d(4, 4, 1), 8, 16), TypeError,
         r"linear must have a 2-D floating-point weight .*; got Conv1d with weight \(\(4, 4, 1\)"),
        (lambda: GroupSparseLinear(16, 40, 8, 16, dtype=torch.float8_e4m3fn), TypeError,
         "dtype must be None or one of"),
    ]
    for make, err, pattern in cases:
        with pytest.raises(err, match=pattern):
            make()
    # numpy integers are integers (nn.Linear takes them too)
    np_layer = GroupSparseLinear(np.int64(16), np.int64(40), np.int32(8), np.int64(16))
    assert (np_layer.in_features, np_layer.group_size) == (16, 16) and type(np_layer.in_features) is int
    assert Linear(np.int64(16), 4).in_features == 16
    from largeout import functional as F

    layer = GroupSparseLinear(16, 40, 8, 16)
    with pytest.raises(ValueError, match="group_size must be one of 16, 32, 64, 128; got 16.0"):
        F.group_sparse_linear(torch.randn(2, 16), layer.weight, layer.indices, None, group_size=16.0)


def test_from_dense_of_an_fp8_linear():
    # largeout.nn.Linear with an fp8 weight (and per-label scales): sparsified from its values
    from largeout.nn import Linear

    torch.manual_seed(0)
    fp8 = Linear(64, 40, weight_dtype=torch.float8_e4m3fn, weight_scale="label")
    dense = nn.Linear(64, 40, dtype=torch.bfloat16)
    with torch.no_grad():
        dense.weight.copy_(fp8.weight.to(torch.float32).mul(fp8.weight_scale[:, None]).to(torch.bfloat16))
        dense.bias.copy_(fp8.bias)
    a = GroupSparseLinear.from_dense(fp8, fan_in=16, group_size=16)
    b = GroupSparseLinear.from_dense(dense, fan_in=16, group_size=16)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_from_dense_of_any_module_with_a_weight():
    # a module with a 2-D weight and no bias attribute at all: a layer without bias
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(40, 32, dtype=torch.float64))

    head = Head()
    layer = GroupSparseLinear.from_dense(head, fan_in=16, group_size=16)
    assert layer.bias is None
    x = torch.randn(3, 32, dtype=torch.float64)
    dense = nn.Linear(32, 40, bias=False).double()
    with torch.no_grad():
        dense.weight.copy_(head.weight)
    assert rel_err(layer(x), GroupSparseLinear.from_dense(dense, 16, 16)(x)) == 0.0


def test_linear_checks_input_width():
    from largeout.nn import Linear

    for weight_dtype in (torch.float32, torch.float8_e4m3fn):
        with pytest.raises(ValueError, match=r"Linear: x must be \[\*, in_features = 16\]; got shape \(3, 15\)"):
            Linear(16, 40, weight_dtype=weight_dtype)(torch.randn(3, 15))


# -- FP8 compute (e4m3 weights x e4m3 inputs) ---------------------------------------------------


def _fp8_reference(layer, x, rowwise):
    """float64 y of the FP8 path: the input quantized exactly as documented (scale =
    amax / 448 per row or for the whole input, round to nearest e4m3), times the stored
    weight, plus the bias."""
    x64 = x.detach().double().reshape(-1, x.shape[-1])
    amax = x64.abs().amax(1, keepdim=True) if rowwise else x64.abs().amax().reshape(1, 1)
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax)).float().double()
    x_hat = (x64 / scale).float().to(torch.float8_e4m3fn).double() * scale
    from largeout.nn.lowp import dequantize

    w = dequantize(layer.weight, getattr(layer, "weight_scale", None), torch.float64)  # times any label scales
    return x_hat, x_hat @ w.T + layer.bias.detach().double()


FP8_MODES = ["tensor-fast", "tensor", "row", "row-fast"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", FP8_MODES)
@pytest.mark.parametrize("L", [1, 16, 333, 4099])
@pytest.mark.parametrize("shape", [(1, 96), (37, 96), (2, 3, 96), (96,)], ids=str)
def test_linear_fp8_compute_matches_reference(L, shape, mode, device, monkeypatch):
    from largeout.nn import Linear

    from largeout.nn import fp8

    monkeypatch.setenv("LARGEOUT_FP8_GEMM", mode)
    monkeypatch.setattr(fp8, "_DX_CHUNK", 1024)  # dx over several label chunks at L = 4099
    gen = torch.Generator().manual_seed(L + len(shape))
    layer = Linear(96, L, weight_dtype=torch.float8_e4m3fn, generator=gen).to(device)
    assert layer.activation_dtype == torch.float8_e4m3fn
    x = (3 * torch.randn(shape, generator=gen)).to(device).requires_grad_()
    y = layer(x)
    assert y.shape == shape[:-1] + (L,) and y.dtype == torch.float32
    with torch.no_grad():  # (without the autograd Function: the same bits)
        assert torch.equal(layer(x), y.detach())
    x_hat, y64 = _fp8_reference(layer, x, rowwise=mode.startswith("row"))
    y2 = y.detach().reshape(-1, L).double()
    # bf16 output of exact fp8 products: within bf16 rounding of the quantized reference
    assert (y2 - y64).abs().max() <= 2 ** -7 * y64.abs().max() + 1e-6
    # and the quantization error stays within e4m3's bounds: relative 2^-4 per normal input,
    # absolute 2^-10 * scale per subnormal one, plus the bf16 output rounding
    x2 = x.detach().double().reshape(-1, 96)
    w_abs = layer.weight.detach().double().abs()
    exact = x2 @ layer.weight.detach().double().T + layer.bias.detach().double()
    scale = (x2.abs().amax(1, keepdim=True) if mode.startswith("row") else x2.abs().amax()) / 448
    bound = 2 ** -4 * (x2.abs() @ w_abs.T) + 2 ** -10 * scale * w_abs.sum(1) + 2 ** -8 * exact.abs() + 1e-6
    assert ((y2 - exact).abs() <= bound).all()
    gy = torch.randn(y.shape, generator=gen).to(device)
    y.backward(gy)
    g64 = gy.double().reshape(-1, L)
    w64 = layer.weight.detach().double()
    assert rel_err(x.grad.reshape(-1, 96), g64 @ w64) < 1e-2  # straight through the quantizer
    assert layer.weight.grad.dtype == torch.bfloat16 and layer.weight.grad.shape == (L, 96)
    assert rel_err(layer.weight.grad, g64.T @ x_hat) < 1e-2  # the input the forward multiplied
    assert rel_err(layer.bias.grad, g64.sum(0)) < 1e-2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L", [21, 32])
@pytest.mark.parametrize("grad_kind", ["expanded", "transposed", "offset"])
def test_linear_fp8_backward_takes_any_gradient_layout(device, L, grad_kind):
    """dY in layouts autograd can hand the layer (a sum's expanded ones, a transposed
    gradient, rows starting off a 16-byte boundary): the same gradients as from a contiguous
    copy, and the float64 reference's (the padding copy and bias sums read any strides)."""
    from largeout.nn import Linear

    gen = torch.Generator().manual_seed(L)
    layer = Linear(48, L, weight_dtype=torch.float8_e4m3fn, generator=gen).to(device)
    x = torch.randn(5, 48, generator=gen).to(device)
    c = torch.randn(L, 5, generator=gen).to(device)
    wide = torch.randn(5, L + 1, generator=gen).to(device)

    def loss(y):
        if grad_kind == "expanded":
            return y.sum()  # dY = ones, strides (0, 0)
        if grad_kind == "transposed":
            return (y.t() * c).sum()  # dY = c^T, column-major
        return (y * wide[:, 1:]).sum()  # dY = a view one element into each row

    grads = []
    for contiguous in (False, True):
        layer.weight.grad = layer.bias.grad = None
        xg = x.clone().requires_grad_()
        y = layer(xg)
        if contiguous:  # the same dY, materialized contiguous before the layer's backward
            y = y.clone(memory_format=torch.contiguous_format)
            dy = torch.autograd.grad(loss(y), y)[0].contiguous()
            y = layer(xg)
            y.backward(dy)
        else:
            loss(y).backward()
        grads.append((xg.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    y = layer(x)
    dy = torch.autograd.grad(loss(y), y)[0].double()
    assert rel_err(grads[0][2], dy.sum(0)) < 1e-2
    assert rel_err(grads[0][0], dy @ layer.weight.detach().double()) < 1e-2


def test_linear_fp8_dx_chunk_setting(monkeypatch):
    """LARGEOUT_FP8_DX_CHUNK (labels per dx chunk) gives the same gradients up to the bf16
    rounding of each chunk's product, and refuses values that are not multiples of 8."""
    from largeout.nn import Linear

    gen = torch.Generator().manual_seed(3)
    layer = Linear(96, 4099, weight_dtype=torch.float8_e4m3fn, generator=gen)
    x = torch.randn(9, 96, generator=gen)
    gy = torch.randn(9, 4099, generator=gen)
    grads = []
    for chunk in ("8", "1024", "1048576"):
        monkeypatch.setenv("LARGEOUT_FP8_DX_CHUNK", chunk)
        xg = x.clone().requires_grad_()
        layer(xg).backward(gy)
        grads.append(xg.grad)
    want = gy.double() @ layer.weight.detach().double()
    for g in grads:
        assert rel_err(g, want) < 1e-2
    monkeypatch.setenv("LARGEOUT_FP8_DX_CHUNK", "12")
    with pytest.raises(ValueError, match="LARGEOUT_FP8_DX_CHUNK must be a positive multiple of 8"):
        layer(x.clone().requires_grad_()).backward(gy)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_fp8_padding_survives_to_and_load(device):
    """L % 16 != 0: the padded storage is restored after .to() and a state_dict round trip
    (by the first pass that reads the pad rows: the forward on the emulated and _scaled_mm
    paths, the backward on all; largeout's GEMM reads only the L rows), and the pad rows
    never leak into the output or the gradient."""
    from largeout.nn import Linear

    gen = torch.Generator().manual_seed(3)
    a = Linear(48, 21, weight_dtype=torch.float8_e4m3fn, generator=gen)
    b = Linear(48, 21, weight_dtype=torch.float8_e4m3fn, generator=gen)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8))
    a, b = a.to(device), b.to(device)
    x = torch.randn(4, 48, generator=gen).to(device)
    ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    ya.float().square().sum().backward()
    assert a.weight.shape == (21, 48)
    full = a.weight.untyped_storage().nbytes()
    assert full >= 32 * 48  # padded to 32 rows again
    assert torch.isfinite(ya).all()
    assert a.weight.grad.shape == (21, 48) and torch.isfinite(a.weight.grad.float()).all()


def test_linear_activation_dtype_checked():
    from largeout.nn import Linear

    with pytest.raises(ValueError, match="activation_dtype must be"):
        Linear(4, 4, weight_dtype=torch.bfloat16, activation_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="activation_dtype must be"):
        Linear(4, 4, weight_dtype=torch.float8_e4m3fn, activation_dtype=torch.float16)
    layer = Linear(4, 4, weight_dtype=torch.float8_e4m3fn, activation_dtype=torch.bfloat16)
    assert layer.activation_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="in_features divisible by 16.*got in_features=40"):
        Linear(40, 4, weight_dtype=torch.float8_e4m3fn, activation_dtype=torch.float8_e4m3fn)
    assert Linear(40, 4, weight_dtype=torch.float8_e4m3fn).activation_dtype == torch.bfloat16
    assert Linear(48, 4, weight_dtype=torch.float8_e4m3fn).activation_dtype == torch.float8_e4m3fn


def _torch_quantize(x, rowwise):
    """The fp8 layer's input quantization in torch ops (its documented rule). The clamp
    makes it saturating whatever torch's cast does beyond 448 (torch 2.11 gives NaN for
    inf, 2.14 gives 448); it matters only with scale 1 from a NaN amax."""
    xf = x.float()
    amax = xf.abs().amax(dim=1, keepdim=True) if rowwise else xf.abs().amax().reshape(1, 1)
    scale = amax / 448.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (xf / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows, cols", [(1, 16), (37, 96), (1000, 768), (3, 70001)], ids=str)
@pytest.mark.parametrize("rowwise", [False, True])
def test_fp8_quantize_op_matches_torch_rule(device, dtype, rows, cols, rowwise):
    gen = torch.Generator().manual_seed(rows + cols)
    # magnitudes over many binades (e4m3's subnormals after scaling included), a zero row
    x = torch.randn(rows, cols, generator=gen) * torch.exp2(torch.randint(-12, 6, (rows, cols), generator=gen).float())
    if rows > 2:
        x[1] = 0
    x = x.to(dtype)
    q, s = torch.ops.largeout.fp8_quantize(x.to(device), rowwise)
    q_ref, s_ref = _torch_quantize(x, rowwise)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (rows, cols)
    assert s.shape == ((rows if rowwise else 1), 1) and s.dtype == torch.float32
    assert torch.equal(s.cpu(), s_ref)
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rowwise", [False, True])
def test_fp8_quantize_op_edge_values(device, rowwise):
    """NaN, +-inf, a tiny subnormal amax (amax / 448 underflows to 0: scale 1), zero rows,
    a non-contiguous input: the torch rule's codes, except that a NaN code is always 0x7F
    (torch keeps the sign bit of a NaN)."""
    tiny = torch.tensor([4.2e-45, 0.0, -1.4e-45, 0.0])
    rows = torch.stack([torch.tensor([float("nan"), 1.0, -2.0, 3.0]), torch.tensor([float("inf"), 1.0, -3.0, 0.5]),
                        torch.tensor([-float("inf"), 0.25, 7.0, -1.0]), tiny, torch.zeros(4),
                        torch.tensor([1e-3, -2e-3, 5e-4, 0.0])])
    for x in (rows, rows[3:], rows.t().contiguous().t()):  # (the last: column-major strides)
        q, s = torch.ops.largeout.fp8_quantize(x.to(device), rowwise)
        q_ref, s_ref = _torch_quantize(x, rowwise)
        assert torch.equal(s.cpu(), s_ref)
        codes, want = q.cpu().view(torch.uint8), q_ref.view(torch.uint8)
        nan, nan_ref = (codes & 0x7F) == 0x7F, (want & 0x7F) == 0x7F
        assert torch.equal(nan, nan_ref) and bool((codes[nan] == 0x7F).all())
        assert torch.equal(codes[~nan], want[~nan])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("shape", [(0, 32), (3, 0)], ids=str)
def test_fp8_quantize_op_empty_input(device, rowwise, shape):
    q, s = torch.ops.largeout.fp8_quantize(torch.ones(shape, device=device), rowwise)
    assert q.shape == shape and s.shape == ((shape[0] if rowwise else 1), 1)
    assert bool((s == 1).all())


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_quantize_op_checks_input(device):
    with pytest.raises(TypeError, match="fp8_quantize: x must be float32, bfloat16 or float16; got Double"):
        torch.ops.largeout.fp8_quantize(torch.ones(2, 16, dtype=torch.float64, device=device), False)
    with pytest.raises(RuntimeError, match="fp8_quantize: x must be 2-D"):
        torch.ops.largeout.fp8_quantize(torch.ones(16, device=device), False)


def _pad_columns_inputs(M, L, layout, device, gen, dtype=torch.bfloat16):
    """[M, L] of dtype with values over many binades in the given memory layout."""
    base = torch.randn(M, L + 3, generator=gen) * torch.exp2(torch.randint(-6, 6, (M, L + 3), generator=gen).float())
    base = base.to(dtype)
    if layout == "contiguous":
        return base[:, :L].contiguous().to(device)
    if layout == "offset":  # rows of stride L + 3 starting 3 elements in: misaligned rows and pointer
        return base.to(device)[:, 3:]
    if layout == "column-major":
        return base[:, :L].t().contiguous().t().to(device)
    if layout == "stride-2":
        wide = torch.repeat_interleave(base[:, :L], 2, dim=1)
        wide[:, 1::2] = float("nan")  # never read
        return wide.to(device)[:, ::2]
    assert layout == "expanded"  # one row read M times (stride 0)
    return base[:1, :L].to(device).expand(M, L)


def _poison_allocator(device, nbytes):
    """Leave NaN in the caching allocator's free blocks, so that an output element a kernel
    never writes shows up."""
    if device == "cuda":
        torch.full((nbytes // 2 + 1024,), float("nan"), dtype=torch.bfloat16, device=device)  # freed at once


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M, L", [(1, 1), (1, 7), (5, 8), (37, 4099), (257, 9), (600, 3000), (1000, 333),
                                  (3, 70001)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "offset", "column-major", "stride-2", "expanded"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_pad_columns_sum_matches_reference(device, M, L, layout, dtype):
    """The backward's dY pass: the copy is exact with zero columns from L to the multiple,
    the column sums are within fp32 accumulation error of the float64 sums, in any layout
    (the row splits of a narrow, tall input included)."""
    gen = torch.Generator().manual_seed(M * 7 + L)
    x = _pad_columns_inputs(M, L, layout, device, gen, dtype)
    for multiple in (8, 16):
        Lp = -(-L // multiple) * multiple
        _poison_allocator(device, M * Lp * 2)
        out, sums = torch.ops.largeout.pad_columns_sum(x, multiple, True, True)
        assert out.shape == (M, Lp) and out.dtype == dtype and out.is_contiguous()
        assert torch.equal(out[:, :L].cpu(), x.cpu()) and bool((out[:, L:] == 0).all())
        x64 = x.cpu().double()
        assert sums.shape == (L,) and sums.dtype == torch.float32
        bound = (M + 8) * 2 ** -24 * x64.abs().sum(0) + 1e-30
        assert bool(((sums.cpu().double() - x64.sum(0)).abs() <= bound).all())
    out2, sums2 = torch.ops.largeout.pad_columns_sum(x, 8, False, True)  # sums only
    assert out2.shape == (0, 0) and torch.equal(sums2, sums)
    out3, sums3 = torch.ops.largeout.pad_columns_sum(x, 8, True, False)  # copy only
    assert sums3.shape == (0,) and sums3.dtype == torch.float32 and torch.equal(out3[:, :L], out[:, :L]) and bool((out3[:, L:] == 0).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)], ids=str)
def test_pad_columns_sum_empty(device, shape):
    M, L = shape
    out, sums = torch.ops.largeout.pad_columns_sum(torch.ones(shape, dtype=torch.bfloat16, device=device), 8, True, True)
    assert out.shape == (M, -(-L // 8) * 8) and bool((out == 0).all())
    assert sums.shape == (L,) and sums.dtype == torch.float32 and bool((sums == 0).all())


@pytest.mark.parametrize("device", DEVICES)
def test_pad_columns_sum_checks_input(device):
    x = torch.ones(3, 5, dtype=torch.bfloat16, device=device)
    with pytest.raises(TypeError, match="pad_columns_sum: x must be bfloat16 or float16; got Float"):
        torch.ops.largeout.pad_columns_sum(x.float(), 8, True, True)
    with pytest.raises(RuntimeError, match="pad_columns_sum: x must be 2-D \\[M, L\\]; got 1-D"):
        torch.ops.largeout.pad_columns_sum(x[0], 8, True, True)
    for m in (0, 12, -8, 2**63 - 8, 2**30 + 8):  # (a huge multiple overflowed the rounded-up width to 0)
        with pytest.raises(RuntimeError, match=f"pad_columns_sum: multiple must be a positive multiple of 8 up to "
                                               f"2\\^30; got {m}"):
            torch.ops.largeout.pad_columns_sum(x, m, True, True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad, sums", [(True, True), (True, False), (False, True)])
def test_pad_columns_sum_opcheck(device, pad, sums):
    """Schema, fake tensor (torch.compile tracing) and dispatch checks of the op."""
    x = torch.randn(7, 13, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).to(device)
    torch.library.opcheck(torch.ops.largeout.pad_columns_sum.default, (x, 8, pad, sums))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_pad_columns_sum_large_offsets():
    """Rows past 2^31 bytes (64-bit offsets): M = 3, L = 2^30 + 5."""
    M, L = 3, (1 << 30) + 5
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(M, L, generator=gen, device="cuda").to(torch.bfloat16)
    out, sums = torch.ops.largeout.pad_columns_sum(x, 8, True, True)
    assert torch.equal(out[:, :L], x) and bool((out[:, L:] == 0).all())
    del out
    step = 1 << 26
    for a in range(0, L, step):
        x64 = x[:, a : a + step].double()
        bound = (M + 8) * 2 ** -24 * x64.abs().sum(0)
        assert bool(((sums[a : a + step].double() - x64.sum(0)).abs() <= bound).all())


def _fp8_gemm_configs():
    return list(torch.ops.largeout.fp8_gemm_configs()) if torch.cuda.is_available() else []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("M", [1, 37, 1000])
@pytest.mark.parametrize("N, K", [(16, 16), (4112, 96), (520, 768), (1, 32), (4117, 96), (523, 768)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("per_col", [False, True], ids=["one-scale", "per-column-scales"])
def test_fp8_gemm_kernel_matches_reference(M, N, K, with_bias, per_col):
    """largeout's FP8 GEMM, every configuration, against float64 on fresh inputs per call
    (the output is freshly allocated: a tile left unwritten would hold another call's values
    or the poison of the block freed just before)."""
    configs = _fp8_gemm_configs()
    if not configs:
        pytest.skip("largeout's FP8 GEMM needs an sm_90 device (and a build with the 90a target)")
    gen = torch.Generator().manual_seed(M * 7 + N + K)
    for config in range(len(configs)):
        a = (4 * torch.randn(M, K, generator=gen)).to(torch.float8_e4m3fn)
        b = (torch.randn(N, K, generator=gen) / 8).to(torch.float8_e4m3fn)
        # per column: scales over 2^-12..2^3 (as label scales times an input scale)
        scale = (torch.rand(N if per_col else 1, generator=gen) + 0.25) * (
            torch.ldexp(torch.ones(N), torch.randint(-12, 4, (N,), generator=gen)) if per_col else 1)
        bias = torch.randn(N, generator=gen).to(torch.bfloat16) if with_bias else None
        want = scale.double() * (a.double() @ b.double().T) + (bias.double() if with_bias else 0)
        # the caching allocator tends to hand the next [M, N] bf16 request this block back
        torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
        y = torch.ops.largeout.fp8_gemm(a.cuda(), b.cuda(), scale.cuda(), bias.cuda() if with_bias else None, config)
        assert y.shape == (M, N) and y.dtype == torch.bfloat16
        # rows of N rounded up to 8: the columns past N belong to no one, unchecked
        assert y.stride() == ((N + 7) // 8 * 8, 1)
        y = y.double().cpu()
        assert torch.isfinite(y).all(), configs[config]
        # bf16 output rounding, plus Hopper's fast fp8 accumulation (partial sums kept in
        # fewer than fp32's bits) relative to the sum of the products' magnitudes
        mag = scale.double() * (a.double().abs() @ b.double().abs().T)
        bound = 2 ** -8 * want.abs() + 2 ** -12 * mag + 1e-6
        bad = (y - want).abs() > bound
        assert not bad.any(), f"{configs[config]}: {int(bad.sum())} of {M * N} elements off"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fp8_gemm_kernel_rejects_bad_input():
    if not _fp8_gemm_configs():
        pytest.skip("largeout's FP8 GEMM needs an sm_90 device (and a build with the 90a target)")
    e4 = torch.float8_e4m3fn
    a = torch.randn(8, 32, device="cuda").to(e4)
    b = torch.randn(16, 32, device="cuda").to(e4)
    s = torch.ones(1, device="cuda")
    gemm = torch.ops.largeout.fp8_gemm
    with pytest.raises(TypeError, match="b must be float8_e4m3fn; got BFloat16"):
        gemm(a, b.to(torch.bfloat16), s, None)
    with pytest.raises(RuntimeError, match=r"b must be \[N, 32\]"):
        gemm(a, torch.randn(16, 48, device="cuda").to(e4), s, None)
    with pytest.raises(RuntimeError, match="K .* must be a positive multiple of 16; got 24"):
        gemm(a[:, :24].contiguous(), b[:, :24].contiguous(), s, None)
    with pytest.raises(RuntimeError, match=r"N \(b.shape\[0\]\) must be positive; got 0"):
        gemm(a, b[:0], s, None)
    assert gemm(a[:0], b, s, None).shape == (0, 16)  # an empty batch
    with pytest.raises(RuntimeError, match="bias must be a contiguous, 16-byte aligned \\[16\\]"):
        gemm(a, b, s, torch.zeros(15, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=r"scale must be one value or a contiguous, 16-byte aligned \[16\]"):
        gemm(a, b, torch.ones(15, device="cuda"), None)
    with pytest.raises(RuntimeError, match=r"scale must be one value or a contiguous, 16-byte aligned \[16\]"):
        gemm(a, b, torch.ones(17, device="cuda")[1:], None)  # not 16-byte aligned
    with pytest.raises(RuntimeError, match="config must be -1"):
        gemm(a, b, s, None, 99)
    with pytest.raises(RuntimeError, match="a must be contiguous"):
        gemm(torch.randn(32, 8, device="cuda").to(e4).t(), b, s, None)


def test_fp8_gemm_kernel_refuses_cpu():
    e4 = torch.float8_e4m3fn
    with pytest.raises(RuntimeError, match="fp8_gemm: runs on CUDA sm_90 devices only"):
        torch.ops.largeout.fp8_gemm(torch.zeros(2, 16).to(e4), torch.zeros(8, 16).to(e4), torch.ones(1), None)


def test_fp8_kernel_choice_checked(monkeypatch):
    from largeout.nn import fp8

    cpu = torch.device("cpu")
    monkeypatch.setenv("LARGEOUT_FP8_KERNEL", "cublas")
    assert fp8.kernel_choice(cpu) is None
    monkeypatch.setenv("LARGEOUT_FP8_KERNEL", "auto")
    assert fp8.kernel_choice(cpu) is None  # no largeout FP8 GEMM off sm_90
    monkeypatch.setenv("LARGEOUT_FP8_KERNEL", "largeout:0")
    with pytest.raises(ValueError, match="runs 0 largeout FP8 GEMM configurations"):
        fp8.kernel_choice(cpu)
    monkeypatch.setenv("LARGEOUT_FP8_KERNEL", "fast")
    with pytest.raises(ValueError, match="LARGEOUT_FP8_KERNEL must be auto, cublas or largeout:N; got 'fast'"):
        fp8.kernel_choice(cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kernel", ["cublas"] + [f"largeout:{c}" for c in range(3)])
@pytest.mark.parametrize("scaled", [False, True], ids=["", "label-scales"])
def test_linear_fp8_kernels_agree(kernel, scaled, monkeypatch):
    """The layer's default recipe through each FP8 GEMM: the same quantized product (within
    the fast accumulation's rounding) at an odd label count; with per-label weight scales
    (spread over 2^-12..2^3), label by label."""
    from largeout.nn import Linear

    if kernel != "cublas" and int(kernel[9:]) >= len(_fp8_gemm_configs()):
        pytest.skip("largeout's FP8 GEMM needs an sm_90 device (and a build with the 90a target)")
    monkeypatch.setenv("LARGEOUT_FP8_GEMM", "tensor-fast")
    monkeypatch.setenv("LARGEOUT_FP8_KERNEL", kernel)
    gen = torch.Generator().manual_seed(5)
    layer = Linear(768, 3001, weight_dtype=torch.float8_e4m3fn, generator=gen,
                   weight_scale="label" if scaled else None)
    if scaled:
        layer.weight_scale.copy_(torch.ldexp(torch.ones(3001), torch.randint(-12, 4, (3001,), generator=gen)))
    layer = layer.cuda()
    x = torch.randn(300, 768, generator=gen).cuda()
    y = layer(x).double().cpu()
    x_hat, y64 = _fp8_reference(layer, x, rowwise=False)
    y64 = y64.cpu()
    assert y.shape == (300, 3001)
    assert ((y - y64).abs().amax(0) <= 2 ** -7 * y64.abs().amax(0) + 1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fp8_linear_takes_any_label_count_and_offsets(monkeypatch):
    """The layer function hands largeout's GEMM the weight, bias and label scales as they are:
    a plain [L, H] weight (no padded storage) at an odd L, a bias and scales that are views at
    a 2- or 4-byte offset, and a strided bias (copied, not refused). Same bits as with aligned
    copies, and the float64 product within bf16 rounding."""
    from largeout.nn.fp8 import fp8_linear

    if not _fp8_gemm_configs():
        pytest.skip("largeout's FP8 GEMM needs an sm_90 device (and a build with the 90a target)")
    monkeypatch.setenv("LARGEOUT_FP8_GEMM", "tensor-fast")
    monkeypatch.setenv("LARGEOUT_FP8_KERNEL", "auto")
    gen = torch.Generator().manual_seed(11)
    L, H = 1001, 64
    w = (torch.randn(L, H, generator=gen) / 8).to(torch.float8_e4m3fn).cuda()
    bias = torch.randn(L + 1, generator=gen).to(torch.bfloat16).cuda()[1:]
    scale = torch.ldexp(torch.ones(L + 1), torch.randint(-6, 4, (L + 1,), generator=gen)).cuda()[1:]
    assert bias.data_ptr() % 16 and scale.data_ptr() % 16
    x = (2 * torch.randn(7, H, generator=gen)).cuda()
    strided = torch.empty(2 * L, dtype=torch.bfloat16, device="cuda")[::2]
    strided.copy_(bias)
    assert not strided.is_contiguous()
    with torch.no_grad():
        y = fp8_linear(x, w, bias, scale)
        y_aligned = fp8_linear(x, w, bias.clone(), scale.clone())
        y_strided = fp8_linear(x, w, strided, scale)
    assert y.shape == (7, L) and torch.equal(y, y_aligned) and torch.equal(y_strided, y_aligned)
    sx = x.abs().amax().double() / 448
    x_hat = (x.double() / sx).float().to(torch.float8_e4m3fn).double() * sx
    ws = w.double() * scale.double()[:, None]
    want = (x_hat @ ws.T + bias.double()).cpu()
    mag = (x_hat.abs() @ ws.abs().T).cpu()  # (the fast accumulation's error scales with it)
    assert ((y.double().cpu() - want).abs() <= 2 ** -8 * want.abs() + 2 ** -12 * mag + 1e-6).all()


def test_linear_fp8_recipe_checked(monkeypatch):
    from largeout.nn import Linear

    layer = Linear(64, 200, weight_dtype=torch.float8_e4m3fn)
    x = torch.randn(4, 64)
    monkeypatch.setenv("LARGEOUT_FP8_GEMM", "fastest")
    with pytest.raises(ValueError, match="LARGEOUT_FP8_GEMM must be one of"):
        layer(x)


def test_banked_index_order():
    # The same sets as the sorted order (same generator state), arranged so that runs of 8
    # slots hold distinct residues mod 8 far more often than sorted sets do.
    a = random_group_indices(2000, 768, 128, generator=torch.Generator().manual_seed(1))
    b = random_group_indices(2000, 768, 128, generator=torch.Generator().manual_seed(1), order="banked")
    assert torch.equal(a, b.sort(dim=1).values)

    def mean_distinct_residues(t):
        runs = (t % 8).view(-1, 8).sort(dim=1).values
        return float((1 + (runs[:, 1:] != runs[:, :-1]).sum(1)).double().mean())

    assert mean_distinct_residues(a) < 6.0 < 7.0 < mean_distinct_residues(b)
    # all 128 inputs chosen (16 of each residue): exactly one of each residue per run, slot 8 q + i
    # of residue (i + q) mod 8 (the runs rotated, as in "balanced")
    c = random_group_indices(50, 128, 128, generator=torch.Generator().manual_seed(2), order="banked")
    rot = ((torch.arange(8) + torch.arange(16)[:, None]) % 8).to(torch.int32)
    assert torch.equal((c % 8).view(50, 16, 8), rot.expand(50, 16, 8))


def test_banked_order_computes_the_same_layer():
    # A layer whose indices are permuted within each group, with its weight columns permuted
    # the same way, computes the same y; GroupSparseLinear(index_order="banked") uses that order.
    gen = torch.Generator().manual_seed(3)
    layer = GroupSparseLinear(256, 300, fan_in=64, group_size=32, generator=gen, index_order="banked")
    idx = layer.indices
    assert not bool((idx[:, 1:] > idx[:, :-1]).all())
    order = idx.argsort(dim=1)
    srt = idx.gather(1, order)
    rows = torch.arange(300) // 32
    w_sorted = layer.weight.detach().gather(1, order[rows])
    x = torch.randn(5, 256, generator=gen)
    y = layer(x)
    y_sorted = ref.group_sparse_linear(x, w_sorted, srt, layer.bias.detach(), 32)
    assert rel_err(y, y_sorted) < 1e-5


def test_balanced_index_order():
    # fan_in / 8 inputs of each residue class mod 8 per group, slot 8 q + i of residue
    # (i + q) mod 8, each class's inputs ascending and distinct; every input about equally often
    # (the set is uniform within each class); deterministic for a generator state.
    ng, H = 4000, 96
    for K in (8, 32, 96):
        t = random_group_indices(ng, H, K, generator=torch.Generator().manual_seed(K), order="balanced")
        assert t.dtype == torch.int32 and t.shape == (ng, K)
        runs = torch.arange(K // 8)[:, None]
        res = ((torch.arange(8) + runs) % 8).to(torch.int32)
        assert torch.equal((t % 8).view(ng, K // 8, 8), res.expand(ng, K // 8, 8))
        by_class = t.view(ng, K // 8, 8).gather(2, ((torch.arange(8) - runs) % 8).expand(ng, K // 8, 8))
        assert bool((by_class % 8 == torch.arange(8)).all())
        assert bool((by_class[:, 1:] > by_class[:, :-1]).all()) and int(t.min()) >= 0 and int(t.max()) < H
        counts = torch.bincount(t.view(-1).long(), minlength=H).double()
        expect = ng * K / H
        sd = (ng * (K / H) * (1 - K / H)) ** 0.5
        assert float((counts - expect).abs().max()) <= max(5 * sd, 1e-9)
        again = random_group_indices(ng, H, K, generator=torch.Generator().manual_seed(K), order="balanced")
        assert torch.equal(t, again)
    other = random_group_indices(ng, H, 32, generator=torch.Generator().manual_seed(1), order="balanced")
    assert not torch.equal(other, random_group_indices(ng, H, 32, generator=torch.Generator().manual_seed(2),
                                                       order="balanced"))
    # the module takes it and computes the float64 reference with those indices
    gen = torch.Generator().manual_seed(4)
    layer = GroupSparseLinear(64, 70, fan_in=16, group_size=16, generator=gen, index_order="balanced")
    assert torch.equal((layer.indices % 8).view(-1, 8), torch.tensor([list(range(8)), [1, 2, 3, 4, 5, 6, 7, 0]] * 5,
                                                                     dtype=torch.int32))
    x = torch.randn(3, 64, generator=gen)
    want = ref.group_sparse_linear(x.double(), layer.weight.detach().double(), layer.indices,
                                   layer.bias.detach().double(), 16)
    assert rel_err(layer(x), want) < 1e-5


def test_default_index_order():
    # "balanced" where in_features is a multiple of 8 (the same indices as asking for it), else
    # "sorted"
    a = GroupSparseLinear(64, 100, fan_in=16, group_size=32, generator=torch.Generator().manual_seed(5))
    b = GroupSparseLinear(64, 100, fan_in=16, group_size=32, generator=torch.Generator().manual_seed(5),
                          index_order="balanced")
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weight, b.weight)
    c = GroupSparseLinear(60, 100, fan_in=16, group_size=32, generator=torch.Generator().manual_seed(5))
    assert bool((c.indices[:, 1:] > c.indices[:, :-1]).all())


def test_index_order_errors():
    with pytest.raises(ValueError, match='order must be "sorted", "banked" or "balanced"; got \'random\''):
        random_group_indices(4, 64, 16, order="random")
    with pytest.raises(ValueError, match="order = 'banked' needs fan_in to be a multiple of 8; got fan_in = 12"):
        random_group_indices(4, 64, 12, order="banked")
    with pytest.raises(ValueError, match="order = 'balanced' needs fan_in to be a multiple of 8; got fan_in = 12"):
        random_group_indices(4, 64, 12, order="balanced")
    with pytest.raises(ValueError, match="needs in_features to be a multiple of 8; got in_features = 60"):
        random_group_indices(4, 60, 16, order="balanced")
    # the layer names its own argument
    with pytest.raises(ValueError, match='GroupSparseLinear: index_order must be .* or None; got \'random\''):
        GroupSparseLinear(64, 100, fan_in=16, group_size=32, index_order="random")
    with pytest.raises(ValueError, match='GroupSparseLinear: index_order "balanced" needs in_features to be a '
                                         'multiple of 8; got in_features = 60'):
        GroupSparseLinear(60, 100, fan_in=16, group_size=32, index_order="balanced")


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_fp8_layers_second_derivatives_with_respect_to_the_input():
    # A gradient penalty through an fp8 layer (its weight frozen in the penalty): the dense fp8
    # Linear's backward is made of torch ops, so the second derivative is the bf16 one of its
    # dequantized weight; the group-sparse fp8 layer's dx op has no derivative, so asking for
    # one (create_graph=True) is an error, with .backward() and autograd.grad alike.
    from largeout.nn import Linear

    torch.manual_seed(0)
    lin = Linear(64, 40, weight_dtype=torch.float8_e4m3fn)
    x = torch.randn(3, 64, dtype=torch.bfloat16, requires_grad=True)
    w = lin.weight.float().double() * (1.0 if lin.weight_scale is None else lin.weight_scale.double()[:, None])
    x64 = x.detach().double().requires_grad_(True)
    for inp, f in ((x, lin), (x64, lambda t: t @ w.t() + lin.bias.double())):
        gx, = torch.autograd.grad(f(inp).double().pow(2).sum(), inp, create_graph=True)
        gxx, = torch.autograd.grad(gx.double().pow(2).sum(), inp)
        if inp is x:
            got = gxx
    assert rel_err(got, gxx) < 0.1  # (the forward's e4m3 input, the backward's bf16)
    gs = GroupSparseLinear(64, 40, 16, 16, weight_dtype=torch.float8_e4m3fn)
    for how in ("backward", "grad"):
        with pytest.raises(RuntimeError, match="fp8 weight has no second derivative with respect to its input"):
            y = gs(x).float().pow(2).sum()
            if how == "backward":
                y.backward(create_graph=True)
            else:
                torch.autograd.grad(y, x, create_graph=True)
    x.grad = None
    gs.weight.grad = None
    gs(x).float().sum().backward()  # a first derivative is fine
    assert gs.weight.grad is not None and x.grad is not None
