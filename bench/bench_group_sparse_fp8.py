#!/usr/bin/env python3
"""The group-sparse layer with an fp8 weight against bf16: forward and training step of
``largeout.nn.GroupSparseLinear``.

    python bench/bench_group_sparse_fp8.py --out bench/results/group_sparse_fp8_h200.json

Cases, one run, same shapes (default the headline B=512, H=768, K=128, G=32, at L=670,208
and L=2,812,281): the bf16 layer (bf16 weight and input), the e4m3 layer (bf16 input) on the
Hopper kernels that upcast the weight inside (the forward; dx on the expanded-weight
kernel), the same layer computed as it was before those kernels (the weight upcast to a bf16
copy, `lowp.weight_for_compute`, kept for the backward, then the bf16 op), the e4m3 layer with per-label
scales (weight_scale="label") and the e5m2 layer. The training step is the forward and
``y.backward(dy)`` with a fixed bf16 ``dy`` (the fp8 layer's weight gradient is bf16, as the
bf16 layer's). CUDA-event medians; every case runs in --rounds passes (forward: the median
over passes; training step: the first pass); TFLOP/s = 2 B K L per forward; peak memory
allocated per case (the bf16 copy of the weight shows there).
"""

from __future__ import annotations

import sys

import torch

import largeout
from largeout import functional as F
from largeout.nn import GroupSparseLinear, lowp
# (bench/ is on the path when run as a script)
from bench_fp8 import measure, merge_rounds, run_rounds, shape_parser, write_results


def main(argv=None) -> int:
    ap = shape_parser(__doc__, L=None)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--G", type=int, default=32)
    ap.add_argument("--L", type=int, nargs="+", default=[670_208, 2_812_281])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    B, H, K, G = args.B, args.H, args.K, args.G

    def upcast_first(mod, x):  # the layer's computation before the fp8 kernels
        w = lowp.weight_for_compute(mod.weight, mod.weight_scale)
        return F.group_sparse_linear(x, w, mod.indices, mod.bias.to(torch.bfloat16), mod.group_size)

    def layer(L, wdt, scale=None, fp8_kernels=True):
        def make():
            m = GroupSparseLinear(H, L, K, G, device="cuda", weight_dtype=wdt, weight_scale=scale)
            return m, (lambda mod, x: mod(x)) if fp8_kernels else upcast_first
        return make

    def launches(make):  # kernels of one training step, by pass and path (which kernels the case ran)
        try:
            return launches_of(make)
        except Exception as e:  # noqa: BLE001 (recorded; the timings stand)
            return {"error": repr(e)}

    def launches_of(make):
        mod, fn = make()
        x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        before = largeout.kernels.launch_counts()
        fn(mod, x).backward(torch.randn(B, mod.out_features, device="cuda", dtype=torch.bfloat16))
        torch.cuda.synchronize()
        after = largeout.kernels.launch_counts()
        del mod
        return {p: {k: n - before[p][k] for k, n in after[p].items() if n != before[p][k]} for p in after}

    rows = []
    for L in args.L:
        cases = [("bf16 weight", layer(L, torch.bfloat16)),
                 ("e4m3 weight, upcast inside the kernels", layer(L, torch.float8_e4m3fn)),
                 ("e4m3 weight, upcast first (the layer before)", layer(L, torch.float8_e4m3fn, fp8_kernels=False)),
                 ("e4m3 weight with per-label scales, upcast inside", layer(L, torch.float8_e4m3fn, "label")),
                 ("e5m2 weight, upcast inside", layer(L, torch.float8_e5m2))]
        flops = 2 * B * K * L
        per_round = run_rounds([(name, make, True) for name, make in cases], args.rounds,
                               lambda name, make, train: measure(name, make, B, H, L, args.iters, train, flops=flops))
        block = [dict(merge_rounds(per_round[name], flops), K=K, G=G, launches=launches(make)) for name, make in cases]
        base, upc = block[0], block[2]
        for r in block:
            if "error" in r:
                print(f"L={L} {r['case']}: {r['error']}", flush=True)
                continue
            for ref_name, ref in (("bf16", base), ("upcast_first", upc)):
                if "error" not in ref:
                    r[f"forward_speedup_vs_{ref_name}"] = ref["forward_seconds"] / r["forward_seconds"]
                    r[f"forward_pipelined_speedup_vs_{ref_name}"] = (ref["forward_seconds_pipelined"] /
                                                                     r["forward_seconds_pipelined"])
                    r[f"train_step_speedup_vs_{ref_name}"] = ref["train_step_seconds"] / r["train_step_seconds"]
            print(f"L={L:>9} {r['case']:52s} fwd {r['forward_seconds'] * 1e3:6.3f} ms, back to back "
                  f"{r['forward_seconds_pipelined'] * 1e3:6.3f} ms, step {r['train_step_seconds'] * 1e3:6.3f} ms, "
                  f"peak {r['peak_GB']:.2f} GB", flush=True)
        rows += block
    write_results(args.out, __doc__, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
