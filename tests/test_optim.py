"""largeout.optim.SGD / AdamW: torch.optim's updates for float32 parameters, rounding
behaviour for low-precision ones, and exact resume."""

import copy
import warnings
import math

import numpy as np
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


def step_both_and_compare(ours, theirs, ours_p, ref_p, device, steps):
    """`steps` steps of both optimizers on the same gradients; the parameters must agree."""
    for step in range(steps):
        grads_for(ours_p, step, device)
        grads_for(ref_p, step, device)
        ours.step()
        theirs.step()
    for a, b in zip(ours_p, ref_p):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["sgd", "sgd-momentum", "sgd-nesterov", "adamw"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_float32_matches_torch_optim(kind, device, fused):
    ours_p = [params((7, 5), torch.float32, 1, device), params((11,), torch.float32, 2, device)]
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    if kind.startswith("sgd"):
        kw = dict(lr=0.1, weight_decay=0.01)
        if kind != "sgd":
            kw.update(momentum=0.9, nesterov=kind == "sgd-nesterov")
        ours, theirs = lo_optim.SGD(ours_p, fused=fused, **kw), torch.optim.SGD(ref_p, **kw)
    else:
        kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
        ours = lo_optim.AdamW(ours_p, state_dtype=torch.float32, fused=fused, **kw)
        theirs = torch.optim.AdamW(ref_p, **kw)
    step_both_and_compare(ours, theirs, ours_p, ref_p, device, 5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["sgd", "sgd-momentum", "adamw"])
def test_a_parameter_listed_twice_is_updated_once_per_listing(kind, device):
    # torch.optim warns about a duplicated parameter and updates it once per listing, in turn;
    # the fused step does the same (never both listings in one launch, which would race):
    # against torch.optim where it does the same thing (for SGD with momentum torch.optim gives
    # each listing a fresh buffer on the first step, so there against the reference path,
    # which steps the listings in turn). torch.optim's one-tensor-at-a-time loop (foreach=False):
    # on CUDA its default foreach step takes both listings in one launch, and on the H100
    # (session 36) its values differed from the listings' updates in turn.
    ours_p = [params((300,), torch.float32, 21, device), params((7, 3), torch.float32, 22, device)]
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.optim's warning about the duplicate)
        if kind == "adamw":
            kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
            ours = lo_optim.AdamW([ours_p[0], ours_p[1], ours_p[0]], state_dtype=torch.float32, **kw)
            theirs = torch.optim.AdamW([ref_p[0], ref_p[1], ref_p[0]], foreach=False, **kw)
        else:
            kw = dict(lr=0.1, momentum=0.9 if kind == "sgd-momentum" else 0.0, weight_decay=0.01)
            ours = lo_optim.SGD([ours_p[0], ours_p[1], ours_p[0]], **kw)
            theirs = (torch.optim.SGD([ref_p[0], ref_p[1], ref_p[0]], foreach=False, **kw) if kind == "sgd" else
                      lo_optim.SGD([ref_p[0], ref_p[1], ref_p[0]], fused=False, **kw))
    step_both_and_compare(ours, theirs, ours_p, ref_p, device, 4)
    if kind == "adamw":
        assert float(ours.state[ours_p[0]]["step"]) == 8 and float(ours.state[ours_p[1]]["step"]) == 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("step_form", ["tensor", "number", "float64"])
def test_adamw_step_counts_per_tensor(device, step_form):
    # Tensors of one group at different step counts (one skipped on some steps: its grad is
    # None, as torch.optim.AdamW skips it too) each get their own bias correction, and each
    # state's count is the number of its updates; a loaded state whose counts are plain
    # numbers or float64 tensors (older checkpoints) continues the same way.
    ours_p = [params((9, 4), torch.float32, 11 + i, device) for i in range(5)]
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    kw = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05)
    ours = lo_optim.AdamW(ours_p, state_dtype=torch.float32, **kw)
    theirs = torch.optim.AdamW(ref_p, **kw)
    skipped = {1: {0, 3}, 2: {3}, 4: {1, 2, 3}}
    updates = [0] * len(ours_p)
    for step in range(7):
        if step == 3:
            sd = ours.state_dict()
            for st in sd["state"].values():
                if step_form == "number":
                    st["step"] = float(st["step"])
                elif step_form == "float64":
                    st["step"] = st["step"].double()
            ours = lo_optim.AdamW(ours_p, state_dtype=torch.float32, **kw)
            ours.load_state_dict(sd)
        for ps in (ours_p, ref_p):
            grads_for(ps, step, device)
            for i in skipped.get(step, ()):
                ps[i].grad = None
        for i in range(len(ours_p)):
            updates[i] += i not in skipped.get(step, ())
        ours.step()
        theirs.step()
    for i, (a, b) in enumerate(zip(ours_p, ref_p)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (i, (a - b).abs().max())
        assert float(ours.state[a]["step"]) == updates[i] == float(theirs.state[b]["step"])
    assert len(set(updates)) > 2  # (the test's premise: several counts in one group)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_nearest_rounding_is_round_to_nearest_of_the_fp32_step(dtype, fused):
    p = params((1000,), dtype, 3)
    start = p.detach().clone()
    opt = lo_optim.SGD([p], lr=0.05, rounding="nearest", fused=fused)
    grads_for([p], 0)
    g = p.grad.detach().clone()
    opt.step()
    expect = (start.double() - 0.05 * g.double()).float().to(dtype)  # fp32 step, then nearest
    assert torch.equal(p.detach(), expect)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_small_steps_stochastic_vs_nearest_vs_kahan(fused):
    # Every step is a quarter of an ulp at 1.0 (bf16 ulp there is 2^-7).
    n, steps, upd = 4096, 40, 2.0**-9
    results = {}
    for name, kw in {"nearest": dict(rounding="nearest"), "stochastic": dict(rounding="stochastic"),
                     "kahan": dict(rounding="nearest", kahan=True)}.items():
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = lo_optim.SGD([p], lr=1.0, seed=5, fused=fused, **kw)
        for _ in range(steps):
            p.grad = torch.full((n,), upd, dtype=torch.bfloat16)
            opt.step()
        results[name] = p.detach().double()
    target = 1.0 - steps * upd  # 0.921875
    assert bool((results["nearest"] == 1.0).all()), "nearest rounding drops sub-half-ulp steps"
    assert abs(results["stochastic"].mean().item() - target) < 2e-3
    # Kahan carries what rounding lost: every copy lands within an ulp of the target.
    assert (results["kahan"] - target).abs().max().item() <= 2.0**-7


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_weight_decay_below_half_an_ulp_still_acts(fused):
    n = 4096
    out = {}
    for rounding in ("nearest", "stochastic"):
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = lo_optim.AdamW([p], lr=1e-3, weight_decay=0.5, rounding=rounding, seed=3, fused=fused)
        for _ in range(20):
            p.grad = torch.zeros(n, dtype=torch.bfloat16)  # decay alone: 5e-4 per step < half an ulp (2^-8)
            opt.step()
        out[rounding] = p.detach().double().mean().item()
    assert out["nearest"] == 1.0
    assert abs(out["stochastic"] - (1 - 5e-4) ** 20) < 2e-3


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_fp8_parameters_stay_on_grid(dtype, fused):
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter((torch.randn(5000, generator=gen) * 0.5).to(dtype), requires_grad=False)
    opt = lo_optim.SGD([p], lr=0.01, momentum=0.9, seed=1, fused=fused)
    for step in range(3):
        p.grad = torch.randn(5000, generator=gen).to(dtype)
        opt.step()
    vals = ref.representable_values(dtype)
    assert bool(torch.isin(p.detach().double(), vals).all())
    assert opt.state[p]["momentum_buffer"].dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_resume_is_bit_identical(kind, fused):
    def make(ps):
        if kind == "sgd":
            return lo_optim.SGD(ps, lr=0.05, momentum=0.9, kahan=True, seed=9, fused=fused)
        return lo_optim.AdamW(ps, lr=1e-2, weight_decay=0.1, seed=9, fused=fused)

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
    for st, st2 in zip(opt.state.values(), opt2.state.values()):  # state keeps its own dtypes
        assert {k: v.dtype for k, v in st.items()} == {k: v.dtype for k, v in st2.items()}


def test_bad_arguments():
    p = [params((3,), torch.bfloat16, 1)]
    with pytest.raises(ValueError, match='rounding must be "stochastic" or "nearest"'):
        lo_optim.SGD(p, lr=0.1, rounding="up")
    with pytest.raises(ValueError, match=r"lr must be a finite number in \[0, inf\); got -1.0"):
        lo_optim.SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        lo_optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="state_dtype must be"):
        lo_optim.AdamW(p, state_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"betas\[0\] must be a finite number in \[0, 1\); got 1.0"):
        lo_optim.AdamW(p, betas=(1.0, 0.9))
    with pytest.raises(TypeError, match="parameters must be floating point"):
        lo_optim.SGD([torch.zeros(3, dtype=torch.int32)], lr=0.1)
    for kwargs, err, pattern in [
        (dict(lr=float("nan")), ValueError, "lr must be a finite number"),
        (dict(lr="0.1"), TypeError, "lr must be a real number; got str"),
        (dict(weight_decay=float("inf")), ValueError, "weight_decay must be a finite number"),
        (dict(betas=(0.9, 0.99, 0.999)), ValueError, "betas must be a pair"),
        (dict(betas=(0.9,)), ValueError, "betas must be a pair"),
        (dict(eps=0.0), ValueError, r"eps must be a finite number in \(0, inf\)"),
        (dict(seed="a"), TypeError, "seed must be an int or None; got str"),
        (dict(seed=1.5), TypeError, "seed must be an int or None; got float"),
    ]:
        with pytest.raises(err, match=pattern):
            lo_optim.AdamW(p, **kwargs)
    with pytest.raises(ValueError, match="momentum must be a finite number"):
        lo_optim.SGD(p, lr=0.1, momentum=float("nan"))


