#!/usr/bin/env python3
"""FP8 output layer against bf16: forward and training step of ``largeout.nn.Linear``.

    python bench/bench_fp8.py --out bench/results/fp8_linear_h200.json [--B 512 --H 768 --L 2812281]

Cases, one run, same shapes: the bf16 layer (bf16 weight and input, cuBLAS with the bias in
its epilogue) as torch.nn.Linear at L and at L padded to a multiple of 16 (cuBLAS is much
slower on an output leading dimension that is not 16-byte aligned) and as largeout.nn.Linear
at L (which pads its output rows itself; the fastest of the three is the baseline), the
e4m3 layer on FP8 tensor cores (bf16 output) in its default recipe (one input scale, fast
accumulation) through each configuration of largeout's FP8 GEMM (LARGEOUT_FP8_KERNEL=largeout:N;
the layer's default on sm_90 is configuration 0) and through ``torch._scaled_mm``, the same with
per-label weight scales (weight_scale="label": a scale vector in the epilogue), and in each
recipe of ``largeout.nn.fp8`` through ``_scaled_mm`` (LARGEOUT_FP8_GEMM: input scale per tensor
or per row, fast accumulation or not), the e4m3 layer with bf16 inputs (weight upcast), and
bare ``_scaled_mm`` / ``largeout.fp8_gemm`` calls with pre-quantized operands. The forward runs under
``torch.no_grad``, each call timed alone (host work exposed) and ten calls back to back
(host work overlapped, as in a training loop), per call; the training step is the
forward and ``y.backward(dy)`` with a fixed bf16 ``dy``. CUDA-event medians; the cases run
in --rounds passes (forward: the median over passes; training step: the first pass);
TFLOP/s = 2 B H L / time; peak memory per case.
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
from largeout.nn import Linear
from largeout.nn import fp8 as lo_fp8
from bench_optim import timed  # CUDA-event median (bench/ is on the path when run as a script)


def measure(name, make, B, H, L, iters, train: bool, flops=None):
    """One case: forward alone and back to back, the training step, peak memory. ``flops``
    per forward (default the dense layer's 2 B H L)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    layer, fwd = make()
    x = torch.randn(B, H, device="cuda", dtype=torch.bfloat16)
    row = {"case": name, "B": B, "H": H, "L": L}
    with torch.no_grad():
        row["forward_seconds"] = timed(lambda: fwd(layer, x), iters)[0]

        def ten():
            for _ in range(10):
                fwd(layer, x)
        # back to back, as in a training loop: the host's launch work overlaps the GPU's
        row["forward_seconds_pipelined"] = timed(ten, max(3, iters // 4))[0] / 10
    if train:
        xg = x.clone().requires_grad_()
        dy = torch.randn(B, layer.out_features, device="cuda", dtype=torch.bfloat16)

        def step():
            for p in layer.parameters():
                p.grad = None
            fwd(layer, xg).backward(dy)
        row["train_step_seconds"] = timed(step, iters)[0]
        del dy, xg
    flops = flops or 2 * B * H * L
    row["forward_TFLOPs"] = flops / row["forward_seconds"] / 1e12
    row["forward_TFLOPs_pipelined"] = flops / row["forward_seconds_pipelined"] / 1e12
    if train:
        row["train_step_TFLOPs"] = 3 * flops / row["train_step_seconds"] / 1e12
    row["peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def run_rounds(cases, rounds: int, measure_case) -> dict:
    """Every case once per round, so that a drift of the GPU's clocks over the run (measured
    up to ~5% between cases run minutes apart) spreads over all cases. ``cases``: (name,
    make, train) triples; ``measure_case(name, make, train_now)`` -> a row (the training step
    is timed in round 0 only); a failure is recorded as ``{"case", "error"}``. Returns
    {name: [row per round]}."""
    per_round = {name: [] for name, _, _ in cases}
    for rnd in range(rounds):
        for name, make, train in cases:
            try:
                r = measure_case(name, make, train and rnd == 0)
            except Exception as e:  # noqa: BLE001  (recorded, e.g. a cuBLAS limit)
                r = {"case": name, "error": f"{type(e).__name__}: {e}"[:300]}
            per_round[name].append(r)
        print(f"(round {rnd + 1} of {rounds} done)", flush=True)
    return per_round


def merge_rounds(rs, flops) -> dict:
    """Round 0's row with each forward time the median over the rounds that measured it,
    and TFLOP/s from those medians (``flops`` per forward)."""
    r = dict(rs[0])
    if "error" not in r:
        for key in ("forward_seconds", "forward_seconds_pipelined"):
            r[key + "_rounds"] = [x[key] for x in rs if key in x]  # (a later round may have failed)
            r[key] = statistics.median(r[key + "_rounds"])
        r["forward_TFLOPs"] = flops / r["forward_seconds"] / 1e12
        r["forward_TFLOPs_pipelined"] = flops / r["forward_seconds_pipelined"] / 1e12
    return r


def write_results(path: str, doc: str, rows: list) -> None:
    """The FP8 benchmarks' JSON: the device, versions, build, date, commit (LARGEOUT_GIT_COMMIT),
    the method (``doc``) and the case rows."""
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "largeout": largeout.build_info(), "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "git_commit": os.environ.get("LARGEOUT_GIT_COMMIT"), "method": doc, "cases": rows}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def shape_parser(doc: str, L=2_812_281) -> argparse.ArgumentParser:
    """The FP8 benchmarks' common arguments: --out, --B, --H, and --L (one label count) unless
    ``L`` is None; the description is the first paragraph of ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--B", type=int, default=512)
    ap.add_argument("--H", type=int, default=768)
    if L is not None:
        ap.add_argument("--L", type=int, default=L)
    return ap


def main(argv=None) -> int:
    ap = shape_parser(__doc__)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="passes over all cases (forward: median over them)")
    args = ap.parse_args(argv)
    B, H, L = args.B, args.H, args.L

    Lp = -(-L // 16) * 16

    def bf16(labels, ours=False):
        def make():
            if ours:  # (largeout.nn.Linear pads its output rows at this L: bench/bench_linear_pad.py)
                return Linear(H, labels, device="cuda", dtype=torch.bfloat16), lambda m, x: m(x)
            return torch.nn.Linear(H, labels, device="cuda", dtype=torch.bfloat16), lambda m, x: m(x)
        return make

    def fp8(mode, kernel="cublas", scale=None, dx_chunk=None):
        def make():
            os.environ["LARGEOUT_FP8_GEMM"] = mode
            os.environ["LARGEOUT_FP8_KERNEL"] = kernel
            if dx_chunk is None:
                os.environ.pop("LARGEOUT_FP8_DX_CHUNK", None)
            else:
                os.environ["LARGEOUT_FP8_DX_CHUNK"] = str(dx_chunk)
            return (Linear(H, L, device="cuda", weight_dtype=torch.float8_e4m3fn, weight_scale=scale),
                    lambda m, x: m(x))
        return make

    def fp8_bf16_inputs():
        return (Linear(H, L, device="cuda", weight_dtype=torch.float8_e4m3fn, activation_dtype=torch.bfloat16),
                lambda m, x: m(x))

    def raw(rowwise: bool, fast: bool):
        def make():
            layer = Linear(H, L, device="cuda", weight_dtype=torch.float8_e4m3fn)
            w = lo_fp8.padded_weight(layer.weight)
            q, s = lo_fp8.quantize(torch.randn(B, H, device="cuda"), rowwise=True)
            ones = torch.ones(1, w.shape[0], device="cuda")
            b = torch.nn.functional.pad(layer.bias.detach(), (0, w.shape[0] - L))
            if not rowwise:
                s, ones = s.max().reshape(()), torch.ones((), device="cuda")
            return layer, lambda m, x: torch._scaled_mm(q, w.t(), scale_a=s, scale_b=ones, bias=b,
                                                        out_dtype=torch.bfloat16, use_fast_accum=fast)
        return make

    def raw_largeout(config: int):
        def make():
            layer = Linear(H, L, device="cuda", weight_dtype=torch.float8_e4m3fn)
            w = lo_fp8.padded_weight(layer.weight)
            q, s = lo_fp8.quantize(torch.randn(B, H, device="cuda"), rowwise=False)
            b = torch.nn.functional.pad(layer.bias.detach(), (0, w.shape[0] - L))
            return layer, lambda m, x: torch.ops.largeout.fp8_gemm(q, w, s, b, config)
        return make

    configs = list(torch.ops.largeout.fp8_gemm_configs())
    cases = [(f"bf16 weight, bf16 input, L = {L} (torch.nn.Linear, cuBLAS)", bf16(L), True),
             (f"bf16 weight, bf16 input, L padded to {Lp} (torch.nn.Linear, cuBLAS, aligned)", bf16(Lp), True),
             (f"bf16 weight, bf16 input, L = {L} (largeout.nn.Linear: output rows padded)", bf16(L, True), True)]
    n_bf16 = len(cases)
    cases += [(f"e4m3 weight, e4m3 input (largeout.nn.Linear, FP8 tensor cores, GEMM mode tensor-fast, "
               f"largeout kernel {c}: {name}{' (default)' if c == 0 else ''})",
               fp8("tensor-fast", f"largeout:{c}"), True) for c, name in enumerate(configs)]
    cases += [(f"e4m3 weight, e4m3 input (largeout.nn.Linear, FP8 tensor cores, GEMM mode {m}, torch._scaled_mm)",
               fp8(m), True) for m in ("tensor-fast", "tensor", "row", "row-fast")]
    cases += [("e4m3 weight with per-label scales, e4m3 input (largeout.nn.Linear weight_scale=\"label\", "
               f"GEMM mode tensor-fast, {k})", fp8("tensor-fast", k, "label"), True)
              for k in (["largeout:0"] if configs else []) + ["cublas"]]
    cases += [("e4m3 weight, bf16 input (weight upcast)", fp8_bf16_inputs, True)]
    # the backward's dx over label chunks upcast to bf16 (default 2^18 labels): larger chunks
    cases += [(f"e4m3 weight, e4m3 input, default kernel, dx chunks of {c} labels (LARGEOUT_FP8_DX_CHUNK)",
               fp8("tensor-fast", "largeout:0" if configs else "cublas", dx_chunk=c), True) for c in (1 << 20, 1 << 22)]
    cases += [(f"bare torch._scaled_mm, pre-quantized, {'rowwise' if r else 'tensorwise'} scales"
               f"{', fast accumulation' if f else ''}", raw(r, f), False)
              for r in (True, False) for f in (False, True)]
    cases += [(f"bare largeout fp8_gemm {c} ({name}), pre-quantized, tensorwise scale, fast accumulation",
               raw_largeout(c), False) for c, name in enumerate(configs)]
    per_round = run_rounds(cases, args.rounds, lambda name, make, train: measure(name, make, B, H, L, args.iters, train))
    rows = []
    for name, _, _ in cases:
        r = merge_rounds(per_round[name], 2 * B * H * L)
        rows.append(r)
        if "error" in r:
            print(f"{name}: {r['error']}", flush=True)
            continue
        tr = f", step {r['train_step_seconds'] * 1e3:7.2f} ms" if "train_step_seconds" in r else ""
        print(f"{name:70s} fwd {r['forward_seconds'] * 1e3:7.2f} ms ({r['forward_TFLOPs']:.0f} TFLOP/s), "
              f"back to back {r['forward_seconds_pipelined'] * 1e3:7.2f} ms{tr}, "
              f"peak {r['peak_GB']:.1f} GB", flush=True)
    for var in ("LARGEOUT_FP8_GEMM", "LARGEOUT_FP8_KERNEL", "LARGEOUT_FP8_DX_CHUNK"):
        os.environ.pop(var, None)
    # the baseline: the fastest of the bf16 layers (a user can pad L)
    bf = [r for r in rows[:n_bf16] if "forward_seconds" in r]
    base_f = min(r["forward_seconds"] for r in bf) if bf else None
    base_s = min(r["train_step_seconds"] for r in bf) if bf else None
    base_p = min(r["forward_seconds_pipelined"] for r in bf) if bf else None
    for r in rows:
        if base_f and "forward_seconds" in r:
            r["forward_speedup_vs_bf16"] = base_f / r["forward_seconds"]
            r["forward_pipelined_speedup_vs_bf16"] = base_p / r["forward_seconds_pipelined"]
        if base_s and "train_step_seconds" in r:
            r["train_step_speedup_vs_bf16"] = base_s / r["train_step_seconds"]
    print("forward speedup over the faster bf16 layer: " + ", ".join(
        f"{r['case'].split('(')[-1].rstrip(')')}: {r['forward_speedup_vs_bf16']:.2f}x "
        f"(back to back {r['forward_pipelined_speedup_vs_bf16']:.2f}x)" for r in rows
        if "forward_speedup_vs_bf16" in r and "e4m3 input" in r["case"]), flush=True)
    write_results(args.out, __doc__, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
