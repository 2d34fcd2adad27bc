"""Optimizers for low-precision parameters (bf16, fp16, fp8) without fp32 master weights.

Each step computes the update in float32 (float64 for float64 parameters, which only
``fused=False`` takes) from the stored low-precision values, then stores the new value back
in the parameter's own dtype, rounded

- ``rounding="stochastic"`` (default): to one of the two neighbours, unbiased
  (:func:`largeout.stochastic_round`), so steps and weight decay smaller than half an
  ulp still act on average;
- ``rounding="nearest"``: round to nearest (such small steps are lost: for comparison).

fp8 weights of largeout's layers with a per-label scale (``weight_scale="label"``) are
updated in the scaled units: the value ``code * scale``, the gradient, the buffers and the
step are all in them, and only the rounding into the stored codes divides by the
(power-of-two) scale; so the learning rate means what it means for an unscaled weight.

``kahan=True`` adds a compensation buffer (bf16, or the parameter's 16-bit dtype) that
carries the part of each update the rounding lost into the next step; it applies to bf16,
fp16 and fp8 parameters only (float32 and float64 ones, in the same groups, are updated
without one: their steps are not rounded into a narrower format).

Random bits come from the optimizer's own CPU generator (seeded by ``seed``, or from
torch's default generator; like any torch CPU generator it keeps the seed's low 32 bits, so
seeds that differ only above bit 31 give the same stream), saved by ``state_dict()``: a resumed run continues
bit-identically. float32 parameters are updated like torch.optim's (within float32
rounding of the arithmetic's order), with AdamW's moments in ``state_dtype``: bf16 by
default, so pass ``state_dtype=torch.float32`` for torch's fp32 moments.

torch.optim's options that these optimizers do not implement (``maximize``, ``amsgrad``,
``foreach``, ``capturable``, ``differentiable``, torch's ``fused``) are refused with an error
when set in a parameter group, unless false or None.

``fused=True`` (the default) runs the whole step as one native call per group of
tensors sharing a device and dtypes (on CUDA: one kernel launch; on the CPU: a
threaded loop), with the same per-element arithmetic and random bits on both, so a
CPU and a GPU run of the fused step give identical bits. A step checks everything
before it writes anything: on an error, parameters, state and generator stay as they
were. A group's ``momentum`` or ``kahan`` may change between steps: buffers are created
when first needed (a new momentum buffer starts as the gradient) and left alone while
unused, as in torch.optim. ``fused=False`` selects the
reference implementation (torch ops, one tensor at a time), which rounds with the
same rule but draws its random bits differently.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Iterable, Optional, Tuple

import numpy as np
import torch

from ..nn.lowp import dequantize, row_scale
from ..precision import SR_DTYPES, stochastic_round

__all__ = ["SGD", "AdamW"]

_LOW = SR_DTYPES  # dtypes stored with rounding
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)
_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # AdamW's moments
# torch.optim options a parameter group may carry that these optimizers do not implement
_TORCH_ONLY = ("maximize", "amsgrad", "foreach", "capturable", "differentiable", "fused")


def _real(name: str, field: str, value, lo: float = 0.0, lo_open: bool = False, hi: float = math.inf) -> None:
    """Raise unless ``value`` is a finite real number in [lo, hi), or (lo, hi) with
    ``lo_open``: a Python or numpy real (not a bool) or a one-element real tensor, as
    torch.optim takes (the value itself is kept as given)."""
    v = value
    if torch.is_tensor(v) and v.numel() == 1 and not v.is_complex() and v.dtype != torch.bool:
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: {field} must be a real number; got {type(value).__name__} {value!r}")
    v = float(v)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v >= hi:
        raise ValueError(f"{name}: {field} must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}); "
                         f"got {value}")


def _flag(name: str, field: str, value) -> None:
    """Raise unless ``value`` is a bool (Python's or numpy's)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: {field} must be a bool; got {type(value).__name__}")


