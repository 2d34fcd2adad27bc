"""Which CUDA kernels run: the policy, and the path a problem takes.

On sm_90 GPUs (H100, H200) largeout has Hopper kernels (wgmma, TMA) for 16-bit
group-sparse layers whose fan-in is a multiple of 64 (64, 128 or 256 for the weight
gradient, G >= 32 for both gradients), and for fp8 weights with bf16 activations (the
forward, and dx where dY's rows are a multiple of 8 elements long: the layer's backward
pads them so), which upcast the weight inside; the 16-bit backward kernels read dY at any
row stride; everything else runs the generic kernels
(sm_80+). ``set_policy("generic")`` forces the generic kernels, for comparison.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Iterator, Sequence

import torch

from .functional import GROUP_SIZES

__all__ = ["set_policy", "get_policy", "policy", "path", "launch_counts"]

_PASSES = ("forward", "input", "weight")
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


def set_policy(name: str) -> None:
    """``"auto"`` (default: the Hopper kernels where they apply) or ``"generic"``."""
    if name not in ("auto", "generic"):
        raise ValueError(f'largeout.kernels.set_policy: policy must be "auto" or "generic"; got {name!r}')
    torch.ops.largeout.set_kernel_policy(name)


def get_policy() -> str:
    return torch.ops.largeout.get_kernel_policy()


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Run the block under a kernel policy, then restore the previous one."""
    prev = get_policy()
    set_policy(name)
    try:
        yield
    finally:
        set_policy(prev)


def path(pass_: str, dtype: torch.dtype, batch: int, in_features: int, out_features: int, fan_in: int,
         group_size: int) -> str:
    """``"sm90"`` or ``"generic"``: the CUDA kernels the current device would use for one
    pass (``"forward"``, ``"input"`` or ``"weight"``) of a group-sparse layer. For an fp8
    ``dtype`` (the weight's; bf16 activations): ``"sm90-fp8"`` where the forward or input
    pass has a Hopper kernel that upcasts the weight inside, else the bf16 path the pass
    takes after upcasting it (the weight pass never reads the weight)."""
    if pass_ not in _PASSES:
        raise ValueError(f"largeout.kernels.path: pass_ must be one of {_PASSES}; got {pass_!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"largeout.kernels.path: dtype must be one of {_DTYPES}; got {dtype!r}")
    sizes = dict(batch=batch, in_features=in_features, out_features=out_features, fan_in=fan_in)
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"largeout.kernels.path: {name} must be an integer >= 1; got {v!r}")
    batch, in_features, out_features, fan_in = (int(v) for v in sizes.values())
    if fan_in > in_features:
        raise ValueError(f"largeout.kernels.path: fan_in must be at most in_features = {in_features}; got {fan_in}")
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size not in GROUP_SIZES:
        raise ValueError(f"largeout.kernels.path: group_size must be one of {GROUP_SIZES}; got {group_size!r}")
    group_size = int(group_size)
    if not torch.cuda.is_available():
        raise RuntimeError("largeout.kernels.path: no CUDA device is available (the path is that of the current "
                           "CUDA device's kernels; on the CPU the CPU kernels run)")
    return torch.ops.largeout.cuda_kernel_path(pass_, dtype, batch, in_features, out_features, fan_in, group_size)


def launch_counts() -> dict:
    """Kernel launches since the process started, by pass and path (``"generic"``,
    ``"sm90"``, ``"sm90-fp8"``; the forward's ``"sm90-g128-as-64"`` counts those of its
    ``"sm90"`` launches that ran a G = 128 layer through the G = 64 kernel: by default at
    fan-in 256 and batch >= 256 with an output whose rows are 16-byte aligned, where the
    G = 64 kernel runs three computing warpgroups; ``LARGEOUT_SM90_FWD_G128_AS_64=0`` /
    ``=1``: never / always; the weight and input passes' ``"sm90-row-classes"`` count those of
    their ``"sm90"`` launches that read a dY whose row stride is not a multiple of 8 elements
    (an odd number of labels, say) by TMA as eight classes of rows: the default where they apply
    (16-bit weights, fan-in 64, 128 or 256); ``LARGEOUT_SM90_DW_RC=0`` / ``LARGEOUT_SM90_DX_RC=0``
    switch them off)."""
    c: Sequence[int] = torch.ops.largeout.cuda_launch_counts()
    counts = {p: {"generic": c[2 * i], "sm90": c[2 * i + 1], "sm90-fp8": c[6 + i]} for i, p in enumerate(_PASSES)}
    counts["forward"]["sm90-g128-as-64"] = c[9]
    counts["weight"]["sm90-row-classes"] = c[10]
    counts["input"]["sm90-row-classes"] = c[11]
    return counts
