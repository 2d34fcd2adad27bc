"""Test rows of an XC-format dataset whose feature vector also occurs in the training split
with a different label set ("twins"): no model of the features alone can rank both rows'
labels right. On WordNet (features: the synset's gloss) this bounds what P@1 a ranking
that ever puts a non-universal label first can reach.

    python bench/wordnet_twins.py --data /work/data/wordnet --out bench/results/wordnet_twins.json
"""

import argparse
import collections
import json
from pathlib import Path

import numpy as np

from largeout import data


def row_key(X, i):
    s = slice(X.indptr[i], X.indptr[i + 1])
    return tuple(X.indices[s]), tuple(np.round(X.data[s], 5))


def row_labels(Y, i):
    return frozenset(Y.indices[Y.indptr[i] : Y.indptr[i + 1]].tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with train.txt and test.txt (XC format)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    Xtr, Ytr = data.read_xc(a.data / "train.txt")
    Xte, Yte = data.read_xc(a.data / "test.txt")
    train_rows = collections.defaultdict(list)
    for i in range(Xtr.shape[0]):
        train_rows[row_key(Xtr, i)].append(i)
    same_features = differing = 0
    for i in range(Xte.shape[0]):
        twins = train_rows.get(row_key(Xte, i))
        if twins:
            same_features += 1
            differing += any(row_labels(Ytr, j) != row_labels(Yte, i) for j in twins)
    freq = np.asarray(Ytr.sum(0)).ravel()
    out = {"data": str(a.data), "N_train": Xtr.shape[0], "N_test": Xte.shape[0],
           "test_rows_with_a_train_row_of_identical_features": same_features,
           "of_which_label_sets_differ": differing,
           "fraction_of_test_rows_differing": differing / Xte.shape[0],
           "most_frequent_label_share_of_train_rows": float(freq.max() / Xtr.shape[0])}
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
