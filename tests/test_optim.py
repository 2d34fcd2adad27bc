"""largeout.optim.SGD / AdamW: torch.optim's updates for float32 parameters, rounding
behaviour for low-precision ones, and exact resume."""

import copy

import pytest
import torch

import largeout
from largeout import optim as lo_optim
from largeout import reference as ref

from conftest import DEVICES


def params(shape, dtype, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=gen).to(device, dtype))


def grads_for(ps, step, device="cpu"):
    gen = torch.Generator().manual_seed(1000 + step)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen).to(device, p.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["sgd", "sgd-momentum", "sgd-nesterov", "adamw"])
def test_float32_matches_torch_optim(kind, device):
    ours_p = [params((7, 5), torch.float32, 1, device), params((11,), torch.float32, 2, device)]
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    if kind.startswith("sgd"):
        kw = dict(lr=0.1, weight_decay=0.01)
        if kind != "sgd":
            kw.update(momentum=0.9, nesterov=kind == "sgd-nesterov")
        ours, theirs = lo_optim.SGD(ours_p, **kw), torch.optim.SGD(ref_p, **kw)
    else:
        kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
        ours = lo_optim.AdamW(ours_p, state_dtype=torch.float32, **kw)
        theirs = torch.optim.AdamW(ref_p, **kw)
    for step in range(5):
        grads_for(ours_p, step, device)
        grads_for(ref_p, step, device)
        ours.step()
        theirs.step()
    for a, b in zip(ours_p, ref_p):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_nearest_rounding_is_round_to_nearest_of_the_fp32_step(dtype):
    p = params((1000,), dtype, 3)
    start = p.detach().clone()
    opt = lo_optim.SGD([p], lr=0.05, rounding="nearest")
    grads_for([p], 0)
    g = p.grad.detach().clone()
    opt.step()
    expect = (start.double() - 0.05 * g.double()).float().to(dtype)  # fp32 step, then nearest
    assert torch.equal(p.detach(), expect)


def test_small_steps_stochastic_vs_nearest_vs_kahan():
    # Every step is a quarter of an ulp at 1.0 (bf16 ulp there is 2^-7).
    n, steps, upd = 4096, 40, 2.0**-9
    results = {}
    for name, kw in {"nearest": dict(rounding="nearest"), "stochastic": dict(rounding="stochastic"),
                     "kahan": dict(rounding="nearest", kahan=True)}.items():
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = lo_optim.SGD([p], lr=1.0, seed=5, **kw)
        for _ in range(steps):
            p.grad = torch.full((n,), upd, dtype=torch.bfloat16)
            opt.step()
        results[name] = p.detach().double()
    target = 1.0 - steps * upd  # 0.921875
    assert bool((results["nearest"] == 1.0).all()), "nearest rounding drops sub-half-ulp steps"
    assert abs(results["stochastic"].mean().item() - target) < 2e-3
    # Kahan carries what rounding lost: every copy lands within an ulp of the target.
    assert (results["kahan"] - target).abs().max().item() <= 2.0**-7


def test_weight_decay_below_half_an_ulp_still_acts():
    n = 4096
    out = {}
    for rounding in ("nearest", "stochastic"):
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = lo_optim.AdamW([p], lr=1e-3, weight_decay=0.5, rounding=rounding, seed=3)
        for _ in range(20):
            p.grad = torch.zeros(n, dtype=torch.bfloat16)  # decay alone: 5e-4 per step < half an ulp (2^-8)
            opt.step()
        out[rounding] = p.detach().double().mean().item()
    assert out["nearest"] == 1.0
    assert abs(out["stochastic"] - (1 - 5e-4) ** 20) < 2e-3


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_fp8_parameters_stay_on_grid(dtype):
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter((torch.randn(5000, generator=gen) * 0.5).to(dtype), requires_grad=False)
    opt = lo_optim.SGD([p], lr=0.01, momentum=0.9, seed=1)
    for step in range(3):
        p.grad = torch.randn(5000, generator=gen).to(dtype)
        opt.step()
    vals = ref.representable_values(dtype)
    assert bool(torch.isin(p.detach().double(), vals).all())
    assert opt.state[p]["momentum_buffer"].dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_resume_is_bit_identical(kind):
    def make(ps):
        if kind == "sgd":
            return lo_optim.SGD(ps, lr=0.05, momentum=0.9, kahan=True, seed=9)
        return lo_optim.AdamW(ps, lr=1e-2, weight_decay=0.1, seed=9)

    ps = [params((64, 8), torch.bfloat16, 6), params((33,), torch.float16, 7)]
    opt = make(ps)
    for step in range(3):
        grads_for(ps, step)
        opt.step()
    saved_params = [p.detach().clone() for p in ps]
    saved_state = copy.deepcopy(opt.state_dict())
    for step in range(3, 6):
        grads_for(ps, step)
        opt.step()
    straight = [p.detach().clone() for p in ps]

    ps2 = [torch.nn.Parameter(t.clone()) for t in saved_params]
    opt2 = make(ps2)
    opt2.load_state_dict(saved_state)
    for step in range(3, 6):
        grads_for(ps2, step)
        opt2.step()
    for a, b in zip(straight, ps2):
        assert a.dtype == b.dtype
        assert torch.equal(a.view(torch.int16), b.detach().view(torch.int16))


def test_bad_arguments():
    p = [params((3,), torch.bfloat16, 1)]
    with pytest.raises(ValueError, match='rounding must be "stochastic" or "nearest"'):
        lo_optim.SGD(p, lr=0.1, rounding="up")
    with pytest.raises(ValueError, match="lr must be >= 0"):
        lo_optim.SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        lo_optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="state_dtype must be"):
        lo_optim.AdamW(p, state_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="betas must be in"):
        lo_optim.AdamW(p, betas=(1.0, 0.9))
    with pytest.raises(TypeError, match="parameters must be floating point"):
        lo_optim.SGD([torch.zeros(3, dtype=torch.int32)], lr=0.1)
