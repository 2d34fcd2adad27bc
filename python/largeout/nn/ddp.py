"""Data-parallel training of models that hold fp8 output layers.

torch's ``DistributedDataParallel`` cannot take an fp8 weight: it broadcasts every parameter
at construction (gloo has no fp8 type) and puts each gradient in a bucket of its
parameter's dtype, while largeout's fp8 layers give their weights bf16 gradients.
:class:`DistributedDataParallel` is torch's class for everything else in the model and
takes the fp8 parameters out of its hands: they are broadcast from the first rank as bytes
at construction, and their gradients are averaged over the process group by a hook of
their own, started as each gradient is accumulated and waited for at the end of the
backward pass.
"""

from typing import List

import torch
import torch.distributed as dist

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class DistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """``torch.nn.parallel.DistributedDataParallel`` for models with fp8 parameters (the
    fp8 weights of :class:`largeout.nn.Linear` and :class:`largeout.nn.GroupSparseLinear`).
    A drop-in: same arguments, and without fp8 parameters it is torch's class unchanged.

    The fp8 parameters are registered with DDP as parameters to ignore (the module keeps
    that list, as ``_set_params_and_buffers_to_ignore_for_model`` leaves it; names it held
    already are kept). At construction each is broadcast from the group's first rank. In a
    backward pass whose forward ran with gradient sync on (not under :meth:`no_sync`), each
    fp8 weight's gradient is divided by the group size and all-reduced (summed) as soon as
    autograd has accumulated it, and the backward pass ends only when every such all-reduce
    has finished: so after ``loss.backward()`` every rank holds the same averaged gradient,
    as DDP's own buckets give for the other parameters. Under ``no_sync()`` the gradients
    accumulate locally and the next synced backward averages the sum.

    As with DDP without ``find_unused_parameters``, every rank must give each fp8 weight a
    gradient in every synced backward pass (a rank that skips a layer leaves the others
    waiting). The optimizers' stochastic rounding draws from their generator: seed it the
    same on every rank, or the ranks' fp8 weights drift apart after the first step.
    """

    def __init__(self, module: torch.nn.Module, *args, **kwargs):
        fp8 = [(name, p) for name, p in module.named_parameters() if p.dtype in FP8_DTYPES]
        if fp8:
            ignored = list(getattr(module, "_ddp_params_and_buffers_to_ignore", []))
            ignored += [name for name, _ in fp8 if name not in ignored]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
        super().__init__(module, *args, **kwargs)
        self._fp8_params: List[torch.nn.Parameter] = [p for _, p in fp8]
        self._fp8_sync = False  # set by each forward: whether its backward averages the fp8 gradients
        self._fp8_pending: list = []
        self._fp8_callback_queued = False
        if not fp8:
            return
        src = dist.get_global_rank(self.process_group, 0)
        with torch.no_grad():
            for p in self._fp8_params:
                dist.broadcast(p.view(torch.uint8), src=src, group=self.process_group)
        for p in self._fp8_params:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._fp8_grad_accumulated)

    def forward(self, *inputs, **kwargs):
        self._fp8_sync = bool(self._fp8_params) and torch.is_grad_enabled() and self.require_backward_grad_sync
        return super().forward(*inputs, **kwargs)

    def _fp8_grad_accumulated(self, p: torch.nn.Parameter) -> None:
        if not self._fp8_sync or p.grad is None:
            return
        p.grad.div_(dist.get_world_size(self.process_group))
        self._fp8_pending.append(dist.all_reduce(p.grad, group=self.process_group, async_op=True))
        if not self._fp8_callback_queued:
            self._fp8_callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._fp8_wait)

    def _fp8_wait(self) -> None:
        pending, self._fp8_pending, self._fp8_callback_queued = self._fp8_pending, [], False
        for work in pending:
            work.wait()
