"""The CPU group-sparse kernels' AVX2 copies (the default where the CPU has AVX2) against
their baseline-ISA copies (LARGEOUT_CPU_ISA=base), in turn in the same process: medians of
--rounds rounds, each timing 3 calls of a pass after one untimed call, per shape and dtype;
`identical` says whether both gave the same bits.

    python bench/bench_cpu_isa.py --out bench/results/cpu_isa.json
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch

import largeout  # noqa: F401  (registers the ops)
from bench_group_sparse import as_tuple  # (bench/ is the script's directory)
from largeout.nn import random_group_indices

SHAPES = [(256, 256, 3000, 64, 32), (128, 768, 20000, 128, 32)]  # the demo's head; a larger layer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ops, rows = torch.ops.largeout, []
    for B, H, L, K, G in SHAPES:
        for dt in (torch.float32, torch.bfloat16):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(B, H, generator=gen).to(dt)
            w = (torch.randn(L, K, generator=gen) / K**0.5).to(dt)
            b = torch.randn(L, generator=gen).to(dt)
            dy = torch.randn(B, L, generator=gen).to(dt)
            idx = random_group_indices(-(-L // G), H, K, generator=gen)
            passes = {"fwd": lambda: ops.group_sparse_linear(x, w, idx, b, G),
                      "dx": lambda: ops.group_sparse_linear_backward_input(dy, w, idx, G, H),
                      "dw": lambda: ops.group_sparse_linear_backward_weight(dy, x, idx, G)}
            for name, fn in passes.items():
                ms, outs = {"base": [], "avx2": []}, {}
                for _ in range(a.rounds):
                    for isa in ("base", "avx2"):
                        if isa == "base":
                            os.environ["LARGEOUT_CPU_ISA"] = "base"
                        else:
                            os.environ.pop("LARGEOUT_CPU_ISA", None)
                        outs[isa] = fn()
                        t0 = time.perf_counter()
                        for _ in range(3):
                            fn()
                        ms[isa].append((time.perf_counter() - t0) / 3 * 1e3)
                os.environ.pop("LARGEOUT_CPU_ISA", None)
                row = {"B": B, "H": H, "L": L, "K": K, "G": G, "dtype": str(dt), "pass": name,
                       "base_ms": round(statistics.median(ms["base"]), 3), "avx2_ms": round(statistics.median(ms["avx2"]), 3),
                       "identical": all(torch.equal(u, v) for u, v in zip(as_tuple(outs["base"]), as_tuple(outs["avx2"])))}
                row["speedup"] = round(row["base_ms"] / row["avx2_ms"], 2)
                rows.append(row)
                print(row, flush=True)
    result = {"rows": rows, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"), "method": __doc__}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
