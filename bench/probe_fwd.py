"""Where the Hopper forward's, dx's and dW's time goes: the kernels timed with parts switched off.

    python bench/probe_fwd.py --out probe_fwd.json [--passes fwd,dx,dw]

Probes (LARGEOUT_SM90_FWD_PROBE, compiled for bf16, G=32, K=128 only): 0 the kernel,
1 the loader alone (computing warps release every stage at once), 2 no output stores,
3 no gather (ldmatrix of fixed rows), 4 MMAs alone; each with two or three computing
warpgroups (LARGEOUT_SM90_FWD_CONS), LARGEOUT_SM90_FWD_STAGES stages in each computing
warpgroup's ring (fewer where they do not fit) and the output stored by TMA
(LARGEOUT_SM90_FWD_TMA_STORE=1) or by plain stores (0). max_abs_diff_vs_default compares
with the library's default choice (computed first). dW probes (LARGEOUT_SM90_DW_PROBE,
bf16, G=32, K=128 only) on v2 (dY by TMA, the default where L % 8 == 0; one loader
warpgroup, which sums dbias: LARGEOUT_SM90_DW_DBIAS=loader, set here): 0 the kernel, 1 no gathers of x^T rows, 2 no TMA of dY tiles, 3 no MMAs, 4 no
dbias, 5 neither gathers nor dY (the ring's barriers, MMAs and dbias alone), 6 no proxy fence
before the MMAs (results wrong except for 0); with --dw-v1 first on v1 (LARGEOUT_SM90_DW=v1:
1 no gathers, 2 no dY loads or placement, 3 no MMAs); with --dw-rc, the row classes (dY of --rc-L
columns, a row stride not a multiple of 8; dbias by the computing warpgroups, the default): 0 the
kernel, 7 no placement of the raw rows, 8 no proxy fence after it, 9 no named barrier after it,
10 none of the three, and the default kernel at --L (aligned rows) beside them. dx v2 probes (LARGEOUT_SM90_DX=v2, LARGEOUT_SM90_DX_PROBE,
bf16, G=32, K=128 only): 0 the kernel, 1 no scatter into the accumulator, 2 no MMAs, 3 no
ldmatrix of W. Medians of CUDA-event timings; the cuBLAS GEMM of equal FLOPs ([B, K] x [K, L])
is timed in the same run as the reference."""

import argparse
import json
import os
import time

import torch

import largeout
from bench_optim import timed  # (bench/ is the script's directory)
from largeout.nn import random_group_indices


