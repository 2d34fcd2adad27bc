#!/usr/bin/env python3
"""Host time of GroupSparseLinear's forward and backward at shapes so small that the Python
around the ops (autograd, torch.library's wrappers, checks), not the kernels, is the time.

    python bench/bench_op_host.py --device cpu --note HEAD --out op_host.json

Cases, each per call (median of --rounds rounds of --iters calls after a warm-up round; the
device synchronized before and after each round):
- "forward, no grad": the layer under torch.no_grad();
- "forward + backward": the layer's output summed and backpropagated to x, the weight and
  the bias (autograd runs the two backward ops);
- "backward ops direct": torch.ops.largeout's two backward ops called as functions, grad
  mode off (what the derivative registrations put a wrapper around);
- "nn.Linear forward + backward": torch's dense layer of the same in/out features, the
  reference for what a module call costs on this host.
Run it against two installs of largeout (PYTHONPATH) to see what a change costs; --note says
which one ran."""

from __future__ import annotations

import argparse
import json
import platform

import torch

import largeout

from bench_optim_host import per_call  # same timing as the optimizer's host benchmark (bench/ is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--in-features", type=int, default=64)
    ap.add_argument("--out-features", type=int, default=256)
    ap.add_argument("--fan-in", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--note", default="", help="what code ran (recorded in the JSON)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    dtype = torch.float32 if a.device == "cpu" else torch.bfloat16
    layer = largeout.nn.GroupSparseLinear(a.in_features, a.out_features, fan_in=a.fan_in, group_size=a.group_size,
                                          device=dev, dtype=dtype)
    dense = torch.nn.Linear(a.in_features, a.out_features, device=dev, dtype=dtype)
    x = torch.randn(a.batch, a.in_features, device=dev, dtype=dtype, requires_grad=True)
    dy = torch.randn(a.batch, a.out_features, device=dev, dtype=dtype)

    def fwd_nograd():
        with torch.no_grad():
            layer(x)

    def fwd_bwd(mod):
        def run():
            mod(x).backward(dy)
        return run

    ops = torch.ops.largeout
    w, idx = layer.weight.detach(), layer.indices
    xd = x.detach()

    def bwd_direct():
        with torch.no_grad():
            ops.group_sparse_linear_backward_input(dy, w, idx, a.group_size, a.in_features)
            ops.group_sparse_linear_backward_weight(dy, xd, idx, a.group_size)

    cases = {"forward, no grad": fwd_nograd, "forward + backward": fwd_bwd(layer),
             "backward ops direct": bwd_direct, "nn.Linear forward + backward": fwd_bwd(dense)}
    rows = []
    for name, fn in cases.items():
        us = per_call(fn, a.device, a.iters, a.rounds) * 1e6
        rows.append({"case": name, "us_per_call": round(us, 2)})
        print(f"{name:32s} {us:9.2f} us")
    out = {"script": "bench/bench_op_host.py", "note": a.note, "device": a.device,
           "host": platform.processor() or platform.machine(), "torch": torch.__version__,
           "largeout": largeout.__file__, "threads": torch.get_num_threads(),
           "shape": {k: getattr(a, k) for k in ("batch", "in_features", "out_features", "fan_in", "group_size")},
           "dtype": str(dtype), "iters": a.iters, "rounds": a.rounds, "statistic": "median", "rows": rows,
           "method": __doc__}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
