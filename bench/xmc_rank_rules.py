"""Ranking rules at rank 1 for trainer runs on one dataset (one run or an ensemble):
how far PSP@1 can rise while P@1 stays at 100% on validation.

    python bench/xmc_rank_rules.py --runs RUN [RUN ...] --out bench/results/wordnet_rank_rules.json

Rules, each scored on the validation split (the trainer's, carved from training) and on
test, from the top 32 labels of the members' mean log-probability:
  - "power p": mean log-probability + p * log(inverse propensity) (the trainer's
    rank_propensity_power; an ensemble as `largeout train` ranks it);
  - "sure T": the labels whose logit exceeds T in every member first, rarest (largest
    inverse propensity) first; then the rest as "power 0".
A threshold T is usable when it keeps validation P@1 at 100%; PSP@1 at that T is what the
rule buys. Also, as a bound: test PSP@1 when rank 1 is always the row's d-th commonest true
label (d = 1: the commonest, the root on WordNet), without any model."""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from largeout import metrics as M
from largeout.train import load_config
from largeout.train.data import load_dataset
from largeout.train.model import build_model
from largeout.train.trainer import batches

TOP = 32
METRICS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5")


def candidates(members, name):
    """Top-TOP labels by the members' mean log-probability on split `name`, those values,
    and each label's minimum logit over the members. Each member reads its own dataset
    (members may differ in features, e.g. tf-idf alone and tf-idf + text embeddings; the
    rows and their order are the same: one split)."""
    idx, mean, low = [], [], []
    with torch.no_grad():
        streams = [batches(getattr(ds, name), 512, torch.device("cpu"), targets=False) for _, ds in members]
        for bs in zip(*streams):
            z = torch.stack([m(b).float() for (m, _), b in zip(members, bs)])
            ls = torch.nn.functional.logsigmoid(z).mean(0)
            top = ls.topk(TOP, dim=1)
            idx.append(top.indices.numpy())
            mean.append(top.values.numpy().astype(np.float64))
            low.append(z.min(0).values.gather(1, top.indices).numpy())
    return np.concatenate(idx), np.concatenate(mean), np.concatenate(low)


def score(order_key, idx, Y, ip):
    top = np.take_along_axis(idx, np.argsort(-order_key, axis=1, kind="stable"), 1)[:, :5]
    r = M.evaluate(top, Y, ks=(1, 3, 5), inv_propensity=ip)
    return {k: round(100 * r[k], 3) for k in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="trainer output folders (same data and split)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--powers", default="0,3e-6,3e-5")
    ap.add_argument("--thresholds", default="10,12,14,16,18,20,22,25")
    a = ap.parse_args()
    members, datasets = [], {}
    for run in a.runs:
        cfg = load_config(None, json.loads((run / "config.json").read_text()))
        key = json.dumps({k: v for k, v in cfg.to_dict().items() if k in ("data", "encoder", "max_length", "seed",
                                                                         "val_fraction", "test_fraction")})
        if key not in datasets:
            datasets[key] = load_dataset(cfg)
        ds = datasets[key]
        m = build_model(cfg, ds.num_features, ds.num_labels)
        m.load_state_dict(load_file(str(run / "checkpoints" / "best" / "model.safetensors")))
        members.append((m.eval(), ds))
    ip = np.asarray(ds.inv_propensity, dtype=np.float64)
    splits = {"val": ds.val, "test": ds.test}
    cand = {k: candidates(members, k) for k in splits}
    rows = []
    for p in (float(v) for v in a.powers.split(",")):
        row = {"rule": "power", "p": p}
        for k, (idx, mean, _) in cand.items():
            row[k] = score(mean + p * np.log(ip[idx]), idx, splits[k].Y, ip)
        rows.append(row)
    for T in (float(v) for v in a.thresholds.split(",")):
        row = {"rule": "sure", "T": T}
        for k, (idx, mean, low) in cand.items():
            row[k] = score(np.where(low > T, 1e6 + np.log(ip[idx]), mean), idx, splits[k].Y, ip)
        rows.append(row)
    oracle = {}
    Yt = splits["test"].Y.tocsr()
    for d in range(1, 5):
        first = np.empty((Yt.shape[0], 1), dtype=np.int64)
        for i in range(Yt.shape[0]):
            ls = Yt.indices[Yt.indptr[i] : Yt.indptr[i + 1]]
            ls = ls[np.argsort(ip[ls], kind="stable")]  # commonest (smallest inverse propensity) first
            first[i, 0] = ls[min(d, len(ls)) - 1]
        oracle[d] = round(100 * M.psprecision_at_k(first, Yt, 1, ip), 3)
    print("test PSP@1 with the d-th commonest true label at rank 1:", oracle)
    usable = [r for r in rows if r["val"]["P@1"] >= 100.0]
    best = max(usable, key=lambda r: r["val"]["PSP@1"]) if usable else None
    out = {"runs": [str(r) for r in a.runs], "data": str(ds.source), "top_candidates": TOP, "rows": rows,
           "best_with_validation_P@1_100": best,
           "test_PSP@1_dth_commonest_true_label_first": oracle, "method": __doc__}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(r)
    print("best with validation P@1 = 100:", best)


if __name__ == "__main__":
    main()