def test_hyperparameters_of_other_numeric_types():
    # what torch.optim takes: numpy scalars, one-element tensors, a betas array; kept as given
    import numpy as np

    p = [params((4,), torch.bfloat16, 1)]
    p[0].grad = torch.randn(4, dtype=torch.bfloat16)
    adamw = lo_optim.AdamW(p, lr=np.float32(0.1), betas=np.array([0.9, 0.99]), eps=torch.tensor(1e-8),
                           seed=np.int64(3))
    sgd = lo_optim.SGD(p, lr=torch.tensor(0.1), momentum=np.float64(0.9), nesterov=np.bool_(True))
    assert adamw.param_groups[0]["betas"] == (0.9, 0.99)
    adamw.step()
    sgd.step()
    adamw.load_state_dict(adamw.state_dict())
    for bad in (dict(lr=np.bool_(True)), dict(lr=torch.tensor([0.1, 0.2])), dict(lr=1 + 2j)):
        with pytest.raises(TypeError, match="lr must be a real number"):
            lo_optim.AdamW(p, **bad)


@pytest.mark.parametrize("bad", [dict(lr=-5.0), dict(rounding="up"), dict(kahan=1), dict(momentum=-0.5),
                                 dict(params=[torch.zeros(2, dtype=torch.int64)])])
def test_add_param_group_checks_and_adds_nothing_on_failure(bad):
    opt = lo_optim.SGD([params((3,), torch.bfloat16, 1)], lr=0.1)
    before = [dict(g) for g in opt.param_groups]
    group = {"params": [params((4,), torch.bfloat16, 2)], **bad}
    with pytest.raises((TypeError, ValueError)):
        opt.add_param_group(group)
    assert len(opt.param_groups) == len(before) == 1
    opt.add_param_group({"params": [params((4,), torch.bfloat16, 2)], "lr": 0.5})  # a valid one still goes in
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]


@pytest.mark.parametrize("fused", [True, False])
def test_a_step_that_fails_changes_nothing(fused):
    # The step checks every parameter, gradient and state tensor before it writes any: a later
    # parameter the step cannot take leaves the earlier ones, their state and the step count as they were.
    a = params((5,), torch.bfloat16, 1)
    a.grad = torch.randn(5, dtype=torch.bfloat16)
    opt = lo_optim.AdamW([a], lr=0.1, fused=fused)
    opt.step()
    snap = (a.detach().clone(), {k: v.clone() for k, v in opt.state[a].items()}, opt.state_dict()["largeout_rng_state"])
    bf = dict(dtype=torch.bfloat16)
    cases = [(torch.randn(6, **bf), torch.randn(6, **bf).to_sparse(), "sparse gradients are not supported", None),
             (torch.randn(6, **bf), torch.randn(7, **bf),  # (torch refuses such a grad: set before .data changes)
              r"the gradient of parameter 0 of its group \(shape \(6,\), torch.bfloat16\) must have its shape", None),
             (torch.randn(6, **bf), torch.randn(6, **bf), r"state 'exp_avg' of parameter 0 of its group \(shape "
              r"\(6,\), torch.bfloat16\) must have its shape and device; got \(5,\)",
              {"exp_avg": torch.zeros(5, **bf), "exp_avg_sq": torch.zeros(6, **bf), "step": torch.tensor(1.0)})]
    # a loaded state the fused op cannot take (a float64 moment), found before the first group's update
    loaded = {"exp_avg": torch.zeros(6, dtype=torch.float64), "exp_avg_sq": torch.zeros(6, **bf),
              "step": torch.tensor(1.0)}
    if fused:
        cases += [(torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64),
                   "fused=False takes any float dtype", None),
                  (torch.randn(4, 6, **bf).t(), torch.randn(6, 4, **bf), "the fused step needs contiguous parameters",
                   None),
                  (torch.randn(6, **bf), torch.randn(6, **bf),
                   "states 'exp_avg' and 'exp_avg_sq' of .* must share a dtype", loaded),
                  (torch.randn(2, 3, **bf), torch.randn(2, 3, **bf),
                   r"state 'exp_avg_sq' of parameter 0 .* must be contiguous for the fused step",
                   {"exp_avg": torch.zeros(2, 3, **bf), "exp_avg_sq": torch.zeros(3, 2, **bf).t(),
                    "step": torch.tensor(1.0)}),
                  (torch.randn(6, **bf), torch.randn(6, **bf),
                   r"state 'kahan_comp' of parameter 0 .* must be torch.bfloat16; got torch.float32",
                   {**loaded, "exp_avg": torch.zeros(6, **bf), "kahan_comp": torch.zeros(6)}, {"kahan": True})]
    for value, grad, pattern, state, *group in cases:
        b = torch.nn.Parameter(value if grad.shape == value.shape else torch.empty_like(grad))
        b.grad = grad
        b.data = value
        opt.add_param_group({"params": [b], **(group[0] if group else {})})
        if state is not None:
            opt.state[b] = dict(state)
        with pytest.raises((TypeError, RuntimeError), match=pattern):
            opt.step()
        assert torch.equal(a.detach(), snap[0])
        assert all(torch.equal(v, snap[1][k]) for k, v in opt.state[a].items())
        assert torch.equal(opt.state_dict()["largeout_rng_state"], snap[2])
        assert b not in opt.state or not opt.state[b] or opt.state[b]["step"] == 1.0
        opt.state.pop(b, None)
        opt.param_groups.pop()


@pytest.mark.parametrize("case", ["fresh-sparse", "state-shape", "number-counts", "second-dtype"])
def test_a_fused_step_whose_op_refuses_changes_nothing(case):
    # The fused step leaves its checks to the native op (one launch checks all its arguments
    # before it writes; several are all checked before the first writes). When the op refuses,
    # the step puts back what it prepared: no state is created, step counts and the generator
    # are as they were, and the error names the parameter as the optimizer sees it.
    bf = dict(dtype=torch.bfloat16)
    a = params((5,), torch.bfloat16, 1)
    b = params((6,), torch.bfloat16 if case != "second-dtype" else torch.float16, 2)
    a.grad, b.grad = torch.randn(5, **bf), torch.randn(6, dtype=b.dtype)
    opt = lo_optim.AdamW([a, b], lr=0.1)
    if case != "fresh-sparse":
        opt.step()
    if case == "number-counts":  # (an older checkpoint's counts: plain numbers, advanced on the slow path)
        for st in opt.state.values():
            st["step"] = float(st["step"])
    snap = {p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
            for p in (a, b) if p in opt.state}
    values, rng = (a.detach().clone(), b.detach().clone()), opt.state_dict()["largeout_rng_state"]
    if case == "fresh-sparse":
        b.grad = b.grad.to_sparse()
        pattern = "sparse gradients are not supported; parameter 1 of its group"
    elif case in ("state-shape", "number-counts"):
        opt.state[b]["exp_avg"] = torch.zeros(7, **bf)
        pattern = r"state 'exp_avg' of parameter 1 of its group \(shape \(6,\), torch.bfloat16\) must have its shape"
    else:  # b is fp16, so its own launch, after a's: a's update must not have happened
        opt.state[b]["exp_avg"] = opt.state[b]["exp_avg"].double()
        pattern = "states 'exp_avg' and 'exp_avg_sq' of parameter 1 of its group .* must share a dtype"
    with pytest.raises((RuntimeError, TypeError), match=pattern) as err:
        opt.step()
    assert err.value.__suppress_context__  # (the message is ours alone: not shown after the op's)
    assert torch.equal(a.detach().view(torch.int16), values[0].view(torch.int16))
    assert torch.equal(b.detach().view(torch.int16), values[1].view(torch.int16))
    assert torch.equal(opt.state_dict()["largeout_rng_state"], rng)
    assert set(p for p in (a, b) if p in opt.state) == set(snap)
    for p, st in snap.items():
        got = opt.state[p]
        assert float(got["step"]) == float(st["step"]) == 1.0 and type(got["step"]) is type(st["step"])
        for k in ("exp_avg_sq",):
            assert torch.equal(got[k], st[k])
    # once mended, the step runs and advances every count by one
    if case == "fresh-sparse":
        b.grad = b.grad.to_dense()
    else:
        opt.state[b]["exp_avg"] = torch.zeros(6, **bf)
    opt.step()
    assert [float(opt.state[p]["step"]) for p in (a, b)] == [2.0 if snap else 1.0] * 2
    assert not torch.equal(a.detach().view(torch.int16), values[0].view(torch.int16))


@pytest.mark.parametrize("shared", ["count", "state"])
def test_adamw_count_shared_across_groups_advances_once_per_group(shared):
    # One step count (or one whole state) shared by parameters of two groups advances once per
    # group, the second group seeing the first's advance, as in torch.optim's group-by-group step.
    ours_p = [params((7,), torch.float32, 60 + i) for i in range(2)]
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    kw = dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.05)
    ours = lo_optim.AdamW([{"params": [ours_p[0]]}, {"params": [ours_p[1]]}], state_dtype=torch.float32, **kw)
    theirs = torch.optim.AdamW([{"params": [ref_p[0]]}, {"params": [ref_p[1]]}], foreach=False, **kw)
    for step in range(4):
        grads_for(ours_p, step)
        grads_for(ref_p, step)
        if step == 1:
            for opt, ps in ((ours, ours_p), (theirs, ref_p)):
                if shared == "count":
                    opt.state[ps[1]]["step"] = opt.state[ps[0]]["step"]
                else:
                    opt.state[ps[1]] = opt.state[ps[0]]
        ours.step()
        theirs.step()
    for a, b in zip(ours_p, ref_p):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
    assert float(ours.state[ours_p[1]]["step"]) == float(theirs.state[ref_p[1]]["step"]) == 7.0


