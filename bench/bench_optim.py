#!/usr/bin/env python3
"""Fused optimizer step: achieved memory bandwidth against the GPU's measured copy bandwidth.

    python bench/bench_optim.py --out bench/results/optim_h200.json [--elements N]

For each case (optimizer, parameter / gradient / state dtypes, rounding), one step of
largeout.optim over a few large tensors (N elements in all) is timed with CUDA events
(median of --iters after warm-up). Bytes = every parameter, gradient and state element
read once and every parameter and state element written once. The reference is
``dst.copy_(src)`` of a large buffer in the same run (bytes read + written), and, where
torch has one, ``torch.optim``'s fused step on the same tensors (round-to-nearest, so
it is not the same algorithm: a speed reference only).

Two times per call: ``seconds``, the GPU's time per call with the host ahead of it (the
calls queued back to back behind a sleep kernel, as in training, where the step is queued
behind the backward pass): what the fractions of copy use; and ``seconds_synced``, one call
at a time from an idle GPU, which adds the host's time to issue it (the checks, the
argument packing and the launch; ~0.1 ms for the optimizers' steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import largeout
from largeout import optim as lo_optim


def timed(fn, iters: int, warmup: int = 3):
    """Median seconds per call, one call at a time from an idle GPU (CUDA events around each,
    synchronized after each: the host's time to issue the call is included), and the list."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3)
    return statistics.median(times), times


def timed_queued(fn, iters: int, warmup: int = 3):
    """Median GPU seconds per call with the calls queued back to back (all issued while a
    sleep kernel holds the GPU, so that the host is ahead of it), and the list."""
    host = time.perf_counter()
    for _ in range(warmup):
        fn()
    host = (time.perf_counter() - host) / warmup  # (an upper bound of the host's time to issue a call)
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    # Long enough for the host to issue every call twice over (50 ms to 2 s), in clock
    # cycles at 2 GHz (Hopper's top clock is ~2 GHz, so it lasts at least that long).
    torch.cuda._sleep(int(2e9 * min(2.0, max(0.05, 2 * iters * host))))
    for a, b in events:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    times = [a.elapsed_time(b) * 1e-3 for a, b in events]
    return statistics.median(times), times


def both_times(fn, iters: int):
    """(queued median, its list, one-at-a-time median)."""
    t, times = timed_queued(fn, iters)
    return t, times, timed(fn, iters)[0]


def copy_bandwidth(nbytes: int, iters: int) -> dict:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    t, _, ts = both_times(lambda: dst.copy_(src), iters)
    return {"bytes": 2 * src.numel() * 4, "seconds": t, "GBps": 2 * src.numel() * 4 / t / 1e9, "seconds_synced": ts,
            "GBps_synced": 2 * src.numel() * 4 / ts / 1e9}


CASES = [
    # name, optimizer, param dtype, grad dtype, kwargs
    ("sgd bf16 SR", "sgd", torch.bfloat16, torch.bfloat16, {}),
    ("sgd-momentum bf16 SR", "sgd", torch.bfloat16, torch.bfloat16, {"momentum": 0.9}),
    ("sgd-momentum bf16 SR kahan", "sgd", torch.bfloat16, torch.bfloat16, {"momentum": 0.9, "kahan": True}),
    ("sgd fp8-e4m3 SR (bf16 grad)", "sgd", torch.float8_e4m3fn, torch.bfloat16, {}),
    ("sgd-momentum fp8-e4m3 SR (bf16 grad, bf16 momentum)", "sgd", torch.float8_e4m3fn, torch.bfloat16,
     {"momentum": 0.9}),
    ("adamw bf16 SR (bf16 state)", "adamw", torch.bfloat16, torch.bfloat16, {}),
    ("adamw bf16 SR (fp32 state)", "adamw", torch.bfloat16, torch.bfloat16, {"state_dtype": torch.float32}),
    ("adamw bf16 nearest (bf16 state)", "adamw", torch.bfloat16, torch.bfloat16, {"rounding": "nearest"}),
    ("adamw fp32", "adamw", torch.float32, torch.float32, {"state_dtype": torch.float32}),
]


def step_bytes(opt, params) -> int:
    total = 0
    for p in params:
        n = p.numel()
        total += n * (2 * p.element_size() + p.grad.element_size())
        for key, t in opt.state[p].items():
            if torch.is_tensor(t) and t.dim() > 0:
                total += 2 * n * t.element_size()
    return total


def run_case(name, kind, pdt, gdt, kw, elements, parts, iters):
    sizes = [elements // parts] * parts
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = []
    for n in sizes:
        p = torch.nn.Parameter(torch.empty(n, device="cuda").normal_(0, 0.02, generator=gen).to(pdt),
                               requires_grad=False)
        p.grad_dtype = None  # e.g. a bf16 gradient of an fp8 parameter
        p.grad = torch.empty(n, device="cuda").normal_(0, 1e-3, generator=gen).to(gdt)
        params.append(p)
    if kind == "sgd":
        opt = lo_optim.SGD(params, lr=1e-2, seed=1, **kw)
    else:
        opt = lo_optim.AdamW(params, lr=1e-3, weight_decay=0.01, seed=1, **kw)
    opt.step()  # creates the state
    nbytes = step_bytes(opt, params)
    t, times, ts = both_times(opt.step, iters)
    row = {"case": name, "elements": elements, "tensors": parts, "bytes_per_step": nbytes, "seconds": t,
           "GBps": nbytes / t / 1e9, "times": times, "seconds_synced": ts}
    # torch's own fused step on the same tensors, where it exists (round to nearest)
    if pdt in (torch.bfloat16, torch.float32) and not kw.get("kahan"):
        try:
            if kind == "sgd":
                topt = torch.optim.SGD(params, lr=1e-2, momentum=kw.get("momentum", 0.0), fused=True)
            else:
                topt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
            topt.step()
            tt, _, tts = both_times(topt.step, iters)
            row["torch_fused_seconds"] = tt
            row["torch_fused_seconds_synced"] = tts
            row["torch_fused_note"] = (f"torch.optim.{type(topt).__name__}(fused=True): state in the parameter "
                                       f"dtype {pdt}, round to nearest")
        except Exception as e:  # noqa: BLE001
            row["torch_fused_error"] = str(e)[:200]
    del opt, params
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--elements", type=int, default=768 * 1_000_000)
    ap.add_argument("--tensors", type=int, default=4)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--cases", default="", help="only the cases named in this list, separated by ';' (or by ',' when "
                    "it has no ';': a case name may contain a comma)")
    args = ap.parse_args(argv)
    wanted = [c.strip() for c in args.cases.split(";" if ";" in args.cases else ",") if c.strip()]
    unknown = [c for c in wanted if c not in [case[0] for case in CASES]]
    if unknown:
        ap.error(f"--cases: unknown case names {unknown}; expected some of {[case[0] for case in CASES]}")
    dev = torch.cuda.get_device_name()
    copy = copy_bandwidth(4 << 30, args.iters)
    print(f"{dev}: copy {copy['GBps']:.0f} GB/s (one at a time: {copy['GBps_synced']:.0f})", flush=True)
    rows = []
    for case in CASES:
        if wanted and case[0] not in wanted:
            continue
        r = run_case(*case, args.elements, args.tensors, args.iters)
        r["fraction_of_copy"] = r["GBps"] / copy["GBps"]
        rows.append(r)
        extra = f", torch fused {r['torch_fused_seconds'] * 1e3:.2f} ms" if "torch_fused_seconds" in r else ""
        print(f"{r['case']:55s} {r['seconds'] * 1e3:8.2f} ms {r['GBps']:7.0f} GB/s "
              f"({100 * r['fraction_of_copy']:.1f}% of copy; one at a time {r['seconds_synced'] * 1e3:.2f} ms){extra}",
              flush=True)
    out = {"device": dev, "torch": torch.__version__, "largeout": largeout.build_info(),
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "git_commit": os.environ.get("LARGEOUT_GIT_COMMIT"),
           "method": __doc__, "copy": copy, "cases": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
