"""Probes of the FP8 GEMM at the issue-5 shape (session 49's Nsight Compute run: L2 at 86% of
its throughput, a third of the warps' stalls on L1TEX scoreboards, which in this kernel are the
epilogue's global loads: the bias). Bare ``torch.ops.largeout.fp8_gemm`` per configuration,
with the bias and without, next to bf16 cuBLAS (``F.linear`` at L padded to 16), all in
interleaved rounds (A B C ... A B C ...) so that clock drift spreads over every case; each
timed alone (CUDA events around one call from an idle GPU) and queued (issued behind a sleep
kernel, so the host is ahead), as ``bench/bench_optim.py``'s ``timed`` and ``timed_queued``.
Prints medians in ms and writes JSON.

    python bench/diag/fp8_gemm_probe.py --out probe.json [--rounds 5]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from largeout.nn import fp8 as lo_fp8

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_optim import timed, timed_queued  # noqa: E402  (the benchmarks' alone and queued timings)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=512)
    ap.add_argument("--H", type=int, default=768)
    ap.add_argument("--L", type=int, default=2_812_288)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(a.B, a.H, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(a.L, a.H, device="cuda", generator=g) * 0.05).to(torch.float8_e4m3fn)
    bias = torch.randn(a.L, device="cuda", dtype=torch.bfloat16, generator=g)
    q, sx = lo_fp8.quantize(x, False)
    ops = torch.ops.largeout
    configs = list(ops.fp8_gemm_configs())
    cases = {}
    for c, name in enumerate(configs):
        cases[f"fp8 config {c} ({name}), bias"] = (lambda c=c: ops.fp8_gemm(q, w, sx, bias, c))
        cases[f"fp8 config {c} ({name}), no bias"] = (lambda c=c: ops.fp8_gemm(q, w, sx, None, c))
    wb = w.to(torch.bfloat16)
    cases["bf16 cuBLAS F.linear, bias"] = lambda: F.linear(x, wb, bias)
    cases["bf16 cuBLAS F.linear, no bias"] = lambda: F.linear(x, wb)
    # results equal with and without the bias, less the bias (a check that both ran)
    for c in range(len(configs)):
        d = (ops.fp8_gemm(q, w, sx, bias, c)[:64].float() - ops.fp8_gemm(q, w, sx, None, c)[:64].float()
             - bias.float())
        assert d.abs().max().item() < 0.1, f"config {c}: bias and no-bias results differ by {d.abs().max().item()}"
    alone = {k: [] for k in cases}
    queued = {k: [] for k in cases}
    for r in range(a.rounds):
        for k, fn in cases.items():
            alone[k].append(timed(fn, a.iters)[0] * 1e3)
            queued[k].append(timed_queued(fn, a.iters)[0] * 1e3)
        print(f"(round {r + 1} of {a.rounds})", flush=True)
    rows = []
    for k in cases:
        rows.append({"case": k, "alone_ms": statistics.median(alone[k]), "queued_ms": statistics.median(queued[k]),
                     "alone_rounds": alone[k], "queued_rounds": queued[k]})
        print(f"{rows[-1]['alone_ms']:7.3f} alone {rows[-1]['queued_ms']:7.3f} queued  {k}")
    with open(a.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "B": a.B, "H": a.H,
                   "L": a.L, "rounds": a.rounds, "iters": a.iters, "method": __doc__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
