"""largeout.nn.DistributedDataParallel: models with fp8 layers trained data-parallel.

Two processes on gloo (CPU; with a GPU, both ranks on it). Each rank starts from weights
of its own seed and trains on batches of its own; the checks compare every rank's state
with a reference computed in one process from all ranks' batches."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import largeout

WORLD = 2
E4M3 = torch.float8_e4m3fn
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Net(torch.nn.Module):
    """An encoder (bf16, DDP's own buckets) and four fp8 heads (ours), summed: a dense one,
    two group-sparse ones of one shape and a third whose weight is the first's (a tied
    parameter, two names), called in reverse order where swap is set (so autograd reaches
    them in another order)."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(24, 64, dtype=torch.bfloat16)
        self.dense = largeout.nn.Linear(64, 37, weight_dtype=E4M3, weight_scale="label")
        self.sparse = largeout.nn.GroupSparseLinear(64, 37, fan_in=16, group_size=16, weight_dtype=E4M3)
        self.sparse2 = largeout.nn.GroupSparseLinear(64, 37, fan_in=16, group_size=16, weight_dtype=E4M3)
        self.tied = largeout.nn.GroupSparseLinear(64, 37, fan_in=16, group_size=16, weight_dtype=E4M3)
        self.tied.weight = self.sparse.weight
        self.swap = False

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        heads = [self.dense, self.sparse, self.sparse2, self.tied]
        out = 0
        for m in heads[::-1] if self.swap else heads:
            out = out + m(h).float()
        return out


