#!/usr/bin/env python3
"""Tune our trainer on the validation split of a prepared dataset (no test numbers used).

    python bench/xmc_tune.py --data DIR --grid GRID.json --out tune.json [--device cuda]
        [--baselines baselines.json --dataset NAME]

GRID.json is a list of trainer overrides (dicts of TrainConfig fields). For each, the
trainer runs with the validation split of bench/xmc_quality.py (val_fraction 0.1,
seed 0) and picks its best epoch by ``select_metric`` exactly as a final run would; we
record that epoch's validation P@k / PSP@k (the trainer also scores test at the end;
those numbers are discarded here, never written). With ``--baselines`` (a JSON written
by bench/xmc_quality.py), each config's margin over the best baseline *on validation*
is reported, and the config with the largest smallest margin over the six metrics is
marked ``chosen``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xmc_quality import BASE_KEYS, COLS, OURS_COMMON, _load_members, _set_rank_power  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from largeout.train import evaluate_split, load_config, predict_topk, train  # noqa: E402
from largeout.train.data import load_dataset  # noqa: E402


def rank_power_rows(cfg, powers):
    """Validation metrics of the run's best checkpoint ranked with each rank_propensity_power."""
    data = load_dataset(cfg)
    dev = torch.device(cfg.device)
    model = _load_members([cfg], data, dev)
    log_w = torch.from_numpy(np.log(np.asarray(data.inv_propensity, dtype=np.float64))).float()
    out = []
    for g in powers:
        _set_rank_power(model, log_w, g)
        top, scores = predict_topk(model, data.val, 5, 1024, dev)
        val = evaluate_split(top, scores, data.val.Y, data.inv_propensity)
        out.append((g, {c: val[c] for c in COLS}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--grid", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/xmc_tune"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--baselines", type=Path, default=None)
    ap.add_argument("--dataset", default=None, help="entry of --baselines to compare with")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new configs after this many seconds")
    ap.add_argument("--rank-powers", default="", help="comma-separated rank_propensity_power values to also evaluate "
                                                      "on each run's best checkpoint (no retraining)")
    args = ap.parse_args(argv)
    grid = json.loads(args.grid.read_text())
    best_base = None
    if args.baselines is not None:
        methods = json.loads(args.baselines.read_text())["datasets"][args.dataset]["methods"]
        best_base = {c: max(methods[b]["val"][c] for b in BASE_KEYS if b in methods) for c in COLS}
    rows, t_all = [], time.time()
    for i, over in enumerate(grid):
        if time.time() - t_all > args.budget_s:
            rows.append({"config": over, "skipped": "time budget"})
            continue
        cfg = load_config(None, {**OURS_COMMON, "data": str(args.data), "device": args.device,
                                 "out": str(args.work / f"cfg{i}"), **over})
        t0 = time.time()
        summary = train(cfg, log=lambda m: None)
        secs = time.time() - t0
        hist = [json.loads(line) for line in open(Path(cfg.out) / "metrics.jsonl") if '"epoch"' in line]
        epochs = [h for h in hist if h.get("split") == "epoch" and "val" in h]
        best = next(h for h in epochs if h["epoch"] == summary["best_epoch"])
        row = {"config": over, "best_epoch": summary["best_epoch"], "seconds": round(secs, 1),
               "val": {c: best["val"][c] for c in COLS},
               "val_by_epoch": [{"epoch": h["epoch"], **{c: round(h["val"][c], 5) for c in COLS}} for h in epochs]}
        if best_base is not None:
            row["margin"] = {c: round(row["val"][c] - best_base[c], 5) for c in COLS}
            row["min_margin"] = min(row["margin"].values())
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {over}: epoch {row['best_epoch']}, {secs:.0f} s, val "
              + ", ".join(f"{c} {row['val'][c]:.4f}" for c in COLS)
              + (f"; min margin {row['min_margin']:+.4f}" if "min_margin" in row else ""), flush=True)
        for g, val in rank_power_rows(cfg, [float(x) for x in args.rank_powers.split(",") if x]):
            r = {"config": {**over, "rank_propensity_power": g}, "best_epoch": row["best_epoch"], "val": val,
                 "note": "the run above's best checkpoint, ranked with this power (not retrained)"}
            if best_base is not None:
                r["margin"] = {c: round(val[c] - best_base[c], 5) for c in COLS}
                r["min_margin"] = min(r["margin"].values())
            rows.append(r)
            print(f"    rank power {g}: " + ", ".join(f"{c} {val[c]:.4f}" for c in COLS)
                  + (f"; min margin {r['min_margin']:+.4f}" if "min_margin" in r else ""), flush=True)
        args.out.write_text(json.dumps({"data": str(args.data), "best_baseline_val": best_base, "rows": rows}, indent=1))
    done = [r for r in rows if "min_margin" in r]
    if done:
        max(done, key=lambda r: r["min_margin"])["chosen"] = True
    args.out.write_text(json.dumps({"data": str(args.data), "best_baseline_val": best_base, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
