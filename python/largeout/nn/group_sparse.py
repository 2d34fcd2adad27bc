import math
from typing import Optional

import torch
from torch import nn

from .. import functional as F
from . import lowp

__all__ = ["GroupSparseLinear", "random_group_indices"]

# Rows of random keys drawn at once when sampling indices (bounds the temporary).
_SAMPLE_ELEMS = 1 << 24
INDEX_ORDERS = ("sorted", "banked", "balanced")  # random_group_indices' orders, GroupSparseLinear's index_order


def random_group_indices(
    num_groups: int,
    in_features: int,
    fan_in: int,
    *,
    generator: Optional[torch.Generator] = None,
    device=None,
    order: str = "sorted",
) -> torch.Tensor:
    """``[num_groups, fan_in]`` int32: for each group, ``fan_in`` distinct inputs
    drawn uniformly from ``[0, in_features)`` (for ``"balanced"``: uniformly within each
    residue class mod 8).

    ``order`` draws and arranges each group's inputs:

    - ``"sorted"``: ascending;
    - ``"banked"``: the same set as ``"sorted"`` for a given generator state, arranged so
      that every run of 8 consecutive slots holds inputs of distinct residues mod 8 as far
      as the group's residue counts allow (the inputs sorted by residue, then dealt out
      round-robin, each run rotated by one more slot; ``fan_in`` a multiple of 8);
    - ``"balanced"``: ``fan_in / 8`` inputs drawn uniformly from each residue class mod 8
      (``in_features`` and ``fan_in`` multiples of 8), slot ``8 q + i`` holding the
      ``q``-th smallest chosen input of residue ``(i + q) mod 8``: every run of 8 slots
      holds one input of each residue, and so do the slots ``8 q + i`` of 8 consecutive
      runs.

    The Hopper forward reads the input rows of 8 consecutive slots at once from shared
    memory, where the bank depends on the input mod 8: ``"banked"`` spreads most such
    reads over the banks, ``"balanced"`` all of them; the expanded-weight dx writes slot
    ``i`` of 8 consecutive runs at once, which the rotation spreads too."""
    num_groups, in_features, fan_in = lowp.check_layer_args(
        "random_group_indices", dict(num_groups=num_groups, in_features=in_features, fan_in=fan_in),
        generator=generator).values()
    if num_groups < 0 or in_features < 1 or fan_in < 1:
        raise ValueError(f"random_group_indices: num_groups must be >= 0, in_features and fan_in >= 1; got "
                         f"num_groups={num_groups}, in_features={in_features}, fan_in={fan_in}")
    if fan_in > in_features:
        raise ValueError(f"fan_in = {fan_in} cannot exceed in_features = {in_features}")
    if order not in INDEX_ORDERS:
        raise ValueError(f'order must be "sorted", "banked" or "balanced"; got {order!r}')
    if order != "sorted" and fan_in % 8:
        raise ValueError(f"order = {order!r} needs fan_in to be a multiple of 8; got fan_in = {fan_in}")
    if order == "balanced" and in_features % 8:
        raise ValueError(f'order = "balanced" needs in_features to be a multiple of 8; got in_features = {in_features}')
    out = torch.empty(num_groups, fan_in, dtype=torch.int32)
    step = max(1, _SAMPLE_ELEMS // max(in_features, 1))
    for g0 in range(0, num_groups, step):
        g1 = min(num_groups, g0 + step)
        keys = torch.rand(g1 - g0, in_features, generator=generator)
        if order == "balanced":
            # keys[:, 8 m + r] ranks input 8 m + r within residue class r: the fan_in / 8
            # largest keys of each class, ascending ([n, fan_in / 8 runs q, 8 residues r]);
            # slot 8 q + i takes residue (i + q) mod 8
            m = keys.view(-1, in_features // 8, 8).topk(fan_in // 8, dim=1).indices.sort(dim=1).values
            res = _run_rotation(fan_in // 8, m.device)
            out[g0:g1] = (m.gather(2, res.expand(m.shape[0], -1, 8)) * 8 + res).reshape(-1, fan_in).to(torch.int32)
            continue
        chosen = keys.topk(fan_in, dim=1).indices.sort(dim=1).values
        out[g0:g1] = (_banked(chosen, in_features) if order == "banked" else chosen).to(torch.int32)
    return out.to(device) if device is not None else out


def default_index_order(in_features: int) -> str:
    """``GroupSparseLinear``'s default ``index_order``: ``"balanced"`` where ``in_features``
    is a multiple of 8, else ``"sorted"``."""
    return "balanced" if in_features % 8 == 0 else "sorted"


def _run_rotation(runs: int, device) -> torch.Tensor:
    """``[runs, 8]``: entry ``(q, i)`` is ``(i + q) mod 8``, the rotation of run ``q``'s slots."""
    return (torch.arange(8, device=device) + torch.arange(runs, device=device)[:, None]) % 8


def _banked(chosen: torch.Tensor, in_features: int) -> torch.Tensor:
    """Each row of ``chosen`` ([n, K], K a multiple of 8, values in [0, in_features)) in the
    "banked" order: residue-major (ascending within a residue), then slot 8 q + i takes
    element q + (K / 8) ((i + q) mod 8): run q takes one element from each eighth of that
    list (with 8 residues of K / 8 inputs each, one of each residue), and slot i of 8
    consecutive runs takes them from 8 different eighths (the rotation that "balanced" has)."""
    K = chosen.shape[1]
    by_residue = chosen.gather(1, ((chosen % 8) * in_features + chosen).argsort(dim=1))
    by_run = by_residue.view(-1, 8, K // 8).transpose(1, 2)  # [n, q, eighth]
    return by_run.gather(2, _run_rotation(K // 8, chosen.device).expand(by_run.shape[0], -1, 8)).reshape(-1, K)


def _uniform_(t: torch.Tensor, bound: float, generator: Optional[torch.Generator]) -> None:
    """``t.uniform_(-bound, bound)`` drawn from ``generator`` even when it lives on
    another device than ``t`` (drawn there in bounded chunks, then copied)."""
    if generator is None or generator.device == t.device:
        t.uniform_(-bound, bound, generator=generator)
        return
    flat = t.view(-1)
    for i in range(0, flat.numel(), _SAMPLE_ELEMS):
        chunk = flat[i : i + _SAMPLE_ELEMS]
        tmp = torch.empty(chunk.shape, dtype=t.dtype, device=generator.device)
        chunk.copy_(tmp.uniform_(-bound, bound, generator=generator))


class GroupSparseLinear(lowp.ScaledWeightMixin, nn.Module):
    r"""Output layer with group-shared fixed fan-in sparsity.

    Labels are split into groups of ``group_size``; each label has ``fan_in``
    weights, and all labels of a group read the same ``fan_in`` input features
    (the buffer ``indices``, ``[ceil(out_features / group_size), fan_in]`` int32,
    unique within each group; arranged as ``index_order`` says, by ``from_dense`` in the
    ``"banked"`` order):

    .. math:: y_l = b_l + \sum_k W_{l,k} \, x_{\mathrm{idx}[\lfloor l/G \rfloor, k]}

    A drop-in for ``nn.Linear(in_features, out_features)`` with ``fan_in /
    in_features`` of its weights and FLOPs.

    Args:
        in_features: size of each input sample ``H``.
        out_features: number of labels ``L`` (any ``L >= 1``; the last group may be partial).
        fan_in: inputs per label ``K``: a multiple of 8, at most ``min(in_features, 4096)``.
        group_size: labels per group ``G``: 16, 32, 64 or 128.
        bias: learn an additive bias.
        generator: random source for the initial indices and weights.
        weight_dtype: dtype of the stored weight (default: ``dtype``): float32, bfloat16,
            float16, float8_e4m3fn or float8_e5m2. The layer computes in the weight's dtype
            (bf16 for fp8 weights: emulated, see :mod:`largeout.nn.lowp`), casting the
            input to it and the output back to the input's dtype.
        index_order: ``"sorted"``, ``"banked"`` or ``"balanced"``: how each group's initial
            indices are drawn and ordered (:func:`random_group_indices`); default
            ``"balanced"`` where ``in_features`` is a multiple of 8, else ``"sorted"``.
            ``"balanced"`` draws ``fan_in / 8`` inputs from each residue class mod 8, which
            makes every gather of the Hopper forward free of shared-memory bank conflicts
            (see the README's Performance section for what it measured); ``"banked"`` is
            the sorted sets reordered (the same function as ``"sorted"``).
        weight_scale: None, or ``"label"`` for an fp8 weight: one float32 power-of-two
            scale per label (``weight_scale`` buffer; label ``l``'s weights are
            ``weight[l] * weight_scale[l]``; see :mod:`largeout.nn.lowp`), which keeps the
            values in the format's normal range; ``rescale_weight_()`` re-chooses the scales
            during training.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fan_in: int,
        group_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        generator: Optional[torch.Generator] = None,
        weight_dtype: Optional[torch.dtype] = None,
        index_order: Optional[str] = None,
        weight_scale: Optional[str] = None,
    ) -> None:
        super().__init__()
        in_features, out_features, fan_in, group_size = lowp.check_layer_args(
            "GroupSparseLinear", dict(in_features=in_features, out_features=out_features, fan_in=fan_in,
                                      group_size=group_size), dtype, generator).values()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be >= 1; got in_features={in_features}, out_features={out_features}"
            )
        if group_size not in F.GROUP_SIZES:
            raise ValueError(f"group_size must be one of {F.GROUP_SIZES}; got {group_size}")
        if fan_in < 8 or fan_in % 8 or fan_in > F.MAX_FAN_IN or fan_in > in_features:
            raise ValueError(
                f"fan_in must be a multiple of 8 in [8, min(in_features, {F.MAX_FAN_IN})] = "
                f"[8, {min(in_features, F.MAX_FAN_IN)}]; got {fan_in}"
            )
        if weight_dtype is None:
            weight_dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.weight_dtype = lowp.check_weight_dtype("GroupSparseLinear", weight_dtype)
        if dtype is None:
            dtype = torch.bfloat16 if weight_dtype in lowp.FP8_DTYPES else weight_dtype
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.fan_in = fan_in
        self.group_size = group_size
        self.weight = lowp.make_weight((out_features, fan_in), weight_dtype, device)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        if index_order is None:
            index_order = default_index_order(in_features)
        elif index_order not in INDEX_ORDERS:
            raise ValueError(f'GroupSparseLinear: index_order must be "sorted", "banked", "balanced" or None; got '
                             f'{index_order!r}')
        elif index_order == "balanced" and in_features % 8:
            raise ValueError(f'GroupSparseLinear: index_order "balanced" needs in_features to be a multiple of 8; '
                             f'got in_features = {in_features} (None picks "sorted" there)')
        idx = random_group_indices(
            self.num_groups, in_features, fan_in, generator=generator, device=device, order=index_order
        )
        self.register_buffer("indices", idx)
        self._init_weight_scale("GroupSparseLinear", weight_scale, device)
        self.reset_parameters(generator=generator)

    @property
    def num_groups(self) -> int:
        return -(-self.out_features // self.group_size)

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Uniform init scaled for the fan-in (as ``nn.Linear`` with ``in_features = fan_in``):
        weights and bias in ``[-1/sqrt(K), 1/sqrt(K)]``."""
        bound = 1.0 / math.sqrt(self.fan_in)
        with torch.no_grad():
            if self.weight_scale is not None:
                self._init_scaled_uniform_(bound, generator)
            elif self.weight.dtype in lowp.FP8_DTYPES:
                lowp.init_uniform_(self.weight, bound, generator)
            else:
                _uniform_(self.weight, bound, generator)
            if self.bias is not None:
                _uniform_(self.bias, bound, generator)

    # -- indices: validated whenever they are set or loaded ---------------------
    def __setattr__(self, name, value):
        if name == "indices" and "indices" in self.__dict__.get("_buffers", {}):
            self._check_indices(value)
        super().__setattr__(name, value)

    def _check_indices(self, indices: torch.Tensor) -> None:
        F.validate_indices(indices, self.in_features, self.out_features, self.group_size)
        if indices.shape[1] != self.fan_in:
            raise ValueError(f"indices must have fan_in = {self.fan_in} columns; got {indices.shape[1]}")

    def set_indices(self, indices: torch.Tensor) -> None:
        """Replace the shared indices (validated; copied into the existing buffer's device)."""
        self._check_indices(indices)
        with torch.no_grad():
            self.indices.copy_(indices)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "indices"
        # Validate before anything of this module is written.
        if key in state_dict:
            self._check_indices(state_dict[key])
        self._check_loaded_scale(state_dict, prefix)
        if self._state_fits(state_dict, prefix, error_msgs):
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)

    # -- compute ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"GroupSparseLinear: x must be [*, in_features = {self.in_features}]; "
                             f"got shape {tuple(x.shape)}")
        lowp.check_input_dtype("GroupSparseLinear", x)
        cdt, out_dtype = lowp.matmul_dtypes(self.weight.dtype, x)  # (autocast as nn.Linear's)
        with lowp.autocast_off(x.device.type):  # (the dtypes are chosen: fp8 weights multiply in bf16)
            return self._forward(x, cdt, out_dtype)

    def _forward(self, x: torch.Tensor, cdt: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor:
        if x.dtype == cdt and (self.bias is None or self.bias.dtype == cdt) and self.weight.dtype == cdt:
            return F.group_sparse_linear(x, self.weight, self.indices, self.bias, self.group_size)
        b = self.bias.to(cdt) if self.bias is not None else None
        fp8 = self.weight.dtype in lowp.FP8_DTYPES
        if fp8 and F.transforms_active():  # (the fp8 ops define no jvp / vmap rules: plain ops, see F)
            w = self.weight.to(cdt)
            w = w if self.weight_scale is None else w * self.weight_scale.to(cdt)[:, None]
        elif fp8:
            return _fp8_forward(x, self.weight, self.weight_scale, self.indices, b, self.group_size, out_dtype)
        else:
            w = lowp.weight_for_compute(self.weight, self.weight_scale).to(cdt)
        return F.group_sparse_linear(x.to(cdt), w, self.indices, b, self.group_size).to(out_dtype)

    # -- conversion ---------------------------------------------------------------
    @classmethod
    def from_dense(cls, linear: nn.Linear, fan_in: int, group_size: int) -> "GroupSparseLinear":
        """Sparsify a dense layer: for each group keep the ``fan_in`` inputs with the
        largest summed ``|w|`` over the group's labels, and copy those weights. Each
        group's inputs are arranged in ``random_group_indices``' ``"banked"`` order (the
        same layer: the weights follow their inputs), which spreads the Hopper forward's
        shared-memory reads over the banks (on uniformly drawn inputs 0.82-1.01x the
        forward's time with ascending ones at L = 131,072 on an H100, dx 0.98-1.03x, dW
        0.99-1.01x: ``bench/results/index_order_*_s30_h100.json``; inputs chosen by
        magnitude may be less even across residues and gain less). ``linear``: a
        ``torch.nn.Linear``, a ``largeout.nn.Linear`` (an fp8 weight is taken times its
        scale, in bf16) or any module with a 2-D ``weight`` (and ``bias``)."""
        w = getattr(linear, "weight", None)
        if not (torch.is_tensor(w) and w.dim() == 2 and w.dtype.is_floating_point):
            raise TypeError(f"GroupSparseLinear.from_dense: linear must have a 2-D floating-point weight [L, H] "
                            f"(a torch.nn.Linear or a largeout.nn.Linear); got {type(linear).__name__} with "
                            f"weight {None if w is None else (tuple(w.shape), w.dtype) if torch.is_tensor(w) else w}")
        w = w.detach()
        if w.dtype in lowp.FP8_DTYPES:
            w = lowp.dequantize(w, getattr(linear, "weight_scale", None), torch.bfloat16)
        L, H = w.shape
        bias = getattr(linear, "bias", None)
        layer = cls(
            H, L, fan_in, group_size, bias=bias is not None, device=w.device, dtype=w.dtype
        )
        G, ng = group_size, layer.num_groups
        score = torch.zeros(ng * G, H, dtype=torch.float32, device=w.device)
        score[:L] = w.abs().float()
        score = score.view(ng, G, H).sum(1)  # [ng, H]
        idx = score.topk(fan_in, dim=1).indices.sort(dim=1).values  # [ng, K]
        idx = _banked(idx, H)  # (fan_in is a multiple of 8: checked by the constructor)
        rows = idx.repeat_interleave(G, dim=0)[:L]  # [L, K]
        with torch.no_grad():
            layer.indices.copy_(idx.to(torch.int32))
            layer.weight.copy_(torch.gather(w, 1, rows))
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (zeros outside the kept inputs; an fp8 weight times its
        scale, in bf16)."""
        w = self.weight.detach()
        if w.dtype in lowp.FP8_DTYPES:
            w = lowp.dequantize(w, self.weight_scale, torch.bfloat16)
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        rows = self.indices.long().repeat_interleave(self.group_size, dim=0)[: self.out_features]
        with torch.no_grad():
            lin.weight.zero_()
            lin.weight.scatter_(1, rows, w)
            if self.bias is not None:
                lin.bias.copy_(self.bias.detach())
        return lin

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, fan_in={self.fan_in}, "
            f"group_size={self.group_size}, num_groups={self.num_groups}, bias={self.bias is not None}, "
            f"density={self.fan_in / self.in_features:.3g}"
            + (f", weight_dtype={self.weight.dtype}" if self.weight.dtype != torch.float32 else "")
            + (", weight_scale=label" if self.weight_scale is not None else "")
        )


def _fp8_forward(x, weight, scale, indices, bias, group_size, out_dtype):
    """The layer with an fp8 weight: bf16 compute through the largeout ops for fp8 weights,
    which upcast the weight inside the Hopper kernels (forward and dx) and beforehand
    elsewhere: the same values as ``lowp.weight_for_compute`` without its bf16 copy (x's
    dtype is checked by forward)."""
    if x.device != weight.device:
        raise ValueError(f"GroupSparseLinear: x must be on the layer's device ({weight.device}); got {x.device}")
    lead = x.shape[:-1]
    x2 = x.to(torch.bfloat16).reshape(-1, x.shape[-1])
    if lowp.records_graph(x2, weight, bias):
        y = _GroupSparseFP8.apply(x2, weight, lowp.prepare_fp8_weight(weight), scale, indices, bias, group_size)
    else:
        y = torch.ops.largeout.group_sparse_linear_fp8(x2, weight, scale, indices, bias, group_size)
    return y.reshape(*lead, y.shape[-1]).to(out_dtype)


class _GroupSparseFP8(torch.autograd.Function):
    """Forward and backward of the layer with an fp8 weight. The weight's gradient (bf16, with
    respect to the scaled weight) is returned as such (``weight.grad_dtype`` None: autograd
    accumulates it into ``weight.grad``), and computed only where the backward wants it:
    ``probe`` (``lowp.prepare_fp8_weight``, None for a frozen weight) tells."""

    @staticmethod
    def forward(ctx, x, weight, probe, scale, indices, bias, group_size):
        from .._ops import savable_indices

        lowp.note_inputs(ctx, x, weight, probe, scale, indices, bias, group_size)
        # (saved, not kept as attributes: an in-place change before backward is an error; only
        # what the backward may read, as for the op of other weights)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        ctx.save_for_backward(x if need_w else None, savable_indices(indices) if need_x or need_w else None,
                              weight if need_x else None, scale if need_x else None)
        ctx.group_size = group_size
        ctx.dims = (x.shape[1], weight.shape[1], weight.dtype)
        return torch.ops.largeout.group_sparse_linear_fp8(x, weight, scale, indices, bias, group_size)

    @staticmethod
    def backward(ctx, grad_out):
        from .._ops import _rows_for_tma

        x, indices, weight, scale = ctx.saved_tensors
        G = ctx.group_size
        need_x, need_w, need_b = lowp.wants_grad(ctx, 0), lowp.wants_grad(ctx, 2), lowp.wants_grad(ctx, 5)
        if torch.is_grad_enabled() and need_x:  # create_graph: its dx op has no derivative
            raise RuntimeError("GroupSparseLinear with an fp8 weight has no second derivative with respect to its "
                               "input (create_graph=True); the bf16 layer has one")
        dx = dw = db = None
        # dY row-padded where that lets the Hopper kernels read it by TMA (one copy for the
        # passes that run)
        passes = tuple(p for p, need in (("input", need_x), ("weight", need_w)) if need)
        grad_out = _rows_for_tma(grad_out, ctx.dims, G, passes)
        if need_x:
            dx = torch.ops.largeout.group_sparse_linear_fp8_backward_input(
                grad_out, weight, scale, indices, G, ctx.dims[0])
        if need_w:
            dw, db_all = torch.ops.largeout.group_sparse_linear_backward_weight(grad_out, x, indices, G)
            if need_b:
                db = db_all
        elif need_b:
            db = grad_out.sum(0)
        return dx, dw, None, None, None, db, None
