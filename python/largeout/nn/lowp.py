"""Low-precision weights for the output layers: bf16, fp16 and fp8 (e4m3fn, e5m2).

16-bit weights are ordinary parameters: autograd gives them gradients of their own
dtype. An fp8 weight is an ordinary parameter too (``requires_grad=True``), with
``grad_dtype = None`` so that autograd accumulates the **bf16** gradient that the layers'
backward returns for it into ``weight.grad``, where ``largeout.optim`` finds it (fp8 holds
no useful gradient). Freezing works as for any parameter: ``layer.requires_grad_(False)``,
``layer.weight.requires_grad_(False)`` or a parent module's ``requires_grad_(False)``; a
frozen weight gets no gradient (none is computed), and neither does a weight whose gradient
the backward does not ask for (``torch.autograd.grad(loss, x)``, ``backward(inputs=[x])``).
The layers upcast an fp8 weight to bf16 for the matmuls (the emulated path: no FP8 tensor
cores yet); the bf16 copy exists only for the duration of a forward/backward; no fp32 copy
of the weights is ever made, initialization included (drawn in chunks and stochastically
rounded).

An fp8 weight may carry a **per-label scale** (``weight_scale="label"`` of the layers): a
float32 power of two per output row, so that label ``l``'s weights are
``weight[l] * weight_scale[l]``. It keeps each row's values in the format's normal range
(e4m3 has 3 mantissa bits and normal values only down to 2^-6: an unscaled
``U(-1/sqrt(K), 1/sqrt(K))`` init at K = 128 has most of its values at or below 4x that),
and rows that grow or shrink in training can be moved back with the layers'
``rescale_weight_()``. Powers of two make every product with a scale exact (the bf16
upcast ``weight.to(bf16) * scale`` included), so the scale changes no arithmetic, only
which values the 8 bits can hold. ``weight.grad`` is the gradient with respect to the
scaled weight; ``largeout.optim`` reads the scale (see :func:`row_scale`) and applies each
update in those units, dividing by the scale only to round into the stored codes.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Mapping
from typing import Optional

import torch

from ..functional import _FLOAT_DTYPES
from ..precision import stochastic_round

__all__ = ["WEIGHT_DTYPES", "FP8_DTYPES", "compute_dtype", "init_uniform_", "weight_for_compute", "check_weight_dtype",
           "pow2_scale", "check_scale", "row_scale", "rescale_rows_", "dequantize"]

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
WEIGHT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16) + FP8_DTYPES
_INIT_CHUNK = 1 << 22  # fp32 elements drawn at once when initialising low-precision weights
# Per-label scales: a row's largest magnitude over its scale lands in (TARGET / 2, TARGET]
# (e4m3: 16, 28x below its largest value 448, 10 binades above its smallest normal 2^-6;
# e5m2: 1024, 56x below 57344, 24 binades above 2^-14); exponents are kept in [-100, 100]
# so that a scale times any code is a normal fp32 number.
SCALE_TARGET = {torch.float8_e4m3fn: 16.0, torch.float8_e5m2: 1024.0}
SCALE_EXP_RANGE = (-100, 100)
_SCALE_ATTR = "_largeout_row_scale"


# The dtypes a layer computes in and takes as input (functional's own list).
COMPUTE_DTYPES = _FLOAT_DTYPES


def check_layer_args(layer: str, ints: dict, dtype=None, generator=None) -> dict:
    """Types of a layer's constructor arguments: ``ints`` (name -> value) must be integers
    (Python's or numpy's, not bools), ``dtype`` None or one of ``COMPUTE_DTYPES``,
    ``generator`` None or a ``torch.Generator``; raises ``TypeError`` naming the argument.
    Returns ``ints`` as Python ints."""
    out = {}
    for name, v in ints.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{layer}: {name} must be an int; got {type(v).__name__} {v!r}")
        out[name] = int(v)
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{layer}: dtype must be None or one of {', '.join(map(str, COMPUTE_DTYPES))} (the dtype of "
                        f"the bias and of a 16/32/64-bit weight; weight_dtype takes fp8); got {dtype!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{layer}: generator must be a torch.Generator or None; got {type(generator).__name__}")
    return out


def check_input_dtype(layer: str, x: torch.Tensor) -> None:
    """A layer's input must be float32, float64, bfloat16 or float16 (nn.Linear raises on
    integer inputs; a cast to the compute dtype and back would truncate the output)."""
    if x.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{layer}: x must be float32, float64, bfloat16 or float16; got {x.dtype}")


def check_weight_dtype(layer: str, weight_dtype) -> torch.dtype:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{layer}: weight_dtype must be one of {', '.join(map(str, WEIGHT_DTYPES))}; "
                         f"got {weight_dtype}")
    return weight_dtype


def compute_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """dtype of the layer's matmuls: the weight's own, bf16 for fp8 weights."""
    return torch.bfloat16 if weight_dtype in FP8_DTYPES else weight_dtype


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # (a device type autocast does not know: meta, ...)
        return False


def autocast_off(device_type: str):
    """A context with autocast off on ``device_type`` where it is on (the layers' matmuls run
    in the dtypes :func:`matmul_dtypes` chose, fp8 weights' bf16 under fp16 autocast too;
    their backward, under ``custom_bwd``, too); else nothing."""
    return torch.autocast(device_type, enabled=False) if _autocast_on(device_type) else contextlib.nullcontext()


def matmul_dtypes(weight_dtype: torch.dtype, x: torch.Tensor):
    """(the dtype a layer multiplies in, its output's dtype) for input ``x``: the weight's
    compute dtype (:func:`compute_dtype`) and x's dtype; under autocast (on x's device, as
    ``nn.Linear`` there) the autocast dtype for both, except that fp8 weights still multiply
    in bf16 and float64 layers are left alone."""
    cdt = compute_dtype(weight_dtype)
    dev = x.device.type
    if weight_dtype == torch.float64 or not _autocast_on(dev):
        return cdt, x.dtype
    ac = torch.get_autocast_dtype(dev)
    return (cdt if weight_dtype in FP8_DTYPES else ac), ac


def init_uniform_(t: torch.Tensor, bound: float, generator: Optional[torch.Generator] = None) -> None:
    """``t ~ U(-bound, bound)`` in ``t``'s dtype, drawn in fp32 chunks (never a full fp32
    copy) and stochastically rounded to fp8 (round to nearest for wider formats); nothing
    on the meta device."""
    if t.is_meta:
        return
    flat = t.detach().view(-1)
    gen_dev = generator.device if generator is not None else t.device
    for i in range(0, flat.numel(), _INIT_CHUNK):
        part = flat[i : i + _INIT_CHUNK]
        tmp = torch.empty(part.shape, dtype=torch.float32, device=gen_dev).uniform_(-bound, bound, generator=generator)
        if t.dtype in FP8_DTYPES:
            tmp = stochastic_round(tmp, t.dtype, generator=generator)
        part.copy_(tmp.to(part.device))


def pow2_scale(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 powers of two ``s`` with ``amax / s`` in ``(T / 2, T]`` (``T =
    SCALE_TARGET[dtype]``), 1 where ``amax`` is 0 or not finite; exponents clamped to
    ``SCALE_EXP_RANGE``."""
    a = amax.float()
    ok = torch.isfinite(a) & (a > 0)
    # the exponent from frexp (exact; a log2 could round across a power of two)
    mant, ex = torch.frexp(torch.where(ok, a / SCALE_TARGET[dtype], torch.ones_like(a)))  # a/T = mant * 2^ex, mant in [0.5, 1)
    e = (ex - (mant == 0.5).to(ex.dtype)).clamp(*SCALE_EXP_RANGE)  # smallest e with a/T <= 2^e
    return torch.where(ok, torch.ldexp(torch.ones_like(a), e), torch.ones_like(a))