def median_ms(fn, reps: int = 20) -> float:
    return timed(fn, reps)[0] * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=512)
    p.add_argument("--H", type=int, default=768)
    p.add_argument("--L", type=int, default=670_208)
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--G", type=int, default=32)
    p.add_argument("--stages", default="3,8")
    p.add_argument("--cons", default="2,3")
    p.add_argument("--passes", default="fwd,dx,dw")
    p.add_argument("--dw-v1", action="store_true", help="dW v1's probes too")
    p.add_argument("--dw-rc", action="store_true", help="dW's row-class probes too (at --rc-L)")
    p.add_argument("--rc-L", type=int, default=670_091)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(a.B, a.H, device="cuda", dtype=dt, generator=g)
    w = (torch.randn(a.L, a.K, device="cuda", dtype=dt, generator=g) / a.K**0.5)
    bias = torch.randn(a.L, device="cuda", dtype=dt, generator=g)
    idx = random_group_indices(-(-a.L // a.G), a.H, a.K, generator=torch.Generator().manual_seed(0)).cuda()
    ops = torch.ops.largeout
    ref = ops.group_sparse_linear(x, w, idx, bias, a.G).float()
    xm = torch.randn(a.B, a.K, device="cuda", dtype=dt, generator=g)
    wm = torch.randn(a.K, a.L, device="cuda", dtype=dt, generator=g)
    cublas = median_ms(lambda: xm @ wm)
    rows = []
    for cons in a.cons.split(",") if "fwd" in a.passes else []:
        for store in ("1", "0"):
            for st in a.stages.split(","):
                for probe in range(5):
                    if store == "0" and probe != 0:
                        continue
                    env = {"LARGEOUT_SM90_FWD_STAGES": st, "LARGEOUT_SM90_FWD_PROBE": str(probe),
                           "LARGEOUT_SM90_FWD_TMA_STORE": store, "LARGEOUT_SM90_FWD_CONS": cons}
                    os.environ.update(env)
                    before = largeout.kernels.launch_counts()["forward"]["sm90"]
                    ms = median_ms(lambda: ops.group_sparse_linear(x, w, idx, bias, a.G))
                    ran_sm90 = largeout.kernels.launch_counts()["forward"]["sm90"] > before
                    row = {"computing_warpgroups": int(cons), "tma_store": int(store), "stages_per_ring": int(st),
                           "probe": probe, "ms": round(ms, 4), "sm90": ran_sm90}
                    if probe == 0:
                        y = ops.group_sparse_linear(x, w, idx, bias, a.G).float()
                        row["max_abs_diff_vs_default"] = float((y - ref).abs().max())
                    rows.append(row)
                    print(row, flush=True)
        for k in env:
            os.environ.pop(k)
    dy = torch.randn(a.B, a.L, device="cuda", dtype=dt, generator=g)
    if "dx" in a.passes:
        dx_ref = ops.group_sparse_linear_backward_input(dy, w, idx, a.G, a.H).float()
        os.environ["LARGEOUT_SM90_DX"] = "v2"  # the probes are compiled into v2 (v3 is the default here)
        for probe in range(4):
            os.environ["LARGEOUT_SM90_DX_PROBE"] = str(probe)
            before = largeout.kernels.launch_counts()["input"]["sm90"]
            ms = median_ms(lambda: ops.group_sparse_linear_backward_input(dy, w, idx, a.G, a.H))
            row = {"pass": "dx", "probe": probe, "ms": round(ms, 4),
                   "sm90": largeout.kernels.launch_counts()["input"]["sm90"] > before}
            if probe == 0:
                dx = ops.group_sparse_linear_backward_input(dy, w, idx, a.G, a.H).float()
                row["max_abs_diff_vs_default"] = float((dx - dx_ref).abs().max())
            rows.append(row)
            print(row, flush=True)
        os.environ.pop("LARGEOUT_SM90_DX_PROBE")
        os.environ.pop("LARGEOUT_SM90_DX")
    if "dw" in a.passes:
        dw_ref = ops.group_sparse_linear_backward_weight(dy, x, idx, a.G)[0].float()
        # v2 (dY by TMA, the library's default here) with probes 0-6, twice in turn (0 again at
        # the end); v1 (LARGEOUT_SM90_DW=v1) with 0-3 only where --dw-v1
        runs = [("v1", p) for p in range(4)] if a.dw_v1 else []
        runs += [("v2", p) for _ in range(2) for p in range(7)] + [("v2", 0)]
        os.environ["LARGEOUT_SM90_DW_DBIAS"] = "loader"  # the probed kernel's dbias
        for version, probe in runs:
            if version == "v1":
                os.environ["LARGEOUT_SM90_DW"] = "v1"
            else:
                os.environ.pop("LARGEOUT_SM90_DW", None)
            os.environ["LARGEOUT_SM90_DW_PROBE"] = str(probe)
            before = largeout.kernels.launch_counts()["weight"]["sm90"]
            ms = median_ms(lambda: ops.group_sparse_linear_backward_weight(dy, x, idx, a.G))
            row = {"pass": "dw", "version": version, "probe": probe, "ms": round(ms, 4),
                   "sm90": largeout.kernels.launch_counts()["weight"]["sm90"] > before}
            if probe == 0:
                dw = ops.group_sparse_linear_backward_weight(dy, x, idx, a.G)[0].float()
                row["max_abs_diff_vs_default"] = float((dw - dw_ref).abs().max())
            rows.append(row)
            print(row, flush=True)
        os.environ.pop("LARGEOUT_SM90_DW_PROBE")
        os.environ.pop("LARGEOUT_SM90_DW", None)
        os.environ.pop("LARGEOUT_SM90_DW_DBIAS")
    if "dw" in a.passes and a.dw_rc:
        # The row-class kernel (dY's row stride a.rc_L, not a multiple of 8) with probes 0, 7-10,
        # twice in turn (0 again at the end), and the default kernel at a.L (aligned rows) each round.
        dy_rc = torch.randn(a.B, a.rc_L, device="cuda", dtype=dt, generator=g)
        idx_rc = random_group_indices(-(-a.rc_L // a.G), a.H, a.K, generator=torch.Generator().manual_seed(0)).cuda()
        dw_rc_ref = ops.group_sparse_linear_backward_weight(dy_rc, x, idx_rc, a.G)[0].float()
        for probe in [p for _ in range(2) for p in ("aligned", 0, 7, 8, 9, 10)] + [0]:
            if probe == "aligned":
                counter, args = "sm90", (dy, x, idx, a.G)
            else:
                os.environ["LARGEOUT_SM90_DW_PROBE"] = str(probe)
                counter, args = "sm90-row-classes", (dy_rc, x, idx_rc, a.G)
            before = largeout.kernels.launch_counts()["weight"][counter]
            ms = median_ms(lambda: ops.group_sparse_linear_backward_weight(*args))
            row = {"pass": "dw", "version": "aligned" if probe == "aligned" else "row-classes",
                   "L": a.L if probe == "aligned" else a.rc_L, "probe": 0 if probe == "aligned" else probe,
                   "ms": round(ms, 4), "sm90": largeout.kernels.launch_counts()["weight"][counter] > before}
            if probe == 0:
                dw = ops.group_sparse_linear_backward_weight(*args)[0].float()
                row["max_abs_diff_vs_default"] = float((dw - dw_rc_ref).abs().max())
            rows.append(row)
            print(row, flush=True)
            os.environ.pop("LARGEOUT_SM90_DW_PROBE", None)
    out = {"shape": vars(a), "cublas_matched_ms": round(cublas, 4), "rows": rows,
           "device": torch.cuda.get_device_name(), "commit": os.environ.get("LARGEOUT_GIT_COMMIT", "unknown"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print("cuBLAS matched", cublas)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
