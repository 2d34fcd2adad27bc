#!/usr/bin/env python3
"""Host time of an optimizer step over many small tensors, where the step's Python (checks,
state bookkeeping, argument packing) and not the GPU's work is what a training loop waits for.

    python bench/bench_optim_host.py --device cuda --tensors 200 --out host.json

For each case, --tensors parameters of --elements elements each get one step per call;
the time is wall-clock on the host per call (median of --rounds rounds of --iters calls,
the device synchronized before and after each round; the GPU's own work for such small
tensors is a few microseconds). torch.optim's fused steps on the same tensors are the
reference (round-to-nearest, so not the same algorithm: a speed reference only)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import largeout
from largeout import optim as lo_optim


def per_call(step, device: str, iters: int, rounds: int) -> float:
    """Median seconds per call over rounds of `iters` calls (after a warm-up round)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for r in range(rounds + 1):
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        if r:
            times.append((time.perf_counter() - t) / iters)
    return statistics.median(times)


CASES = {
    "sgd-momentum bf16": (torch.bfloat16, lambda ps: lo_optim.SGD(ps, lr=1e-2, momentum=0.9),
                          lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, fused=True)),
    "adamw bf16": (torch.bfloat16, lambda ps: lo_optim.AdamW(ps, lr=1e-3),
                   lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
    "adamw fp32": (torch.float32, lambda ps: lo_optim.AdamW(ps, lr=1e-3, state_dtype=torch.float32),
                   lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)),
}


def parse_args(doc: str) -> argparse.Namespace:
    """The arguments of this script and of profile_optim_host.py."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--tensors", type=int, default=200)
    ap.add_argument("--elements", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--note", default="", help="what code ran (recorded in the JSON)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for name in ("tensors", "elements", "iters", "rounds"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1; got {getattr(a, name)}")
    return a


def make_params(a: argparse.Namespace, dtype: torch.dtype, gen: torch.Generator) -> list:
    """--tensors parameters of --elements random values each, with small random gradients."""
    ps = [torch.nn.Parameter(torch.randn(a.elements, generator=gen).to(a.device, dtype)) for _ in range(a.tensors)]
    for p in ps:
        p.grad = torch.randn(a.elements, generator=gen).to(a.device, dtype) * 1e-3
    return ps


def write_json(a: argparse.Namespace, doc: str, rows: list) -> None:
    """The rows with the run's settings and versions, to --out."""
    out = {"what": doc.splitlines()[0], "device": a.device, "device_name": (torch.cuda.get_device_name()
           if a.device == "cuda" else platform.processor() or platform.machine()), "tensors": a.tensors,
           "elements": a.elements, "iters": a.iters, "rounds": a.rounds, "torch": torch.__version__,
           "largeout": largeout.__version__, "note": a.note, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


def main() -> None:
    a = parse_args(__doc__)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for case, (dtype, ours, theirs) in CASES.items():
        row = {"case": case, "dtype": str(dtype)}
        for side, make in (("largeout", ours), ("torch_fused", theirs)):
            ps = make_params(a, dtype, gen)
            try:
                opt = make(ps)
            except (RuntimeError, TypeError, ValueError) as e:  # (torch's fused step where a device lacks it)
                row[side] = {"error": str(e).splitlines()[0]}
                continue
            s = per_call(opt.step, a.device, a.iters, a.rounds)
            row[side] = {"ms_per_step": round(s * 1e3, 4), "us_per_tensor": round(s * 1e6 / a.tensors, 3)}
        print(case, row["largeout"], "torch fused:", row["torch_fused"], flush=True)
        rows.append(row)
    write_json(a, __doc__, rows)


if __name__ == "__main__":
    main()
