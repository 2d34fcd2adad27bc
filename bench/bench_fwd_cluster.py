"""The Hopper forward with its weight stages multicast across clusters of CTAs along the
batch (LARGEOUT_SM90_FWD_CLUSTER = 1, 2, 4: each CTA of a cluster loads its slice of every
stage for all of them), against cuBLAS's FLOPs-matched GEMM (x_k[B, K] @ W[L, K]^T) in the
same run. Per shape the settings run in turn, --rounds times, so that each is timed in the
same clock state as the others; `over_matched` takes each setting's best round. The outputs of
all settings must be bit-identical (`identical`).

    python bench/bench_fwd_cluster.py --B 512,1024 --K 128,256 --G 32,128 --L 131072 --out fwd_cluster.json

Medians of CUDA-event timings of the op (group_sparse_linear with bias) over --iters calls."""

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
    env = "LARGEOUT_SM90_FWD_CLUSTER"
    before = os.environ.get(env)
    for B in a.B:
        for K in a.K:
            for L in a.L:
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(B, a.H, device="cuda", dtype=dt, generator=g)
                w = torch.randn(L, K, device="cuda", dtype=dt, generator=g) / K**0.5
                b = torch.randn(L, device="cuda", dtype=dt, generator=g)
                xk = x[:, :K].contiguous()
                y = torch.empty(B, L, device="cuda", dtype=dt)
                matched = median_ms(lambda: torch.mm(xk, w.t(), out=y), 5, a.iters)
                for G in a.G:
                    idx = random_group_indices(-(-L // G), a.H, K, generator=torch.Generator().manual_seed(G)).cuda()
                    times = {str(c): [] for c in a.clusters}
                    outs = {}
                    for _ in range(a.rounds):
                        for c in a.clusters:
                            os.environ[env] = str(c)
                            times[str(c)].append(round(median_ms(lambda: ops.group_sparse_linear(x, w, idx, b, G),
                                                                 5, a.iters), 4))
                            outs[c] = ops.group_sparse_linear(x, w, idx, b, G)
                    first = outs[a.clusters[0]]
                    row = {"B": B, "H": a.H, "K": K, "G": G, "L": L, "matched_ms": round(matched, 4), "ms": times,
                           "over_matched": {c: round(min(t) / matched, 3) for c, t in times.items()},
                           "identical": all(torch.equal(first, o) for o in outs.values())}
                    rows.append(row)
                    print(row, flush=True)
                    idx = outs = first = None
                x = w = b = xk = y = None
                torch.cuda.empty_cache()
    if before is None:
        os.environ.pop(env, None)
    else:
        os.environ[env] = before
    out = {"rows": rows, "device": torch.cuda.get_device_name(), "commit": os.environ.get("LARGEOUT_GIT_COMMIT", "unknown"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": __doc__}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
