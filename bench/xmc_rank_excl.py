"""WordNet's rank-1 rules with one more veto, from the label sets alone: rank 1 falls back to
the power-0 order's first label where a label that never shares a training row with it is
also likely ("exclusive rivals": abstraction against physical_entity, say).

    python bench/xmc_rank_oof.py --data DIR --work W --out oof.json --dump oof.npz
    python bench/xmc_rank_excl.py --data DIR --dump oof.npz --out bench/results/wordnet_rank_excl.json

Why: the rank-1 errors that keep bench/xmc_rank_oof.py's rules from a higher PSP@1 put an
upper label of the wrong branch first with probability 0.99999 or more (bench/NOTES.md,
sessions 13-17). Where the model also gives the right branch's label weight, the two
labels contradict each other: no training row holds both. This script scores, on the same
cross-fitted candidates (xmc_rank_oof.py's --dump: every training row ranked by the models
of the folds that did not train on it), the rule families of xmc_rank_rules.py ("power",
"blend", "blend+veto"; their grid as in xmc_rank_oof.py) and the same rules with the
exclusivity veto: rank 1 stays that of the rule unless some candidate m of the row (the
top 32 labels) with exp(mean log-probability) >= tau never co-occurs with it in the training
rows that ranked the row (the other folds; for test, all training rows), both labels having
at least smin training rows; then rank 1 is the power-0 order's (the rest keep the rule's
order). Grid: tau in TAUS, smin in SMINS, fixed before any of these rules was scored.

Criterion, as in xmc_rank_oof.py and fixed before scoring: among the rules with no rank-1
error on the labelled held-out rows, the highest held-out PSP@1. Test is scored with the
same candidates xmc_rank_oof.py scored (the folds' ensemble, neighbours from all training
rows); every rule's test numbers are written for the record, only the chosen one is the
result."""

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xmc_rank_rules as R  # noqa: E402
from xmc_rank_oof import RULE_GRID, TEXT_CONFIG  # noqa: E402
from bench_group_sparse import git_commit  # noqa: E402

from largeout import metrics as M  # noqa: E402
from largeout.data import read_xc  # noqa: E402

TAUS = (0.001, 0.01, 0.1, 0.5)
SMINS = (1, 10)
FOLDS = 5  # xmc_rank_oof.py's default, with which the dump was made


def cooccurrence(Y: sp.csr_matrix) -> sp.csr_matrix:
    Yb = Y.astype(np.int32)
    return (Yb.T @ Yb).tocsr()