def _model(seed: int, device: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Net().to(device)


class _Recorded:
    """A collective's work, remembering whether it was waited for."""

    def __init__(self, work):
        self.work, self.waited = work, False

    def wait(self, *args, **kwargs):
        self.waited = True
        return self.work.wait(*args, **kwargs)


def _batch(rank: int, step: int, device: str):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(5 + rank, 24, generator=g, dtype=torch.bfloat16).to(device), torch.randn(5 + rank, 37, generator=g).to(device)


def _loss(model, x, y):
    return ((model(x) - y) ** 2).sum()


def _same_on_every_rank(t: torch.Tensor) -> bool:
    """Whether every rank holds these bytes (gathered on the CPU: gloo gathers CPU tensors only)."""
    mine = (t.view(torch.uint8) if t.dtype == E4M3 else t).detach().contiguous().cpu()
    every = [torch.empty_like(mine) for _ in range(WORLD)]
    dist.all_gather(every, mine)
    return all(torch.equal(e, every[0]) for e in every)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference_grads_of(rank, device, steps):
    """The gradients rank's first `steps` batches give rank 0's initial model, summed, in float32."""
    m = _model(0, device)
    for s in range(steps):
        _loss(m, *_batch(rank, s, device)).backward()
    return {n: g.float() for n, g in _grads(m).items()}


def _reference_grads(device, steps):
    """The average over ranks of _reference_grads_of (what DDP's buckets give)."""
    per_rank = [_reference_grads_of(r, device, steps) for r in range(WORLD)]
    return {n: sum(g[n] for g in per_rank) / WORLD for n in per_rank[0]}


def _worker(rank: int, port: int, device: str, errors):
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        model = _model(rank, device)  # different weights on each rank before the wrap
        ddp = largeout.nn.DistributedDataParallel(model)

        # 1. The construction gives every rank rank 0's weights, the fp8 ones byte for byte.
        ref0 = _model(0, device)
        for (n, p), q in zip(model.named_parameters(), ref0.parameters()):
            assert torch.equal(p.detach().view(torch.uint8) if p.dtype == E4M3 else p.detach(),
                               q.detach().view(torch.uint8) if q.dtype == E4M3 else q.detach()), n
        for (n, b), c in zip(model.named_buffers(), ref0.buffers()):  # (DDP's own broadcast)
            assert torch.equal(b, c), n
        assert model.dense.weight.grad is None

        # 2. Two micro-batches under no_sync, then a synced one: every gradient is the
        #    average over ranks of each rank's summed gradients.
        model.swap = rank == 1  # (the same sum; autograd meets the heads in another order)
        calls, works = [], []  # the fp8 gradients' all-reduces (DDP's buckets do not go through dist.all_reduce)
        all_reduce = dist.all_reduce

        def recording_all_reduce(t, *a, **k):
            calls.append(tuple(t.shape))
            works.append(_Recorded(all_reduce(t, *a, **k)))
            return works[-1]

        dist.all_reduce = recording_all_reduce
        with ddp.no_sync():
            _loss(ddp, *_batch(rank, 0, device)).backward()
            _loss(ddp, *_batch(rank, 1, device)).backward()
        assert calls == [], calls  # accumulated locally
        local = _grads(model)  # (their dtypes)
        _loss(ddp, *_batch(rank, 2, device)).backward()
        dist.all_reduce = all_reduce
        # one per fp8 weight (the tied one once), in the order of the parameters on every rank,
        # each finished before backward() returned
        assert calls == [(37, 64), (37, 16), (37, 16)], calls
        assert all(w.waited for w in works)
        want = _reference_grads(device, 3)
        got = _grads(model)
        assert set(got) == set(want)
        for n in want:
            assert got[n].dtype == local[n].dtype, n
            tol = 2 ** -7 * float(want[n].abs().max())
            torch.testing.assert_close(got[n].float(), want[n], rtol=0, atol=tol, msg=n)
        # (a rank-local gradient would fail this: the ranks' batches differ)
        own = _reference_grads_of(rank, device, 3)
        assert not torch.allclose(own["dense.weight"], want["dense.weight"], atol=1e-3)
        for n, g in got.items():
            assert _same_on_every_rank(g), n

        # 3. An fp8 SGD step with the same seed on every rank keeps the weights identical.
        opt = largeout.optim.SGD(model.parameters(), lr=0.05, seed=7)
        opt.step()
        opt.zero_grad()
        for n, p in model.named_parameters():
            assert _same_on_every_rank(p), n
        assert not torch.equal(model.sparse.weight.view(torch.uint8), ref0.sparse.weight.view(torch.uint8))  # it moved

        # 4. A forward under no_grad between a training forward and its backward (an eval or
        #    teacher pass) does not turn the fp8 weights' averaging off.
        loss = _loss(ddp, *_batch(rank, 3, device))
        with torch.no_grad():
            ddp(_batch(rank, 4, device)[0])
        loss.backward()
        for n, p in model.named_parameters():
            assert _same_on_every_rank(p.grad), n
        dist.destroy_process_group()
    except BaseException as e:  # reported to the test in the parent
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise


def _run_ranks(target, *args, timeout: float):
    """Runs target(rank, port, *args, messages) in WORLD spawned processes; returns the
    messages they put and their exit codes (a process still running at the timeout is killed)."""
    ctx = mp.get_context("spawn")
    messages = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, port, *args, messages)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    out = []
    while not messages.empty():
        out.append(messages.get())
    return out, [p.exitcode for p in procs]


@pytest.mark.parametrize("device", DEVICES)
def test_ddp_averages_fp8_gradients_and_keeps_ranks_equal(device):
    errors, codes = _run_ranks(_worker, device, timeout=300)
    assert not errors, "\n".join(errors)
    assert codes == [0] * WORLD, codes


def test_torch_ddp_alone_refuses_an_fp8_weight():
    """Why the class exists: torch's DDP fails at construction on such a model (gloo)."""
    msgs, _ = _run_ranks(_torch_ddp_worker, timeout=120)
    assert len(msgs) == WORLD and all("raised" in m for m in msgs), msgs


def _torch_ddp_worker(rank: int, port: int, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_model(0, "cpu"))
        _loss(ddp, *_batch(rank, 0, "cpu")).backward()
        errors.put(f"rank {rank}: no error")
    except RuntimeError as e:
        errors.put(f"rank {rank}: raised {e}")
    dist.destroy_process_group()