def test_shared_count_step_errors_name_the_parameter_and_change_nothing():
    # The group-by-group step (a count shared across groups) checks in Python first: a bad
    # state is reported as ours alone, and nothing changes.
    a, b = params((5,), torch.bfloat16, 72), params((6,), torch.bfloat16, 73)
    opt = lo_optim.AdamW([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.randn(5, dtype=torch.bfloat16), torch.randn(6, dtype=torch.bfloat16)
    opt.step()
    opt.state[b]["step"] = opt.state[a]["step"]
    opt.state[b]["exp_avg"] = torch.zeros(7, dtype=torch.bfloat16)
    before, rng = a.detach().clone(), opt.state_dict()["largeout_rng_state"]
    with pytest.raises(RuntimeError, match="state 'exp_avg' of parameter 0 of its group") as err:
        opt.step()
    assert err.value.__suppress_context__ or err.value.__context__ is None
    assert torch.equal(a.detach().view(torch.int16), before.view(torch.int16))
    assert float(opt.state[a]["step"]) == 1.0 and torch.equal(opt.state_dict()["largeout_rng_state"], rng)


@pytest.mark.parametrize("case", ["momentum-none", "adamw-moments-without-count"])
def test_fused_step_starts_missing_state_as_the_reference_does(case):
    # Loaded states the step must start afresh: a momentum buffer stored as None (older
    # torch.optim checkpoints), and AdamW moments without a step count (the moments start
    # again with the count, as in the reference path).
    a = [params(s, torch.bfloat16, 80 + i) for i, s in enumerate(SIZES)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    make = (lambda ps, f: lo_optim.SGD(ps, lr=1e-2, momentum=0.9, rounding="nearest", fused=f)) \
        if case == "momentum-none" else (lambda ps, f: lo_optim.AdamW(ps, lr=1e-2, rounding="nearest", fused=f))
    oa, ob = make(a, True), make(b, False)
    for o, ps in ((oa, a), (ob, b)):
        for p in ps:
            o.state[p] = {"momentum_buffer": None} if case == "momentum-none" else \
                {"exp_avg": torch.full(p.shape, -5.0, dtype=torch.bfloat16),
                 "exp_avg_sq": torch.ones(p.shape, dtype=torch.bfloat16)}
    grads_for(a, 0)
    grads_for(b, 0)
    oa.step()
    ob.step()
    assert_within_two_ulps(a, b, torch.bfloat16)
    for p, q in zip(a, b):
        assert {k: torch.as_tensor(v).float() for k, v in oa.state[p].items()}.keys() == ob.state[q].keys()


def test_a_device_error_after_a_launch_wrote_still_advances_the_counts(monkeypatch):
    # Two launches (two dtypes); the second fails as a device error would, after the first wrote:
    # that error is raised as it is, and every step count advances, as the counts of the updated
    # parameters must.
    a, b = params((5,), torch.bfloat16, 70), params((6,), torch.float16, 71)
    a.grad, b.grad = torch.randn(5, dtype=torch.bfloat16), torch.randn(6, dtype=torch.float16)
    opt = lo_optim.AdamW([a, b], lr=0.1)
    opt.step()
    before = a.detach().clone()
    real, calls = torch.ops.largeout._fused_optim_step_, []

    def failing(*args):
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("simulated device error")
        return real(*args)
    monkeypatch.setattr(torch.ops.largeout, "_fused_optim_step_", failing)
    with pytest.raises(RuntimeError, match="simulated device error"):
        opt.step()
    assert not torch.equal(a.detach().view(torch.int16), before.view(torch.int16))
    assert [float(opt.state[p]["step"]) for p in (a, b)] == [2.0, 2.0]


def test_load_state_dict_checks_before_replacing():
    a = params((5,), torch.bfloat16, 1)
    a.grad = torch.randn(5, dtype=torch.bfloat16)
    opt = lo_optim.AdamW([a], lr=0.1)
    opt.step()
    good = opt.state_dict()
    snap = ({k: v.clone() for k, v in opt.state[a].items()}, dict(opt.param_groups[0]),
            good["largeout_rng_state"].clone())

    def unchanged():
        assert all(torch.equal(v, snap[0][k]) for k, v in opt.state[a].items())
        assert opt.param_groups[0]["lr"] == snap[1]["lr"] and opt.param_groups[0]["betas"] == snap[1]["betas"]
        assert torch.equal(opt.state_dict()["largeout_rng_state"], snap[2])

    bad_rng = {**good, "largeout_rng_state": torch.zeros(3, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="largeout_rng_state is not a CPU generator state"):
        opt.load_state_dict(bad_rng)
    unchanged()
    two = {**good, "param_groups": [good["param_groups"][0], {**good["param_groups"][0], "params": []}]}
    with pytest.raises(ValueError, match="state_dict has 2 parameter groups; the optimizer has 1"):
        opt.load_state_dict(two)
    unchanged()
    more = {**good, "param_groups": [{**good["param_groups"][0], "params": [0, 1]}]}
    with pytest.raises(ValueError, match="parameter group 0 of state_dict has 2 parameters; the optimizer's has 1"):
        opt.load_state_dict(more)
    unchanged()
    bad_group = {**good, "param_groups": [{**good["param_groups"][0], "lr": -1.0}]}
    with pytest.raises(ValueError, match="lr must be a finite number"):
        opt.load_state_dict(bad_group)
    unchanged()
    pid = good["param_groups"][0]["params"][0]
    bad_state = {**good, "state": {pid: {**good["state"][pid], "exp_avg": torch.zeros(7, dtype=torch.bfloat16)}}}
    with pytest.raises(ValueError, match="state 'exp_avg' of parameter .* has shape \\(7,\\)"):
        opt.load_state_dict(bad_state)
    unchanged()
    # state the fused step would reject only at the next step, after the good state was gone
    wide = {**good, "state": {pid: {**good["state"][pid], "exp_avg": good["state"][pid]["exp_avg"].double(),
                                    "exp_avg_sq": good["state"][pid]["exp_avg_sq"].double()}}}
    with pytest.raises(TypeError, match="'exp_avg' and 'exp_avg_sq' .* share a dtype .* got torch.float64.*fused=False"):
        opt.load_state_dict(wide)
    unchanged()
    half = {**good, "state": {pid: {k: v for k, v in good["state"][pid].items() if k != "exp_avg_sq"}}}
    with pytest.raises(ValueError, match="has 'exp_avg' but not 'exp_avg_sq'"):
        opt.load_state_dict(half)
    unchanged()
    for step in ("3", -1.0, float("nan"), torch.tensor(-2.0)):
        with pytest.raises(ValueError, match="state 'step' of parameter id .* must be a count >= 0"):
            opt.load_state_dict({**good, "state": {pid: {**good["state"][pid], "step": step}}})
        unchanged()
    orphan = {**good, "state": {**good["state"], 7: dict(good["state"][pid])}}
    with pytest.raises(ValueError, match="state for parameter ids \\[7\\], which no parameter group"):
        opt.load_state_dict(orphan)
    unchanged()
    with pytest.raises(TypeError, match="state_dict must be a mapping .* got list"):
        opt.load_state_dict([1, 2])
    unchanged()
    opt.load_state_dict(good)  # the good one loads
    unchanged()


@pytest.mark.parametrize("fused", [True, False])
def test_load_state_dict_of_another_dtype_keeps_the_state_until_checked(fused):
    # A float32 run's SGD state into a bf16 run's optimizer: the fused step takes only bf16
    # momentum for a bf16 parameter, so the load fails and the bf16 buffer stays; fused=False
    # takes any float dtype.
    w32 = params((6,), torch.float32, 3)
    w32.grad = torch.randn(6)
    src = lo_optim.SGD([w32], lr=0.1, momentum=0.9)
    src.step()
    ckpt = src.state_dict()
    wb = params((6,), torch.bfloat16, 4)
    wb.grad = torch.randn(6, dtype=torch.bfloat16)
    opt = lo_optim.SGD([wb], lr=0.1, momentum=0.9, fused=fused)
    opt.step()
    buf = opt.state[wb]["momentum_buffer"]
    before = buf.clone()
    if fused:
        with pytest.raises(TypeError, match="'momentum_buffer' .* must be torch.bfloat16; got torch.float32"):
            opt.load_state_dict(ckpt)
        assert opt.state[wb]["momentum_buffer"] is buf and torch.equal(buf, before)
    else:
        opt.load_state_dict(ckpt)
        assert opt.state[wb]["momentum_buffer"].dtype == torch.float32


@pytest.mark.parametrize("fused", [True, False])
def test_step_checks_hyperparameters_changed_after_construction(fused):
    # A learning-rate scheduler (or a user) writes param_groups between steps: the step checks
    # them as the constructor does, names the group, and changes nothing on an error.
    w = params((8,), torch.bfloat16, 5)
    w.grad = torch.randn(8, dtype=torch.bfloat16)
    sgd = lo_optim.SGD([w], lr=0.1, momentum=0.9, fused=fused)
    sgd.step()
    snap = w.detach().clone(), sgd.state[w]["momentum_buffer"].clone(), sgd._gen.get_state()
    def refused(field):
        with pytest.raises((ValueError, TypeError), match=f"{field}.*param_groups\\[0\\]"):
            sgd.step()
        assert torch.equal(w.detach(), snap[0]) and torch.equal(sgd.state[w]["momentum_buffer"], snap[1])
        assert torch.equal(sgd._gen.get_state(), snap[2])

    torch.optim.lr_scheduler.LambdaLR(sgd, lambda epoch: -1.0)  # lr becomes -0.1
    assert sgd.param_groups[0]["lr"] < 0
    refused("lr")
    sgd.param_groups[0]["lr"] = 0.1
    for field, value in (("lr", float("nan")), ("momentum", -0.5), ("rounding", "floor"), ("nesterov", 1),
                         ("lr", "0.1")):
        old = sgd.param_groups[0][field]
        sgd.param_groups[0][field] = value
        refused(field)
        sgd.param_groups[0][field] = old
    sgd.step()  # valid again: it steps
    assert not torch.equal(w.detach(), snap[0])
    a = params((8,), torch.bfloat16, 6)
    a.grad = torch.randn(8, dtype=torch.bfloat16)
    adam = lo_optim.AdamW([a], lr=0.1, fused=fused)
    before = a.detach().clone()
    for field, value in (("eps", 0.0), ("betas", (0.9, 1.0)), ("betas", (0.9,)), ("state_dtype", torch.float64)):
        group = {**adam.param_groups[0]}
        adam.param_groups[0][field] = value
        with pytest.raises(ValueError, match=f"{field}.*param_groups\\[0\\]"):
            adam.step()
        assert torch.equal(a.detach(), before) and not adam.state
        adam.param_groups[0].update(group)
    adam.step()  # valid again: it steps
    assert not torch.equal(a.detach(), before)


def test_seed_out_of_range():
    with pytest.raises(ValueError, match="seed must be in \\[0, 2\\*\\*64\\) or None; got -1"):
        lo_optim.SGD([params((2,), torch.bfloat16, 0)], lr=0.1, seed=-1)
    with pytest.raises(ValueError, match="seed must be in"):
        lo_optim.AdamW([params((2,), torch.bfloat16, 0)], seed=2**70)


# -- the fused step -------------------------------------------------------------------------

LOW = [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]


def _fp32_probe_values(dtype, n, seed):
    """float32 values that stress a format: random bit patterns (NaN, inf, subnormals
    included), the format's grid points and midpoints, and points just off them."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, generator=gen)
    grid = ref.representable_values(dtype).float()
    grid = grid[torch.isfinite(grid)]
    mids = (grid[1:].double() + grid[:-1].double()) / 2
    near = torch.cat([grid, mids.float(), torch.nextafter(grid, grid + 1), torch.nextafter(grid, grid - 1)])
    big = torch.tensor([torch.finfo(dtype).max * f for f in (0.999, 1.0, 1.001, 1.07, 2.0)], dtype=torch.float32)
    return torch.cat([bits.view(torch.float32), near, -near, big, -big,
                      torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-45])])


def _threshold_rnd(x, dtype):
    """For each x, the random words on either side of its rounding decision: rnd < T rounds
    away from zero, with T = ceil(frac * 2^32) and frac the position of |x| between its two
    neighbours (the specification's test); (T - 1, T) as int32 words (0 where x is not
    finite or is beyond the largest finite value)."""
    fi = torch.finfo(dtype)
    mant = {torch.bfloat16: 7, torch.float16: 10, torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}[dtype]
    a = x.double().abs()
    ok = torch.isfinite(a) & (a < fi.max)
    a = torch.where(ok, a, torch.zeros_like(a))
    e = torch.floor(torch.log2(torch.where(a > 0, a, torch.ones_like(a))))
    e = torch.maximum(e, torch.full_like(e, math.log2(fi.smallest_normal)))
    t = a / torch.exp2(e - mant)  # exact: a power-of-two scaling of an fp32 value
    t = torch.where(t >= 2 ** (mant + 1), t / 2, t)  # (should log2 round a value just below a power of two up)
    T = torch.ceil((t - torch.floor(t)) * 2.0**32).long()
    T = torch.where(ok, T, torch.zeros_like(T))
    words = [((T - 1).clamp(0, 2**32 - 1)), T.clamp(0, 2**32 - 1)]
    return [torch.where(w >= 2**31, w - 2**32, w).to(torch.int32) for w in words]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_integer_rounding_rule_matches_its_specification(dtype, device):
    # (on CUDA tensors the hook also checks the device's group rounding, as the optimizers
    # store 8 values at a time, against the specification)
    x = _fp32_probe_values(dtype, 200_000, 11)
    gen = torch.Generator().manual_seed(12)
    for rnd in (torch.randint(-(2**31), 2**31 - 1, x.shape, dtype=torch.int32, generator=gen),
                torch.zeros_like(x, dtype=torch.int32), torch.full_like(x, -1, dtype=torch.int32),
                torch.full_like(x, -(2**31), dtype=torch.int32), torch.full_like(x, 1 << 16, dtype=torch.int32),
                *_threshold_rnd(x, dtype)):
        assert torch.ops.largeout._sr_rule_mismatches(x.to(device), rnd.to(device), dtype) == 0


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_rounding_thresholds_are_the_decision_points(dtype):
    # _threshold_rnd's T is ceil(frac * 2^32) with frac = (|x| - |toward|) / (|away| - |toward|)
    # from the reference's neighbours, so that T - 1 < frac * 2^32 <= T: the words on either
    # side of each decision (the tests above probe every rounding's exact boundary).
    x = _fp32_probe_values(dtype, 20_000, 31)
    x = x[torch.isfinite(x) & (x.abs() < torch.finfo(dtype).max)]
    toward, away = ref.rounding_neighbours(x, dtype)
    between = toward != away
    assert between.sum() > 1000
    frac = (x.double().abs() - toward.abs()) / (away.abs() - toward.abs())
    want = torch.ceil(frac[between] * 2.0**32).long()
    below, at = (w.long() % 2**32 for w in _threshold_rnd(x, dtype))
    assert torch.equal(at[between], want)
    assert torch.equal(below[between], (want - 1).clamp(min=0))
    assert torch.equal(at[~between], torch.zeros_like(at[~between]))  # representable: frac 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_group_rounding_fast_paths_match_the_rule(dtype, device):
    """The optimizers round 8 values at a time, bf16 with a fast path for groups whose
    magnitudes all lie below its largest finite value, and on the GPU fp8 with one for
    groups of finite values (exact fp32 arithmetic and the hardware's conversion, which
    saturates): probe values in groups below the largest finite value, groups with one value
    outside (large, inf or NaN), and groups of finite values from the largest finite value
    up to fp32's (where the fp8 path's (lo + 1) * ulp can overflow to inf), at random words
    and at the words on either side of each value's rounding decision."""
    x = _fp32_probe_values(dtype, 200_000, 21)
    inside = x[x.abs() < torch.finfo(dtype).max]  # (NaN compares false: outside)
    gen = torch.Generator().manual_seed(22)
    inside = inside[torch.randperm(inside.numel(), generator=gen)]
    inside = inside[: inside.numel() // 8 * 8]
    mixed = inside.clone().reshape(-1, 8)
    mixed[::3, 5] = x[torch.randint(0, x.numel(), (mixed[::3].shape[0],), generator=gen)]  # some groups leave the range
    fmax, f32max = torch.finfo(dtype).max, torch.finfo(torch.float32).max
    edges = torch.tensor([fmax, fmax * (1 + 2.0**-20), fmax * 1.07, 2.0**127, 1.9 * 2.0**127, f32max], dtype=torch.float32)
    span = torch.exp2(math.log2(fmax) + (128 - math.log2(fmax)) * torch.rand(4_000, generator=gen, dtype=torch.float64))
    large = torch.cat([edges, torch.nextafter(edges, torch.zeros_like(edges)), span.float().clamp(max=f32max)])
    large = torch.cat([large, -large])
    large = large[torch.isfinite(large) & (large.abs() >= fmax)]
    large = large[torch.randperm(large.numel(), generator=gen)][: large.numel() // 8 * 8]
    beyond = inside[: large.numel()].clone().reshape(-1, 8)
    beyond[1::2] = large.reshape(-1, 8)[1::2]  # every other group all beyond, the rest mixed in at position 2
    beyond[::2, 2] = large.reshape(-1, 8)[::2, 2]
    for xs in (inside, mixed.reshape(-1), beyond.reshape(-1)):
        for rnd in (torch.randint(-(2**31), 2**31 - 1, xs.shape, dtype=torch.int32, generator=gen),
                    torch.zeros_like(xs, dtype=torch.int32), torch.full_like(xs, -1, dtype=torch.int32),
                    *_threshold_rnd(xs, dtype)):
            assert torch.ops.largeout._sr_rule_mismatches(xs.to(device), rnd.to(device), dtype) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_group_rounding_of_normal_values_matches_the_rule(dtype, device):
    """Groups whose values are all zeros or normal in the target format (on the GPU the fp8
    rounding's integer path: one add on the fp32 word): random words, the words on either
    side of each decision, and all-zero / all-one words, against the per-element rule."""
    fi = torch.finfo(dtype)
    x = _fp32_probe_values(dtype, 400_000, 23)
    x = x[torch.isfinite(x) & (x.abs() >= fi.smallest_normal) & (x.abs() < fi.max)]
    gen = torch.Generator().manual_seed(24)
    # and random fp32 words of normal magnitude, so that every dropped bit pattern occurs
    lo, hi = math.log2(fi.smallest_normal), math.log2(fi.max)
    r = torch.exp2(lo + (hi - lo) * torch.rand(200_000, generator=gen, dtype=torch.float64)).float()
    r = r[r < fi.max] * torch.where(torch.rand(r.shape, generator=gen) < 0.5, -1.0, 1.0)
    x = torch.cat([x, r])
    x = x[torch.randperm(x.numel(), generator=gen)]
    x[::13] = 0.0  # zeros (of both signs) stay on the path
    x[5::26] = -0.0
    x = x[: x.numel() // 8 * 8]
    assert x.numel() > 100_000
    for rnd in (torch.randint(-(2**31), 2**31 - 1, x.shape, dtype=torch.int32, generator=gen),
                torch.zeros_like(x, dtype=torch.int32), torch.full_like(x, -1, dtype=torch.int32),
                *_threshold_rnd(x, dtype)):
        assert torch.ops.largeout._sr_rule_mismatches(x.to(device), rnd.to(device), dtype) == 0


def _sqrt_div_operands(n_groups, seed):
    """Float32 operands for the group square root and quotient, in groups of 8: most groups
    entirely in the range where the GPU takes its branch-free sequences (magnitudes 2^-60 to
    2^60, zeros), the rest with one operand outside it (subnormal, tiny, huge, inf, NaN,
    negative for the square root); significands random or at the edges (1, 1 + ulp, 2 - ulp)."""
    gen = torch.Generator().manual_seed(seed)
    n = n_groups * 8

    def inside(k):
        exp = torch.randint(-60, 61, (k,), generator=gen)
        man = torch.randint(0, 2**23, (k,), generator=gen)
        edge = torch.randint(0, 8, (k,), generator=gen)  # an eighth each at 1, 1 + ulp, 2 - ulp
        man = torch.where(edge == 0, 0, torch.where(edge == 1, 1, torch.where(edge == 2, 2**23 - 1, man)))
        sign = torch.randint(0, 2, (k,), generator=gen)
        bits = (sign << 31) | ((exp + 127) << 23) | man
        return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)

    a, b = inside(n), inside(n)
    zero = torch.rand(n, generator=gen) < 0.05
    a = torch.where(zero, torch.where(torch.rand(n, generator=gen) < 0.5, 0.0, -0.0), a)
    special = torch.tensor([2.0**-126, 2.0**-127, 1e-45, 2.0**-61, 2.0**-100, 2.0**61, 2.0**100, 3.0e38,
                            float("inf"), float("nan")], dtype=torch.float32)
    special = torch.cat([special, -special])
    out = torch.arange(n_groups)[torch.rand(n_groups, generator=gen) < 0.2] * 8  # a fifth leave the range
    which = torch.randint(0, 8, out.shape, generator=gen)
    a[out + which] = special[torch.randint(0, special.numel(), out.shape, generator=gen)]
    out_b = torch.arange(n_groups)[torch.rand(n_groups, generator=gen) < 0.1] * 8
    b[out_b + torch.randint(0, 8, out_b.shape, generator=gen)] = torch.cat([special, torch.tensor([0.0, -0.0])])[
        torch.randint(0, special.numel() + 2, out_b.shape, generator=gen)]
    return a, b


def _same_floats(x, want):
    """Bit-identical, any NaN matching any NaN."""
    nan = torch.isnan(want)
    return torch.equal(torch.isnan(x), nan) and torch.equal(x[~nan].view(torch.int32), want[~nan].view(torch.int32))


def _sqrt_ref(x):
    return torch.sqrt(x.double()).float()


def _div_ref(a, b):
    return (a.double() / b.double()).float()


@pytest.mark.parametrize("device", DEVICES)
def test_group_sqrt_div_match_ieee(device):
    """AdamW's square roots and quotients, taken 8 at a time (on the GPU a range test for the
    group, then the fast sequences without branches, else the IEEE operations): the
    correctly rounded float32 results. Reference: the float64 operation rounded to float32,
    which is correctly rounded (double rounding is innocuous for sqrt and division from 53
    to 24 bits); torch's own float32 sqrt on the CPU is not (it differs in the last bit)."""
    a, b = _sqrt_div_operands(1 << 18, 41)
    s, q = torch.ops.largeout._group_sqrt_div(a.to(device), b.to(device))
    assert s.device.type == q.device.type == torch.device(device).type
    assert _same_floats(s.cpu(), _sqrt_ref(a))
    assert _same_floats(q.cpu(), _div_ref(a, b))
    # square roots of the magnitudes (half of a is negative: those groups take op_sqrt)
    s, _ = torch.ops.largeout._group_sqrt_div(a.abs().to(device), b.to(device))
    assert _same_floats(s.cpu(), _sqrt_ref(a.abs()))
    # the groups that take the fast path are most of them (so that it is what is checked)
    in_range = ((a.abs() >= 2.0**-60) & (a.abs() < 2.0**61)) | (a == 0)
    in_range &= (b.abs() >= 2.0**-60) & (b.abs() < 2.0**61)
    assert in_range.reshape(-1, 8).all(dim=1).float().mean() > 0.6


@pytest.mark.parametrize("bad", ["dtype", "size", "shape"])
def test_group_sqrt_div_rejects_bad_arguments(bad):
    a = torch.rand(16)
    b = {"dtype": a.double(), "size": torch.rand(8), "shape": torch.rand(2, 8)}[bad]
    a2 = a.reshape(2, 8) if bad == "shape" else a
    with pytest.raises((TypeError, RuntimeError), match="_group_sqrt_div"):
        torch.ops.largeout._group_sqrt_div(a2, b)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        torch.ops.largeout._group_sqrt_div(torch.rand(12), torch.rand(12))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_group_sqrt_every_float_and_many_quotients_cuda():
    """The GPU's group square root over every non-negative float32 (+0, subnormals, normals,
    inf, NaNs), and 2^26 more random quotients, against the float64 operations on the GPU
    rounded to float32."""
    chunk = 1 << 27
    for start in range(0, 1 << 31, chunk):
        x = torch.arange(start, start + chunk, device="cuda", dtype=torch.int32).view(torch.float32)
        s, _ = torch.ops.largeout._group_sqrt_div(x, torch.ones_like(x))
        assert _same_floats(s, _sqrt_ref(x)), start
    for seed in range(4):
        a, b = _sqrt_div_operands(1 << 21, 50 + seed)
        a, b = a.cuda(), b.cuda()
        _, q = torch.ops.largeout._group_sqrt_div(a, b)
        assert _same_floats(q, _div_ref(a, b)), seed
    # every significand of b (exponent 0) under a few numerators: the fast path's exactness
    # rests on the hardware's reciprocal approximation at each significand
    b = (torch.arange(1 << 23, device="cuda", dtype=torch.int32) | 0x3F800000).view(torch.float32)
    for a0 in (1.0, 1.5, 2.0 - 2.0**-23, 1.0 + 2.0**-23, 1.2345678, -1.7654321):
        a = torch.full_like(b, a0)
        _, q = torch.ops.largeout._group_sqrt_div(a, b)
        assert _same_floats(q, _div_ref(a, b)), a0
    # quotients within 2^-8 ulp of a rounding midpoint: a = b (q + ulp(q) / 2) rounded to
    # float32, kept where that rounding moved the quotient by less than 2^-8 of q's ulp
    gen = torch.Generator().manual_seed(58)
    n = 1 << 24
    bm = (torch.exp2(torch.randint(-40, 41, (n,), generator=gen).double())
          * (1 + torch.rand(n, generator=gen, dtype=torch.float64))).float()
    qm = (torch.exp2(torch.randint(-40, 41, (n,), generator=gen).double())
          * (1 + torch.rand(n, generator=gen, dtype=torch.float64))).float()
    ulp = torch.nextafter(qm, torch.full_like(qm, float("inf"))).double() - qm.double()
    mid = qm.double() + ulp / 2
    am = (bm.double() * mid).float()
    keep = ((am.double() / bm.double() - mid).abs() < ulp / 256) & (am.abs() >= 2.0**-60) & (am.abs() < 2.0**61)
    assert keep.sum() > 20_000
    am, bm = (t[keep][: int(keep.sum()) // 8 * 8].cuda() for t in (am, bm))
    _, q = torch.ops.largeout._group_sqrt_div(am, bm)
    assert _same_floats(q, _div_ref(am, bm))


def test_group_div_at_the_reciprocal_edge():
    """a = +-2^k and b = +-(2 - 2^-23) 2^j for every k, j in [-60, 60] (the one significand
    where a reciprocal approximation within 1 ulp but on the wrong side would round the
    quotient down), and a = b: exact on the CPU and, where there is one, on the GPU."""
    e = torch.arange(-60, 61, dtype=torch.float64)
    k, j = torch.meshgrid(e, e, indexing="ij")
    a = torch.exp2(k.reshape(-1)).float()
    b = (torch.exp2(j.reshape(-1)) * (2 - 2.0**-23)).float()
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0]).repeat_interleave(a.numel() // 4 + 1)[: a.numel()]
    a, b = torch.cat([a, a * sign, b]), torch.cat([b, b, b])  # (and a = b)
    pad = (-a.numel()) % 8
    a, b = torch.cat([a, torch.ones(pad)]), torch.cat([b, torch.ones(pad)])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        _, q = torch.ops.largeout._group_sqrt_div(a.to(device), b.to(device))
        assert _same_floats(q.cpu(), _div_ref(a, b)), device


def _make(kind, ps, **kw):
    if kind == "sgd":
        return lo_optim.SGD(ps, lr=0.05, **kw)
    if kind == "sgd-momentum":
        return lo_optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, **kw)
    if kind == "sgd-nesterov":
        return lo_optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, **kw)
    return lo_optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, **kw)


def _make_variant(kind, ps, seed):
    """_make's kinds plus Kahan buffers and fp32 AdamW state (the CPU-vs-CUDA tests)."""
    if kind == "kahan":  # momentum + Kahan
        return lo_optim.SGD(ps, lr=0.05, momentum=0.9, kahan=True, seed=seed)
    if kind == "sgd-kahan":
        return lo_optim.SGD(ps, lr=0.05, kahan=True, seed=seed)
    if kind == "nesterov-kahan":
        return lo_optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, kahan=True, seed=seed)
    if kind == "adamw-kahan":
        return lo_optim.AdamW(ps, lr=1e-2, weight_decay=0.1, kahan=True, seed=seed)
    if kind == "adamw-f32-state":
        return lo_optim.AdamW(ps, lr=1e-2, weight_decay=0.1, state_dtype=torch.float32, seed=seed)
    return _make(kind, ps, seed=seed)


def _bits(ps, opt):
    """The parameters' and every state tensor's bits, as integer views on the CPU, in order."""
    tensors = [p.detach() for p in ps] + [t for st in opt.state.values() for t in st.values()
                                           if torch.is_tensor(t) and t.dim() > 0]
    return [t.cpu().view({1: torch.int8, 2: torch.int16, 4: torch.int32}[t.element_size()]) for t in tensors]


SIZES = [(1,), (7,), (8,), (9,), (33, 31), (4099,)]


def assert_within_two_ulps(a, b, dtype):
    """Parameters a (fused) and b (reference) equal, or at most two ulps apart, and equal on
    more than 97% of the elements."""
    x = torch.cat([p.detach().double().flatten() for p in a])
    y = torch.cat([p.detach().double().flatten() for p in b])
    ulp = torch.finfo(dtype).eps * y.abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((x - y).abs() <= 2 * ulp * 1.001).all(), ((x - y).abs() / ulp).max()
    assert (x == y).double().mean() > 0.97


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["sgd", "sgd-momentum", "sgd-nesterov", "adamw"])
def test_fused_nearest_matches_reference_within_an_ulp(kind, dtype):
    """Same update, arithmetic in a slightly different order: equal, or one ulp apart."""
    a = [params(s, dtype, 20 + i) for i, s in enumerate(SIZES)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa = _make(kind, a, rounding="nearest", fused=True)
    ob = _make(kind, b, rounding="nearest", fused=False)
    # AdamW is chaotic where m is near 0 (one ulp of m can flip the sign of a whole lr
    # step), so its trajectories are compared over one step only
    for step in range(1 if kind == "adamw" else 4):
        grads_for(a, step)
        grads_for(b, step)
        oa.step()
        ob.step()
    # a one-ulp difference at one step feeds the next ones: allow two after four steps
    assert_within_two_ulps(a, b, dtype)


@pytest.mark.parametrize("change", ["momentum-on", "momentum-off", "kahan-on", "kahan-off"])
def test_fused_step_follows_a_group_change_as_the_reference_does(change):
    # A group's momentum or Kahan switched on or off between steps: the fused step uses the
    # buffers the group asks for now, creating missing ones (a new momentum buffer starts as
    # the gradient) and leaving unused ones alone, as the reference path does. The steps are
    # below half an ulp, so Kahan compensation decides whether a parameter moves at all.
    start = {"momentum-on": dict(momentum=0.0, kahan=True), "momentum-off": dict(momentum=0.9, kahan=False),
             "kahan-on": dict(momentum=0.9, kahan=False), "kahan-off": dict(momentum=0.9, kahan=True)}[change]
    a = [params(s, torch.bfloat16, 40 + i) for i, s in enumerate(SIZES)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa = lo_optim.SGD(a, lr=2e-4, rounding="nearest", fused=True, **start)
    ob = lo_optim.SGD(b, lr=2e-4, rounding="nearest", fused=False, **start)
    for step in range(6):
        if step == 3:
            for o in (oa, ob):
                key = change.split("-")[0]
                o.param_groups[0][key] = (0.9 if key == "momentum" else True) if change.endswith("on") else \
                    (0.0 if key == "momentum" else False)
            kept = [oa.state[p].get("momentum_buffer") for p in a]
            kept = [None if t is None else t.clone() for t in kept]
        grads_for(a, step)
        grads_for(b, step)
        oa.step()
        ob.step()
    assert_within_two_ulps(a, b, torch.bfloat16)
    for p, q, k in zip(a, b, kept):
        assert set(oa.state[p]) == set(ob.state[q])
        if change == "momentum-off":  # (the buffer kept from before is not touched)
            assert torch.equal(oa.state[p]["momentum_buffer"], k)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_fused_stochastic_step_lands_on_a_neighbour_of_the_exact_update(kind, dtype):
    n = 20_000
    gen = torch.Generator().manual_seed(31)
    p = torch.nn.Parameter((torch.randn(n, generator=gen) * 0.3).to(dtype), requires_grad=False)
    p.grad_dtype = None  # a bf16 gradient for every parameter format (as the fp8 layers produce)
    p.grad = (torch.randn(n, generator=gen) * 0.1).to(torch.bfloat16)
    start, g = p.detach().double(), p.grad.double()
    opt = _make(kind, [p], seed=4)
    opt.step()
    if kind == "sgd":
        exact = start - 0.05 * g
    else:  # first AdamW step: m/sqrt(v) bias-corrected = sign(g) (up to eps), plus decoupled decay
        exact = start - 1e-2 * g / (g.abs() + 1e-8) - 1e-2 * 0.1 * start
    lo, hi = ref.rounding_neighbours(exact.float(), dtype)
    got = p.detach().double()
    # fp32 arithmetic moves the exact value by some fp32 ulps of the operands: accept
    # anything between the outer neighbours of that interval (far finer than the grid,
    # except near zero)
    slack = 2.0**-19 * (start.abs() + (exact - start).abs())  # fp32 hyperparameters (1 - beta1) etc. included
    ends = [ref.rounding_neighbours((exact + d).float(), dtype) for d in (-slack, slack)]
    floor = torch.minimum(torch.minimum(*ends[0]), torch.minimum(*ends[1]))
    ceil = torch.maximum(torch.maximum(*ends[0]), torch.maximum(*ends[1]))
    assert bool(((got >= floor) & (got <= ceil)).all())
    # and it is unbiased: the mean error over many elements is far below the grid spacing
    spacing = (hi - lo).abs().clamp_min(1e-30)
    err = ((got - exact) / spacing)[(hi != lo) & torch.isfinite(spacing)]
    assert abs(err.mean().item()) < 0.03


def _philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC'11) in Python integers: 4 words from a 128-bit
    counter and a 64-bit key, each as a list of 32-bit words; independent of the C++ one."""
    m = 0xFFFFFFFF
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & m, (p0 >> 32) ^ c3 ^ k1, p0 & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return [c0, c1, c2, c3]


def _stream_words(n, seed, offset, stream):
    """The documented random words of a launch's elements 0..n-1 for a stream: group v draws
    Philox4x32-10 block (6 v + 2 stream, offset) under the key (seed); one list of 4 words
    per group."""
    m = 0xFFFFFFFF
    return [_philox4x32_10([(6 * v + 2 * stream) & m, (6 * v + 2 * stream) >> 32, offset & m, offset >> 32],
                           [seed & m, seed >> 32]) for v in range((n + 7) // 8)]


def _bf16_sr_model(x, stream_words):
    """bf16 codes of float32 values x (below bf16's largest finite value) stochastically
    rounded with the documented bits: element i takes 16 bits of word (i % 8) / 2 of its
    group's block, the low half for even i and the high half for odd i."""
    m = 0xFFFFFFFF
    out = []
    for i, xb in enumerate(x.view(torch.int32).tolist()):
        w = stream_words[i // 8][(i % 8) // 2]
        r16 = (w >> 16) if i % 2 else (w & 0xFFFF)
        out.append((((xb & m) + (0xFFFF - r16)) & m) >> 16)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_fused_sgd_random_bits_follow_the_documented_stream(device):
    # One plain SGD step on bf16 parameters through the op, with a known key, against a
    # Python model of the documented scheme (kernels/optim_step.h): element i of the launch
    # is in group v = i / 8, whose parameter draws Philox4x32-10 block (6 v, offset) under
    # the key (seed); element j of the group takes 16 bits of word j / 2 (the low half of
    # the word for even j, the high half for odd j) as the top of its random word; the new
    # value (p - lr g in float32) is rounded to bf16 up iff those 16 bits are below its
    # dropped half. Catches a key schedule, a counter or a word layout that changed.
    n = 203  # 25 whole groups and a partial one
    gen = torch.Generator().manual_seed(41)
    p0 = torch.randn(n, generator=gen).to(torch.bfloat16)
    g = torch.randn(n, generator=gen).to(torch.bfloat16)
    lr, seed, offset = 0.0123, 0x1234_5678_9ABC_DEF0, 0x0FED_CBA9_8765_4321
    p = p0.clone().to(device)
    torch.ops.largeout._fused_optim_step_([p], [g.to(device)], [], [], [], [], 0, True, lr, 0.0, 0.0, False, False,
                                          0.0, 0.0, 0.0, 0.0, 0.0, 0.0, seed, offset)
    new = p0.float() + torch.tensor(-lr, dtype=torch.float32) * g.float()
    got = p.cpu().view(torch.int16).int() & 0xFFFF
    assert got.tolist() == _bf16_sr_model(new, _stream_words(n, seed, offset, 0))


@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_random_bits_follow_the_documented_stream(device):
    # One AdamW step on bf16 parameters with bf16 state through the op, with a known key,
    # against a model of the documented scheme: group v's parameter, exp_avg and exp_avg_sq
    # draw Philox4x32-10 blocks 6 v, 6 v + 2 and 6 v + 4 (streams 0, 1, 2), and the update
    # in float32, one rounding per operation (sqrt and division correctly rounded: float64
    # then float32). Catches a stream, counter or word layout that changed, and an update
    # whose arithmetic changed.
    n = 203  # 25 whole groups and a partial one
    gen = torch.Generator().manual_seed(43)
    p0 = torch.randn(n, generator=gen).to(torch.bfloat16)
    g = torch.randn(n, generator=gen).to(torch.bfloat16)
    m0 = (torch.randn(n, generator=gen) * 0.1).to(torch.bfloat16)
    v0 = (torch.rand(n, generator=gen) * 0.01).to(torch.bfloat16)
    lr, wd, beta1, beta2, eps, step_size, inv_sqrt_bc2 = 0.01, 0.05, 0.9, 0.999, 1e-8, 0.011, 1.3
    seed, offset = 0x0BAD_5EED_1234_5678, 0x0000_0001_0000_0002
    p, b1, b2 = p0.clone().to(device), m0.clone().to(device), v0.clone().to(device)
    torch.ops.largeout._fused_optim_step_([p], [g.to(device)], [b1], [b2], [], [], 1, True, lr, 0.0, 0.0, False,
                                          False, wd, beta1, beta2, eps, step_size, inv_sqrt_bc2, seed, offset)
    f = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731 (a float32 scalar, as the kernel's)
    one = f(1.0)
    gf, pf = g.float(), p0.float()
    m_new = f(beta1) * m0.float() + (one - f(beta1)) * gf
    v_new = f(beta2) * v0.float() + (one - f(beta2)) * (gf * gf)
    den = torch.sqrt(v_new.double()).float() * f(inv_sqrt_bc2) + f(eps)
    upd = ((-f(step_size) * m_new).double() / den.double()).float()
    p_new = pf + (upd - (f(lr) * f(wd)) * pf)
    for got, x, s in ((p, p_new, 0), (b1, m_new, 1), (b2, v_new, 2)):
        want = _bf16_sr_model(x, _stream_words(n, seed, offset, s))
        assert (got.cpu().view(torch.int16).int() & 0xFFFF).tolist() == want, s


def test_fused_step_over_many_tensors_unaligned_views_and_tails():
    big = torch.randn(10_000, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    views = [big[1:4100], big[4100:4103], big[5003:9000]]  # not 16-byte aligned, odd lengths
    ps = [torch.nn.Parameter(v) for v in views]
    copies = [torch.nn.Parameter(v.clone()) for v in views]  # aligned
    oa = lo_optim.SGD(ps, lr=0.1, momentum=0.9, seed=8)
    ob = lo_optim.SGD(copies, lr=0.1, momentum=0.9, seed=8)
    for step in range(3):
        grads_for(ps, step)
        grads_for(copies, step)
        oa.step()
        ob.step()
    for a, b in zip(ps, copies):
        assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16))
    # the untouched parts of the storage are unchanged
    before = torch.randn(10_000, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    for sl in (slice(0, 1), slice(4103, 5003), slice(9000, 10_000)):
        assert torch.equal(big[sl].view(torch.int16), before[sl].view(torch.int16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("pdtype", [torch.float32] + LOW, ids=str)
@pytest.mark.parametrize("kind", ["sgd", "sgd-momentum", "sgd-nesterov", "adamw", "adamw-f32-state", "kahan",
                                  "sgd-kahan", "nesterov-kahan", "adamw-kahan"])
def test_fused_cpu_and_cuda_give_identical_bits(kind, pdtype):
    # Every kernel variant of the CUDA step (with or without buf1 / a Kahan buffer; 1 or 2
    # groups per thread) against the CPU loop, bit for bit, on slots whose ends fall
    # inside a thread's groups.

    def build(device):
        ps = []
        for i, s in enumerate(SIZES + [(70_001,), (2048 * 3 + 24,)]):
            gen = torch.Generator().manual_seed(50 + i)
            ps.append(torch.nn.Parameter((torch.randn(s, generator=gen) * 0.5).to(device, pdtype), requires_grad=False))
        return ps, _make_variant(kind, ps, seed=77)

    (pc, oc), (pg, og) = build("cpu"), build("cuda")
    gdt = torch.float32 if pdtype == torch.float32 else torch.bfloat16
    for step in range(3):
        gen = torch.Generator().manual_seed(900 + step)
        for a, b in zip(pc, pg):
            g = torch.randn(a.shape, generator=gen).to(gdt)
            a.grad_dtype = b.grad_dtype = None
            a.grad, b.grad = g, g.cuda()
        oc.step()
        og.step()
    torch.cuda.synchronize()
    want, got = _bits(pc, oc), _bits(pg, og)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(want, got)):
        assert torch.equal(a, b), f"tensor {i} differs in {(a != b).sum().item()} elements"


# (kind of _make_variant, parameter dtype, gradient dtype): fp8, 16-bit and fp32 gradients
# or state, Kahan buffers ("kahan": momentum + Kahan). A gradient dtype other than the
# parameter's (bf16 for fp8) takes the kernels that read it at run time.
LARGE_CASES = [
    ("sgd", torch.bfloat16, torch.bfloat16), ("sgd-momentum", torch.bfloat16, torch.bfloat16),
    ("kahan", torch.float16, torch.float16), ("sgd", torch.float8_e4m3fn, torch.bfloat16),
    ("sgd-momentum", torch.float8_e5m2, torch.bfloat16), ("adamw", torch.bfloat16, torch.bfloat16),
    ("adamw", torch.bfloat16, torch.float32), ("adamw-f32-state", torch.bfloat16, torch.bfloat16),
    ("adamw-kahan", torch.bfloat16, torch.bfloat16), ("adamw", torch.float8_e4m3fn, torch.bfloat16),
    ("sgd", torch.float8_e4m3fn, torch.float16), ("kahan", torch.bfloat16, torch.float32),
    ("sgd-momentum", torch.float32, torch.bfloat16),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind,pdtype,gdtype", LARGE_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_fused_cuda_kernels_agree_with_cpu_over_many_groups_per_thread(kind, pdtype, gdtype):
    # The CUDA step bit for bit against the CPU loop on tensors large enough that every
    # thread of the grid (by default at most 8 blocks of 256 per SM, at most 2 groups of 8 elements per
    # thread per iteration) takes at least 3 iterations, with a slot's end inside a thread's
    # groups and an unaligned view (the per-group path) among them.
    n_big = 3 * torch.cuda.get_device_properties(0).multi_processor_count * 8 * 256 * 16 + 13
    big = torch.randn(n_big, generator=torch.Generator().manual_seed(5)) * 0.5
    small = torch.randn(9_001, generator=torch.Generator().manual_seed(6)) * 0.5
    grads = [[torch.randn(n, generator=torch.Generator().manual_seed(60 + 3 * step + i)).to(gdtype)
              for i, n in enumerate((n_big, 9_000, 4_099))] for step in range(2)]

    def run(device):  # (clones: a conversion to the same dtype and device would alias big / small)
        ps = [torch.nn.Parameter(big.to(device, pdtype).clone()),
              torch.nn.Parameter(small.to(device, pdtype).clone()[1:]),
              torch.nn.Parameter(small[:4_099].to(device, pdtype).clone())]
        opt = _make_variant(kind, ps, seed=78)
        for step in range(2):
            for p, g in zip(ps, grads[step]):
                p.grad_dtype = None
                p.grad = g.to(device)
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return _bits(ps, opt)

    want, got = run("cpu"), run("cuda")
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(want, got)):
        assert torch.equal(a, b), f"tensor {i} differs in {(a != b).sum().item()} elements"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fused_cuda_kernels_agree_with_cpu_on_a_large_scaled_fp8_weight():
    # The scaled kernel (fp8 weight with per-label scales, 1 group per thread per
    # iteration) over at least 3 iterations per thread, against the CPU loop.
    from largeout.nn import GroupSparseLinear

    labels = 3 * torch.cuda.get_device_properties(0).multi_processor_count * 8 * 256 * 8 // 64 + 1

    def run(device):
        gen = torch.Generator().manual_seed(11)
        layer = GroupSparseLinear(64, labels, 64, 32, weight_dtype=torch.float8_e4m3fn, generator=gen,
                                  weight_scale="label").to(device)
        opt = lo_optim.SGD([layer.weight], lr=0.05, momentum=0.9, seed=79)
        for step in range(2):
            g = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(90 + step))
            layer.weight.grad_dtype = None
            layer.weight.grad = g.to(device, torch.bfloat16)
            opt.step()
        return [layer.weight.detach().cpu().view(torch.int8),
                opt.state[layer.weight]["momentum_buffer"].cpu().view(torch.int16)]

    for a, b in zip(run("cpu"), run("cuda")):
        assert torch.equal(a, b), f"{(a != b).sum().item()} elements differ"


@pytest.mark.parametrize("name", ["_fused_optim_step_", "_fused_optim_check"])
def test_fused_op_rejects_bad_arguments_and_writes_nothing(name):
    # The step op and its checks alone (which largeout.optim runs on every launch of a step
    # of several before the first): the same errors, and nothing written.
    p = [torch.randn(10).to(torch.bfloat16), torch.randn(4).to(torch.bfloat16)]
    before = [t.clone() for t in p]
    g = [torch.randn(10).to(torch.bfloat16), torch.randn(5).to(torch.bfloat16)]
    op = getattr(torch.ops.largeout, name)
    args = (0, True, 0.1, 0.0, 0.0, False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1, 2)
    if name == "_fused_optim_check":  # (valid arguments pass, and the parameters stay as they were)
        mom = [torch.randn(10).bfloat16(), torch.randn(4).bfloat16()]
        mom_before = [t.clone() for t in mom]
        op(p, g[:1] + [torch.randn(4).bfloat16()], mom, [], [], [], *args)
        for a, b in zip(p + mom, before + mom_before):
            assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    with pytest.raises(RuntimeError, match=r"grads\[1\] has shape \[5\] but params\[1\] has shape \[4\]"):
        op(p, g, [], [], [], [], *args)
    with pytest.raises(RuntimeError, match="grads must hold 2 tensors"):
        op(p, g[:1], [], [], [], [], *args)
    with pytest.raises(TypeError, match="grads must be of dtype"):
        op(p, [t.to(torch.int32) for t in g], [], [], [], [], *args)
    with pytest.raises(RuntimeError, match="buf1 .* must hold 2 tensors|buf1 must hold 2 tensors"):
        op(p, [torch.randn(10).bfloat16(), torch.randn(4).bfloat16()], [], [], [], [],
           1, *args[1:])
    with pytest.raises(TypeError, match="buf1 \\(momentum\\) must be bfloat16 for BFloat16 parameters; got Float"):
        op(p, [torch.randn(10).bfloat16(), torch.randn(4).bfloat16()], [torch.zeros(10), torch.zeros(4)], [], [], [],
           *args)
    with pytest.raises(TypeError, match="scales are for float8 parameters; params are BFloat16"):
        op(p, g[:1] + [torch.randn(4).bfloat16()], [], [], [], [torch.ones(1), torch.ones(1)], *args)
    for a, b in zip(p, before):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    # row scales: one float32 value per row of a 2-D fp8 parameter with rows a multiple of 8 long
    q = [torch.randn(3, 16).to(torch.float8_e4m3fn)]
    qb = q[0].clone()
    gq = [torch.randn(3, 16).bfloat16()]
    for sc, msg in (([torch.ones(4)], r"scales\[0\] must have shape \[3\]"),
                    ([torch.ones(3, dtype=torch.float64)], r"scales\[0\] must be float32; got Double"),
                    ([torch.ones(3), torch.ones(3)], "scales must be empty or hold 1 tensors")):
        with pytest.raises((RuntimeError, TypeError), match=msg):
            op(q, gq, [], [], [], sc, *args)
    q12 = [torch.randn(2, 12).to(torch.float8_e4m3fn)]
    with pytest.raises(RuntimeError, match=r"rows a multiple of 8 long; got shape \[2, 12\]"):
        op(q12, [torch.randn(2, 12).bfloat16()], [], [], [], [torch.ones(2)], *args)
    assert torch.equal(q[0].view(torch.uint8), qb.view(torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fused_cuda_step_on_unaligned_views_matches_aligned_copies():
    # Views that are not 16-byte aligned (no bulk copies: per-element path) and odd
    # lengths give the same bits as aligned copies, and leave the rest of the storage as it was.
    big = torch.randn(30_000, generator=torch.Generator().manual_seed(4)).to("cuda", torch.bfloat16)
    before = big.clone()
    views = [big[1:4100], big[4100:4103], big[5003:29_000]]
    ps = [torch.nn.Parameter(v) for v in views]
    copies = [torch.nn.Parameter(v.clone()) for v in views]
    oa = lo_optim.AdamW(ps, lr=1e-2, seed=9)
    ob = lo_optim.AdamW(copies, lr=1e-2, seed=9)
    for step in range(2):
        for a, b in zip(ps, copies):
            g = torch.randn(a.shape, generator=torch.Generator().manual_seed(70 + step)).to("cuda", torch.bfloat16)
            a.grad, b.grad = g, g.clone()
        oa.step()
        ob.step()
    for a, b in zip(ps, copies):
        assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16))
    for sl in (slice(0, 1), slice(4103, 5003), slice(29_000, 30_000)):
        assert torch.equal(big[sl].view(torch.int16), before[sl].view(torch.int16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fused", [True, False])
def test_adamw_beta2_near_one_and_sgd_dampening_near_one(device, fused):
    """1 - beta2 (and 1 - beta1, 1 - dampening) as torch.optim takes them: worked out in
    double, then float32. In float32 arithmetic 1 - 0.99999 is 1.00136e-5 (0.14% off), which
    put the fused AdamW's update 6.8e-4 away from the float64 truth where torch's is 6e-6."""
    for make_ours, make_ref in (
            (lambda p: lo_optim.AdamW(p, lr=1e-2, betas=(0.9, 0.99999), rounding="nearest",
                                      state_dtype=torch.float32, fused=fused),
             lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.9, 0.99999))),
            (lambda p: lo_optim.SGD(p, lr=1e-2, momentum=0.9, dampening=0.99999, rounding="nearest", fused=fused),
             lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, dampening=0.99999))):
        p0 = params((4096,), torch.float32, 7)
        ours_p = [torch.nn.Parameter(p0.detach().clone().to(device))]
        ref_p = [torch.nn.Parameter(p0.detach().double().to(device))]
        ours, theirs = make_ours(ours_p), make_ref(ref_p)
        for step in range(4):
            grads_for(ours_p, step, device)
            ref_p[0].grad = ours_p[0].grad.double()
            ours.step()
            theirs.step()
        moved = ref_p[0].detach() - p0.double().to(device)
        err = (ours_p[0].detach().double() - ref_p[0].detach()).norm() / moved.norm()
        assert err < 3e-5, (type(ours).__name__, err.item())


@pytest.mark.parametrize("cls", [lo_optim.SGD, lo_optim.AdamW])
def test_torch_only_options_in_groups_refused(cls):
    """torch.optim options these optimizers do not implement, set in a parameter group (where
    they were accepted and ignored: maximize went downhill), get an error naming them; False
    or None is accepted."""
    p, q = params((4,), torch.float32, 1), params((4,), torch.float32, 2)
    for key in ("maximize", "amsgrad", "foreach", "capturable", "differentiable", "fused"):
        with pytest.raises(ValueError, match=f"torch.optim's option '{key}' is not implemented"):
            cls([{"params": [p], key: True}], lr=0.1)
        opt = cls([p], lr=0.1)
        with pytest.raises(ValueError, match=f"option '{key}'"):
            opt.add_param_group({"params": [q], key: True})
        assert len(opt.param_groups) == 1
        cls([{"params": [p], key: False}], lr=0.1)
    cls([{"params": [p], "foreach": None}], lr=0.1)


@pytest.mark.parametrize("cls", [lo_optim.SGD, lo_optim.AdamW])
def test_float64_parameters_keep_their_precision(cls):
    """fused=False takes float64 parameters and updates them in float64 (they went through
    float32 before: a zero update moved 0.1 to 0.10000000149), as torch.optim does."""
    torch_cls = torch.optim.SGD if cls is lo_optim.SGD else torch.optim.AdamW
    kw = dict(lr=0.1, momentum=0.9, weight_decay=0.01) if cls is lo_optim.SGD else dict(lr=0.1, weight_decay=0.01)
    p0 = torch.tensor([1.000000000001, 0.1, 1 / 3], dtype=torch.float64)
    ours_p, ref_p = [torch.nn.Parameter(p0.clone())], [torch.nn.Parameter(p0.clone())]
    extra = {} if cls is lo_optim.SGD else {"state_dtype": torch.float32}
    ours, theirs = cls(ours_p, fused=False, rounding="nearest", **kw, **extra), torch_cls(ref_p, **kw)
    zero = cls([torch.nn.Parameter(p0.clone())], lr=0.1, fused=False)
    zero.param_groups[0]["params"][0].grad = torch.zeros(3, dtype=torch.float64)
    zero.param_groups[0]["weight_decay"] = 0.0
    zero.step()
    assert torch.equal(zero.param_groups[0]["params"][0].detach(), p0)
    for step in range(3):
        g = torch.tensor([0.3, -1e-9, 2.0], dtype=torch.float64) * (step + 1)
        ours_p[0].grad, ref_p[0].grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    tol = 1e-15 if cls is lo_optim.SGD else 1e-7  # (AdamW's moments are float32 state)
    assert (ours_p[0].detach() - ref_p[0].detach()).abs().max() < tol


def test_load_state_dict_runs_the_hooks_as_torch_does():
    """Pre-hooks run first (what they return is checked and loaded: a torch.optim checkpoint
    adapted by one loads; a hook's bad lr is refused; its changed tensors are what is
    loaded), post-hooks last (they see the loaded state in its own dtypes)."""
    ps = [torch.nn.Parameter(torch.randn(5))]
    ps[0].grad = torch.ones(5)
    t = torch.optim.SGD(ps, lr=0.1, momentum=0.9)
    t.step()

    def adapt(opt, sd):
        return {**sd, "param_groups": [{**g, "rounding": "nearest", "kahan": False} for g in sd["param_groups"]]}

    o = lo_optim.SGD([torch.nn.Parameter(ps[0].detach().clone())], lr=0.1, momentum=0.9)
    o.register_load_state_dict_pre_hook(adapt)
    o.load_state_dict(t.state_dict())
    buf = next(iter(o.state.values()))["momentum_buffer"]
    assert torch.equal(buf, next(iter(t.state.values()))["momentum_buffer"])
    good = o.state_dict()
    bad = lo_optim.SGD([torch.nn.Parameter(torch.randn(5))], lr=0.1, momentum=0.9)
    bad.register_load_state_dict_pre_hook(lambda opt, s: {**s, "param_groups": [{**g, "lr": -5.0}
                                                                                 for g in s["param_groups"]]})
    with pytest.raises(ValueError, match="lr must be"):
        bad.load_state_dict(good)
    assert bad.param_groups[0]["lr"] == 0.1 and not bad.state

    def zero_momentum(opt, s):
        return {**s, "state": {k: {**v, "momentum_buffer": torch.zeros_like(v["momentum_buffer"])}
                               for k, v in s["state"].items()}}

    z = lo_optim.SGD([torch.nn.Parameter(torch.randn(5))], lr=0.1, momentum=0.9)
    z.register_load_state_dict_pre_hook(zero_momentum)
    z.load_state_dict(good)
    assert torch.equal(next(iter(z.state.values()))["momentum_buffer"], torch.zeros(5))
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float16))
    p.grad = torch.ones(5, dtype=torch.float16)
    a = lo_optim.AdamW([p])
    a.step()
    b = lo_optim.AdamW([torch.nn.Parameter(torch.randn(5, dtype=torch.float16))])
    seen = []
    b.register_load_state_dict_post_hook(lambda opt: seen.append(next(iter(opt.state.values()))["exp_avg"].dtype))
    b.load_state_dict(a.state_dict())
    assert seen == [torch.bfloat16] and next(iter(b.state.values()))["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("cls", [lo_optim.SGD, lo_optim.AdamW])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_step_as_the_original(cls, how):
    """copy.deepcopy and pickle keep ``fused`` and the generator: the copy's next step gives
    the original's bits (the copy could not step before)."""
    import pickle

    p = params((64,), torch.bfloat16, 3)
    opt = cls([p], lr=0.1, seed=5, fused=np.bool_(True))
    grads_for([p], 0)
    opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin.fused is True
    q = twin.param_groups[0]["params"][0]
    grads_for([p], 1)
    grads_for([q], 1)
    opt.step()
    twin.step()
    assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("fused", [True, False])
def test_loaded_integer_state_refused(fused):
    """A state_dict whose buffer is an integer tensor is refused at the load (fused=False took
    it and truncated every step's buffer), and the optimizer stays as it was."""
    p = params((6,), torch.bfloat16, 4)
    opt = lo_optim.SGD([p], lr=0.1, momentum=0.9, fused=fused)
    grads_for([p], 0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["momentum_buffer"] = torch.ones(6, dtype=torch.int32)
    before = opt.state[p]["momentum_buffer"].clone()
    with pytest.raises(TypeError, match="state 'momentum_buffer' of parameter id 0 in state_dict must be a "
                                        "floating-point tensor; got torch.int32"):
        opt.load_state_dict(sd)
    assert torch.equal(opt.state[p]["momentum_buffer"], before)
