"""The Hopper forward (--pass fwd) or dx v2 (--pass dx2) with their weight stages multicast
across clusters of CTAs along the batch (LARGEOUT_SM90_FWD_CLUSTER or
LARGEOUT_SM90_DX2_CLUSTER = 1, 2, 4: each CTA of a cluster loads its slice of every stage for
all of them), against cuBLAS's FLOPs-matched GEMM (fwd: x_k[B, K] @ W[L, K]^T; dx: dY[B, L] @
W[L, K]) in the same run. Per shape the settings run in turn, --rounds times, so that each is
timed in the same clock state as the others; `over_matched` takes each setting's best round.
The outputs of all settings must be bit-identical (`identical`).

    python bench/bench_cluster.py --B 512,1024 --K 128,256 --G 32,128 --L 131072 --out fwd_cluster.json
    python bench/bench_cluster.py --pass dx2 --B 512 --G 128 --L 670208 --out dx2_cluster.json

Medians of CUDA-event timings of the op (group_sparse_linear with bias, or
group_sparse_linear_backward_input with LARGEOUT_SM90_DX=v2) over --iters calls."""

import argparse
import json
import os
import time

import torch

from bench_group_sparse import median_ms  # (bench/ is the script's directory)
from largeout.nn import random_group_indices


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pass", dest="pass_", choices=["fwd", "dx2"], default="fwd")
    p.add_argument("--B", type=ints, default=[512])
    p.add_argument("--H", type=int, default=768)
    p.add_argument("--K", type=ints, default=[128])
    p.add_argument("--G", type=ints, default=[32, 64, 128])
    p.add_argument("--L", type=ints, default=[131072])
    p.add_argument("--clusters", type=ints, default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ops, dt, rows = torch.ops.largeout, torch.bfloat16, []
    env = "LARGEOUT_SM90_FWD_CLUSTER" if a.pass_ == "fwd" else "LARGEOUT_SM90_DX2_CLUSTER"
    before = {k: os.environ.get(k) for k in (env, "LARGEOUT_SM90_DX")}
    if a.pass_ == "dx2":
        os.environ["LARGEOUT_SM90_DX"] = "v2"
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
                    matched = median_ms(lambda: torch.mm(xk, w.t(), out=out), 5, a.iters)
                else:
                    dy = torch.randn(B, L, device="cuda", dtype=dt, generator=g)
                    out = torch.empty(B, K, device="cuda", dtype=dt)
                    matched = median_ms(lambda: torch.mm(dy, w, out=out), 5, a.iters)
                for G in a.G:
                    idx = random_group_indices(-(-L // G), a.H, K, generator=torch.Generator().manual_seed(G)).cuda()
                    if a.pass_ == "fwd":
                        op = lambda: ops.group_sparse_linear(x, w, idx, b, G)  # noqa: E731
                    else:
                        op = lambda: ops.group_sparse_linear_backward_input(dy, w, idx, G, a.H)  # noqa: E731
                    times = {str(c): [] for c in a.clusters}
                    outs = {}
                    for _ in range(a.rounds):
                        for c in a.clusters:
                            os.environ[env] = str(c)
                            times[str(c)].append(round(median_ms(op, 5, a.iters), 4))
                            outs[c] = op()
                    first = outs[a.clusters[0]]
                    row = {"pass": a.pass_, "B": B, "H": a.H, "K": K, "G": G, "L": L, "matched_ms": round(matched, 4), "ms": times,
                           "over_matched": {c: round(min(t) / matched, 3) for c, t in times.items()},
                           "identical": all(torch.equal(first, o) for o in outs.values())}
                    rows.append(row)
                    print(row, flush=True)
                    idx = outs = first = None
                x = w = b = xk = dy = out = op = None
                torch.cuda.empty_cache()
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    out = {"rows": rows, "device": torch.cuda.get_device_name(), "commit": os.environ.get("LARGEOUT_GIT_COMMIT", "unknown"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": __doc__}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