def _construction_worker(rank: int, port: int, messages):
    """What construction does with the fp8 weights, per construction option."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ref0 = _model(0, "cpu")
        # without DDP's buffer broadcast the per-label scales still come with their weights
        m = _model(rank, "cpu")
        m.dense.weight_scale.mul_(2.0 ** rank)  # (other scales on rank 1 whatever its seed gives)
        largeout.nn.DistributedDataParallel(m, broadcast_buffers=False)
        assert torch.equal(m.dense.weight.view(torch.uint8), ref0.dense.weight.view(torch.uint8))
        assert torch.equal(m.dense.weight_scale, ref0.dense.weight_scale)
        # init_sync=False: each rank keeps its own weights (torch's meaning)
        m = _model(rank, "cpu")
        mine = m.sparse.weight.detach().clone()
        largeout.nn.DistributedDataParallel(m, init_sync=False)
        assert torch.equal(m.sparse.weight.view(torch.uint8), mine.view(torch.uint8))
        assert not _same_on_every_rank(m.sparse.weight)
        # fp8 weights of other shapes on the ranks: a clear error at construction
        odd = torch.nn.Sequential(torch.nn.Linear(4, 8, dtype=torch.bfloat16),
                                  largeout.nn.Linear(8, 9 + rank, bias=False, weight_dtype=E4M3))
        try:
            largeout.nn.DistributedDataParallel(odd)
            messages.put(f"rank {rank}: no error for other shapes")
        except ValueError as e:
            if "differ across ranks" not in str(e):
                messages.put(f"rank {rank}: {e}")
        dist.destroy_process_group()
    except BaseException as e:
        messages.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise


def test_construction_options_and_shape_check():
    errors, codes = _run_ranks(_construction_worker, timeout=120)
    assert not errors, "\n".join(errors)
    assert codes == [0] * WORLD, codes


@pytest.fixture
def one_rank():
    """A gloo group of one process (this one)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_without_fp8_parameters_it_is_torch_ddp(one_rank):
    """No fp8 parameter: nothing is ignored or hooked."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 6), largeout.nn.Linear(6, 9))
    ddp = largeout.nn.DistributedDataParallel(m)
    assert ddp._fp8_params == [] and not hasattr(m, "_ddp_params_and_buffers_to_ignore")
    ddp(torch.randn(3, 4)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_what_it_refuses_and_what_it_leaves_alone(one_rank):
    import copy
    import gc

    def head(bias=True):
        return torch.nn.Sequential(torch.nn.Linear(4, 8, dtype=torch.bfloat16),
                                   largeout.nn.Linear(8, 9, bias=bias, weight_dtype=E4M3))

    with pytest.raises(ValueError, match="find_unused_parameters=True"):
        largeout.nn.DistributedDataParallel(head(), find_unused_parameters=True)
    m = head(bias=False)
    m[0].requires_grad_(False)  # (a frozen encoder)
    with pytest.raises(ValueError, match="every trainable parameter of the module is fp8"):
        largeout.nn.DistributedDataParallel(m)
    assert not hasattr(m, "_ddp_params_and_buffers_to_ignore")  # (refused before anything changed)
    m = head()
    with pytest.raises(ValueError, match="device_ids"):  # torch's own refusal: the module comes back as it was
        largeout.nn.DistributedDataParallel(m, device_ids=[0])
    assert not hasattr(m, "_ddp_params_and_buffers_to_ignore") and not hasattr(m, "_largeout_ddp_ignored")

    m = head()
    ddp = largeout.nn.DistributedDataParallel(m)
    with pytest.raises(ValueError, match="already handled by another live"):
        largeout.nn.DistributedDataParallel(m)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(ddp)
    with pytest.raises(NotImplementedError, match="Join"):
        ddp.join_hook()
    del ddp
    gc.collect()
    ddp = largeout.nn.DistributedDataParallel(m)  # the first one gone: wrapping again is fine
    assert ddp._fp8_params == [m[1].weight] and len(m[1].weight._post_accumulate_grad_hooks) == 2

    # an fp8 parameter the user asked DDP to ignore is theirs: neither broadcast nor averaged
    m = head()
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(m, ["1.weight"])
    ddp = largeout.nn.DistributedDataParallel(m)
    assert ddp._fp8_params == [] and m._ddp_params_and_buffers_to_ignore == ["1.weight"]
