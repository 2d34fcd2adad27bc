"""Training step (forward + backward) of our group-sparse layer next to the public HASTE
kernels (github.com/xmc-aalto/haste, `shared_ffi`), built and run in the same process.

    bash bench/haste_prepare.sh            # here: export HASTE's sources to .haste/
    # on the GPU machine (carry .haste):
    pip install --no-build-isolation --no-deps ./.haste
    python bench/haste_side_by_side.py --out $OUT/haste.json

Both layers get the same inputs (bf16, random unique indices per group); their outputs
are compared before timing so that both compute the same function. Times are medians of
CUDA-event-timed steps (forward, then backward of a random dY).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

import largeout
from largeout import functional as F
from largeout.nn import random_group_indices

from bench_group_sparse import median_ms  # same timing as the kernel benchmark (bench/ is on sys.path)


def haste_dx_rounding() -> str:
    """HASTE rounds its fp32 dx to bf16 stochastically with a Triton kernel. Where that
    kernel does not compile with the installed Triton, the same rounding (16 random low
    bits added, then truncation) runs as torch ops on the [B, H] tensor instead: a few
    microseconds at these shapes, recorded in the JSON."""
    import shared_ffi.bindings as hb

    x = torch.randn(4, 8, device="cuda")
    try:
        hb.stochastic_rounding(x, torch.empty_like(x, dtype=torch.bfloat16), 123)
        return "HASTE's Triton kernel"
    except Exception as e:  # triton.compiler.errors.CompilationError and the like
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

    def torch_sr(src, out, seed):
        bits = src.view(torch.int32)
        noise = torch.randint(0, 1 << 16, src.shape, device=src.device, dtype=torch.int32)
        out.copy_(((bits + noise) & -65536).view(torch.float32).to(out.dtype))

    hb.stochastic_rounding = torch_sr
    return f"torch ops (HASTE's Triton kernel failed to compile here: {first[:200]})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=512)
    p.add_argument("--H", type=int, default=768)
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--G", type=int, default=32)
    p.add_argument("--L", type=int, default=670_208)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from shared_ffi.ops import group_ffi_mul  # the HASTE package (built from .haste)

    sr_note = haste_dx_rounding()

    gen = torch.Generator().manual_seed(0)
    dt = torch.bfloat16
    x = torch.randn(a.B, a.H, generator=gen).to("cuda", dt).requires_grad_(True)
    w = (torch.randn(a.L, a.K, generator=gen) / a.K**0.5).to("cuda", dt).requires_grad_(True)
    b = torch.randn(a.L, generator=gen).to("cuda", dt).requires_grad_(True)
    idx = random_group_indices(-(-a.L // a.G), a.H, a.K, generator=gen).cuda()
    dy = torch.randn(a.B, a.L, generator=gen).to("cuda", dt)

    layers = {
        "largeout": lambda: F.group_sparse_linear(x, w, idx, b, a.G),
        "haste": lambda: group_ffi_mul(x, w, idx, b, a.G),
    }
    ys = {k: f().float() for k, f in layers.items()}
    rel = float((ys["haste"] - ys["largeout"]).norm() / ys["largeout"].norm())
    if rel > 2e-2:
        raise SystemExit(f"the two layers disagree (relative difference {rel:.3g}): check the index layout")

    res = {}
    for name, f in layers.items():
        def step(f=f):
            for t in (x, w, b):
                t.grad = None
            f().backward(dy)
        res[name] = {"forward_ms": median_ms(f, a.warmup, a.iters), "step_ms": median_ms(step, a.warmup, a.iters)}
    out = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"), "git_commit": os.environ.get("LARGEOUT_GIT_COMMIT"),
        "haste_commit": open(os.path.join(os.path.dirname(__file__), "..", ".haste", "COMMIT")).read().strip()
        if os.path.exists(os.path.join(os.path.dirname(__file__), "..", ".haste", "COMMIT")) else None,
        "shape": vars(a), "dtype": "bf16", "statistic": "median", "relative_difference_y": rel,
        "haste_dx_rounding": sr_note,
        "largeout_kernels": {p: largeout.kernels.path(p, dt, a.B, a.H, a.L, a.K, a.G) for p in ("forward", "input",
                                                                                                   "weight")},
        "results": res, "haste_over_largeout_step": res["haste"]["step_ms"] / res["largeout"]["step_ms"],
    }
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