def _store(dst: torch.Tensor, value32: torch.Tensor, rounding: str, gen: torch.Generator) -> None:
    """dst <- value32 in dst's dtype (stochastic or nearest rounding; saturating)."""
    if dst.dtype not in _LOW:
        dst.copy_(value32)
        return
    if rounding == "stochastic":
        dst.copy_(stochastic_round(value32.float().contiguous(), dst.dtype, generator=gen))  # (float64: a moment)
    else:
        big = torch.finfo(dst.dtype).max
        dst.copy_(value32.clamp(-big, big).to(dst.dtype))


def _acc(p: torch.Tensor) -> torch.dtype:
    """The dtype a parameter's update is computed in: float32, float64 for a float64
    parameter (the reference path, ``fused=False``, takes those; the fused step does not)."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _buffer_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Optimizer buffers of a parameter: its own dtype if 16-bit or wider, bf16 for fp8."""
    return torch.bfloat16 if param_dtype in _FP8 else param_dtype


class _Sequential(Exception):
    """Raised while a fused step is planned: its groups must be stepped one after another."""


class _LowPrecisionOptimizer(torch.optim.Optimizer):
    _KIND = -1

    def __init__(self, params, defaults, rounding: str, kahan: bool, seed: Optional[int], fused: bool = True) -> None:
        _flag(type(self).__name__, "fused", fused)
        fused = bool(fused)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise TypeError(f"{type(self).__name__}: seed must be an int or None; got {type(seed).__name__} "
                                f"{seed!r}")
            seed = int(seed)
            if not 0 <= seed < 2**64:
                raise ValueError(f"{type(self).__name__}: seed must be in [0, 2**64) or None; got {seed}")
        self.fused = fused
        # (torch.optim.Optimizer.__init__ adds each group through add_param_group, which
        # checks its hyperparameters and parameters)
        super().__init__(params, {**defaults, "rounding": rounding, "kahan": kahan})
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self._gen = torch.Generator().manual_seed(seed)

    def _check_group(self, group: dict) -> None:
        """Raise unless the group's hyperparameters are valid (each subclass adds its own)."""
        name = type(self).__name__
        for key in _TORCH_ONLY:
            if group.get(key) not in (None, False):
                raise ValueError(f"{name}: torch.optim's option {key!r} is not implemented by largeout.optim; "
                                 f"got {key}={group[key]!r} in a parameter group (leave it out, or False)")
        if group["rounding"] not in ("stochastic", "nearest"):
            raise ValueError(f'{name}: rounding must be "stochastic" or "nearest"; got {group["rounding"]!r}')
        _flag(name, "kahan", group["kahan"])
        _real(name, "lr", group["lr"])
        _real(name, "weight_decay", group["weight_decay"])

    def add_param_group(self, param_group: dict) -> None:
        """``torch.optim.Optimizer.add_param_group``, then the checks of the group's
        parameters (floating point) and hyperparameters; a group that fails is not added."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "betas" in group and not isinstance(group["betas"], tuple):  # a list, an array or a tensor pair
            try:
                group["betas"] = tuple(group["betas"])
            except TypeError:
                pass  # (_check_group says what is wrong)
        try:
            for p in group["params"]:
                if not p.dtype.is_floating_point:
                    raise TypeError(f"{type(self).__name__}: parameters must be floating point; got {p.dtype}")
            self._check_group(group)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    @staticmethod
    def _value(p: torch.Tensor) -> torch.Tensor:
        """p's values in its update's dtype (:func:`_acc`; times its row scale, for a scaled
        fp8 weight)."""
        return dequantize(p, row_scale(p), _acc(p))

    def _store_param(self, p: torch.Tensor, value32: torch.Tensor, rounding: str) -> None:
        sc = row_scale(p)
        _store(p, value32 if sc is None else value32 / sc[:, None], rounding, self._gen)

    def _apply(self, p: torch.Tensor, update32: torch.Tensor, group: dict, state: dict) -> None:
        """p <- p + update32, rounded (with Kahan compensation when asked)."""
        p32 = self._value(p)
        if group["kahan"] and p.dtype in _LOW:
            comp = state.get("kahan_comp")
            if comp is None:
                comp = state["kahan_comp"] = torch.zeros_like(p, dtype=_buffer_dtype(p.dtype))
            y = update32 - comp.float()
            t32 = p32 + y
            self._store_param(p, t32, group["rounding"])
            # What the store lost (the stored value minus the exact sum), kept for next time.
            _store(comp, (self._value(p) - p32) - y, "nearest", self._gen)
        else:
            self._store_param(p, p32 + update32, group["rounding"])

    @staticmethod
    def _where(i: int, p: torch.Tensor) -> str:
        return f"parameter {i} of its group (shape {tuple(p.shape)}, {p.dtype})"

    def _check_step(self) -> None:
        """Everything the step could reject, checked before any parameter or state changes.
        (A tensor's description is formatted only for an error message: this loop runs over
        every tensor on every step.)"""
        name, fused, states = type(self).__name__, self.fused, self.state
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError(f"{name}: sparse gradients are not supported; {self._where(i, p)} has one")
                shape, device = p.shape, p.device
                if g.shape != shape or g.device != device:
                    raise RuntimeError(f"{name}: the gradient of {self._where(i, p)} must have its shape and device; "
                                       f"got {tuple(g.shape)} on {g.device}")
                state, strided = states.get(p), None  # (the first non-contiguous state: the fused step's
                if state:                                # error, raised after the parameter's own checks)
                    for key, t in state.items():
                        if key == "step" or not isinstance(t, torch.Tensor):
                            continue
                        if t.shape != shape or t.device != device:
                            raise RuntimeError(f"{name}: state {key!r} of {self._where(i, p)} must have its shape and "
                                               f"device; got {tuple(t.shape)} on {t.device}")
                        if strided is None and not t.is_contiguous():
                            strided = key
                if not fused:
                    continue
                if p.dtype not in _FUSED_DTYPES or g.dtype not in _FUSED_DTYPES:
                    raise TypeError(f"{name}: the fused step takes float32, bfloat16, float16, float8_e4m3fn or "
                                    f"float8_e5m2 parameters and gradients; {self._where(i, p)} has a {g.dtype} "
                                    f"gradient (fused=False takes any float dtypes)")
                if not p.is_contiguous():
                    raise RuntimeError(f"{name}: the fused step needs contiguous parameters; {self._where(i, p)} is "
                                       f"not (or fused=False)")
                if strided is not None:
                    raise RuntimeError(f"{name}: state {strided!r} of {self._where(i, p)} must be contiguous for the "
                                       f"fused step")
                if state:
                    self._check_fused_state(p, state, i)

    def _check_fused_state(self, p: torch.Tensor, state: dict, i: int) -> None:
        """The dtypes the fused op takes for an existing state (e.g. a loaded one): Kahan
        buffers in the parameter's buffer dtype (each subclass adds its buffers). (i: p's
        index in its group, for the message; shapes, devices and contiguity are checked by
        _check_step.)"""
        comp = state.get("kahan_comp")
        if comp is not None and comp.dtype != _buffer_dtype(p.dtype):
            raise TypeError(f"{type(self).__name__}: state 'kahan_comp' of {self._where(i, p)} must be "
                            f"{_buffer_dtype(p.dtype)}; got {comp.dtype}")

    def _check_groups(self) -> None:
        """The groups' hyperparameters, as the constructor checked them: a learning-rate
        scheduler or a user may have changed them since. The message names the group."""
        for i, group in enumerate(self.param_groups):
            try:
                self._check_group(group)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{e} (in param_groups[{i}])") from None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_groups()
        if self.fused:
            self._fused_step()
            return loss
        self._check_step()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, self.state[p])
        return loss

    def _update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        raise NotImplementedError

    # -- fused path ---------------------------------------------------------------------

    def _buffers(self, group: dict) -> tuple:
        """The state keys the subclass's update needs in this group (Kahan's aside)."""
        raise NotImplementedError

    def _init_buffers(self, p: torch.Tensor, group: dict, state: dict) -> None:
        """Sets the entries of `_buffers` that `state` lacks or holds as None (new objects: a
        failed step puts the old ones back), as the reference path would start them."""
        raise NotImplementedError

    def _needed(self, group: dict) -> Tuple[tuple, tuple]:
        """The state keys the group's step needs: for low-precision parameters, for others."""
        own = self._buffers(group)
        return own + (("kahan_comp",) if group["kahan"] else ()), own

    def _init_state(self, p: torch.Tensor, group: dict, state: dict) -> None:
        """`_init_buffers`, then the Kahan buffer where the group asks for one and p is low-precision."""
        self._init_buffers(p, group, state)
        if group["kahan"] and p.dtype in _LOW and state.get("kahan_comp") is None:
            state["kahan_comp"] = torch.zeros_like(p, dtype=_buffer_dtype(p.dtype))

    def _uses_buf1(self, group: dict) -> bool:
        return True

    def _bucket_keys(self, group: dict, items: list, commits: list, ctx: dict) -> list:
        """For each (p, grad, state, added) the step updates (added: the state keys this step
        created), what tensors launched together must share besides device and dtypes
        (AdamW's step count: the count after this step, whose write-back goes into `commits`,
        run once every launch has succeeded; `ctx` is shared by the step's groups)."""
        return [()] * len(items)

    def _hyper(self, group: dict, key) -> dict:
        raise NotImplementedError

    def _fused_step(self) -> None:
        """The fused path. Every launch's arguments are gathered first (creating the state
        entries the step needs that are missing); a single launch's op checks all its
        arguments before it writes anything, and several launches are all checked first (the
        op _fused_optim_check). So the per-tensor checks are native: the Python ones
        (_check_step) run only once something failed, to say what in the optimizer's terms,
        after the created state entries, the step counts and the generator are put back."""
        created, launches, commits = [], [], []
        rng, launched = self._gen.get_state(), False
        try:
            ctx = {}
            for group in self.param_groups:
                self._plan_group(group, created, launches, commits, ctx)
            if len(launches) > 1:
                check = torch.ops.largeout._fused_optim_check
                for args in launches:
                    check(*args)
            op = torch.ops.largeout._fused_optim_step_
            for args in launches:
                op(*args)
                launched = True
        except _Sequential:
            self._undo(created, rng)
            launches = None
        except Exception as native:
            if launched:  # (a device error after a launch wrote: the counts advance, as they would have)
                for commit in commits:
                    commit()
                raise
            self._undo(created, rng)
            try:
                self._check_step()
            except (TypeError, RuntimeError) as ours:
                raise ours from None  # (ours names the parameter: the native error is not shown with it)
            raise native
        if launches is None:  # (outside the except block: an error here is shown without _Sequential)
            self._sequential_step()
            return
        for commit in commits:
            commit()

    def _undo(self, created: list, rng: torch.Tensor) -> None:
        """Puts back the states a step created or changed (latest first) and the generator."""
        states = self.state
        for p, before in reversed(created):
            if before is None:
                states.pop(p, None)
            else:
                state = states[p]
                state.clear()
                state.update(before)
        self._gen.set_state(rng)

    def _sequential_step(self) -> None:
        """The fused step one group after another, each group's step counts written before the
        next group reads them (where groups share a count: AdamW), as torch.optim steps its
        groups. Every tensor is checked in Python first; what only the op checks (an fp8 row
        scale's shape, say) can still stop a later group after an earlier one was stepped."""
        self._check_step()
        op = torch.ops.largeout._fused_optim_step_
        for group in self.param_groups:
            launches, commits = [], []
            self._plan_group(group, [], launches, commits, None)
            try:
                for args in launches:
                    op(*args)
            finally:  # (counts advance with their parameters, also when a later launch fails)
                for commit in commits:
                    commit()

    def _plan_group(self, group: dict, created: list, launches: list, commits: list, ctx) -> None:
        """Appends the op's arguments for each launch of the group's step to `launches`: one
        per device, dtypes and bucket key. (This loop runs over every tensor on every step, so
        it touches each as little as it can; the op checks them.)"""
        states, items, (need_low, need_other) = self.state, [], self._needed(group)
        one_need = need_low if need_low == need_other else None
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            state = states.get(p)
            if state:  # (the usual case: every entry the step needs is there)
                for k in one_need if one_need is not None else need_low if p.dtype in _LOW else need_other:
                    if state.get(k) is None:  # (old torch.optim checkpoints hold momentum_buffer: None)
                        break
                else:
                    items.append((p, g, state, ()))
                    continue
            before = None if state is None else dict(state)
            created.append((p, before))
            if state is None:
                state = states[p] = {}
            self._init_state(p, group, state)
            items.append((p, g, state, tuple(k for k in state if before is None or state[k] is not before.get(k))))
        if not items:
            return
        extras = self._bucket_keys(group, items, commits, ctx)
        # (A parameter listed twice, which torch.optim warns about, is updated once per listing
        # in turn, as torch.optim does: its n-th listing goes into a launch of n-th listings.)
        seen = {} if len(set(map(id, group["params"]))) < len(group["params"]) else None
        buckets = {}
        for (p, g, state, _), extra in zip(items, extras):
            n = 0
            if seen is not None:
                n = seen.get(id(p), 0)
                seen[id(p)] = n + 1
            key = (p.device, p.dtype, g.dtype) + extra + (row_scale(p) is not None, n)
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = [(p, g, state)]
            else:
                bucket.append((p, g, state))
        kind, stochastic, b2 = self._KIND, group["rounding"] == "stochastic", self._BUF2
        b1 = self._BUF1 if self._uses_buf1(group) else None
        for key, members in buckets.items():
            params = [p for p, _, _ in members]
            grads = [g if g.is_contiguous() else g.contiguous() for _, g, _ in members]
            buf1 = [st[b1] for _, _, st in members] if b1 else []
            buf2 = [st[b2] for _, _, st in members] if b2 else []
            # (Kahan buffers as the group asks now: a state may keep one from when it asked)
            comps = [st["kahan_comp"] for _, _, st in members] if group["kahan"] and key[1] in _LOW else []
            scales = [row_scale(p) for p in params] if key[-2] else []
            h = self._hyper(group, key)
            seed, offset = torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, generator=self._gen).tolist()
            launches.append((params, grads, buf1, buf2, comps, scales, kind, stochastic, h.get("lr", 0.0),
                             h.get("momentum", 0.0), h.get("dampening", 0.0), h.get("nesterov", False),
                             h.get("first", False), h.get("weight_decay", 0.0), h.get("beta1", 0.0),
                             h.get("beta2", 0.0), h.get("eps", 0.0), h.get("step_size", 0.0),
                             h.get("inv_sqrt_bc2", 0.0), seed, offset))

    def __getstate__(self):  # copy.deepcopy and pickle: torch.optim keeps defaults, state and groups only
        return {**super().__getstate__(), "fused": self.fused, "largeout_rng_state": self._gen.get_state()}

    def __setstate__(self, state):  # (torch.optim's load_state_dict calls it too, with state and groups only)
        state = dict(state)
        fused, rng = state.pop("fused", None), state.pop("largeout_rng_state", None)
        super().__setstate__(state)
        if fused is not None:
            self.fused = fused
        if rng is not None:
            self._gen = torch.Generator()
            self._gen.set_state(rng)

    def state_dict(self):
        sd = super().state_dict()
        sd["largeout_rng_state"] = self._gen.get_state()
        return sd

    def _check_loaded_state(self, p: torch.Tensor, state: Mapping, pid, i: int) -> None:
        """A loaded parameter's state (state_dict's parameter id ``pid``, the ``i``-th of its
        group), before anything is replaced: its step count a number >= 0, both moments or
        neither, and with the fused step the dtypes that step takes (what the step would
        reject later, after the optimizer's own state was gone)."""
        name = type(self).__name__
        if "step" in state:
            t = state["step"]
            v = t.item() if torch.is_tensor(t) and t.numel() == 1 else t
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: state 'step' of parameter id {pid} in state_dict must be a count >= 0; "
                                 f"got {t!r}")
        for key, t in state.items():
            if key != "step" and torch.is_tensor(t) and not t.dtype.is_floating_point:
                raise TypeError(f"{name}: state {key!r} of parameter id {pid} in state_dict must be a floating-point "
                                f"tensor; got {t.dtype}")
        if self._BUF2 is not None and (self._BUF1 in state) != (self._BUF2 in state):
            have, lack = (self._BUF1, self._BUF2) if self._BUF1 in state else (self._BUF2, self._BUF1)
            raise ValueError(f"{name}: the state of parameter id {pid} in state_dict has {have!r} but not {lack!r}")
        if self.fused:
            try:
                self._check_fused_state(p, state, i)
            except TypeError as e:
                raise TypeError(f"{e} (parameter id {pid} in state_dict; an optimizer with fused=False takes "
                                f"other dtypes)") from None

    def load_state_dict(self, state_dict) -> None:
        """``torch.optim.Optimizer.load_state_dict`` plus the random generator's state; the
        groups' hyperparameters, the state tensors' shapes and the generator state are checked
        before anything is replaced. Load hooks run as torch.optim runs them: the pre-hooks
        first (what they return is what is checked and loaded), the post-hooks last."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}.load_state_dict: state_dict must be a mapping (an optimizer's state_dict()); "
                            f"got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        pre, post = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        for hook in pre.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = dict(result)
        rng = state_dict.pop("largeout_rng_state", None)
        saved = state_dict.get("state", {})
        if not isinstance(saved, Mapping) or not all(isinstance(v, Mapping) for v in saved.values()):
            raise TypeError(f"{name}: state_dict['state'] must map parameter ids to dicts of state")
        if rng is not None:
            try:
                torch.Generator().set_state(rng)
            except (TypeError, RuntimeError) as e:
                raise ValueError(f"{name}: largeout_rng_state is not a CPU generator state ({e})") from None
        groups = state_dict.get("param_groups", [])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{name}: state_dict has {len(groups)} parameter groups; the optimizer has "
                             f"{len(self.param_groups)}")
        for i, (g, ours) in enumerate(zip(groups, self.param_groups)):
            if len(g.get("params", ())) != len(ours["params"]):
                raise ValueError(f"{name}: parameter group {i} of state_dict has {len(g.get('params', ()))} "
                                 f"parameters; the optimizer's has {len(ours['params'])}")
        for g in groups:
            missing = sorted(k for k in self.defaults if k not in g)
            if missing:
                raise ValueError(f"{name}: a parameter group of state_dict lacks {', '.join(missing)}")
            self._check_group(g)
        ids = [pid for g in groups for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        orphans = sorted(set(saved) - set(ids), key=str)
        if orphans:
            raise ValueError(f"{name}: state_dict holds state for parameter ids {orphans}, which no parameter group "
                             f"of it lists (its groups list {sorted(ids, key=str)})")
        for g, ours in zip(groups, self.param_groups):
            for i, (pid, p) in enumerate(zip(g["params"], ours["params"])):
                for key, value in saved.get(pid, {}).items():
                    if torch.is_tensor(value) and key != "step" and value.shape != p.shape:
                        raise ValueError(f"{name}: state {key!r} of parameter {pid} has shape "
                                         f"{tuple(value.shape)}; the parameter's is {tuple(p.shape)}")
                self._check_loaded_state(p, saved.get(pid, {}), pid, i)
        # (torch.optim's load without the hooks: they run here, around it)
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre, post
        # torch.optim casts floating-point state to the parameter's dtype (and would turn a
        # bf16 momentum buffer of an fp16 or fp8 parameter into that format): put back the
        # saved tensors in their own dtypes.
        for pid, p in zip(ids, params):
            for key, value in saved.get(pid, {}).items():
                if torch.is_tensor(value) and key != "step":
                    self.state[p][key] = value.to(device=p.device, copy=True)
        if rng is not None:
            self._gen.set_state(rng)
        for hook in post.values():
            hook(self)


class SGD(_LowPrecisionOptimizer):
    """SGD with momentum, dampening, Nesterov and (coupled, L2) weight decay, as
    ``torch.optim.SGD``, for float32, bf16, fp16 and fp8 parameters (float64 with
    ``fused=False``; see the module's notes)."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, rounding: str = "stochastic",
                 kahan: bool = False, seed: Optional[int] = None, fused: bool = True) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults, rounding, kahan, seed, fused)

    _KIND, _BUF1, _BUF2 = 0, "momentum_buffer", None

    def _check_fused_state(self, p, state, i) -> None:
        super()._check_fused_state(p, state, i)
        buf = state.get("momentum_buffer")
        if buf is not None and buf.dtype != _buffer_dtype(p.dtype):
            raise TypeError(f"SGD: state 'momentum_buffer' of {self._where(i, p)} must be {_buffer_dtype(p.dtype)}; "
                            f"got {buf.dtype}")

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        _real("SGD", "momentum", group["momentum"])
        _real("SGD", "dampening", group["dampening"], lo=-math.inf)
        _flag("SGD", "nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")

    def _buffers(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _init_buffers(self, p: torch.Tensor, group: dict, state: dict) -> None:
        if group["momentum"] != 0 and state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=_buffer_dtype(p.dtype))

    def _uses_buf1(self, group):
        return group["momentum"] != 0  # (a buffer kept from when the group had momentum is left alone)

    def _bucket_keys(self, group, items, commits, ctx):
        # "first": the momentum buffer was just created and starts as the gradient
        return [("momentum_buffer" in added,) for _, _, _, added in items]

    def _hyper(self, group: dict, key) -> dict:
        return dict(lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                    nesterov=group["nesterov"], weight_decay=group["weight_decay"], first=key[3])

    def _update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        lr, mom, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
        # Out-of-place arithmetic throughout: .float() of a float32 tensor is the tensor
        # itself (the gradient, or a float32 buffer).
        d = p.grad.to(_acc(p))
        if wd != 0:
            d = d + wd * self._value(p)
        if mom != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.zeros_like(p, dtype=_buffer_dtype(p.dtype))
                b32 = d.clone()
            else:
                b32 = mom * buf.to(d.dtype) + (1 - damp) * d
            _store(buf, b32, group["rounding"], self._gen)
            d = d + mom * b32 if group["nesterov"] else b32
        self._apply(p, -lr * d, group, state)


