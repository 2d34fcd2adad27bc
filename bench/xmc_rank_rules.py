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
label (d = 1: the commonest, the root on WordNet), without any model.

With --neighbour-dims N (members read "tfidf+hf:PATH" data, whose last N feature columns
are each text's L2-normalised sentence embedding), two more families use the k nearest
training rows by that embedding (cosine; the trainer's training split):
  - "blend a p": mean log-probability + a * log(v + 1e-4) + p * log(inverse propensity),
    v the label's share of the --knn nearest training rows, weighted by
    exp((s_j - s_1) / --knn-temp) (s_j their similarities);
  - "blend a p, veto kv s": the same, but rank 1 stays that of "blend a 0" unless the
    first label is in the label set of each of the kv nearest training rows, the kv-th at
    similarity >= s (bench/NOTES.md, session 13)."""

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


def candidates(models, splits, device=torch.device("cpu")):
    """Top-TOP labels by the models' mean log-probability, those values, and each label's
    minimum logit over the models. Model i reads splits[i] (members may differ in
    features, e.g. tf-idf alone and tf-idf + text embeddings; the rows and their order are
    the same: one split). The models sit on ``device``."""
    idx, mean, low = [], [], []
    with torch.no_grad():
        streams = [batches(sp_, 512, device, targets=False) for sp_ in splits]
        for bs in zip(*streams):
            z = torch.stack([m(b).float() for m, b in zip(models, bs)])
            ls = torch.nn.functional.logsigmoid(z).mean(0)
            top = ls.topk(TOP, dim=1)
            idx.append(top.indices.cpu().numpy())
            mean.append(top.values.cpu().numpy().astype(np.float64))
            low.append(z.min(0).values.gather(1, top.indices).cpu().numpy())
    return np.concatenate(idx), np.concatenate(mean), np.concatenate(low)


def nearest(train_emb, emb, k, chunk=2048):
    """Indices [N, k] and cosine similarities of each row's k nearest training rows, nearest first."""
    I = np.empty((len(emb), k), np.int64)
    S = np.empty((len(emb), k), np.float32)
    for i in range(0, len(emb), chunk):
        sim = emb[i : i + chunk] @ train_emb.T
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        vals = np.take_along_axis(sim, part, 1)
        order = np.argsort(-vals, axis=1, kind="stable")
        I[i : i + chunk] = np.take_along_axis(part, order, 1)
        S[i : i + chunk] = np.take_along_axis(vals, order, 1)
    return I, S


def carries(Ytr, rows, idx):
    """[N, C] bool: whether training row rows[n] has label idx[n, c]."""
    return np.asarray(Ytr[rows][np.arange(len(idx))[:, None], idx].todense()) > 0


def vetoes_of(a):
    """The (kv, s) pairs of --knn-vetoes."""
    return [(int(kv), float(s)) for kv, s in (t.split(":") for t in a.knn_vetoes.split(","))]


def neighbours_needed(a) -> int:
    return max([a.knn] + [kv for kv, _ in vetoes_of(a)])


def neighbour_evidence(a, idx, I, S, Ytr):
    """For one split's candidates idx [N, TOP], given each row's nearest training rows I
    (indices into Ytr's rows, nearest first) and their similarities S: the blend's vote
    v [N, TOP] and, per veto (kv, s), whether each candidate is in all kv nearest rows'
    label sets with the kv-th at similarity >= s."""
    vetoes = vetoes_of(a)
    kmax = neighbours_needed(a)
    w = np.exp((S[:, : a.knn] - S[:, :1]) / a.knn_temp)
    w /= w.sum(1, keepdims=True)
    hits = [carries(Ytr, I[:, j], idx) for j in range(kmax)]
    vote = sum(w[:, j : j + 1] * hits[j] for j in range(a.knn))
    shared = {(kv, smin): np.logical_and.reduce(hits[:kv]) & (S[:, kv - 1 : kv] >= smin) for kv, smin in vetoes}
    return vote, shared


def rank_log_ip(cand, ip, rank_lip):
    """log inverse propensity of each candidate, as the rules rank by it: rank_lip[k] where
    given (e.g. propensities counted without the rows being ranked), else from ip."""
    return {k: (rank_lip or {}).get(k, np.log(ip[idx])) for k, (idx, _, _) in cand.items()}


def knn_rows(a, cand, evidence, Ys, ip, rank_lip=None):
    """The "blend" and "blend + veto" rows (module notes); evidence[k] from
    neighbour_evidence for split k, Ys[k] its label matrix; ip scores PSP@k and ranks
    unless rank_lip says otherwise (rank_log_ip)."""
    lip = rank_log_ip(cand, ip, rank_lip)
    alphas = [float(v) for v in a.knn_alphas.split(",")]
    powers = [float(v) for v in a.knn_powers.split(",")]
    vetoes = vetoes_of(a)
    rows = []
    for al in alphas:
        for p in powers:
            row = {"rule": "blend", "alpha": al, "p": p, "knn": a.knn, "temp": a.knn_temp}
            for k, (idx, mean, _) in cand.items():
                row[k] = score(mean + al * np.log(evidence[k][0] + 1e-4) + p * lip[k], idx, Ys[k], ip)
            rows.append(row)
            for kv, smin in vetoes:
                row = {"rule": "blend+veto", "alpha": al, "p": p, "knn": a.knn, "temp": a.knn_temp, "kv": kv,
                       "s": smin}
                for k, (idx, mean, _) in cand.items():
                    vote, shared = evidence[k]
                    base = mean + al * np.log(vote + 1e-4)
                    row[k] = score(knn_veto_key(base + p * lip[k], base, shared[kv, smin]), idx, Ys[k], ip)
                rows.append(row)
    return rows


def with_rank1(key, pos):
    """The order key [N, C] with candidate pos[n] of each row first (the rest by key)."""
    boost = np.zeros_like(key)
    np.put_along_axis(boost, np.asarray(pos).reshape(-1, 1), 1e6, 1)
    return key + boost


def knn_veto_key(key, base, shared):
    """The "blend + veto" order: key's, but rank 1 is base's first where key's first is not
    in every nearest row's label set (shared [N, C], neighbour_evidence's, is False there)."""
    first, top0 = np.argmax(key, axis=1), np.argmax(base, axis=1)
    ok = np.take_along_axis(shared, first[:, None], 1)[:, 0] | (first == top0)
    return with_rank1(key, np.where(ok, first, top0))


def plain_rows(a, cand, Ys, ip, rank_lip=None):
    """The "power p" and "sure T" rows (module notes); ip and rank_lip as for knn_rows."""
    lip = rank_log_ip(cand, ip, rank_lip)
    rows = []
    for p in (float(v) for v in a.powers.split(",")):
        row = {"rule": "power", "p": p}
        for k, (idx, mean, _) in cand.items():
            row[k] = score(mean + p * lip[k], idx, Ys[k], ip)
        rows.append(row)
    for T in (float(v) for v in a.thresholds.split(",")):
        row = {"rule": "sure", "T": T}
        for k, (idx, mean, low) in cand.items():
            row[k] = score(np.where(low > T, 1e6 + lip[k], mean), idx, Ys[k], ip)
        rows.append(row)
    return rows


def add_rule_args(ap) -> None:
    ap.add_argument("--powers", default="0,3e-6,3e-5")
    ap.add_argument("--thresholds", default="10,12,14,16,18,20,22,25")
    ap.add_argument("--knn", type=int, default=5)
    ap.add_argument("--knn-temp", type=float, default=0.02)
    ap.add_argument("--knn-alphas", default="0.5,2")
    ap.add_argument("--knn-powers", default="0,3e-5,1e-4,3e-4,1e-3,3e-3")
    ap.add_argument("--knn-vetoes", default="1:0.8,3:0.6,3:0.7,5:0.7,10:0.6", help="kv:s pairs")


def unit_embeddings(X, n: int) -> np.ndarray:
    """The last n feature columns of X (the sentence embeddings), checked to be unit-norm."""
    E = np.asarray(X[:, -n:].todense(), dtype=np.float32)
    if not np.allclose(np.linalg.norm(E[:100], axis=1), 1.0, atol=1e-3):
        raise SystemExit(f"--neighbour-dims {n}: the last {n} feature columns are not unit-norm embeddings")
    return E


def dth_commonest_bound(Yt, ip):
    """Test PSP@1 when rank 1 is always the row's d-th commonest true label, d = 1..4."""
    oracle = {}
    for d in range(1, 5):
        first = np.empty((Yt.shape[0], 1), dtype=np.int64)
        for i in range(Yt.shape[0]):
            ls = Yt.indices[Yt.indptr[i] : Yt.indptr[i + 1]]
            ls = ls[np.argsort(ip[ls], kind="stable")]  # commonest (smallest inverse propensity) first
            first[i, 0] = ls[min(d, len(ls)) - 1]
        oracle[d] = round(100 * M.psprecision_at_k(first, Yt, 1, ip), 3)
    return oracle


def score(order_key, idx, Y, ip):
    top = np.take_along_axis(idx, np.argsort(-order_key, axis=1, kind="stable"), 1)[:, :5]
    r = M.evaluate(top, Y, ks=(1, 3, 5), inv_propensity=ip)
    return {k: round(100 * r[k], 3) for k in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="trainer output folders (same data and split)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--neighbour-dims", type=int, default=0,
                    help="width of the sentence embedding at the end of the members' features (0: no kNN rules)")
    add_rule_args(ap)
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
    Ys = {"val": ds.val.Y, "test": ds.test.Y}
    cand = {k: candidates([m for m, _ in members], [getattr(d, k) for _, d in members]) for k in Ys}
    rows = plain_rows(a, cand, Ys, ip)
    if a.neighbour_dims:
        Ytr = ds.train.Y.tocsr()
        train_emb = unit_embeddings(ds.train.X, a.neighbour_dims)
        evidence = {}
        for k in Ys:
            I, S = nearest(train_emb, unit_embeddings(getattr(ds, k).X, a.neighbour_dims), neighbours_needed(a))
            evidence[k] = neighbour_evidence(a, cand[k][0], I, S, Ytr)
        rows += knn_rows(a, cand, evidence, Ys, ip)
    oracle = dth_commonest_bound(Ys["test"].tocsr(), ip)
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
