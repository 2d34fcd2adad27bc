"""How often a confident label, carried by the nearest training glosses too, is wrong on the
held-out rows of bench/xmc_rank_oof.py (its --dump).

    python bench/xmc_rank_oof.py ... --dump oof.npz
    python bench/xmc_rank_oof_probe.py --data DIR --dump oof.npz --out bench/results/wordnet_rank_oof_probe.json

Why: a rank-1 rule can put a rarer label than the root first only where it is sure of it.
This counts, on the cross-fitted candidates alone (no test row is read), the held-out rows
that have a non-root candidate with exp(mean log-probability) > 1 - eps that each of the kv
nearest training rows of the other folds carries (the kv-th at similarity >= s: the dump's
veto evidence), and how many of those rows have such a candidate that is not among the
row's labels. The first count is how many rows a rule of "put a sure label first" can move
off the root at that setting; the second bounds its rank-1 errors there (a row counts once
however many of its sure candidates are wrong)."""

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_group_sparse import git_commit  # noqa: E402

from largeout.data import read_xc  # noqa: E402

EPS = (1e-2, 1e-3, 1e-4, 1e-5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the wordnet folder of `largeout data prepare`")
    ap.add_argument("--dump", type=Path, required=True, help="xmc_rank_oof.py --dump's npz")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    d = np.load(a.dump)
    _, Ytr = read_xc(a.data / "train.txt")
    Y = Ytr.tocsr()[d["oof_rows"]]
    idx, mean = d["oof_idx"], d["oof_mean"]
    n = len(idx)
    truth = np.asarray(Y[np.arange(n)[:, None], idx].todense()) > 0
    root = int(np.argmax(np.asarray(Ytr.sum(0)).ravel()))
    out = []
    for key in sorted(k for k in d.files if k.startswith("oof_shared_")):
        kv, s = key.removeprefix("oof_shared_").split("_")
        for eps in EPS:
            sure = (mean > np.log1p(-eps)) & d[key] & (idx != root)
            out.append({"kv": int(kv), "s": float(s), "eps": eps, "rows_with_a_sure_candidate": int(sure.any(1).sum()),
                        "rows_with_a_wrong_sure_candidate": int((sure & ~truth).any(1).sum())})
            print(out[-1])
    a.out.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "dump": a.dump.name,
        "held_out_rows": n, "root_label": root, "probe": out, "commit": git_commit(), "method": __doc__}, indent=1)
        + "\n")


if __name__ == "__main__":
    main()