class AdamW(_LowPrecisionOptimizer):
    """AdamW (decoupled weight decay), as ``torch.optim.AdamW``, for float32, bf16, fp16 and fp8
    parameters (float64 with ``fused=False``). The moments are stored in ``state_dtype`` (bf16 by default, rounded like the
    parameters; float32 for exact moments)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, rounding: str = "stochastic", kahan: bool = False,
                 state_dtype: torch.dtype = torch.bfloat16, seed: Optional[int] = None, fused: bool = True) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, state_dtype=state_dtype)
        super().__init__(params, defaults, rounding, kahan, seed, fused)

    _KIND, _BUF1, _BUF2 = 1, "exp_avg", "exp_avg_sq"

    def _check_fused_state(self, p, state, i) -> None:
        super()._check_fused_state(p, state, i)
        m, v = state.get("exp_avg"), state.get("exp_avg_sq")
        if m is not None and (m.dtype not in _STATE_DTYPES or v is None or v.dtype != m.dtype):
            raise TypeError(f"AdamW: states 'exp_avg' and 'exp_avg_sq' of {self._where(i, p)} must share a dtype of "
                            f"float32, bfloat16 or float16; got {m.dtype} and {None if v is None else v.dtype}")

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        b = group["betas"]
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ValueError(f"AdamW: betas must be a pair (beta1, beta2); got {b!r}")
        _real("AdamW", "betas[0]", b[0], hi=1)
        _real("AdamW", "betas[1]", b[1], hi=1)
        _real("AdamW", "eps", group["eps"], lo_open=True)
        if group["state_dtype"] not in _STATE_DTYPES:
            raise ValueError(f"AdamW: state_dtype must be float32, bfloat16 or float16; got {group['state_dtype']}")

    def _buffers(self, group):
        return ("step", "exp_avg", "exp_avg_sq")

    def _init_buffers(self, p: torch.Tensor, group: dict, state: dict) -> None:
        fresh = state.get("step") is None  # (moments without a count start again, as in the reference path)
        if fresh:
            state["step"] = torch.zeros((), dtype=torch.float32)
        for key in ("exp_avg", "exp_avg_sq"):
            if fresh or state.get(key) is None:
                state[key] = torch.zeros_like(p, dtype=group["state_dtype"])

    def _bucket_keys(self, group, items, commits, ctx):
        # The step counts (0-dim float32 tensors on the CPU, as torch.optim.AdamW keeps them)
        # are read with item(); the counts after the step are written back, once every launch
        # has succeeded, with one foreach copy per distinct count (not `+= 1` per tensor, which
        # is several times slower).
        steps = [state["step"] for _, _, state, _ in items]
        step_ids = set(map(id, steps))
        if ctx is not None and len(self.param_groups) > 1:
            # A count (or a whole state) shared with an earlier group must see that group's
            # advance first, as torch.optim's group-by-group step does: the sequential step.
            seen = ctx.setdefault("step_ids", set())
            if not seen.isdisjoint(step_ids):
                raise _Sequential
            seen |= step_ids
        f32 = torch.float32
        # (Only where every count is its own tensor: a parameter listed twice, or one count shared
        # by several states, advances once per listing, as in torch.optim, on the path below.)
        if len(step_ids) == len(steps) and \
                all(type(t) is torch.Tensor and t.dtype is f32 and t.is_cpu and not t.ndim for t in steps):
            after, same = [t.item() + 1 for t in steps], {}
            for t, c in zip(steps, after):
                ts = same.get(c)
                if ts is None:
                    same[c] = [t]
                else:
                    ts.append(t)
            srcs = {c: torch.tensor(c, dtype=f32) for c in same}  # (as float32 the count rounds, as += 1 would)
            stored = {c: int(src.item()) for c, src in srcs.items()}
            counts = [stored[c] for c in after]
            commits.append(lambda: [torch._foreach_copy_(ts, [srcs[c]] * len(ts)) for c, ts in same.items()])
        else:  # (a loaded state may hold its counts as numbers, in another dtype or on another device)
            work, counts = {}, []  # the counts advanced on copies, written back by the commit
            for _, _, state, _ in items:
                s = state["step"]
                k = id(s) if isinstance(s, torch.Tensor) else ("state", id(state))
                w = work.get(k)
                if w is None:
                    w = work[k] = [state, s, s.clone() if isinstance(s, torch.Tensor) else s]
                w[2] += 1
                counts.append(int(w[2]))

            def commit():
                for state, s, value in work.values():
                    if isinstance(s, torch.Tensor):
                        s.copy_(value)
                    else:
                        state["step"] = value
            commits.append(commit)
        return [(t, state["exp_avg"].dtype) for t, (_, _, state, _) in zip(counts, items)]

    def _hyper(self, group: dict, key) -> dict:
        (b1, b2), t = group["betas"], key[3]
        return dict(lr=group["lr"], beta1=b1, beta2=b2, eps=group["eps"], weight_decay=group["weight_decay"],
                    step_size=group["lr"] / (1 - b1**t), inv_sqrt_bc2=1.0 / math.sqrt(1 - b2**t))

    def _update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=group["state_dtype"])
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=group["state_dtype"])
        state["step"] += 1
        t = float(state["step"])
        g = p.grad.to(_acc(p))
        m = b1 * state["exp_avg"].to(g.dtype) + (1 - b1) * g
        v = b2 * state["exp_avg_sq"].to(g.dtype) + (1 - b2) * g * g
        _store(state["exp_avg"], m, group["rounding"], self._gen)
        _store(state["exp_avg_sq"], v, group["rounding"], self._gen)
        step_size = lr / (1 - b1**t)
        denom = (v / (1 - b2**t)).sqrt() + eps
        update = (-step_size) * m / denom
        if wd != 0:
            update = update - (lr * wd) * self._value(p)
        self._apply(p, update, group, state)
