"""Host time of the FP8 layer's forward, piece by piece (session 49): bench_fp8 times the layer
alone ~0.09 ms above the bare GEMM, and back to back not at all, so the lone call waits on
the host. Each piece is issued while a sleep kernel holds the GPU (so no launch waits on the
device) and timed by perf_counter; medians of 200 calls, in microseconds. Then the layer and
the bare GEMM alone (CUDA events around one call from an idle GPU), for reference.

    python bench/diag/fp8_forward_host.py [--L 2812281]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from largeout.nn import Linear
from largeout.nn import fp8 as lo_fp8

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_optim import timed  # noqa: E402  (one call at a time from an idle GPU, as bench_fp8 times "alone")


def host_us(fn, n=200):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9 * 0.5))  # ~0.5 s of GPU time: every launch below only queues
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(ts)


def alone_ms(fn):
    return timed(fn, 20)[0] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=512)
    ap.add_argument("--H", type=int, default=768)
    ap.add_argument("--L", type=int, default=2_812_281)
    a = ap.parse_args()
    torch.manual_seed(0)
    layer = Linear(a.H, a.L, device="cuda", weight_dtype=torch.float8_e4m3fn)
    x = torch.randn(a.B, a.H, device="cuda", dtype=torch.bfloat16)
    w, b = layer.weight, layer.bias
    q, sx = lo_fp8.quantize(x, False)
    bb = b.to(torch.bfloat16)
    ops = torch.ops.largeout
    pieces = {
        "empty op (x.view)": lambda: x.view(-1),
        "torch.empty [B, H] e4m3": lambda: torch.empty(a.B, a.H, device="cuda", dtype=torch.float8_e4m3fn),
        "fp8_quantize op": lambda: ops.fp8_quantize(x, False),
        "fp8_gemm op (bare)": lambda: ops.fp8_gemm(q, w, sx, bb, -1),
        "fp8_gemm_configs()": lambda: ops.fp8_gemm_configs(),
        "fp8._forward": lambda: lo_fp8._forward(x, w, b, None),
        "fp8.fp8_linear": lambda: lo_fp8.fp8_linear(x, w, b, None),
        "layer(x)": lambda: layer(x),
    }
    with torch.no_grad():
        for name, fn in pieces.items():
            print(f"host {host_us(fn):8.1f} us  {name}", flush=True)
        print(f"alone: layer {alone_ms(lambda: layer(x)):.4f} ms, bare GEMM "
              f"{alone_ms(lambda: ops.fp8_gemm(q, w, sx, bb, -1)):.4f} ms, quantize "
              f"{alone_ms(lambda: ops.fp8_quantize(x, False)):.4f} ms")


if __name__ == "__main__":
    main()
