"""Command line: ``largeout {demo,train,predict,eval,data}``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

# Flags that map one to one onto TrainConfig fields: (type, help). The help texts end with
# the field's default, read from TrainConfig (the demo's own sizes are in DEMO_CONFIG).
_TRAIN_FLAGS = {
    "data": (str, "'synthetic' (built-in data) or a directory from `largeout data prepare` (train.txt and "
                  "test.txt in the XC format, or .jsonl for text encoders)"),
    "encoder": (str, "'tfidf' (sparse features through an EmbeddingBag MLP), 'hf:PATH' (a local transformers "
                     "model, fine-tuned) or 'tfidf+hf:PATH' (tfidf plus frozen sentence embeddings)"),
    "output": (str, "output layer: 'dense' or 'group-sparse'"),
    "fan_in": (int, "group-sparse: inputs each label reads (K)"),
    "group_size": (int, "group-sparse: labels that share one set of inputs (G)"),
    "hidden": (int, "width of the encoder's output (the output layer's input)"),
    "batch_size": (int, "examples per step"),
    "epochs": (int, "passes over the training data"),
    "optimizer": (str, "'adamw' or 'sgd'"),
    "lr": (float, "learning rate"),
    "schedule": (str, "learning-rate schedule after warm-up: 'constant', 'cosine' or 'linear'"),
    "seed": (int, "data split, initialisation and shuffling"),
    "eval_every": (int, "validate every N epochs"),
    "out": (str, "output directory: checkpoints, metrics.jsonl, summary.json, plots"),
    "device": (str, "'auto' (CUDA when there is one), 'cpu', 'cuda' or 'cuda:N'"),
    "val_fraction": (float, "fraction of the training data held out for validation (model selection)"),
}

# The demo: sized to finish in under 2 minutes on a 2-core CPU.
DEMO_CONFIG = {
    "synthetic": {"num_samples": 24000, "num_features": 8000, "num_labels": 3000, "seed": 0},
    "epochs": 5, "batch_size": 256, "hidden": 256, "fan_in": 64, "group_size": 32, "lr": 1e-2,
    "out": "largeout-demo",
}


def _add_train_flags(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from .train.config import TrainConfig

    p.add_argument("--config", help="TOML file with TrainConfig fields (flags override it)")
    for name, (typ, text) in _TRAIN_FLAGS.items():
        default = DEMO_CONFIG.get(name, getattr(TrainConfig, name)) if demo else getattr(TrainConfig, name)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, metavar=name.upper(),
                       help=f"{text} (default: {default})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, e.g. --set dropout=0.1 --set synthetic.num_labels=5000")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args) -> dict:
    over = {name: getattr(args, name) for name in _TRAIN_FLAGS}
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if k in _TRAIN_FLAGS and getattr(args, k) is not None:
            raise SystemExit(f"--set {k}=... and --{k.replace('_', '-')} both set {k}; give it once")
        over[k] = v.strip()
    if args.no_progress:
        over["progress"] = False
    return over


def _table(summary: dict) -> str:
    rows = []
    for split in ("val", "test"):
        if split in summary:
            m = summary[split]
            rows.append((split, *(m.get(k, float("nan")) for k in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@1", "PSP@5", "ECE@5"))))
    head = ("split", "P@1", "P@3", "P@5", "nDCG@5", "PSP@1", "PSP@5", "ECE@5")
    lines = ["  ".join(f"{h:>7}" for h in head)]
    lines += ["  ".join([f"{r[0]:>7}"] + [f"{v:7.4f}" for v in r[1:]]) for r in rows]
    if "test" in summary and "ECE@5_isotonic" in summary["test"]:
        lines.append(f"test ECE@5 after isotonic recalibration on validation: {summary['test']['ECE@5_isotonic']:.4f}")
    return "\n".join(lines)


def cmd_train(args, demo: bool = False) -> int:
    from .train import load_config, train

    over = _overrides(args)
    if demo:
        over = {**DEMO_CONFIG, **{k: v for k, v in over.items() if v is not None}}
    cfg = load_config(args.config, over)
    t0 = time.time()
    summary = train(cfg, resume=getattr(args, "resume", False))
    print()
    print(_table(summary))
    out = Path(cfg.out)
    print(f"\ndone in {time.time() - t0:.1f} s. Outputs in {out}/:")
    ckpts = [c for c in ("checkpoints/best", "checkpoints/last") if (out / c).exists()]
    print(f"  {', '.join(ckpts)}   (model.safetensors, optimizer.safetensors, config.json)")
    print("  " + ", ".join(f for f in ("metrics.jsonl", "summary.json", "p_at_k.png", "reliability.png")
                           if (out / f).exists()))
    return 0


def cmd_predict(args) -> int:
    from .train import load_config, predict_topk
    from .train.checkpoint import load_checkpoint
    from .train.data import load_split_files
    from .train.model import build_model
    from .train.trainer import check_encoder_fingerprint, resolve_device

    ckpts = [Path(c) for c in args.checkpoint]
    labels = [_num_labels(c) for c in ckpts]
    cfgs = []
    for c in ckpts:
        try:
            cfgs.append(load_config(None, json.loads((c / "config.json").read_text())))
        except (OSError, ValueError) as e:
            raise ValueError(f"--checkpoint {c}: config.json: {e}") from None
    if len(set(labels)) != 1:
        raise SystemExit(f"--checkpoint: an ensemble needs one label space; got {labels} labels")
    for c, cfg in zip(ckpts, cfgs):  # (before the texts' embeddings are computed)
        try:
            state = json.loads((c / "trainer.json").read_text())
        except (OSError, ValueError):
            state = {}  # (load_checkpoint below says what is wrong with it)
        check_encoder_fingerprint(state if isinstance(state, dict) else {}, cfg, f"--checkpoint {c}")
    device = resolve_device(args.device or cfgs[0].device)
    path = Path(args.data)
    split = load_split_files(cfgs[0], *_data_files(path, cfgs[0]), labels_optional=True)
    if split is None:  # (not reached: _data_files gives the files the encoder reads)
        raise SystemExit(f"cannot read {path}: expected NAME.txt (XC format) or NAME.jsonl")
    num_features = split.X.shape[1] if split.X is not None else 0
    if split.Y is not None and split.Y.shape[1] > labels[0]:
        raise SystemExit(f"--data: {path} has labels up to {split.Y.shape[1] - 1}; the checkpoint has {labels[0]} "
                         "labels")
    if args.topk < 1:
        raise SystemExit(f"--topk must be >= 1; got {args.topk}")
    models = []
    for ckpt, cfg in zip(ckpts, cfgs):
        trained_on = _tensor_shape(ckpt, "encoder.embed.weight")
        if trained_on is not None and trained_on[0] != num_features:
            raise ValueError(f"--data {path} has {num_features} features; --checkpoint {ckpt} was trained on "
                             f"{trained_on[0]}")
        model = build_model(cfg, num_features, labels[0])
        try:
            load_checkpoint(ckpt, model, None, "cpu")
        except (RuntimeError, ValueError) as e:  # (a config.json that does not describe these weights)
            raise ValueError(f"--checkpoint {ckpt}: its weights do not fit the model its config.json describes "
                             f"({e})") from None
        models.append(model.to(device))
    topk, scores = predict_topk(models if len(models) > 1 else models[0], split, args.topk, 1024, device)
    out = args.out if str(args.out).endswith(".npz") else f"{args.out}.npz"  # (what savez writes)
    np.savez_compressed(out, topk=topk, scores=scores)
    print(f"wrote top-{topk.shape[1]} predictions for {len(topk)} rows to {out}")
    return 0


_XC_SUFFIXES = (".txt.gz", ".txt")
_JSONL_SUFFIXES = (".jsonl.gz", ".jsonl")


def _data_files(path: Path, cfg):
    """``(xc, jsonl)``: the files ``predict --data PATH`` reads. PATH itself, exactly
    (an XC file ``NAME.txt[.gz]`` or ``NAME.jsonl[.gz]``, suffixes in any case, of the
    kind the checkpoint's encoder reads); for an encoder that reads both (``tfidf+hf``)
    also the file of the other kind beside it, ``NAME.jsonl`` or ``NAME.jsonl.gz`` (for
    ``NAME.txt[.gz]``; and the other way round), which must be the only one there."""
    if path.is_dir():
        raise ValueError(f"--data {path}: expected a file (NAME.txt in the XC format or NAME.jsonl); got a folder")
    low = path.name.lower()
    kind = "xc" if low.endswith(_XC_SUFFIXES) else "jsonl" if low.endswith(_JSONL_SUFFIXES) else None
    if kind is None:
        raise ValueError(f"--data {path}: expected NAME.txt or NAME.txt.gz (XC format), or NAME.jsonl or "
                         f"NAME.jsonl.gz")
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    needs = {"xc": cfg.reads_features, "jsonl": cfg.reads_text}
    what = {"xc": "features in the XC format (NAME.txt)", "jsonl": "texts (NAME.jsonl)"}
    if not needs[kind]:
        other = "jsonl" if kind == "xc" else "xc"
        raise ValueError(f"--data {path}: the checkpoint's encoder {cfg.encoder!r} reads {what[other]}, "
                         f"not {what[kind]}")
    files = {kind: path}
    for other, suffixes in (("xc", _XC_SUFFIXES), ("jsonl", _JSONL_SUFFIXES)):
        if needs[other] and other not in files:
            stem = _part_name(path)
            found = [path.parent / (stem + sfx) for sfx in suffixes[::-1] if (path.parent / (stem + sfx)).is_file()]
            if not found:
                raise FileNotFoundError(f"--data {path}: the checkpoint's encoder {cfg.encoder!r} also reads "
                                        f"{what[other]}: expected {path.parent / (stem + suffixes[1])} (or .gz) "
                                        f"beside it")
            if len(found) > 1:
                raise ValueError(f"--data {path}: both {found[0]} and {found[1]} are beside it; the encoder reads "
                                 f"one of them (remove or rename the other)")
            files[other] = found[0]
    return files.get("xc"), files.get("jsonl")


def _part_name(path: Path) -> str:
    """The split name of a data file: test.v2.txt.gz -> test.v2 (a name without one of the
    readers' suffixes is taken as it is: data/test -> test)."""
    name = path.name
    for suffix in (".txt.gz", ".jsonl.gz", ".txt", ".jsonl"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _tensor_shape(ckpt: Path, key: str):
    """The shape of ``key`` in the checkpoint's weights, or None where it has no such tensor."""
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        return tuple(f.get_slice(key).get_shape()) if key in f.keys() else None


def _num_labels(ckpt: Path) -> int:
    if not (ckpt / "model.safetensors").is_file():
        raise FileNotFoundError(f"--checkpoint {ckpt}: expected a checkpoint folder with model.safetensors "
                                f"(OUT/checkpoints/best of largeout train)")
    try:
        shape = _tensor_shape(ckpt, "head.weight")
    except Exception as e:  # noqa: BLE001  (safetensors' own error type: a truncated or foreign file)
        raise ValueError(f"--checkpoint {ckpt}: model.safetensors is not a readable safetensors file ({e})") from None
    if shape is None:
        raise SystemExit(f"{ckpt}: model.safetensors has no head.weight")
    return shape[0]


def cmd_eval(args) -> int:
    from . import data as lodata
    from . import metrics as M

    try:
        pred = np.load(args.pred, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--pred {args.pred}: not an .npz of largeout predict ({e})") from None
    if not isinstance(pred, np.lib.npyio.NpzFile) or not {"topk", "scores"} <= set(pred.files):
        raise ValueError(f"--pred {args.pred}: expected an .npz with arrays topk and scores (largeout predict)")
    for flag, path in (("--data", args.data), ("--train", args.train)):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{flag} {path}: expected a file in the XC format (for example DIR/test.txt); got a "
                             f"folder")
    if not np.issubdtype(pred["topk"].dtype, np.integer):
        raise ValueError(f"--pred {args.pred}: topk must hold label ids (integers); got {pred['topk'].dtype}")
    given = {"--propensity-a": args.propensity_a, "--propensity-b": args.propensity_b}
    if not args.train and any(v is not None for v in given.values()):
        raise ValueError(f"{', '.join(f for f, v in given.items() if v is not None)}: the propensities come from "
                         f"--train's labels; give --train")
    _, Y = lodata.read_xc(args.data)
    if pred["topk"].shape[0] != Y.shape[0]:
        raise ValueError(f"--pred {args.pred} holds predictions for {pred['topk'].shape[0]} rows; --data {args.data} "
                         f"has {Y.shape[0]}")
    inv_p = None
    if args.train:
        _, Ytr = lodata.read_xc(args.train)
        ab = {k: v for k, v in (("A", args.propensity_a), ("B", args.propensity_b)) if v is not None}
        try:
            inv_p = M.inverse_propensity(Ytr, **ab)  # (the model's defaults where a flag is not given)
        except ValueError as e:
            raise ValueError(f"--propensity-a / --propensity-b / --train: {e}") from None
    ks = tuple(k for k in (1, 3, 5) if k <= pred["topk"].shape[1]) or (1,)  # (the k the predictions hold)
    res = M.evaluate(pred["topk"], Y, ks=ks, inv_propensity=inv_p)
    k_ece = min(5, pred["topk"].shape[1])  # (the k the predictions hold, at most 5; the key says which)
    res[f"ECE@{k_ece}"] = M.ece_at_k(pred["topk"], pred["scores"], Y, k_ece)
    print(json.dumps(res, indent=2))
    return 0


def cmd_prepare(args) -> int:
    from .data.prepare import prepare

    meta = prepare(args.name, args.source, args.out, seed=args.seed, max_examples=args.max_examples)
    print(json.dumps(meta, indent=2, default=str))
    return 0


def _Parser(**kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(allow_abbrev=False, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    # (allow_abbrev=False, the subcommands' parsers too: a misspelt flag such as --epoch is
    # refused, not taken for --epochs)
    p = _Parser(prog="largeout", description="largeout: huge output layers for PyTorch")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="train on built-in synthetic data and print metrics (the main job)")
    _add_train_flags(d, demo=True)
    d.set_defaults(func=lambda a: cmd_train(a, demo=True))

    t = sub.add_parser("train", help="train a model (TOML config and/or flags)")
    _add_train_flags(t)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="write top-k predictions of a checkpoint")
    pr.add_argument("--checkpoint", required=True, nargs="+",
                    help="a checkpoint directory (e.g. runs/x/checkpoints/best); several: an ensemble, ranked by "
                         "the members' mean log-probability (the scores written are their mean probabilities)")
    pr.add_argument("--data", required=True,
                    help="the file to predict: test.txt (XC format) or test.jsonl (either may be .gz), as the "
                         "checkpoint's encoder reads; tfidf+hf also reads the other one beside it")
    pr.add_argument("--out", required=True, help="output .npz with arrays topk and scores")
    pr.add_argument("--topk", type=int, default=5, help="labels per row (default: 5)")
    pr.add_argument("--device", default=None, help="'cpu', 'cuda' or 'cuda:N' (default: the checkpoint's)")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("eval", help="score top-k predictions against labels")
    e.add_argument("--pred", required=True, help=".npz from largeout predict")
    e.add_argument("--data", required=True, help="labels: an XC-format file")
    e.add_argument("--train", help="training XC file for propensities (PSP@k)")
    e.add_argument("--propensity-a", type=float, default=None,
                   help="A of the propensity model, with --train (default: 0.55)")
    e.add_argument("--propensity-b", type=float, default=None,
                   help="B of the propensity model, with --train (default: 1.5)")
    e.set_defaults(func=cmd_eval)

    da = sub.add_parser("data", help="datasets")
    dsub = da.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    pp = dsub.add_parser("prepare", help="convert a system-packaged dataset (wordnet, go-mf, go-bp)")
    pp.add_argument("name", help="wordnet, go-mf or go-bp")
    pp.add_argument("--source", default=None, help="source directory (default: the Debian package's)")
    pp.add_argument("--out", required=True, help="output directory (train/test files and meta.json)")
    pp.add_argument("--seed", type=int, default=0, help="train/test split (default: 0)")
    pp.add_argument("--max-examples", type=int, default=None, help="keep a seeded subset of this many examples")
    pp.set_defaults(func=cmd_prepare)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:  # (OSError: a folder for a file, a file for a folder, ...)
        print(f"largeout: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (largeout train ... --resume continues from the last checkpoint)" if args.command == "train" else ""
        print(f"\nlargeout: interrupted{hint}", file=sys.stderr)
        return 130