def check_scale(name: str, scale: torch.Tensor, rows: int) -> None:
    """Raises ValueError unless ``scale`` is a float32 ``[rows]`` tensor of powers of two
    with exponents in ``SCALE_EXP_RANGE``."""
    if not torch.is_tensor(scale) or scale.dtype != torch.float32 or tuple(scale.shape) != (rows,):
        got = f"{scale.dtype} tensor of shape {tuple(scale.shape)}" if torch.is_tensor(scale) else type(scale).__name__
        raise ValueError(f"{name} must be a float32 tensor of shape ({rows},); got a {got}")
    mant, ex = torch.frexp(scale)
    lo, hi = SCALE_EXP_RANGE
    bad = ~((mant == 0.5) & (ex - 1 >= lo) & (ex - 1 <= hi))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} must hold powers of two 2^e with e in [{lo}, {hi}]; got {scale[i].item()!r} at "
                         f"row {i} ({int(bad.sum())} such rows)")


def link_scale(weight: torch.Tensor, scale: Optional[torch.Tensor]) -> None:
    """Records ``scale`` as ``weight``'s row scale, where :func:`row_scale` (and so
    ``largeout.optim``) finds it. The layers call it whenever either tensor may have been
    replaced (construction, assignment, ``module.to()`` and casts, unpickling and copies:
    :class:`ScaledWeightMixin`)."""
    if scale is None:
        if hasattr(weight, _SCALE_ATTR):
            delattr(weight, _SCALE_ATTR)
    else:
        setattr(weight, _SCALE_ATTR, scale)


