#!/usr/bin/env python3
"""Where the FP8 layer's training step spends its time: torch.profiler over a few steps.

    python bench/profile_fp8.py [--B 512 --H 768 --L 2812281] [--forward] [--out table.txt]

Prints the CUDA kernels (and the ops with input shapes that launched them) of largeout.nn.Linear(weight_dtype=e4m3) forward + backward and,
for comparison, of the bf16 layer at L padded to 16, sorted by total device time.
--forward: the forward alone instead, as bench/bench_fp8.py times it "alone" (under no_grad,
the device idle before each call): per call the host time until the call returns, the
device time between CUDA events around it, and the ops sorted by host (self CPU) time, which
shows what the device waits for when the call is timed alone.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from largeout.nn import Linear


def table(layer, B, H, dy_cols, steps=3) -> str:
    x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(B, dy_cols, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):  # warm-up
        layer(x).backward(dy)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            for p in layer.parameters():
                p.grad = None
            layer(x).backward(dy)
        torch.cuda.synchronize()
    kernels = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=16, max_name_column_width=70)
    # the aten ops (with their input shapes) that launched the device time: which op runs each kernel
    ops = prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=24,
                                                             max_name_column_width=40, max_shapes_column_width=70)
    return kernels + "\n-- by op and input shapes --\n" + ops


def forward_table(layer, B, H, steps=10) -> str:
    x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(3):  # warm-up
            layer(x)
        torch.cuda.synchronize()
        host, dev = [], []
        for _ in range(steps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            a.record()
            y = layer(x)
            b.record()
            host.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
            dev.append(a.elapsed_time(b))
            del y
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            for _ in range(3):
                torch.cuda.synchronize()
                layer(x)
            torch.cuda.synchronize()
    host.sort()
    dev.sort()
    head = (f"per call (median of {steps}): host {host[steps // 2]:.3f} ms until the call returns, "
            f"device {dev[steps // 2]:.3f} ms between events around it\n")
    return (head + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=24, max_name_column_width=60)
            + "\n-- by device time --\n"
            + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=512)
    ap.add_argument("--H", type=int, default=768)
    ap.add_argument("--L", type=int, default=2_812_281)
    ap.add_argument("--forward", action="store_true", help="the forward alone under no_grad (host and device time)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    Lp = -(-args.L // 16) * 16
    parts = []
    what = "forward alone" if args.forward else "3 steps"
    run = (lambda layer, cols: forward_table(layer, args.B, args.H)) if args.forward else (
        lambda layer, cols: table(layer, args.B, args.H, cols))
    fp8 = Linear(args.H, args.L, device="cuda", weight_dtype=torch.float8_e4m3fn)
    parts.append(f"== e4m3 layer, L = {args.L} ({what})\n" + run(fp8, args.L))
    del fp8
    torch.cuda.empty_cache()
    bf16 = Linear(args.H, Lp, device="cuda", dtype=torch.bfloat16)
    parts.append(f"== bf16 layer, L = {Lp} ({what})\n" + run(bf16, Lp))
    text = "\n".join(parts)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
