#!/usr/bin/env python3
"""Measured memory of an output layer's training step, per label (H=768), by precision.

    python bench/lowp_memory.py --out bench/results/lowp_memory_h200.json [--labels 1000000]

For each variant, on a fresh CUDA allocator state: build the layer (H=768 inputs, L
labels), run forward on a [B, 768] batch, a loss (sum of the logits, so every logit gets a
gradient), backward and one optimizer step, keeping the gradients. Reported, divided by L:
``persistent`` = torch.cuda.memory_allocated() after the step (weights, bias, gradients,
optimizer state, and buffers such as the fp8 layers' per-label scales), ``peak`` =
torch.cuda.max_memory_allocated() over the step (adds the [B, L] logits and their
gradient, and transients such as the bf16 copy of fp8 weights).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

import largeout
from largeout import optim as lo_optim
from largeout.nn import GroupSparseLinear, Linear

H = 768


def variants(L: int):
    def dense_fp32():
        layer = torch.nn.Linear(H, L, device="cuda")
        return layer, torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True), torch.float32, True

    def dense_low(wdt, scale=None):
        def make():
            layer = Linear(H, L, weight_dtype=wdt, device="cuda", weight_scale=scale)
            return layer, lo_optim.SGD(layer.parameters(), lr=1e-2), torch.bfloat16, False
        return make

    def gs_fp32():
        layer = GroupSparseLinear(H, L, 128, 32, device="cuda")
        return layer, torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True), torch.float32, False

    def gs_low(wdt, scale=None):
        def make():
            layer = GroupSparseLinear(H, L, 128, 32, device="cuda", weight_dtype=wdt, weight_scale=scale)
            return layer, lo_optim.SGD(layer.parameters(), lr=1e-2), torch.bfloat16, False
        return make

    return [
        ("dense, fp32 weights + AdamW (fp32 state), bf16 autocast", dense_fp32),
        ("dense, bf16 weights + SR SGD (largeout.optim)", dense_low(torch.bfloat16)),
        ("dense, fp8 e4m3 weights + SR SGD (bf16 gradient)", dense_low(torch.float8_e4m3fn)),
        ("dense, fp8 e4m3 weights, per-label scale + SR SGD (bf16 gradient)", dense_low(torch.float8_e4m3fn, "label")),
        ("group-sparse K=128, fp32 weights + AdamW (fp32 state)", gs_fp32),
        ("group-sparse K=128, bf16 weights + SR SGD", gs_low(torch.bfloat16)),
        ("group-sparse K=128, fp8 e4m3 weights + SR SGD (bf16 gradient)", gs_low(torch.float8_e4m3fn)),
        ("group-sparse K=128, fp8 e4m3 weights, per-label scale + SR SGD (bf16 gradient)",
         gs_low(torch.float8_e4m3fn, "label")),
    ]


def measure(make, B: int, L: int) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    layer, opt, xdt, autocast = make()
    x = torch.randn(B, H, device="cuda", dtype=xdt)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    loss = y.float().sum() / B
    loss.backward()
    opt.step()
    del y, loss
    torch.cuda.synchronize()
    persistent = torch.cuda.memory_allocated() - base - x.numel() * x.element_size()
    peak = torch.cuda.max_memory_allocated() - base
    params = sum(p.numel() for p in layer.parameters())
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in layer.parameters()})
    del layer, opt, x
    return {"persistent_bytes": persistent, "peak_bytes": peak, "persistent_bytes_per_label": persistent / L,
            "peak_bytes_per_label": peak / L, "parameters": params, "parameter_dtypes": dtypes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args(argv)
    rows = []
    for name, make in variants(args.labels):
        r = {"variant": name, **measure(make, args.batch, args.labels)}
        rows.append(r)
        print(f"{name:72s} persistent {r['persistent_bytes_per_label']:8.0f} B/label, "
              f"peak {r['peak_bytes_per_label']:8.0f} B/label", flush=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "largeout": largeout.build_info(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "H": H, "L": args.labels, "B": args.batch,
           "method": __doc__, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
