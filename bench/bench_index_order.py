"""The Hopper kernels with each group's indices in ascending order against the "banked"
order (`random_group_indices(order="banked")`: runs of 8 slots with distinct residues mod
8, so that the shared-memory reads of 8 slots' rows spread over the banks). Same index
sets, weight columns permuted to match, so both orders compute the same layer.

    python bench/bench_index_order.py --out $OUT/index_order.json

Medians of CUDA-event timings of each op (forward, dx, dW+dbias) over --iters calls."""

import argparse

import torch

from bench_group_sparse import median_ms, write_rows  # (bench/ is the script's directory)
from largeout.nn import random_group_indices


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=512)
    p.add_argument("--H", type=int, default=768)
    p.add_argument("--K", default="64,128")
    p.add_argument("--G", default="32,64,128")
    p.add_argument("--L", default="670208,670091")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ops, dt, rows = torch.ops.largeout, torch.bfloat16, []
    for K in (int(v) for v in a.K.split(",")):
        for G in (int(v) for v in a.G.split(",")):
            for L in (int(v) for v in a.L.split(",")):
                ng = -(-L // G)
                banked = random_group_indices(ng, a.H, K, generator=torch.Generator().manual_seed(0), order="banked")
                order = banked.argsort(dim=1)
                idx = {"sorted": banked.gather(1, order).cuda(), "banked": banked.cuda()}
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(a.B, a.H, device="cuda", dtype=dt, generator=g)
                w_banked = torch.randn(L, K, device="cuda", dtype=dt, generator=g) / K**0.5
                rows_of_label = (torch.arange(L, device="cuda") // G)
                w = {"banked": w_banked, "sorted": w_banked.gather(1, order.cuda()[rows_of_label])}
                b = torch.randn(L, device="cuda", dtype=dt, generator=g)
                dy = torch.randn(a.B, L, device="cuda", dtype=dt, generator=g)
                row = {"B": a.B, "H": a.H, "K": K, "G": G, "L": L}
                outs = {}
                for name in ("sorted", "banked"):
                    i, ww = idx[name], w[name]
                    calls = {
                        "fwd": lambda: ops.group_sparse_linear(x, ww, i, b, G),
                        "dx": lambda: ops.group_sparse_linear_backward_input(dy, ww, i, G, a.H),
                        "dw": lambda: ops.group_sparse_linear_backward_weight(dy, x, i, G),
                    }
                    row[name] = {k: round(median_ms(f, 5, a.iters), 4) for k, f in calls.items()}
                    outs[name] = (calls["fwd"]().float(), calls["dx"]().float())
                for k in ("fwd", "dx"):
                    j = 0 if k == "fwd" else 1
                    ref = outs["sorted"][j]
                    row[f"{k}_rel_diff"] = float((outs["banked"][j] - ref).norm() / ref.norm())
                row["speedup"] = {k: round(row["sorted"][k] / row["banked"][k], 3) for k in ("fwd", "dx", "dw")}
                rows.append(row)
                print(row, flush=True)
                x = w = b = dy = idx = outs = None
                torch.cuda.empty_cache()
    write_rows(a.out, rows, __doc__)


if __name__ == "__main__":
    main()
