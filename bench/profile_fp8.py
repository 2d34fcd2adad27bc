#!/usr/bin/env python3
"""Where the FP8 layer's training step spends its time: torch.profiler over a few steps.

    python bench/profile_fp8.py [--B 512 --H 768 --L 2812281] [--out table.txt]

Prints the CUDA kernels (and the ops with input shapes that launched them) of largeout.nn.Linear(weight_dtype=e4m3) forward + backward and,
for comparison, of the bf16 layer at L padded to 16, sorted by total device time.
"""

from __future__ import annotations

import argparse
import sys

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=512)
    ap.add_argument("--H", type=int, default=768)
    ap.add_argument("--L", type=int, default=2_812_281)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    Lp = -(-args.L // 16) * 16
    parts = []
    fp8 = Linear(args.H, args.L, device="cuda", weight_dtype=torch.float8_e4m3fn)
    parts.append(f"== e4m3 layer, L = {args.L} (3 steps)\n" + table(fp8, args.B, args.H, args.L))
    del fp8
    torch.cuda.empty_cache()
    bf16 = Linear(args.H, Lp, device="cuda", dtype=torch.bfloat16)
    parts.append(f"== bf16 layer, L = {Lp} (3 steps)\n" + table(bf16, args.B, args.H, Lp))
    text = "\n".join(parts)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
