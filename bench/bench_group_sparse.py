"""Group-sparse layer kernels against cuBLAS baselines, measured in one run.

Usage (on a GPU machine, after `pip install .`):

    python bench/bench_group_sparse.py                       # B=512 H=768 K=128 G=32 L=670208, bf16
    python bench/bench_group_sparse.py --B 128,512 --K 64,128 --G 16,32 --dtype fp16 --out /tmp/gs.json

The script runs the installed C++ binary `largeout_bench_group_sparse` once (our
forward, dx and dW kernels for every supported (B, K, G, L) combination), then,
in this process, times two cuBLAS baselines per shape with CUDA events (warmup,
about `--warmup-ms` of further runs, then the median of `--iters` individually timed
runs; the binary times ours the same way):

  matched  the FLOPs-matched dense GEMMs: fwd x_k[B,K] @ W[L,K]^T, dx dY[B,L] @ W,
           dW dY^T @ x_k;
  dense    the full dense layer with H inputs: fwd x[B,H] @ W_full[L,H]^T,
           dx dY @ W_full, dW dY^T @ x.

It also measures the bf16 GEMM peak (8192^3 matmul) and the device-to-device copy
bandwidth (2 GiB), and writes one JSON file (default
bench/results/group_sparse_<gpu-slug>.json) with metadata, the binary's raw
output and one row per shape; a short table is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

PASSES = ("fwd", "dx", "dw")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BENCH_DIR = Path(__file__).resolve().parent


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int_list, default=[512], help="batch sizes (comma list)")
    p.add_argument("--K", type=int_list, default=[128], help="fan-in per group (comma list)")
    p.add_argument("--G", type=int_list, default=[32], help="group sizes (comma list)")
    p.add_argument("--L", type=int_list, default=[670208], help="output sizes (comma list)")
    p.add_argument("--H", type=int, default=768, help="input features")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--iters", type=int, default=50, help="timed runs per measurement (>= 50)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--warmup-ms", type=float, default=200.0,
                   help="after --warmup runs, run each measured call for about this many ms more before timing it "
                        "(ours and cuBLAS alike), so that the clocks settle to that call's load whatever ran before "
                        "(bench/NOTES.md, session 31); 0: off")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/group_sparse_<gpu>.json)")
    p.add_argument("--binary", default=None, help="path of largeout_bench_group_sparse (default: the installed one)")
    p.add_argument("--index-order", choices=("sorted", "banked", "balanced"), default=None,
                   help="each group's indices (random_group_indices' orders; default GroupSparseLinear's: "
                        "balanced where H is a multiple of 8, else sorted)")
    p.add_argument("--compare-generic", action="store_true",
                   help="also time the generic kernels (largeout.kernels policy 'generic') in the same run")
    args = p.parse_args()
    if args.iters < 50:
        p.error(f"--iters must be at least 50; got {args.iters}")
    if not 0 <= args.warmup_ms <= 10_000:
        p.error(f"--warmup-ms must be in [0, 10000]; got {args.warmup_ms}")
    return args


def median_ms(fn, warmup: int, iters: int, warmup_ms: float = 0.0) -> float:
    """Median over `iters` runs of fn, each timed with its own pair of CUDA events, after
    `warmup` runs and then, where warmup_ms > 0, further runs for about warmup_ms milliseconds."""
    for _ in range(warmup):
        fn()
    if warmup_ms > 0:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        for _ in range(min(int(warmup_ms / max(a.elapsed_time(b), 1e-3)), 100_000)):
            fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def gemm_peak_tflops(warmup: int, iters: int) -> float:
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: torch.mm(a, b, out=c), warmup, iters)
    del a, b, c
    torch.cuda.empty_cache()
    return 2 * n**3 / ms * 1e-9


def copy_gbps(warmup: int, iters: int) -> float:
    nbytes = 2 << 30
    src = torch.randint(0, 255, (nbytes,), device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), warmup, iters)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / ms * 1e-6  # bytes read + written


def time_layer(B: int, n_in: int, L: int, dtype: torch.dtype, warmup: int, iters: int,
               warmup_ms: float = 0.0) -> dict[str, float]:
    """fwd/dx/dW GEMMs of a dense layer [B, n_in] -> [B, L], in ms."""
    x = torch.randn(B, n_in, device="cuda", dtype=dtype)
    w = torch.randn(L, n_in, device="cuda", dtype=dtype).mul_(n_in**-0.5)
    dy = torch.randn(B, L, device="cuda", dtype=dtype)
    y = torch.empty(B, L, device="cuda", dtype=dtype)
    dx = torch.empty(B, n_in, device="cuda", dtype=dtype)
    dw = torch.empty(L, n_in, device="cuda", dtype=dtype)
    ms = {
        "fwd": median_ms(lambda: torch.mm(x, w.t(), out=y), warmup, iters, warmup_ms),
        "dx": median_ms(lambda: torch.mm(dy, w, out=dx), warmup, iters, warmup_ms),
        "dw": median_ms(lambda: torch.mm(dy.t(), x, out=dw), warmup, iters, warmup_ms),
    }
    del x, w, dy, y, dx, dw
    torch.cuda.empty_cache()
    return ms


def git_commit() -> str:
    if os.environ.get("LARGEOUT_GIT_COMMIT"):  # the device machine's copy has no .git
        return os.environ["LARGEOUT_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def as_tuple(out) -> tuple:
    """An op's output as a tuple (dW's op returns (dW, dbias), the others one tensor)."""
    return out if isinstance(out, tuple) else (out,)


def write_rows(path, rows: list, method: str, **extra) -> None:
    """The JSON file of a small benchmark script: its rows, the device, commit and time, the
    script's docstring as its method, and any `extra` fields (the run's settings)."""
    result = {**extra, "rows": rows, "device": torch.cuda.get_device_name(),
              "commit": os.environ.get("LARGEOUT_GIT_COMMIT", "unknown"),
              "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"), "method": method}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def run_binary(binary: str, args: argparse.Namespace, kernels: str = "auto") -> dict:
    cmd = [binary, "--B", ",".join(map(str, args.B)), "--H", str(args.H), "--K", ",".join(map(str, args.K)),
           "--G", ",".join(map(str, args.G)), "--L", ",".join(map(str, args.L)), "--dtype", args.dtype,
           "--warmup", str(args.warmup), "--warmup-ms", str(args.warmup_ms), "--iters", str(args.iters),
           "--kernels", kernels,
           "--index-order", args.index_order]
    print("running:", " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        sys.exit(f"{binary} failed with exit code {proc.returncode}")
    if proc.stderr:
        print(proc.stderr, end="", file=sys.stderr)  # e.g. skipped unsupported shapes
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        print(proc.stdout, file=sys.stderr)
        sys.exit(f"could not parse the binary's output as JSON: {err}")


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device available; this benchmark needs a GPU", file=sys.stderr)
        sys.exit(2)
    try:
        import largeout
    except ImportError as err:
        sys.exit(f"cannot import largeout ({err}); run `pip install .` first")
    if args.index_order is None:
        from largeout.nn.group_sparse import default_index_order

        args.index_order = default_index_order(args.H)
    binary = args.binary or os.path.join(os.path.dirname(largeout.__file__), "bin", "largeout_bench_group_sparse")
    if not os.access(binary, os.X_OK):
        sys.exit(f"benchmark binary not found or not executable: {binary}")

    raw = run_binary(binary, args)  # first, so that the binary has the GPU to itself
    raw_generic = run_binary(binary, args, "generic") if args.compare_generic else None
    generic = {(r["B"], r["K"], r["G"], r["L"]): r for r in raw_generic["results"]} if raw_generic else {}
    dtype = DTYPES[args.dtype]
    gpu = torch.cuda.get_device_name()
    peak = gemm_peak_tflops(args.warmup, args.iters)
    gbps = copy_gbps(args.warmup, args.iters)

    rows, cache = [], {}  # baselines do not depend on G: time each (B, K, L) / (B, H, L) once
    for r in raw["results"]:
        B, H, L, K, G = (r[k] for k in ("B", "H", "L", "K", "G"))
        torch.cuda.reset_peak_memory_stats()
        for key in (("matched", B, K, L), ("dense", B, H, L)):
            if key not in cache:
                cache[key] = time_layer(B, key[2], L, dtype, args.warmup, args.iters, args.warmup_ms)
                cache[key + ("peak",)] = torch.cuda.max_memory_allocated()
        matched, dense = cache[("matched", B, K, L)], cache[("dense", B, H, L)]
        row = {"B": B, "H": H, "L": L, "K": K, "G": G}
        gen = generic.get((B, K, G, L))
        for p in PASSES:
            ours = r[f"{p}_ms"]
            row[p] = {
                "path": r.get(f"{p}_path", "generic"),
                "ours_ms": ours,
                "matched_ms": matched[p],
                "dense_ms": dense[p],
                "ours_over_matched": ours / matched[p],
                "ours_over_dense": ours / dense[p],
                "ours_tflops": r[f"{p}_tflops"],
                "ours_fraction_of_peak": r[f"{p}_tflops"] / peak,
            }
            if f"{p}_dy_by_tma" in r:  # dx / dW: dY read by TMA (at odd L through row classes), else v1
                row[p]["dy_by_tma"] = r[f"{p}_dy_by_tma"]
            if gen is not None:
                row[p]["generic_ms"] = gen[f"{p}_ms"]
                row[p]["generic_over_ours"] = gen[f"{p}_ms"] / ours
        row["baseline_peak_bytes"] = max(cache[("matched", B, K, L, "peak")], cache[("dense", B, H, L, "peak")])
        row["ours_device_bytes"] = r["device_bytes"]
        rows.append(row)

    result = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "largeout_build_info": largeout.build_info(),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # the kernels' environment switches in force (variants compared run by run)
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("LARGEOUT_SM90_")},
        "dtype": args.dtype,
        "index_order": args.index_order,
        "statistic": "median",
        "iters": args.iters,
        "warmup": args.warmup,
        "warmup_ms": args.warmup_ms,
        "gemm_peak_tflops": peak,
        "copy_gbps": gbps,
        "binary": raw,
        "binary_generic": raw_generic,
        "rows": rows,
    }
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out = args.out or BENCH_DIR / "results" / f"group_sparse_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{gpu}  {args.dtype}  bf16 GEMM peak {peak:.0f} TFLOP/s  copy {gbps:.0f} GB/s  -> {out}")
    print(f"{'shape':<34} {'pass':<4} {'path':<7} {'ours ms':>9} {'matched':>9} {'dense':>9} {'ours/mat':>9} "
          f"{'TFLOP/s':>8} {'generic':>9}")
    for row in rows:
        shape = f"B{row['B']} H{row['H']} K{row['K']} G{row['G']} L{row['L']}"
        for p in PASSES:
            d = row[p]
            gen_ms = f"{d['generic_ms']:>9.4f}" if "generic_ms" in d else f"{'-':>9}"
            print(f"{shape:<34} {p:<4} {d['path']:<7} {d['ours_ms']:>9.4f} {d['matched_ms']:>9.4f} "
                  f"{d['dense_ms']:>9.4f} {d['ours_over_matched']:>9.2f} {d['ours_tflops']:>8.1f} {gen_ms}")


if __name__ == "__main__":
    main()
