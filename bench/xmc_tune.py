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
from xmc_quality import COLS, OURS_COMMON, BASE_KEYS  # noqa: E402

from largeout.train import load_config, train  # noqa: E402


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
        args.out.write_text(json.dumps({"data": str(args.data), "best_baseline_val": best_base, "rows": rows}, indent=1))
    done = [r for r in rows if "min_margin" in r]
    if done:
        max(done, key=lambda r: r["min_margin"])["chosen"] = True
    args.out.write_text(json.dumps({"data": str(args.data), "best_baseline_val": best_base, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
