#!/usr/bin/env python3
"""SM clock and board power while the FP8 layer's forward GEMM and the bf16 one run back to back.

    python bench/fp8_clocks.py --out fp8_clocks.json [--B 512 --H 768 --L 2812281 --seconds 3]

Why: bench_fp8.py measures the bare FP8 GEMM ~9% slower per call back to back than alone, the
bf16 GEMM ~1% slower; a lower SM clock under sustained FP8 MMA (power or thermal limits) would
explain it. Phases, in this order, each busy one followed by 1 s idle: bf16 (cuBLAS, the
bias in its epilogue: ``torch.nn.functional.linear``, L rounded up to 16), fp8 (largeout's
FP8 GEMM, default configuration, pre-quantized operands, same L), the bf16 layer
(``largeout.nn.Linear``, L rounded up to 16: the faster bf16 case of bench_fp8.py), the
e4m3 layer (``weight_dtype=float8_e4m3fn``, at L itself), bf16 GEMM again. The layers run
their forward under ``torch.no_grad``. In each busy phase the call is launched back to back
for --seconds; CUDA events time every call. ``nvidia-smi`` samples the
SM clock, power draw, temperature and the active clock-event (throttle) reasons every 20 ms
in the background; each phase reports the medians of its samples (the first 0.3 s dropped)
and its per-call time (median, first and last tenth of the calls). With --configs (a comma
list of largeout FP8 GEMM configurations, ``torch.ops.largeout.fp8_gemm_configs()``), the
phases are instead: the bf16 GEMM, then the FP8 GEMM in each configuration, twice over (which
configuration uses the least energy per call where the power cap sets the clock).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import largeout
from largeout.nn import Linear
from bench_fp8 import shape_parser  # bench/ is on the path when run as a script

FIELDS = "timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"


def busy(fn, seconds: float) -> dict:
    """fn launched back to back for about ``seconds``, every call timed by CUDA events."""
    events = []
    t_end = time.time() + seconds
    start = dt.datetime.now()
    while time.time() < t_end:
        for _ in range(20):  # keep the queue ahead of the GPU; sync on the oldest now and then
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            events.append((a, b))
        events[-10][1].synchronize()
    torch.cuda.synchronize()
    end = dt.datetime.now()
    ms = [a.elapsed_time(b) for a, b in events]
    tenth = max(1, len(ms) // 10)
    return {"start": start, "end": end, "calls": len(ms), "ms_median": statistics.median(ms),
            "ms_first_tenth": statistics.median(ms[:tenth]), "ms_last_tenth": statistics.median(ms[-tenth:])}


def idle(seconds: float) -> dict:
    torch.cuda.synchronize()
    start = dt.datetime.now()
    time.sleep(seconds)
    return {"start": start, "end": dt.datetime.now()}


def parse_samples(text: str):
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0][:1].isdigit():
            continue  # the header, or a line cut off
        try:
            t = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f")
            rows.append((t, float(parts[1].split()[0]), float(parts[2].split()[0]), float(parts[3]), parts[4]))
        except ValueError:
            continue  # "[N/A]" and the like
    return rows


def summarize(phase: dict, samples) -> dict:
    lo = phase["start"] + dt.timedelta(seconds=0.3)
    mine = [s for s in samples if lo <= s[0] <= phase["end"]]
    out = {k: v for k, v in phase.items() if k not in ("start", "end")}
    out["samples"] = len(mine)
    if mine:
        out["sm_clock_MHz_median"] = statistics.median(s[1] for s in mine)
        out["sm_clock_MHz_min"] = min(s[1] for s in mine)
        out["power_W_median"] = statistics.median(s[2] for s in mine)
        out["temperature_C_max"] = max(s[3] for s in mine)
        reasons = {}
        for s in mine:
            reasons[s[4]] = reasons.get(s[4], 0) + 1
        out["clock_event_reasons"] = reasons  # nvidia-smi's bit mask -> number of samples
    return out


def main(argv=None) -> int:
    ap = shape_parser(__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--configs", default="", help="comma list of FP8 GEMM configurations to compare sustained")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or not list(torch.ops.largeout.fp8_gemm_configs()):
        print("needs an sm_90 GPU and largeout's FP8 GEMM", file=sys.stderr)
        return 2
    B, H, L = args.B, args.H, args.L
    L16 = (L + 15) // 16 * 16
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16, generator=gen)
    w16 = torch.randn(L16, H, device="cuda", dtype=torch.bfloat16, generator=gen) / 32
    b16 = torch.randn(L16, device="cuda", dtype=torch.bfloat16, generator=gen)
    w8 = w16.to(torch.float8_e4m3fn)
    q, s = torch.ops.largeout.fp8_quantize(x, False)
    layer16 = Linear(H, L16, device="cuda", dtype=torch.bfloat16)
    layer8 = Linear(H, L, device="cuda", weight_dtype=torch.float8_e4m3fn)

    def forward(layer):
        with torch.no_grad():
            return layer(x)

    cases = {"bf16": lambda: torch.nn.functional.linear(x, w16, b16),
             "fp8": lambda: torch.ops.largeout.fp8_gemm(q, w8, s, b16, -1),
             "bf16 layer": lambda: forward(layer16),
             "fp8 layer": lambda: forward(layer8)}
    names = list(torch.ops.largeout.fp8_gemm_configs())
    words = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in words if not (c.isdigit() and int(c) < len(names))]
    if bad:
        ap.error(f"--configs: {bad} are not configuration numbers; expected numbers below {len(names)} ({names})")
    configs = [int(c) for c in words]
    for c in configs:
        cases[f"fp8 cfg{c}"] = lambda c=c: torch.ops.largeout.fp8_gemm(q, w8, s, b16, c)
    order = (["bf16"] + [f"fp8 cfg{c}" for c in configs]) * 2 if configs else ["bf16", "fp8", "bf16 layer", "fp8 layer"]
    for fn in cases.values():  # warm up (cuBLAS heuristics, CUTLASS attributes)
        fn()
    torch.cuda.synchronize()

    # (into a file: through a pipe read at the end, nvidia-smi blocked once the pipe's buffer
    # was full, after ~20 s of samples, and the later phases had none)
    log = tempfile.TemporaryFile(mode="w+")
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv", "-lms", "20"],
                           stdout=log, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    phases = [("idle", idle(1.0))]
    for name in order:
        phases.append((name, busy(cases[name], args.seconds)))
        phases.append(("idle", idle(1.0)))
    phases.append(("bf16", busy(cases["bf16"], args.seconds)))
    smi.terminate()
    smi.wait(timeout=10)
    log.seek(0)
    text = log.read()
    samples = parse_samples(text)
    rows = [dict(phase=name, **summarize(p, samples)) for name, p in phases]
    for r in rows:
        print(f"{r['phase']:10s} calls {r.get('calls', 0):5d}  ms {r.get('ms_median', float('nan')):.3f} "
              f"(first tenth {r.get('ms_first_tenth', float('nan')):.3f}, last {r.get('ms_last_tenth', float('nan')):.3f})"
              f"  SM clock {r.get('sm_clock_MHz_median', float('nan')):.0f} MHz (min {r.get('sm_clock_MHz_min', float('nan')):.0f})"
              f"  power {r.get('power_W_median', float('nan')):.0f} W  reasons {r.get('clock_event_reasons')}")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "largeout": largeout.build_info(),
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "L_gemm": L16,
              "git_commit": os.environ.get("LARGEOUT_GIT_COMMIT"), "B": B, "H": H, "L": L,
              "method": __doc__, "configs": {f"cfg{c}": names[c] for c in configs},
              "nvidia_smi_samples": len(samples), "phases": rows}
    if not samples:
        result["nvidia_smi_output"] = text[-2000:]
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