def row_scale(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """The per-row scale of a layer's fp8 weight (``weight_scale``), or None."""
    return getattr(weight, _SCALE_ATTR, None)


def dequantize(weight: torch.Tensor, scale: Optional[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight's values in ``dtype``: ``weight * scale[:, None]`` (exact for fp8 weights
    in bf16 and wider, scales being powers of two). fp8 to bf16 on CUDA: one pass of
    largeout's vectorized conversion, the scales applied in it (torch's conversion runs at
    ~1 TB/s on an H200; with ours the fp8 Linear's training step at L=2.8M measured 20.4 ->
    16.1 ms, bench/results/fp8_upcast_h200.json); LARGEOUT_FP8_UPCAST=0 uses torch's ops."""
    if (dtype == torch.bfloat16 and weight.dtype in FP8_DTYPES and weight.is_cuda
            and os.environ.get("LARGEOUT_FP8_UPCAST") != "0"):
        s = None if scale is None else scale.to(weight.device, torch.float32)
        return torch.ops.largeout.fp8_to_bf16(weight.detach(), s)
    w = weight.detach().to(dtype)
    return w if scale is None else w * scale.to(device=w.device, dtype=dtype)[:, None]


def rescale_rows_(weight: torch.Tensor, scale: torch.Tensor, generator: Optional[torch.Generator] = None) -> int:
    """Re-chooses each row's power-of-two scale from its current largest magnitude
    (:func:`pow2_scale`) and re-encodes the row: exact where the scale shrinks, rounded
    stochastically (``generator``) where it grows. Rows of zeros keep their scale. Works in
    chunks of rows (no full-size fp32 copy). Returns the number of rows whose scale changed."""
    L, K = weight.shape
    rows = max(1, _INIT_CHUNK // max(K, 1))
    changed = 0
    codes = weight.detach()
    for r0 in range(0, L, rows):
        q = codes[r0 : r0 + rows]
        s = scale[r0 : r0 + rows]
        v = q.float()
        amax = v.abs().amax(1)
        new = torch.where(amax > 0, pow2_scale(amax * s, weight.dtype), s)
        moved = new != s
        if not bool(moved.any()):
            continue
        changed += int(moved.sum())
        v = v * (s / new)[:, None]  # exact (powers of two), the same value in the new units
        q.copy_(stochastic_round(v, weight.dtype, generator=generator))
        s.copy_(new)
    return changed


class _FromStored(torch.autograd.Function):
    """Upcast of a stored low-precision weight (times its row scale, when it has one); its
    backward returns the bf16 gradient (with respect to the scaled weight) as the weight's,
    which autograd accumulates into ``weight.grad`` (``grad_dtype`` None: :func:`fit_grad_dtype`).
    Autograd runs it only where the weight's gradient is wanted."""

    @staticmethod
    def forward(ctx, weight, dtype, scale=None):
        return dequantize(weight, scale, dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(torch.bfloat16), None, None


def fit_grad_dtype(weight: torch.Tensor) -> None:
    """The ``grad_dtype`` of a layer's weight: None for an fp8 weight (autograd then keeps the
    bf16 gradient the layers return for it, instead of casting it to fp8), the weight's own
    dtype otherwise (as any parameter). A parameter made anew (``copy.deepcopy``, a cast by
    ``module.to()`` that replaces parameters, a load with ``assign=True``) does not keep an
    explicit ``grad_dtype``: the layers call this wherever that may happen, and before a
    forward that builds a graph."""
    want = None if weight.dtype in FP8_DTYPES else weight.dtype
    if weight.grad_dtype != want:
        weight.grad_dtype = want


def prepare_fp8_weight(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """Before an fp8 forward that records a graph: fixes ``weight``'s ``grad_dtype``
    (:func:`fit_grad_dtype`; an fp8 parameter copied on its own loses it) and returns the
    *probe* the layers' autograd Functions take next to the weight, or None for a frozen
    weight: an empty view of it, whose backward node tells the Function's backward whether
    the running backward pass wants the weight's gradient (:func:`wants_grad`; the weight's
    own node, a leaf's, cannot be asked under ``torch.autograd.grad``)."""
    if not weight.requires_grad:
        return None
    if torch.compiler.is_compiling():
        raise RuntimeError(_COMPILE_TRAINING)
    _fit_before_graph(weight)
    return weight[:0]


def records_graph(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether an op on ``tensors`` (None for an absent one) records an autograd graph: grad
    mode is on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# torch.compile traces an autograd Function's backward with inputs that have lost the
# weight's grad_dtype = None, and so casts the bf16 gradient to fp8: not allowed to happen.
_COMPILE_TRAINING = (
    "an fp8 weight that requires grad cannot be traced by torch.compile in grad mode: the compiled backward "
    "would cast its bf16 gradient to fp8. Compile the layer with its weight frozen "
    "(layer.weight.requires_grad_(False)) or run it under torch.no_grad() / torch.inference_mode(); to train "
    "it, leave the layer outside the compiled region (torch.compile without fullgraph=True does so by itself: "
    "the layer runs eagerly)")


def _fit_before_graph(weight: torch.Tensor) -> None:
    # (not where torch.compile traces: a traced parameter is no leaf there. The callers raise
    # _COMPILE_TRAINING in their own frame first: raised inside an inlined helper, torch.compile
    # without fullgraph traced on to this function's grad_dtype read)
    if weight.is_leaf and not torch.compiler.is_compiling():
        fit_grad_dtype(weight)


def note_inputs(ctx, *args) -> None:
    """In an autograd Function's forward, with all its arguments: records where each tensor
    argument's node sits in ``ctx.next_functions``, which lists the tensor arguments only (a
    None or an int in between shifts the rest), for :func:`wants_grad`."""
    slots, n = [], 0
    for a in args:
        slots.append(n if isinstance(a, torch.Tensor) else -1)
        n += isinstance(a, torch.Tensor)
    ctx.lowp_slots = tuple(slots)


def wants_grad(ctx, i: int) -> bool:
    """Whether the running backward pass wants the gradient of argument ``i`` of the autograd
    Function whose ``ctx`` this is (its forward called :func:`note_inputs`): it requires grad
    (``ctx.needs_input_grad``, fixed at the forward) and, where the engine can tell, the
    backward leads from it to a tensor whose gradient is asked for
    (``torch.autograd.grad(loss, x)`` or ``backward(inputs=[x])`` want no weight's gradient).
    True where the engine cannot tell (a compiled backward, a torch without the query)."""
    if not ctx.needs_input_grad[i]:
        return False
    if torch.compiler.is_compiling():
        return True
    node = ctx.next_functions[ctx.lowp_slots[i]][0]
    try:
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


def weight_for_compute(weight: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The weight as the layer's matmuls take it: itself, or (fp8) its bf16 upcast (times
    ``scale`` per row) whose gradient autograd accumulates, in bf16, into ``weight.grad``
    where grad mode is on and the weight requires grad."""
    if weight.dtype not in FP8_DTYPES:
        return weight
    if not records_graph(weight):
        return dequantize(weight, scale, torch.bfloat16)
    if torch.compiler.is_compiling():
        raise RuntimeError(_COMPILE_TRAINING)
    _fit_before_graph(weight)
    return _FromStored.apply(weight, torch.bfloat16, scale)


def make_weight(shape, weight_dtype: torch.dtype, device, row_multiple: int = 1) -> torch.nn.Parameter:
    """An uninitialised weight parameter (``requires_grad=True``; fp8: any gradient dtype
    allowed, see the module notes). ``row_multiple`` > 1: the parameter is the first
    ``shape[0]`` rows of a zero-filled storage whose row count is a multiple of it."""
    rows = -(-shape[0] // row_multiple) * row_multiple
    if rows == shape[0]:
        data = torch.empty(shape, dtype=weight_dtype, device=device)
    else:
        data = torch.zeros((rows,) + tuple(shape[1:]), dtype=weight_dtype, device=device)[: shape[0]]
    if row_multiple > 1:
        mark_own_storage(data)
    p = torch.nn.Parameter(data)
    fit_grad_dtype(p)
    return p


def mark_own_storage(t: torch.Tensor) -> None:
    """Marks ``t``'s storage as one a layer allocated for its weight (padded with zero rows
    nobody else writes): :func:`owns_storage` is then true for any tensor over it. (torch keeps
    one Python object per storage while the storage lives, so the mark stays with it.)"""
    t.untyped_storage()._largeout_own = True


def owns_storage(t: torch.Tensor) -> bool:
    """Whether ``t``'s storage is one a layer allocated (:func:`mark_own_storage`): not a
    user's tensor that a weight was assigned from or tied to, whose extra rows may hold
    anything."""
    return getattr(t.untyped_storage(), "_largeout_own", False)


WEIGHT_SCALES = (None, "label")


# The layers' pickled form: 2 since fp8 weights are trainable parameters (fff17e1); a pickle
# without it holds an fp8 weight with requires_grad False that trained all the same.
_LOWP_FORMAT = 2


class ScaledWeightMixin:
    """The per-label weight scale of a layer with an fp8 ``weight [L, K]`` (module notes):
    the ``weight_scale`` buffer (float32 ``[L]``, or None), its link to the weight for
    ``largeout.optim``, ``rescale_weight_()`` and the checks of a loaded scale."""

    def _init_weight_scale(self, layer: str, weight_scale: Optional[str], device) -> None:
        if weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"{layer}: weight_scale must be None or \"label\"; got {weight_scale!r}")
        L, K = self.weight.shape
        if weight_scale is not None:
            if self.weight.dtype not in FP8_DTYPES:
                raise ValueError(f"{layer}: weight_scale=\"label\" needs an fp8 weight_dtype (float8_e4m3fn or "
                                 f"float8_e5m2); got weight_dtype={self.weight.dtype}")
            if K % 8:
                raise ValueError(f"{layer}: weight_scale=\"label\" needs weight rows a multiple of 8 long; got {K}")
            self.register_buffer("weight_scale", torch.ones(L, dtype=torch.float32, device=device))
        else:
            self.register_buffer("weight_scale", None)
        link_scale(self.weight, self.weight_scale)

    def _init_scaled_uniform_(self, bound: float, generator: Optional[torch.Generator]) -> None:
        """``U(-bound, bound)`` weights: every row's scale from ``bound``, codes drawn in those units."""
        if self.weight.is_meta:
            return
        s = pow2_scale(torch.tensor(bound), self.weight.dtype)
        self.weight_scale.fill_(float(s))
        init_uniform_(self.weight, bound / float(s), generator)

    def _apply(self, fn, *args, **kwargs):
        # A cast of the weight to another dtype (module.half(), .float(), .to(dtype), ...; fp8
        # counts as floating point, so such casts do convert it) turns the layer into one
        # constructed with that weight dtype (weight_scale=None): the scales are folded into
        # the weights first (in float32, then cast); requires_grad (a frozen weight) is kept
        # as torch keeps it; the gradient dtype, weight_dtype and what derives from it
        # (_weight_dtype_changed) follow the new dtype. A cast to fp8 leaves the bias (and its
        # gradient) in its dtype, as the constructor keeps a bias in 16 or 32 bits, and
        # converts the weight's gradient to bf16, the dtype of an fp8 weight's gradients.
        # (The weight is cast as torch casts: round to nearest. A cast of an fp8 layer to its
        # own dtype changes nothing: the bias stays, the scales stay float32.)
        old_dtype = self.weight.dtype
        if (self.weight_scale is not None and old_dtype in FP8_DTYPES
                and fn(self.weight.detach()[:0]).dtype != old_dtype):
            folded = dequantize(self.weight, self.weight_scale)
            link_scale(self.weight, None)
            self.weight.data = folded
            self.weight_scale = None
        saved = self.weight_scale
        # (aliases of the old tensors: torch's _apply may replace the .data of these very objects)
        bias, grad = self._parameters.get("bias"), self.weight.grad
        old_bias = None if bias is None else (bias.detach(), None if bias.grad is None else bias.grad.detach())
        old_grad = None if grad is None else grad.detach()
        out = super()._apply(fn, *args, **kwargs)
        if self.weight_scale is not None and self.weight_scale.dtype != torch.float32:  # e.g. .to(<the fp8 dtype>)
            self.weight_scale = saved.to(self.weight_scale.device, torch.float32)
        w, bias = self.weight, self._parameters.get("bias")
        fit_grad_dtype(w)
        if w.grad is not None and w.grad.dtype in FP8_DTYPES:
            w.grad = old_grad.to(w.grad.device, torch.bfloat16)
        if bias is not None and bias.dtype in FP8_DTYPES:  # (also where the weight was fp8 already)
            b, g = old_bias
            bias.data = b.to(bias.device)
            bias.grad = None if g is None else g.to(bias.device)
        if w.dtype != self.weight_dtype:
            self._weight_dtype_changed()
        link_scale(w, self.weight_scale)
        return out

    def _weight_dtype_changed(self) -> None:
        """After the weight was replaced by one of another dtype (a cast, an assignment, a load
        with ``assign=True``): what the constructor derives from ``weight_dtype``, derived again:
        a weight that is not fp8 has no per-label scale (the forward would not apply one, and a
        later cast would fold a stale one into the weight), so the ``weight_scale`` buffer goes."""
        self.weight_dtype = self.weight.dtype
        if self.weight.dtype not in FP8_DTYPES and self._buffers.get("weight_scale") is not None:
            self.weight_scale = None

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in ("weight", "weight_scale"):  # a new tensor for either (assignment, load with assign=True)
            self.__dict__.setdefault("_lowp_format", _LOWP_FORMAT)
            w = self.__dict__.get("_parameters", {}).get("weight")
            if w is not None and name == "weight":
                fit_grad_dtype(w)
                if "weight_dtype" in self.__dict__ and w.dtype != self.weight_dtype:
                    self._weight_dtype_changed()
            if w is not None and "weight_scale" in self.__dict__.get("_buffers", {}):
                link_scale(w, self._buffers["weight_scale"])

    def __setstate__(self, state):  # unpickling and copy.deepcopy (a copied parameter loses its attributes)
        super().__setstate__(state)
        w = self._parameters.get("weight")
        if "_lowp_format" not in state:  # pickled before fff17e1, where an fp8 weight never required grad
            if w is not None and w.dtype in FP8_DTYPES and not w.requires_grad:
                w.requires_grad_(True)  # (it trained then: its gradient went to weight.grad by hand)
            self._lowp_format = _LOWP_FORMAT
        if w is not None:
            fit_grad_dtype(w)
        if "weight_scale" in self._buffers:
            link_scale(self.weight, self.weight_scale)

    def _state_fits(self, state_dict, prefix: str, error_msgs: list) -> bool:
        """Whether ``load_state_dict`` may write this layer: every parameter and persistent
        buffer that ``state_dict`` holds has its shape. Otherwise the mismatches go into
        ``error_msgs`` (torch raises them at the end) and nothing of the layer is written
        (torch's own load would write the tensors that fit). A missing key is left to torch:
        the layer cannot tell a strict load from another (torch passes strict=True to every
        module and sorts missing keys out at the end). Like the checks of loaded indices and
        scales, this runs before the layer's own load pre-hooks; a hook that reshapes an old
        checkpoint's tensors belongs on a parent module (its hooks run first)."""
        ok = True
        tensors = list(self._parameters.items()) + [
            (n, b) for n, b in self._buffers.items() if n not in self._non_persistent_buffers_set]
        for name, t in tensors:
            if t is None:
                continue
            key = prefix + name
            if key not in state_dict:
                continue
            v = state_dict[key]
            if not torch.is_tensor(v) or v.shape != t.shape:
                got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {got} from checkpoint, "
                                  f"the shape in current model is {tuple(t.shape)}; nothing of "
                                  f"{type(self).__name__} {prefix!r} was loaded")
                ok = False
        return ok

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``torch.nn.Module.load_state_dict``, with a strict load's missing and unexpected
        keys (a checkpoint with a bias into a layer without one, or the other way round)
        raised before anything is written: torch writes every tensor that fits first. (A
        layer inside a larger model is loaded by that model's load, which the layer cannot
        see: there torch's order holds; so does a layer with load hooks of its own, which may
        rename or forgive keys.)"""
        hooks = (getattr(self, "_load_state_dict_pre_hooks", None), getattr(self, "_load_state_dict_post_hooks", None))
        if strict and isinstance(state_dict, Mapping) and not any(hooks):
            own = set(self.state_dict(keep_vars=True))
            given = set(state_dict)
            missing, unexpected = sorted(own - given), sorted(given - own)
            if missing or unexpected:
                parts = []
                if missing:
                    parts.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
                if unexpected:
                    parts.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
                raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                                   + "\n\t".join(parts) + "\n\tNothing was loaded.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _check_loaded_scale(self, state_dict, prefix: str) -> None:
        key = prefix + "weight_scale"
        if self.weight_scale is not None and key in state_dict:
            check_scale(f"{type(self).__name__}: {key}", state_dict[key], self.weight.shape[0])

    @torch.no_grad()
    def rescale_weight_(self, generator: Optional[torch.Generator] = None) -> int:
        """Re-chooses every label's power-of-two scale from its row's largest magnitude
        (rows that grew or shrank in training get back to the format's sweet spot) and
        re-encodes the weights: exact where a row's scale shrinks, stochastically rounded
        where it grows. The weights' values, and any optimizer state (kept in the scaled
        units), are unchanged by it up to that rounding. Returns the number of labels whose
        scale changed. Needs ``weight_scale="label"``."""
        if self.weight_scale is None:
            raise RuntimeError(f"{type(self).__name__}.rescale_weight_: the layer has no weight scale "
                               "(construct it with weight_scale=\"label\")")
        return rescale_rows_(self.weight, self.weight_scale, generator)
