"""Data-parallel training of models that hold fp8 output layers.

torch's ``DistributedDataParallel`` cannot take an fp8 weight: it broadcasts every parameter
at construction (gloo has no fp8 type) and puts each gradient in a bucket of its
parameter's dtype, while largeout's fp8 layers give their weights bf16 gradients.
:class:`DistributedDataParallel` is torch's class for everything else in the model and
takes the fp8 parameters out of its hands.
"""

import inspect
import weakref
from typing import List

import torch
import torch.distributed as dist

from .lowp import FP8_DTYPES, row_scale

_NAME = "largeout.nn.DistributedDataParallel"
_TORCH_DDP = torch.nn.parallel.DistributedDataParallel
_OWNERS: dict = {}  # id(fp8 parameter) -> (weakref of it, weakref of the wrapper that handles it)


def _hook(wrapper_ref, i: int, p: torch.nn.Parameter) -> None:
    wrapper = wrapper_ref()
    if wrapper is not None:  # (a wrapper deleted since leaves its hooks inert)
        wrapper._fp8_grad_accumulated(i, p)


class DistributedDataParallel(_TORCH_DDP):
    """``torch.nn.parallel.DistributedDataParallel`` for models with fp8 parameters (the
    fp8 weights of :class:`largeout.nn.Linear` and :class:`largeout.nn.GroupSparseLinear`).
    A drop-in: same arguments, and without fp8 parameters it is torch's class unchanged.

    The fp8 parameters (except those already on the module's DDP ignore list) are added to
    that list, so DDP's buckets and broadcasts leave them alone, and:

    - at construction (unless ``init_sync=False``) each is broadcast from the group's first
      rank as bytes, with its layer's per-label scale buffer (``weight_scale``) if it has
      one; their shapes and dtypes are first checked to agree across ranks;
    - in a backward pass after a forward that ran with gradient sync (grad mode on, not
      under :meth:`no_sync`; a forward without sync in between does not cancel it), each
      fp8 weight's gradient is divided by the group size and all-reduced (summed) on a
      process group of its own (the same ranks), in the order of the model's parameters,
      each started as soon as it and those before it have been accumulated; the backward
      pass returns only when all of them have finished. So after ``loss.backward()`` every
      rank holds the same averaged gradient, as DDP's buckets give the other parameters.
      Under ``no_sync()`` the gradients accumulate locally, and the next synced backward
      averages the sum.

    Every rank must give each fp8 weight a gradient in every synced backward pass, as DDP
    asks of all parameters without ``find_unused_parameters`` (refused here, with ``Join``,
    pickling and a model whose only trainable parameters are fp8). The optimizers'
    stochastic rounding draws from their own generator: give ``largeout.optim``'s optimizers
    the same ``seed`` on every rank, or the ranks' fp8 weights drift apart.
    """

    def __init__(self, module: torch.nn.Module, *args, **kwargs):
        opts = inspect.signature(_TORCH_DDP.__init__).bind(None, module, *args, **kwargs)
        opts.apply_defaults()
        opts = opts.arguments
        # (names an earlier wrapper of this class added are not the user's)
        user_ignored = set(getattr(module, "_ddp_params_and_buffers_to_ignore", [])) - set(
            getattr(module, "_largeout_ddp_ignored", []))
        names = {}  # fp8 parameter -> its names (a tied parameter has several)
        for name, p in module.named_parameters(remove_duplicate=False):
            if p.dtype in FP8_DTYPES:
                names.setdefault(p, []).append(name)
        fp8 = [p for p, ns in names.items() if not user_ignored.intersection(ns)]
        before = {k: module.__dict__[k] for k in ("_ddp_params_and_buffers_to_ignore", "_largeout_ddp_ignored")
                  if k in module.__dict__}
        if fp8:
            ours = sorted({n for p in fp8 for n in names[p]})
            self._fp8_refuse(module, opts, fp8, user_ignored.union(ours))
            _TORCH_DDP._set_params_and_buffers_to_ignore_for_model(module, sorted(user_ignored.union(ours)))
            module._largeout_ddp_ignored = ours
        try:
            super().__init__(module, *args, **kwargs)
        except BaseException:  # the module as it came
            for k in ("_ddp_params_and_buffers_to_ignore", "_largeout_ddp_ignored"):
                module.__dict__.pop(k, None)
            module.__dict__.update(before)
            raise
        self._fp8_params: List[torch.nn.Parameter] = fp8
        if not fp8:
            return
        self._fp8_sync = False  # armed by a synced forward, cleared when its backward ends
        self._fp8_ready = [False] * len(fp8)
        self._fp8_next = 0  # the first parameter whose all-reduce has not started
        self._fp8_pending: list = []
        self._fp8_callback_queued = False
        ranks = dist.get_process_group_ranks(self.process_group)
        self._fp8_group = dist.new_group(ranks, use_local_synchronization=True)
        self._fp8_check_shapes()
        if opts["init_sync"]:
            self._fp8_broadcast(src=ranks[0])
        me = weakref.ref(self)
        for i, p in enumerate(fp8):
            _OWNERS[id(p)] = (weakref.ref(p), me)
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda p, me=me, i=i: _hook(me, i, p))

    def _fp8_refuse(self, module, opts, fp8, ignored) -> None:
        """Raise, before anything is changed, where the fp8 parameters cannot be handled."""
        if opts["find_unused_parameters"]:
            raise ValueError(f"{_NAME}: find_unused_parameters=True is not supported with fp8 parameters (every rank "
                             f"must give each fp8 weight a gradient in every synced backward pass); got True")
        for key in [k for k, (param_ref, _) in _OWNERS.items() if param_ref() is None]:
            del _OWNERS[key]
        for p in fp8:
            param_ref, owner = _OWNERS.get(id(p), (None, None))
            if param_ref is not None and param_ref() is p and owner() is not None:
                raise ValueError(f"{_NAME}: an fp8 parameter of this module ({tuple(p.shape)}) is already handled by "
                                 f"another live {_NAME}; delete that wrapper first")
        if not any(p.requires_grad for n, p in module.named_parameters() if n not in ignored):
            raise ValueError(f"{_NAME}: every trainable parameter of the module is fp8, so torch's DDP, which this "
                             f"class extends, has nothing to synchronize and refuses it; not supported yet")

    def _fp8_check_shapes(self) -> None:
        mine = [(tuple(p.shape), str(p.dtype)) for p in self._fp8_params]
        every = [None] * dist.get_world_size(self._fp8_group)
        dist.all_gather_object(every, mine, group=self._fp8_group)
        for r, theirs in enumerate(every):
            if theirs != mine:
                raise ValueError(f"{_NAME}: the fp8 parameters (shape, dtype) differ across ranks: this rank has {mine}, "
                                 f"rank {dist.get_process_group_ranks(self._fp8_group)[r]} has {theirs}")

    def _fp8_broadcast(self, src: int) -> None:
        """Each fp8 parameter from rank src, as bytes, with its layer's per-label scale (lowp.row_scale)."""
        with torch.no_grad():
            for p in self._fp8_params:
                dist.broadcast(p.view(torch.uint8), src=src, group=self._fp8_group)
                scale = row_scale(p)
                if scale is not None:
                    dist.broadcast(scale, src=src, group=self._fp8_group)

    def forward(self, *inputs, **kwargs):
        if self._fp8_params and torch.is_grad_enabled() and self.require_backward_grad_sync:
            self._fp8_sync = True
        return super().forward(*inputs, **kwargs)

    def _fp8_grad_accumulated(self, i: int, p: torch.nn.Parameter) -> None:
        if not self._fp8_sync or p.grad is None:
            return
        self._fp8_ready[i] = True
        self._fp8_launch()
        if not self._fp8_callback_queued:
            self._fp8_callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._fp8_finish)

    def _fp8_launch(self, all_ready: bool = False) -> None:
        """Start the all-reduces in parameter order: each once it and those before it are ready
        (all_ready: the rest that are ready, at the end of the backward pass)."""
        n = dist.get_world_size(self._fp8_group)
        while self._fp8_next < len(self._fp8_params):
            i = self._fp8_next
            if not self._fp8_ready[i] and not all_ready:
                return
            self._fp8_next += 1
            if self._fp8_ready[i]:
                g = self._fp8_params[i].grad
                g.div_(n)
                self._fp8_pending.append(dist.all_reduce(g, group=self._fp8_group, async_op=True))

    def _fp8_finish(self) -> None:
        self._fp8_launch(all_ready=True)
        pending = self._fp8_pending
        self._fp8_pending, self._fp8_ready, self._fp8_next = [], [False] * len(self._fp8_params), 0
        self._fp8_callback_queued = self._fp8_sync = False
        for work in pending:
            work.wait()

    def join_hook(self, **kwargs):
        if self._fp8_params:
            raise NotImplementedError(f"{_NAME}: Join (uneven inputs) is not supported with fp8 parameters")
        return super().join_hook(**kwargs)

    def __getstate__(self):
        if self._fp8_params:
            raise TypeError(f"{_NAME} with fp8 parameters cannot be pickled or copied: save the module "
                            f"(its state_dict) and wrap it again")
        return super().__getstate__()