def rival_table(idx, mean, C, support, smin, chunk=2048):
    """[N, TOP]: for each row and candidate position j, the largest exp(mean) over the row's
    other candidates m that never share a training row with candidate j (C[j, m] == 0), both
    labels with support >= smin (0 where there is none)."""
    L = C.shape[0]
    Cc = C.tocoo()
    keys = np.sort(Cc.row.astype(np.int64) * L + Cc.col)
    out = np.empty(idx.shape, np.float64)
    sup_ok = support >= smin
    for i in range(0, len(idx), chunk):
        a = idx[i : i + chunk, :, None].astype(np.int64)
        b = idx[i : i + chunk, None, :].astype(np.int64)
        q = a * L + b
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        excl = (keys[pos] != q) & (a != b) & sup_ok[a] & sup_ok[b]
        out[i : i + chunk] = np.where(excl, np.exp(mean[i : i + chunk, None, :]), 0.0).max(axis=2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the wordnet folder of `largeout data prepare`")
    ap.add_argument("--dump", type=Path, required=True, help="xmc_rank_oof.py --dump's npz")
    ap.add_argument("--oof-json", type=Path, help="xmc_rank_oof.py's JSON of the same run (a check: its chosen "
                    "rule's numbers must come out the same here)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    d = np.load(a.dump)
    _, Ytr = read_xc(a.data / "train.txt")
    _, Yte = read_xc(a.data / "test.txt")
    Ytr, Yte = Ytr.tocsr(), Yte.tocsr()
    n = Ytr.shape[0]
    ip = np.asarray(M.inverse_propensity(Ytr, TEXT_CONFIG["propensity_a"], TEXT_CONFIG["propensity_b"]), np.float64)
    labelled = d["oof_rows"]
    perm = np.random.Generator(np.random.PCG64(TEXT_CONFIG["seed"] + 2)).permutation(n)
    fold_of = np.empty(n, np.int64)
    for f in range(FOLDS):
        fold_of[perm[f::FOLDS]] = f
    C_all, sup_all = cooccurrence(Ytr), np.asarray(Ytr.sum(0)).ravel()
    per_fold = []
    for f in range(FOLDS):
        keep = np.flatnonzero(fold_of != f)
        Yf = Ytr[keep]
        per_fold.append((cooccurrence(Yf), np.asarray(Yf.sum(0)).ravel()))

    rules = argparse.Namespace(**RULE_GRID)
    cand = {k: (d[f"{k}_idx"], d[f"{k}_mean"], d[f"{k}_low"]) for k in ("oof", "test")}
    Ys = {"oof": Ytr[labelled], "test": Yte}
    lip = {"oof": d["oof_lip"], "test": np.log(ip[d["test_idx"]])}
    vote = {k: d[f"{k}_vote"] for k in ("oof", "test")}
    shared = {k: {(kv, s): d[f"{k}_shared_{kv}_{s}"] for kv, s in R.vetoes_of(rules)} for k in ("oof", "test")}
    oof_fold = fold_of[labelled]

    rivals = {}  # (split, smin) -> [N, TOP]
    for smin in SMINS:
        idx, mean, _ = cand["test"]
        rivals["test", smin] = rival_table(idx, mean, C_all, sup_all, smin)
        idx, mean, _ = cand["oof"]
        t = np.empty(idx.shape, np.float64)
        for f in range(FOLDS):
            r = np.flatnonzero(oof_fold == f)
            C, sup = per_fold[f]
            t[r] = rival_table(idx[r], mean[r], C, sup, smin)
        rivals["oof", smin] = t

    def with_excl(k, key, base, tau, smin):
        """The order key with rank 1 put back to base's where the rule's first has an exclusive rival."""
        first, top0 = np.argmax(key, axis=1), np.argmax(base, axis=1)
        veto = np.take_along_axis(rivals[k, smin], first[:, None], 1)[:, 0] >= tau
        return R.with_rank1(key, np.where(veto, top0, first))

    rows = []
    alphas = [float(v) for v in rules.knn_alphas.split(",")]
    powers = [float(v) for v in rules.knn_powers.split(",")]
    for p in (float(v) for v in rules.powers.split(",")):
        keys = {k: cand[k][1] + p * lip[k] for k in cand}
        rows.append({"rule": "power", "p": p, **{k: R.score(keys[k], cand[k][0], Ys[k], ip) for k in cand}})
        for tau in TAUS:
            for smin in SMINS:
                rows.append({"rule": "power+excl", "p": p, "tau": tau, "smin": smin,
                             **{k: R.score(with_excl(k, keys[k], cand[k][1], tau, smin), cand[k][0], Ys[k], ip)
                                for k in cand}})
    for al in alphas:
        base = {k: cand[k][1] + al * np.log(vote[k] + 1e-4) for k in cand}
        for p in powers:
            keys = {k: base[k] + p * lip[k] for k in cand}
            head = {"alpha": al, "p": p, "knn": rules.knn, "temp": rules.knn_temp}
            rows.append({"rule": "blend", **head, **{k: R.score(keys[k], cand[k][0], Ys[k], ip) for k in cand}})
            vetoed = {}
            for kv, smin_s in R.vetoes_of(rules):
                vk = {k: R.knn_veto_key(keys[k], base[k], shared[k][kv, smin_s]) for k in cand}
                vetoed[kv, smin_s] = vk
                rows.append({"rule": "blend+veto", **head, "kv": kv, "s": smin_s,
                             **{k: R.score(vk[k], cand[k][0], Ys[k], ip) for k in cand}})
            for tau in TAUS:
                for smin in SMINS:
                    rows.append({"rule": "blend+excl", **head, "tau": tau, "smin": smin,
                                 **{k: R.score(with_excl(k, keys[k], base[k], tau, smin), cand[k][0], Ys[k], ip)
                                    for k in cand}})
                    for (kv, smin_s), vk in vetoed.items():
                        rows.append({"rule": "blend+veto+excl", **head, "kv": kv, "s": smin_s, "tau": tau,
                                     "smin": smin,
                                     **{k: R.score(with_excl(k, vk[k], base[k], tau, smin), cand[k][0], Ys[k], ip)
                                        for k in cand}})
    usable = [r for r in rows if r["oof"]["P@1"] >= 100.0]
    chosen = max(usable, key=lambda r: r["oof"]["PSP@1"]) if usable else None
    check = None
    if a.oof_json:  # every rule of the oof run ("sure" aside: not scored here) must come out the same
        def ident(r):
            return json.dumps({k: v for k, v in r.items() if k not in ("oof", "test")}, sort_keys=True)

        here = {ident(r): r for r in rows}
        theirs = [r for r in json.loads(a.oof_json.read_text())["rows"] if r["rule"] != "sure"]
        differ = [ident(r) for r in theirs
                  if ident(r) not in here or (here[ident(r)]["oof"], here[ident(r)]["test"]) != (r["oof"], r["test"])]
        check = {"rules_compared": len(theirs), "differing": differ, "reproduced": not differ}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": str(a.data), "dump": str(a.dump), "taus": TAUS, "smins": SMINS, "rule_grid": RULE_GRID,
        "criterion": "no rank-1 error on the labelled held-out rows; then the highest held-out PSP@1",
        "chosen": chosen, "rules_without_held_out_error": len(usable), "rules": len(rows),
        "check_against_oof_run": check, "commit": git_commit(), "rows": rows, "method": __doc__,
    }
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(usable)} of {len(rows)} rules make no held-out rank-1 error; chosen: {chosen}")
    if check is not None:
        print("check against the oof run's choice:", check["reproduced"])


if __name__ == "__main__":
    main()
