"""A Hopper kernel knob timed in place: the forward (--pass fwd), dx (--pass dx) or dW and
dbias (--pass dw) with the environment variable --env set to each of --values in turn
(--rounds times, so that each value is timed in the same clock state as the others), against
cuBLAS's FLOPs-matched GEMM (fwd: x_k[B, K] @ W[L, K]^T; dx: dY[B, L] @ W[L, K]; dw:
dY^T @ x_k) in the same run; `over_matched` takes each value's best round. `identical`
says whether the outputs under all values are bit-identical (dW's dbias may differ in its
last bits where a knob changes who sums it); `max_rel_diff` is the largest difference from
the first value's outputs relative to their largest magnitude.

    python bench/bench_knob.py --env LARGEOUT_SM90_FWD_STAGES --values 2,8 --B 1024 --K 256 --G 64,128 --out stages.json

Medians of CUDA-event timings of the op (group_sparse_linear with bias, or
group_sparse_linear_backward_input) over --iters calls."""

import argparse
import os

import torch

from bench_group_sparse import as_tuple, median_ms, write_rows  # (bench/ is the script's directory)
from largeout.nn import random_group_indices
from largeout.nn.group_sparse import default_index_order


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pass", dest="pass_", choices=["fwd", "dx", "dw"], default="fwd")
    p.add_argument("--env", required=True, help="the environment variable the library reads at each call")
    p.add_argument("--values", type=lambda t: t.split(","), required=True)
    p.add_argument("--B", type=ints, default=[512])
    p.add_argument("--H", type=int, default=768)
    p.add_argument("--K", type=ints, default=[128])
    p.add_argument("--G", type=ints, default=[32, 64, 128])
    p.add_argument("--L", type=ints, default=[131072])
    p.add_argument("--index-order", choices=("sorted", "banked", "balanced"), default=None,
                   help="random_group_indices' order of each group's indices (default: GroupSparseLinear's, "
                        "balanced where H %% 8 == 0; session 28's runs and session 30's _pow2L file used sorted)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup-ms", type=float, default=100.0,
                   help="further runs for about this many ms before each timing (bench_group_sparse.py's)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.index_order is None:
        a.index_order = default_index_order(a.H)
    ops, dt, rows = torch.ops.largeout, torch.bfloat16, []
    env, before = a.env, os.environ.get(a.env)
    for B in a.B:
        for K in a.K:
            for L in a.L:
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(B, a.H, device="cuda", dtype=dt, generator=g)
                w = torch.randn(L, K, device="cuda", dtype=dt, generator=g) / K**0.5
                b = torch.randn(L, device="cuda", dtype=dt, generator=g)
                if a.pass_ == "fwd":
                    xk = x[:, :K].contiguous()
                    out = torch.empty(B, L, device="cuda", dtype=dt)
                    matched = median_ms(lambda: torch.mm(xk, w.t(), out=out), 5, a.iters, a.warmup_ms)
                elif a.pass_ == "dx":
                    dy = torch.randn(B, L, device="cuda", dtype=dt, generator=g)
                    out = torch.empty(B, K, device="cuda", dtype=dt)
                    matched = median_ms(lambda: torch.mm(dy, w, out=out), 5, a.iters, a.warmup_ms)
                else:
                    xk = x[:, :K].contiguous()
                    dy = torch.randn(B, L, device="cuda", dtype=dt, generator=g)
                    out = torch.empty(L, K, device="cuda", dtype=dt)
                    matched = median_ms(lambda: torch.mm(dy.t(), xk, out=out), 5, a.iters, a.warmup_ms)
                for G in a.G:
                    idx = random_group_indices(-(-L // G), a.H, K, generator=torch.Generator().manual_seed(G),
                                               order=a.index_order).cuda()
                    if a.pass_ == "fwd":
                        op = lambda: ops.group_sparse_linear(x, w, idx, b, G)  # noqa: E731
                    elif a.pass_ == "dx":
                        op = lambda: ops.group_sparse_linear_backward_input(dy, w, idx, G, a.H)  # noqa: E731
                    else:
                        op = lambda: ops.group_sparse_linear_backward_weight(dy, x, idx, G)  # noqa: E731
                    times = {c: [] for c in a.values}
                    outs = {}
                    for _ in range(a.rounds):
                        for c in a.values:
                            os.environ[env] = c
                            times[c].append(round(median_ms(op, 5, a.iters, a.warmup_ms), 4))
                            outs[c] = op()
                    first = as_tuple(outs[a.values[0]])
                    row = {"pass": a.pass_, "env": env, "B": B, "H": a.H, "K": K, "G": G, "L": L,
                           "matched_ms": round(matched, 4), "ms": times,
                           "over_matched": {c: round(min(t) / matched, 3) for c, t in times.items()},
                           "identical": all(torch.equal(f, o) for v in outs.values() for f, o in zip(first, as_tuple(v))),
                           "max_rel_diff": max(float((f.float() - o.float()).abs().max() / f.float().abs().max())
                                               for v in outs.values() for f, o in zip(first, as_tuple(v)))}
                    rows.append(row)
                    print(row, flush=True)
                    idx = outs = first = None
                x = w = b = xk = dy = out = op = None
                torch.cuda.empty_cache()
    if before is None:
        os.environ.pop(env, None)
    else:
        os.environ[env] = before
    write_rows(a.out, rows, __doc__, index_order=a.index_order, warmup_ms=a.warmup_ms)


if __name__ == "__main__":
    main()
