"""Test rows of an XC-format dataset whose feature vector also occurs in the training split
with a different label set ("twins"): no model of the features alone can rank both rows'
labels right. On WordNet (features: the synset's gloss) this bounds what P@1 a ranking
that ever puts a non-universal label first can reach.

    python bench/wordnet_twins.py --data /work/data/wordnet --out bench/results/wordnet_twins.json \
        [--run OUT_DIR_OF_A_TRAINER_RUN]

With --run (a `largeout train` output folder on this dataset), also the run's test rows
whose top-1 label is wrong: their ids, the label ranked first (and its training count and
probability), and whether the row has such a twin.
"""

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from largeout import data
from largeout.train import load_config, predict_topk
from largeout.train.data import load_dataset
from largeout.train.model import build_model


def row_key(X, i):
    s = slice(X.indptr[i], X.indptr[i + 1])
    return tuple(X.indices[s]), tuple(np.round(X.data[s], 5))


def row_labels(Y, i):
    return frozenset(Y.indices[Y.indptr[i] : Y.indptr[i + 1]].tolist())


def top1_misses(run: Path, data_dir: Path, Yte, is_twin: np.ndarray, freq: np.ndarray) -> dict:
    cfg = load_config(None, json.loads((run / "config.json").read_text()))
    ds = load_dataset(cfg)
    assert ds.test.Y.shape == Yte.shape and (ds.test.Y != Yte).nnz == 0, "the run's test split is not test.txt"
    model = build_model(cfg, ds.num_features, ds.num_labels)
    model.load_state_dict(load_file(str(run / "checkpoints" / "best" / "model.safetensors")))
    top, prob = predict_topk(model, ds.test, 1, 1024, torch.device("cpu"))
    names = (data_dir / "labels.txt").read_text().split("\n")
    ids = [json.loads(line)["id"] for line in open(data_dir / "test.jsonl")]
    misses = [i for i in range(Yte.shape[0]) if top[i, 0] not in row_labels(Yte, i)]
    return {"folder": str(run), "rank_propensity_power": cfg.rank_propensity_power, "top1_misses": len(misses),
            "of_which_twins": int(is_twin[misses].sum()) if misses else 0,
            "rows": [{"id": ids[i], "first": names[top[i, 0]], "first_train_count": int(freq[top[i, 0]]),
                      "probability": round(float(prob[i, 0]), 7), "twin": bool(is_twin[i])} for i in misses]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with train.txt and test.txt (XC format)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--run", type=Path, default=None, help="a trainer output folder (its best checkpoint is scored)")
    a = ap.parse_args()
    Xtr, Ytr = data.read_xc(a.data / "train.txt")
    Xte, Yte = data.read_xc(a.data / "test.txt")
    train_rows = collections.defaultdict(list)
    for i in range(Xtr.shape[0]):
        train_rows[row_key(Xtr, i)].append(i)
    same_features = differing = 0
    is_twin = np.zeros(Xte.shape[0], dtype=bool)
    for i in range(Xte.shape[0]):
        twins = train_rows.get(row_key(Xte, i))
        if twins:
            same_features += 1
            is_twin[i] = any(row_labels(Ytr, j) != row_labels(Yte, i) for j in twins)
            differing += int(is_twin[i])
    freq = np.asarray(Ytr.sum(0)).ravel()
    out = {"data": str(a.data), "N_train": Xtr.shape[0], "N_test": Xte.shape[0],
           "test_rows_with_a_train_row_of_identical_features": same_features,
           "of_which_label_sets_differ": differing,
           "fraction_of_test_rows_differing": differing / Xte.shape[0],
           "most_frequent_label_share_of_train_rows": float(freq.max() / Xtr.shape[0])}
    if a.run is not None:
        out["run"] = top1_misses(a.run, a.data, Yte, is_twin, freq)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
