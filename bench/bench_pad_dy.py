"""The group-sparse layer's training step at odd L, as autograd runs it (forward, then the
backward ops for dx, dW and dbias), with whatever LARGEOUT_PAD_DY says: run it once with
LARGEOUT_PAD_DY=0 and once with 1 (padded wherever the TMA kernels run) to compare the
row-padded dY path (dY copied once into [B, L rounded up to 8] so that dx v3 / v2 and dW v2
read it by TMA) with the unpadded one (dx v2 and dW v2 through row classes, the default since
session 39; the v1 kernels with LARGEOUT_SM90_DX_RC=0 and LARGEOUT_SM90_DW_RC=0). --frozen x
(or weight) times the step with that tensor not requiring a gradient (only dW and dbias, or only dx and dbias, run; the padding applies there too since
session 25). A shape that fails is recorded with its error and the rest still run.

    LARGEOUT_PAD_DY=1 python bench/bench_pad_dy.py --out pad_dy_1.json

Medians of CUDA-event timings over --iters steps (bench_optim.timed)."""

import argparse
import os
import traceback

import torch

import largeout
from bench_group_sparse import write_rows  # (bench/ is the script's directory)
from bench_optim import timed
from largeout.nn import random_group_indices


def step(x, w, b, idx, G, dy) -> None:
    x.grad = w.grad = b.grad = None  # (None too where frozen)
    torch.ops.largeout.group_sparse_linear(x, w, idx, b, G).backward(dy)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=512)
    p.add_argument("--H", type=int, default=768)
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--G", default="32,64,128")
    p.add_argument("--L", default="670091,2812281")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--frozen", choices=["none", "x", "weight"], default="none")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    dt = torch.bfloat16
    rows = []
    for L in (int(v) for v in a.L.split(",")):
        for G in (int(v) for v in a.G.split(",")):
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(a.B, a.H, device="cuda", dtype=dt, generator=g).requires_grad_(a.frozen != "x")
            w = (torch.randn(L, a.K, device="cuda", dtype=dt, generator=g) / a.K**0.5).requires_grad_(a.frozen != "weight")
            b = torch.zeros(L, device="cuda", dtype=dt, requires_grad=True)
            idx = random_group_indices(-(-L // G), a.H, a.K, generator=torch.Generator().manual_seed(0)).cuda()
            dy = torch.randn(a.B, L, device="cuda", dtype=dt, generator=g)

            row = {"B": a.B, "H": a.H, "K": a.K, "G": G, "L": L, "frozen": a.frozen}
            try:
                row["step_ms"] = round(timed(lambda: step(x, w, b, idx, G, dy), a.iters)[0] * 1e3, 4)
            except RuntimeError:
                row["error"] = traceback.format_exc()
                print(row["error"], flush=True)
            row["paths"] = {p_: largeout.kernels.path(p_, dt, a.B, a.H, L, a.K, G) for p_ in ("forward", "input", "weight")}
            rows.append(row)
            print(row, flush=True)
            x = w = b = dy = None
            torch.cuda.empty_cache()
    write_rows(a.out, rows, __doc__, pad_dy=os.environ.get("LARGEOUT_PAD_DY", "(unset: the default policy)"),
               dw_rc=os.environ.get("LARGEOUT_SM90_DW_RC", "(unset: on)"),
               dx_rc=os.environ.get("LARGEOUT_SM90_DX_RC", "(unset: on)"))


if __name__ == "__main__":
    main()
