#!/usr/bin/env python3
"""Does pure low-precision training of the output layer converge? Evidence on the synthetic task.

    python bench/lowp_evidence.py --out bench/results/lowp_evidence.json [--device cuda]

The trainer (tf-idf encoder in fp32, built-in synthetic data of the demo) with a dense
and a group-sparse output layer whose weights are trained as
  (a) fp32 (torch.optim),                (b) bf16, round to nearest (largeout.optim),
  (c) bf16, stochastic rounding,          (d) bf16, nearest + Kahan compensation,
  (e) fp8 e4m3, stochastic rounding (bf16 gradients; dense: FP8 matmul of e4m3 inputs on
      GPUs with FP8 tensor cores, group-sparse: the weight upcast to bf16),
  (f) as (e) with a power-of-two scale per label (head_weight_scale "label", re-chosen
      every epoch),
each with SGD (momentum 0.9; lr picked for (a) on validation from a small grid and used
by all) and with AdamW (lr 5e-3, the demo's); with --small-lrs / --small-adamw-lrs, also
the dense head with SGD / AdamW at fixed small learning rates, where most updates fall
below half a bf16 ulp.
Reported: validation P@1 per epoch and the test P@1 of the best-on-validation epoch;
JSON and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import largeout
from bench_group_sparse import git_commit  # (bench/ is on the path when run as a script)
from largeout.train import load_config, train

VARIANTS = {
    "a fp32": {"head_dtype": "float32"},
    "b bf16 nearest": {"head_dtype": "bfloat16", "head_rounding": "nearest"},
    "c bf16 SR": {"head_dtype": "bfloat16", "head_rounding": "stochastic"},
    "d bf16 Kahan": {"head_dtype": "bfloat16", "head_rounding": "kahan"},
    "e fp8 SR": {"head_dtype": "float8_e4m3fn", "head_rounding": "stochastic"},
    "f fp8 SR scaled": {"head_dtype": "float8_e4m3fn", "head_rounding": "stochastic", "head_weight_scale": "label"},
}
COMMON = {"epochs": 8, "progress": False, "seed": 0}


def run(over: dict, work: Path, device: str) -> dict:
    cfg = load_config(None, {**COMMON, **over, "device": device, "out": str(work)})
    t0 = time.time()
    s = train(cfg, log=lambda m: None)
    hist = [json.loads(line) for line in open(work / "metrics.jsonl")]
    val = [h["val"]["P@1"] for h in hist if h.get("split") == "epoch" and "val" in h]
    return {"config": over, "val_p1_by_epoch": val, "best_epoch": s["best_epoch"], "val_p1": max(val),
            "test_p1": s["test"]["P@1"], "test_p5": s["test"]["P@5"], "seconds": round(time.time() - t0, 1)}


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (draw it later with --plot JSON)", flush=True)
        return
    keys = list(result["runs"])
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.0, 4.2 * len(keys)), 3.6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, key in zip(axes, keys):
        for name, r in result["runs"][key]["variants"].items():
            ax.plot(range(1, len(r["val_p1_by_epoch"]) + 1), r["val_p1_by_epoch"], marker="o", ms=3, label=name)
        ax.set_title(f"{key} (lr {result['runs'][key]['lr']})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation P@1")
    axes[-1].legend(fontsize=8)
    fig.suptitle("Output layer trained in fp32 / bf16 / fp8 (synthetic XMC task)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lowp_evidence"))
    ap.add_argument("--sgd-lrs", default="0.05,0.2")
    ap.add_argument("--epochs", type=int, default=COMMON["epochs"])
    ap.add_argument("--samples", type=int, default=None, help="synthetic examples (default: the demo's)")
    ap.add_argument("--plot", type=Path, default=None, help="only draw the PNG of an existing JSON")
    ap.add_argument("--small-lrs", default="",
                    help="also run the dense head with SGD at each of these fixed (small) learning rates, where "
                         "most updates fall below half a bf16 ulp: the regime in which nearest rounding stalls")
    ap.add_argument("--small-adamw-lrs", default="",
                    help="also run the dense head with AdamW at each of these fixed (small) learning rates: "
                         "AdamW's steps are about lr in size, below half a bf16 ulp of most weights")
    ap.add_argument("--only-small", action="store_true", help="run only the --small-lrs / --small-adamw-lrs regimes")
    ap.add_argument("--variants", default="", help="letters of the variants to run (default: all; (a) always runs)")
    args = ap.parse_args(argv)
    if args.plot is not None:
        plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png"))
        return 0
    COMMON["epochs"] = args.epochs
    if args.samples:
        COMMON["synthetic"] = {**load_config(None, {}).synthetic, "num_samples": args.samples}
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "largeout": largeout.build_info(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "git_commit": git_commit(),
              "method": __doc__, "runs": {}}
    regimes = [] if args.only_small else [(o, p, None) for o in ("dense", "group-sparse") for p in ("sgd", "adamw")]
    regimes += [("dense", "sgd", float(x)) for x in args.small_lrs.split(",") if x]
    regimes += [("dense", "adamw", float(x)) for x in args.small_adamw_lrs.split(",") if x]
    for output, opt, fixed_lr in regimes:
        key = f"{output} {opt}" + (f" small lr {fixed_lr}" if fixed_lr else "")
        base = {"output": output, "optimizer": opt}
        if fixed_lr:
            base["lr"] = fixed_lr
            rows = {}
        elif opt == "sgd":
            grid = []
            for lr in [float(x) for x in args.sgd_lrs.split(",")]:
                r = run({**base, **VARIANTS["a fp32"], "lr": lr}, args.work / f"{key}-a-{lr}", args.device)
                grid.append((r["val_p1"], lr, r))
                print(f"{key}: (a) lr {lr}: val P@1 {r['val_p1']:.4f}", flush=True)
            _, lr, ra = max(grid, key=lambda t: t[0])
            base["lr"] = lr
            rows = {"a fp32": ra}
            result.setdefault("sgd_lr_grid", {})[key] = [{"lr": g[1], "val_p1": g[0]} for g in grid]
        else:
            base["lr"] = 5e-3
            rows = {}
        for name, v in VARIANTS.items():
            if name in rows or (args.variants and name[0] not in args.variants + "a"):
                continue
            rows[name] = run({**base, **v}, args.work / f"{key}-{name.split()[0]}", args.device)
        for name, r in rows.items():
            print(f"{key}: {name:16s} val P@1 {r['val_p1']:.4f}  test P@1 {r['test_p1']:.4f}  "
                  f"(by epoch: {', '.join(f'{v:.3f}' for v in r['val_p1_by_epoch'])})", flush=True)
        a = rows["a fp32"]["test_p1"]
        result["runs"][key] = {"lr": base["lr"], "variants": rows,
                               "test_p1_minus_fp32": {n: round(r["test_p1"] - a, 4) for n, r in rows.items()}}
        args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
