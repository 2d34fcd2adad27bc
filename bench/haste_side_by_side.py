"""Training step (forward + backward) of our group-sparse layer next to the public HASTE
kernels (github.com/xmc-aalto/haste, `shared_ffi`), built and run in the same process.

    bash bench/haste_prepare.sh            # here: export HASTE's sources to .haste/
    # on the GPU machine (carry .haste):
    pip install --no-build-isolation --no-deps ./.haste
    python bench/haste_side_by_side.py --out $OUT/haste.json [--K 64,128 --G 32,64 --L 131072,670091]

Both layers get the same inputs (bf16, random unique indices per group); their outputs
are compared before timing so that both compute the same function. Times are medians of
CUDA-event-timed steps (forward, then backward of a random dY). Lists of K, G and L
sweep the grid at one batch size; each row also carries HASTE's step time as
"step_ms", the series `bench/plot_group_sparse.py --haste` draws.
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


def int_list(text: str) -> list:
    return [int(v) for v in text.split(",")]


def side_by_side(group_ffi_mul, B: int, H: int, K: int, G: int, L: int, warmup: int, iters: int) -> dict:
    """Forward and training step (forward + backward of a random dY) of both layers on the
    same inputs, after checking that they compute the same y."""
    gen = torch.Generator().manual_seed(0)
    dt = torch.bfloat16
    x = torch.randn(B, H, generator=gen).to("cuda", dt).requires_grad_(True)
    w = (torch.randn(L, K, generator=gen) / K**0.5).to("cuda", dt).requires_grad_(True)
    b = torch.randn(L, generator=gen).to("cuda", dt).requires_grad_(True)
    idx = random_group_indices(-(-L // G), H, K, generator=gen).cuda()
    dy = torch.randn(B, L, generator=gen).to("cuda", dt)

    layers = {
        "largeout": lambda: F.group_sparse_linear(x, w, idx, b, G),
        "haste": lambda: group_ffi_mul(x, w, idx, b, G),
    }
    ys = {k: f().float() for k, f in layers.items()}
    rel = float((ys["haste"] - ys["largeout"]).norm() / ys["largeout"].norm())
    ys = None
    row = {"B": B, "H": H, "K": K, "G": G, "L": L, "relative_difference_y": rel,
           "largeout_kernels": {p: largeout.kernels.path(p, dt, B, H, L, K, G) for p in ("forward", "input", "weight")}}
    if rel > 2e-2:
        row["error"] = f"the two layers disagree (relative difference {rel:.3g}): not timed"
        return row
    res = {}
    for name, f in layers.items():
        def step(f=f):
            for t in (x, w, b):
                t.grad = None
            f().backward(dy)
        res[name] = {"forward_ms": median_ms(f, warmup, iters), "step_ms": median_ms(step, warmup, iters)}
    row["results"] = res
    row["step_ms"] = res["haste"]["step_ms"]  # the series bench/plot_group_sparse.py --haste reads
    row["forward_ms"] = res["haste"]["forward_ms"]
    row["haste_over_largeout_step"] = res["haste"]["step_ms"] / res["largeout"]["step_ms"]
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=512)
    p.add_argument("--H", type=int, default=768)
    p.add_argument("--K", type=int_list, default=[128], help="comma list")
    p.add_argument("--G", type=int_list, default=[32], help="comma list")
    p.add_argument("--L", type=int_list, default=[670_208], help="comma list")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from shared_ffi.ops import group_ffi_mul  # the HASTE package (built from .haste)

    sr_note = haste_dx_rounding()
    here = os.path.dirname(__file__)
    commit_file = os.path.join(here, "..", ".haste", "COMMIT")
    out = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"), "git_commit": os.environ.get("LARGEOUT_GIT_COMMIT"),
        "haste_commit": open(commit_file).read().strip() if os.path.exists(commit_file) else None,
        "args": vars(a), "dtype": "bf16", "statistic": "median", "haste_dx_rounding": sr_note, "rows": [],
    }
    rows = out["rows"]
    for K in a.K:
        for G in a.G:
            for L in a.L:
                try:
                    row = side_by_side(group_ffi_mul, a.B, a.H, K, G, L, a.warmup, a.iters)
                except RuntimeError as e:  # a shape HASTE's kernels do not take, out of memory
                    row = {"B": a.B, "H": a.H, "K": K, "G": G, "L": L, "error": str(e).strip().splitlines()[0][:300]}
                torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "largeout_kernels"}), flush=True)
                if a.out:  # after every row: a run cut short keeps what it measured
                    with open(a.out, "w") as fh:
                        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
