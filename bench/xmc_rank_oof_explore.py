"""Two more kinds of rank-1 evidence for WordNet, studied on the cross-fitted held-out rows
of bench/xmc_rank_oof.py only (its --dump; the test split is not read).

    python bench/xmc_rank_oof_explore.py --dump DUMP.npz --data DIR --out bench/results/wordnet_rank_oof_explore.json

Question: does any evidence beyond the rules of xmc_rank_rules.py let a rarer label go
first on more rows without a rank-1 error? Each study starts from the rule chosen in
wordnet_rank_oof.json (blend + veto, alpha 2, power 3e-4, kv 1 at s >= 0.8) and, on rows
where its predicate holds, puts first the rarest candidate that passes it instead:
  - "name": the label's name (labels.txt, the lemma before ".n.NN") occurs in the gloss's
    definition (the text before the first ";"; plural -s/-es/-ies forms too), its held-out
    probability is >= q, and the kv nearest glosses (similarity >= s) all carry it;
  - "stacked": a gradient-boosted classifier (scikit-learn HistGradientBoosting) scores
    each (row, candidate) from the candidate's log-probability and its gap to the first
    candidate's, neighbour vote, log inverse propensity, rank, name flag, the veto flags and
    the similarities of the row's 1st and 5th nearest glosses; it
    is itself cross-fitted over the held-out rows (5 folds), and a candidate passes at
    score >= t.
For each setting: rows changed, held-out rank-1 errors, held-out PSP@1 (the chosen rule
alone: 20.587)."""

import argparse
import json
import re
from pathlib import Path

import numpy as np

from largeout import metrics as M
from largeout.data import read_jsonl

VETOES = ["1_0.8", "3_0.6", "3_0.7", "3_0.8", "5_0.7", "5_0.8", "10_0.6", "10_0.7"]


def tokens(t):
    return re.findall(r"[a-z0-9]+", t.lower())


def phrases(text):
    """Every 1-4 token phrase of text, with the last word also in singular forms."""
    ts, out = tokens(text), set()
    for n in range(1, 5):
        for i in range(len(ts) - n + 1):
            g = tuple(ts[i : i + n])
            out.add(g)
            w = g[-1]
            for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
                if w.endswith(suffix):
                    out.add(g[:-1] + (w[: len(w) - len(suffix)] + repl,))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", type=Path, required=True, help="the npz of xmc_rank_oof.py --dump")
    ap.add_argument("--data", type=Path, required=True, help="the wordnet directory of `largeout data prepare`")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    D = np.load(a.dump)
    names = [tuple(tokens(line.strip().rsplit(".", 2)[0])) for line in open(a.data / "labels.txt")]
    texts, Ytr = read_jsonl(a.data / "train.jsonl", text_fields="text", label_field="labels", num_labels=len(names))
    oof, idx, mean, lip, vote = D["oof_rows"], D["oof_idx"], D["oof_mean"], D["oof_lip"], D["oof_vote"]
    N, ar = len(oof), np.arange(len(oof))
    Y = Ytr[oof]
    truth = np.asarray(Y[ar[:, None], idx].todense()) > 0
    ip = np.asarray(M.inverse_propensity(Ytr, 0.55, 1.5))
    defs = [phrases(texts[i].split(";")[0]) for i in oof]
    named = np.array([[names[c] in defs[n] for c in idx[n]] for n in range(N)])

    base = mean + 2.0 * np.log(vote + 1e-4)
    key = base + 3e-4 * lip
    top0, first = base.argmax(1), key.argmax(1)
    f0 = np.where(D["oof_shared_1_0.8"][ar, first] | (first == top0), first, top0)

    def result(safe):
        c = np.where(safe, lip, -np.inf).argmax(1)
        use = safe.any(1) & (lip[ar, c] > lip[ar, f0])
        f = np.where(use, c, f0)
        return {"rows_changed": int(use.sum()), "rank1_errors": int((~truth[ar, f]).sum()),
                "PSP@1": round(100 * M.psprecision_at_k(idx[ar, f][:, None], Y, 1, ip), 3)}

    out = {"held_out_rows": N, "chosen_rule": result(np.zeros_like(named)), "name": [], "stacked": []}
    # How confidently wrong the held-out model is about WordNet's top level (labels 1 and 2:
    # physical_entity.n.01 and abstraction.n.06): rows where the label is a candidate at
    # probability >= 0.9999 but not a true label.
    out["top_level_wrong_at_p_0.9999"] = {
        name: int(((idx == lab) & (np.exp(mean) >= 0.9999) & ~truth).any(1).sum())
        for lab, name in ((1, "physical_entity.n.01"), (2, "abstraction.n.06"))}
    prob = np.exp(mean)
    for v in ["none"] + VETOES:
        sh = np.ones_like(named) if v == "none" else D[f"oof_shared_{v}"]
        for q in (0.5, 0.9, 0.99, 0.999, 0.9999):
            out["name"].append({"veto": v, "q": q, **result(named & (prob >= q) & sh)})

    from sklearn.ensemble import HistGradientBoostingClassifier

    S = D["oof_nn_sim"]
    feats = [mean, np.log(vote + 1e-4), lip, named, np.broadcast_to(np.arange(idx.shape[1]), mean.shape),
             np.broadcast_to(S[:, :1], mean.shape), np.broadcast_to(S[:, 4:5], mean.shape), mean - mean[:, :1]]
    X = np.stack([np.asarray(f, np.float32) for f in feats + [D[f"oof_shared_{v}"] for v in VETOES]], -1)
    F = X.shape[-1]
    fold = np.random.default_rng(1).integers(0, 5, N)
    score = np.empty(mean.shape)
    for k in range(5):
        tr = fold != k
        clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, max_leaf_nodes=31, random_state=0)
        clf.fit(X[tr].reshape(-1, F), truth[tr].reshape(-1))
        score[~tr] = clf.predict_proba(X[~tr].reshape(-1, F))[:, 1].reshape(-1, idx.shape[1])
    for t in (0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 0.99999):
        out["stacked"].append({"t": t, **result(score >= t)})
    out["method"] = __doc__
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    best = [r for r in out["name"] + out["stacked"] if r["rank1_errors"] == 0]
    print("error-free settings:", len(best), "best held-out PSP@1:", max((r["PSP@1"] for r in best), default=None))


if __name__ == "__main__":
    main()
