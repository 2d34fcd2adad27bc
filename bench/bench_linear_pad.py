#!/usr/bin/env python3
"""largeout.nn.Linear at a label count whose output rows are not 16-byte aligned, against
torch.nn.Linear there and at L padded.

    python bench/bench_linear_pad.py --out bench/results/linear_pad_h100.json [--B 512 --H 768 --L 670091,2812281]

cuBLAS runs several times slower when the output's leading dimension (L) is not a multiple
of 16 bytes: at B=512, H=768, L=2,812,281 in bf16, torch.nn.Linear's forward takes ~21 ms
against ~3.6 ms at L padded to 2,812,288 (bench/results/fp8_linear_s46_h100.json). On CUDA
largeout.nn.Linear keeps its weight in zero-padded storage, multiplies into an [M, L_pad]
result and returns its [M, L] view, and pads dY for the backward (LARGEOUT_LINEAR_PAD).
Cases per dtype (bf16, fp16, fp32) and L, one run, same shapes: torch.nn.Linear at L (the
drop-in being replaced), largeout.nn.Linear at L (padded path, the default), and
torch.nn.Linear at L rounded up to 16 (the floor: what a user who pads by hand gets); then
the fp8 weights with bf16 compute (e5m2, and e4m3 with activation_dtype=bf16: the weight
upcast) with the padded path and without it (LARGEOUT_LINEAR_PAD=0). Each case: the forward
under no_grad alone and back to back, the training step (forward and ``y.backward(dy)``
with a fixed bf16 dy, which autograd casts to the output's dtype), peak memory (bench_fp8.measure); --rounds passes over
all cases, forward times the median over passes, the step from the first pass.
"""

from __future__ import annotations

import os
import sys

import torch

from largeout.nn import Linear
from bench_fp8 import measure, merge_rounds, run_rounds, shape_parser, write_results


def main(argv=None) -> int:
    ap = shape_parser(__doc__, L=None)
    ap.add_argument("--L", default="670091,2812281", help="label counts (comma list)")
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    B, H = args.B, args.H
    Ls = [int(v) for v in args.L.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]

    def torch_linear(L, dt):
        def make():
            os.environ.pop("LARGEOUT_LINEAR_PAD", None)
            return torch.nn.Linear(H, L, device="cuda", dtype=dt), lambda m, x: m(x.to(dt))
        return make

    def ours(L, dt, wdt=None, act=None, pad="auto"):
        def make():
            os.environ["LARGEOUT_LINEAR_PAD"] = pad
            layer = Linear(H, L, device="cuda", dtype=dt if wdt is None else None, weight_dtype=wdt or dt,
                           activation_dtype=act)
            return layer, lambda m, x: m(x.to(dt))
        return make

    cases = []  # (name, make, train, L, dtype)
    for L in Ls:
        Lp = -(-L // 16) * 16
        for dt in dtypes:
            n = str(dt).replace("torch.", "")
            cases += [(f"{n}, L = {L}: torch.nn.Linear", torch_linear(L, dt), True, L, dt),
                      (f"{n}, L = {L}: largeout.nn.Linear (output rows padded)", ours(L, dt), True, L, dt),
                      (f"{n}, L = {Lp}: torch.nn.Linear at L padded by hand", torch_linear(Lp, dt), True, L, dt)]
        for wdt, act in ((torch.float8_e5m2, None), (torch.float8_e4m3fn, torch.bfloat16)):
            n = str(wdt).replace("torch.", "")
            for pad, what in (("auto", "output rows padded"), ("0", "LARGEOUT_LINEAR_PAD=0")):
                cases.append((f"{n} weight, bf16 compute, L = {L}: largeout.nn.Linear ({what})",
                              ours(L, torch.bfloat16, wdt, act, pad), True, L, torch.bfloat16))
    Lof = {name: L for name, _, _, L, _ in cases}
    dtype_of = {name: dt for name, _, _, _, dt in cases}

    def measure_case(name, make, train):
        # (measure feeds bf16 x; each case's forward casts it to its dtype, and dy is the output's dtype)
        return measure(name, make, B, H, Lof[name], args.iters, train)

    per_round = run_rounds([(n, m, t) for n, m, t, _, _ in cases], args.rounds, measure_case)
    os.environ.pop("LARGEOUT_LINEAR_PAD", None)
    rows = []
    for name, _, _, L, dt in cases:
        r = merge_rounds(per_round[name], 2 * B * H * L)
        r["dtype"] = str(dt)
        rows.append(r)
    # ratios against torch.nn.Linear at the same L and dtype (the drop-in replaced) and against
    # the hand-padded one (the floor)
    for r in rows:
        if "error" in r:
            print(f"{r['case']}: {r['error']}", flush=True)
            continue
        L, dt = Lof[r["case"]], dtype_of[r["case"]]
        n = str(dt).replace("torch.", "")
        ref = next((x for x in rows if x["case"] == f"{n}, L = {L}: torch.nn.Linear" and "error" not in x), None)
        Lp = -(-L // 16) * 16
        floor = next((x for x in rows if x["case"] == f"{n}, L = {Lp}: torch.nn.Linear at L padded by hand"
                      and "error" not in x), None)
        for key, base in (("vs_torch", ref), ("vs_padded_by_hand", floor)):
            if base is not None:
                r[f"forward_speedup_{key}"] = base["forward_seconds"] / r["forward_seconds"]
                r[f"train_step_speedup_{key}"] = base["train_step_seconds"] / r["train_step_seconds"]
        print(f"{r['case']:78s} fwd {r['forward_seconds'] * 1e3:7.2f} ms, back to back "
              f"{r['forward_seconds_pipelined'] * 1e3:7.2f} ms, step {r['train_step_seconds'] * 1e3:7.2f} ms, "
              f"peak {r['peak_GB']:.1f} GB"
              + (f"; vs torch.nn.Linear fwd {r['forward_speedup_vs_torch']:.2f}x step "
                 f"{r['train_step_speedup_vs_torch']:.2f}x" if "forward_speedup_vs_torch" in r else ""), flush=True)
    write_results(args.out, __doc__, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
