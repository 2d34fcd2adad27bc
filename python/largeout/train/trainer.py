"""The reference trainer: fit, select on validation, evaluate on test."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Dataset, Split, batches, data_fingerprint, load_dataset
from .model import XMCModel, build_model, encoder_fingerprint

__all__ = ["train", "predict_topk", "evaluate_split", "resolve_device", "xmc_bce", "positive_weights"]

KS = (1, 3, 5)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config: device = {name!r} but no CUDA device is available")
    return dev


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _model_seed(cfg: TrainConfig) -> int:
    return cfg.seed if cfg.model_seed is None else cfg.model_seed


class _Optimizers:
    """Several optimizers stepped as one (the trainer's view: param_groups, zero_grad,
    step, state_dict)."""

    def __init__(self, *opts) -> None:
        self.opts = opts

    @property
    def param_groups(self):  # the optimizers' current group dicts (load_state_dict replaces them)
        return [g for o in self.opts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.opts:
            o.step()

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.opts]}

    def load_state_dict(self, sd) -> None:
        for o, s in zip(self.opts, sd["optimizers"]):
            o.load_state_dict(s)


def _make_optimizer(cfg: TrainConfig, model: XMCModel):
    enc = {"params": list(model.encoder.parameters()), "lr": cfg.encoder_lr or cfg.lr}
    head = {"params": list(model.head.parameters()), "lr": cfg.lr}
    if cfg.head_dtype == "float32":
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW([enc, head], lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD([enc, head], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # A low-precision head: largeout.optim (no fp32 master weights), the encoder as usual.
    from .. import optim as lo_optim

    low = dict(rounding="nearest" if cfg.head_rounding == "kahan" else cfg.head_rounding,
               kahan=cfg.head_rounding == "kahan", seed=_model_seed(cfg))
    if cfg.optimizer == "adamw":
        return _Optimizers(torch.optim.AdamW([enc], lr=cfg.lr, weight_decay=cfg.weight_decay),
                           lo_optim.AdamW([head], lr=cfg.lr, weight_decay=cfg.weight_decay, **low))
    return _Optimizers(torch.optim.SGD([enc], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
                       lo_optim.SGD([head], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **low))


def positive_weights(inv_propensity: np.ndarray, power: float, device: torch.device) -> Optional[torch.Tensor]:
    """Per-label weights of positives for a propensity-weighted BCE: inv_propensity ** power
    (None for power 0)."""
    if power == 0:
        return None
    return torch.from_numpy(np.asarray(inv_propensity, dtype=np.float64) ** power).to(device, torch.float32)


def xmc_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Binary cross-entropy summed over labels and averaged over the batch (the usual XMC
    scale: a mean over B*L would shrink the gradients L-fold, down to Adam's epsilon);
    positives of label l weigh pos_weight[l] when given."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="sum")
    return loss / logits.shape[0]


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def predict_topk(model, split: Split, k: int, batch_size: int, device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k labels (best first) and their probabilities for every row of a split. ``model``
    is an XMCModel (ranked by ``model.ranking_scores``) or a list of them: an ensemble,
    ranked by the members' mean log-probability (plus the first member's rank weights, if
    any); the scores returned are the members' mean probabilities."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for m in models:
        m.eval()
    labels, scores = [], []
    for batch in batches(split, batch_size, device, targets=False):
        if len(models) == 1:
            logits = models[0](batch).float()
            top = models[0].ranking_scores(logits).topk(min(k, logits.shape[1]), dim=1)
            prob = torch.sigmoid(logits.gather(1, top.indices))
        else:
            logits = [m(batch).float() for m in models]
            # ranked by the mean log-probability (the geometric mean: unlike the mean of the
            # probabilities it does not saturate at 1.0 in float32 and tie near-certain labels)
            rank = torch.stack([nn.functional.logsigmoid(z) for z in logits]).mean(0)
            if models[0].rank_log_weight is not None:
                rank = rank + models[0].rank_log_weight
            top = rank.topk(min(k, rank.shape[1]), dim=1)
            prob = torch.stack([torch.sigmoid(z.gather(1, top.indices)) for z in logits]).mean(0)
        labels.append(top.indices.cpu().numpy())
        scores.append(prob.cpu().numpy())
    return np.concatenate(labels), np.concatenate(scores)


def evaluate_split(
    topk: np.ndarray, scores: np.ndarray, Y, inv_propensity: np.ndarray, calibrator: Optional[M.IsotonicCalibrator] = None
) -> Dict[str, float]:
    out = M.evaluate(topk, Y, ks=KS, inv_propensity=inv_propensity)
    kmax = min(max(KS), topk.shape[1])
    out[f"ECE@{kmax}"] = M.ece_at_k(topk, scores, Y, kmax)
    if calibrator is not None:
        out[f"ECE@{kmax}_isotonic"] = M.ece_at_k(topk, np.clip(calibrator.transform(scores), 0, 1), Y, kmax)
    return out


# What a run writes under its `out` folder (a fresh run removes an earlier run's first): these
# files, its checkpoints/{best,last} (and their .tmp / .old while written) and config.json.
_RUN_FILES = ("metrics.jsonl", "summary.json", "p_at_k.png", "reliability.png")
_CHECKPOINTS = tuple(f"checkpoints/{n}{s}" for n in ("best", "last") for s in ("", ".tmp", ".old"))


def _plain(v):
    """A setting for comparison: tuples and lists alike."""
    return list(v) if isinstance(v, tuple) else v


def _trainer_config(path: Path) -> bool:
    """Whether ``path`` is a config.json a trainer wrote: a JSON object with the keys
    "encoder" and "output"."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"encoder", "output"} <= set(saved)


def _earlier_run(out: Path) -> list:
    """The files and checkpoint folders of an earlier run in ``out``, which a fresh run replaces.
    Files with the names a run writes (or a config.json) beside no trainer's config.json are
    nobody's earlier run: an error, so that a fresh run replaces a run's files and nobody else's."""
    found = [p for p in _RUN_FILES + _CHECKPOINTS + ("config.json",) if (out / p).exists()]
    if found and not _trainer_config(out / "config.json"):
        raise FileExistsError(f"out: {out} holds {', '.join(found)}, which no largeout run wrote (there is no "
                              f"trainer's config.json beside them); choose another folder or move them")
    return found


# Settings a resumed run must share with the checkpoint it resumes (its model, optimizer and data).
_RESUME_KEYS = ("data", "synthetic", "val_fraction", "test_fraction", "seed", "encoder", "hidden", "residual",
                "output", "head_dtype", "head_weight_scale", "fan_in", "group_size", "optimizer", "head_rounding",
                # (what "best" means and the ranking weights saved in the model)
                "select_metric", "propensity_a", "propensity_b", "rank_propensity_power")
# Settings a resumed run may change (the run then no longer continues exactly: the log names them).
_RESUME_NOTED = ("batch_size", "schedule", "warmup_steps", "model_seed", "dropout", "pos_weight_power", "grad_clip",
                 "encoder_lr")


def _check_resumable(directory: Path, cfg: TrainConfig) -> list:
    """--resume: the checkpoint exists and was trained with this run's model, optimizer and data;
    returns the settings of ``_RESUME_NOTED`` this run changes."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {directory} (config.json missing)")
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"--resume: {path} is not valid JSON ({e})") from None

    def same(key, a, b):
        if key == "data" and a != b and "synthetic" not in (a, b) and not str(a).startswith("in-memory"):
            return Path(a).resolve() == Path(b).resolve()  # one folder named two ways
        if key == "encoder" and a != b and ":" in str(a) and ":" in str(b):  # hf:PATH, the path named two ways
            (pa, da), (pb, db) = (str(v).split(":", 1) for v in (a, b))
            return pa == pb and Path(da).resolve() == Path(db).resolve()
        return a == b

    data = saved.get("data", "synthetic")
    unread = (("synthetic", "test_fraction") if data != "synthetic" else ()) + (
        ("val_fraction", "propensity_a", "propensity_b") if str(data).startswith("in-memory") else ()
    )  # settings such a run never reads (an in-memory Dataset brings its own propensities)
    keys = _RESUME_KEYS + (("max_length",) if cfg.reads_text else ())  # (the texts' tokens)
    for key in keys:
        if key in saved and key not in unread and not same(key, saved[key], getattr(cfg, key)):
            raise ValueError(f"--resume: the checkpoint in {directory} was trained with {key} = {saved[key]!r}; "
                             f"this run has {key} = {getattr(cfg, key)!r}")
    return [k for k in _RESUME_NOTED if k in saved and saved[k] != getattr(cfg, k, saved[k])]


def check_encoder_fingerprint(state: Dict[str, Any], cfg: TrainConfig, what: str) -> None:
    """A checkpoint's encoder depends on files outside it (``encoder_fingerprint``): refuses
    one whose model directory has changed since it was trained (a checkpoint from before
    fingerprints were saved is taken as it is)."""
    saved = state.get("encoder_fingerprint")
    if saved is not None and saved != encoder_fingerprint(cfg.encoder, cfg.hf_path):
        part = "files" if cfg.encoder.startswith("tfidf+hf:") else "tokenizer or config files"
        raise ValueError(f"{what} was trained with other contents of the model directory {cfg.hf_path} (its {part} "
                         "changed since); restore them, or train again")


def _trim_log(path: Path, epoch: int) -> None:
    """A resumed run's metrics.jsonl keeps the records of the epochs its checkpoint holds: a
    run stopped between an epoch's record and its checkpoint (or while scoring) would else
    repeat records."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # (a line cut short by the stop)
        if rec.get("split") == "epoch" and isinstance(rec.get("epoch"), int) and rec["epoch"] <= epoch:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


class _JsonlLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _check_dataset(data) -> None:
    """train(data=...): a Dataset whose parts agree with each other."""
    if not isinstance(data, Dataset):
        raise TypeError(f"train: data must be a largeout.train.data.Dataset or None, got {type(data).__name__}")
    if data.train is None or data.train.num_rows == 0:
        raise ValueError("train: data.train must hold at least one row")
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if split is None:
            continue
        if split.Y.shape[1] != data.num_labels:
            raise ValueError(f"train: data.{name}.Y has {split.Y.shape[1]} label columns but data.num_labels is "
                             f"{data.num_labels}")
        if split.X is not None and split.X.shape[1] != data.num_features:
            raise ValueError(f"train: data.{name}.X has {split.X.shape[1]} feature columns but data.num_features is "
                             f"{data.num_features}")
    if np.shape(data.inv_propensity) != (data.num_labels,):
        raise ValueError(f"train: data.inv_propensity must have shape ({data.num_labels},) (one per label); got "
                         f"{np.shape(data.inv_propensity)}")


def train(cfg: TrainConfig, resume: bool = False, log=print, data: Optional[Dataset] = None) -> Dict[str, Any]:
    """Train as configured; returns a summary (best validation and test metrics,
    paths). Outputs under ``cfg.out``: checkpoints/{last,best}, metrics.jsonl,
    p_at_k.png, reliability.png, summary.json.

    ``data``: an in-memory :class:`~largeout.train.data.Dataset` to train on instead of
    the one ``cfg.data`` names (then ``cfg.data``, ``cfg.val_fraction`` and the propensity
    settings are not read: its splits and ``inv_propensity`` are used as they are; the
    saved config.json names it as ``data = "in-memory: <its source>"``). With no
    validation split the last epoch's model is the final one; with no test split nothing
    is scored after training."""
    if data is not None:
        _check_dataset(data)
        cfg = dataclasses.replace(cfg, data=f"in-memory: {data.source}")
    if cfg.hf_path and not Path(cfg.hf_path).is_absolute():  # saved absolute: predict may run elsewhere
        cfg = dataclasses.replace(cfg, encoder=cfg.encoder[: -len(cfg.hf_path)] + str(Path(cfg.hf_path).resolve()))
    torch.manual_seed(_model_seed(cfg))
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    t0 = time.time()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: {out} is a file; the run's outputs need a folder there")
    earlier = [] if resume else _earlier_run(out)  # (checked before the data loads)
    if data is None:
        data = load_dataset(cfg)
    if data.num_labels < max(KS):
        raise ValueError(f"data: {data.source} has {data.num_labels} labels; the trainer scores P@k up to "
                         f"k = {max(KS)}, so it needs at least {max(KS)}")
    log(
        f"data: {data.source}: train {data.train.num_rows}, val {data.val.num_rows if data.val else 0}, "
        f"test {data.test.num_rows if data.test else 0} rows; {data.num_features} features, {data.num_labels} labels "
        f"({time.time() - t0:.1f} s)"
    )
    model = build_model(cfg, data.num_features, data.num_labels)
    if cfg.bias_init == "prior" and getattr(model.head, "bias", None) is not None:
        freq = np.asarray(data.train.Y.sum(0), dtype=np.float64).ravel() / max(1, data.train.num_rows)
        with torch.no_grad():
            model.head.bias.copy_(torch.logit(torch.from_numpy(np.clip(freq, 1e-6, 1 - 1e-6))).float())
    if model.rank_log_weight is not None:
        with torch.no_grad():
            log_w = cfg.rank_propensity_power * np.log(np.asarray(data.inv_propensity, dtype=np.float64))
            model.rank_log_weight.copy_(torch.from_numpy(log_w).float())
    model.to(device)
    optimizer = _make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(data.train.num_rows / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    fingerprint = encoder_fingerprint(cfg.encoder, cfg.hf_path)
    data_print = data_fingerprint(cfg)
    state: Dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "history": [],
                             "encoder_fingerprint": fingerprint, "data_fingerprint": data_print}
    # Nothing is written under `out` before the data, the model and a resumed checkpoint have loaded.
    if resume:
        noted = _check_resumable(out / "checkpoints" / "last", cfg)
        opts = optimizer.opts if isinstance(optimizer, _Optimizers) else [optimizer]
        fresh = [[{k: v for k, v in g.items() if k != "params"} for g in o.param_groups] for o in opts]
        try:
            state = load_checkpoint(out / "checkpoints" / "last", model, optimizer, device)
        except RuntimeError as e:  # (load_state_dict: weights of other shapes)
            raise ValueError(f"--resume: the checkpoint in {out / 'checkpoints' / 'last'} holds weights of other "
                             f"shapes than this run's model (an hf encoder's label space now comes from train.txt's "
                             f"header, which can be larger than an older run's: train again): {e}") from None
        state.pop("optimizer", None)
        check_encoder_fingerprint(state, cfg, f"--resume: the checkpoint in {out / 'checkpoints' / 'last'}")
        state["encoder_fingerprint"] = fingerprint
        if state.get("data_fingerprint", data_print) != data_print:  # (a checkpoint from before: taken as it is)
            raise ValueError(f"--resume: the checkpoint in {out / 'checkpoints' / 'last'} was trained on other "
                             f"contents of the data directory {cfg.data} (its files changed since); restore them, "
                             f"or train again")
        state["data_fingerprint"] = data_print
        if state["epoch"] >= cfg.epochs:  # (a run stopped while scoring: it is scored again, its outputs rewritten)
            log(f"--resume: the checkpoint has trained {state['epoch']} epochs and epochs = {cfg.epochs}: nothing "
                f"to train; scoring it again (raise --epochs to train more)")
        # The optimizer's state (moments, momentum, step counts) continues; its settings are this
        # run's (torch's load takes the checkpoint's, and the schedule's base rate with them).
        changed = set(noted)
        for o, groups in zip(opts, fresh):
            for g, new in zip(o.param_groups, groups):
                # (lr: the schedule's base; a pair may come back from the checkpoint as a list)
                changed |= {k for k, v in new.items() if k != "lr" and _plain(g.get(k)) != _plain(v)}
                if g.get("initial_lr", g["lr"]) != new["lr"]:
                    changed.add("lr")
                g.update(new)
                g["initial_lr"] = new["lr"]
        log(f"resumed from {out / 'checkpoints' / 'last'} at epoch {state['epoch']}"
            + (f" (this run's {', '.join(sorted(changed))})" if changed else ""))
        _trim_log(out / "metrics.jsonl", state["epoch"])
    else:  # a fresh run: nothing of an earlier run in this folder may pass for its own
        if earlier:
            log(f"replacing the earlier run in {out} ({', '.join(earlier)})")
        for p in earlier:
            if (out / p).is_dir() and not (out / p).is_symlink():
                shutil.rmtree(out / p)
            else:
                (out / p).unlink()
    out.mkdir(parents=True, exist_ok=True)
    log_file = _JsonlLog(out / "metrics.jsonl")
    cfg.save(out / "config.json")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.encoder} encoder -> {cfg.output} head ({n_params / 1e6:.2f}M parameters) on {device}")

    pos_weight = positive_weights(data.inv_propensity, cfg.pos_weight_power, device)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return xmc_bce(logits, targets, pos_weight)

    progress = None
    if cfg.progress:
        from tqdm.auto import tqdm

        progress = tqdm
    for epoch in range(state["epoch"], cfg.epochs):
        model.train()
        it = batches(data.train, cfg.batch_size, device, shuffle_seed=_model_seed(cfg) * 1000 + epoch)
        bar = progress(it, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False) if progress else it
        t_epoch, seen, loss_sum = time.time(), 0, 0.0
        for batch in bar:
            for g in optimizer.param_groups:
                g["lr"] = g.setdefault("initial_lr", g["lr"]) * _lr_factor(cfg, state["step"], total_steps)
            loss = loss_fn(model(batch), batch.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            state["step"] += 1
            seen += batch.size
            loss_sum += loss.item() * batch.size
            if progress:
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    ex_s=f"{seen / (time.time() - t_epoch):.0f}",
                    mem=f"{_peak_memory_mb(device):.0f}MB",
                )
        state["epoch"] = epoch + 1
        rescaled = None
        if getattr(model.head, "weight_scale", None) is not None:  # fp8 head with per-label scales
            rescaled = model.head.rescale_weight_(torch.Generator().manual_seed(_model_seed(cfg) * 1000 + epoch))
        record = {"epoch": epoch + 1, "step": state["step"], "train_loss": loss_sum / max(seen, 1),
                  "examples_per_s": seen / (time.time() - t_epoch), "peak_memory_mb": _peak_memory_mb(device)}
        if rescaled is not None:
            record["rescaled_labels"] = rescaled
        if data.val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            topk, scores = predict_topk(model, data.val, cfg.topk, 4 * cfg.batch_size, device)
            val = evaluate_split(topk, scores, data.val.Y, data.inv_propensity)
            record["val"] = val
            score = val[cfg.select_metric]
            if state["best"] is None or score > state["best"]:
                state["best"], state["best_epoch"] = score, epoch + 1
                save_checkpoint(out / "checkpoints" / "best", model, optimizer, dict(state), cfg.to_dict())
        state["history"].append(record)
        log_file.write({"split": "epoch", **record})
        msg = f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, {record['examples_per_s']:.0f} ex/s"
        if "val" in record:
            msg += ", val " + ", ".join(f"{k} {record['val'][k]:.4f}" for k in ("P@1", "P@5", "PSP@5"))
        log(msg)
        save_checkpoint(out / "checkpoints" / "last", model, optimizer, dict(state), cfg.to_dict())

    # Final: the best-on-validation model, recalibrated on validation, scored on test.
    summary: Dict[str, Any] = {"config": cfg.to_dict(), "data": data.source, "train_seconds": time.time() - t0,
                               "best_epoch": state["best_epoch"], "out": str(out)}
    if (out / "checkpoints" / "best").exists():
        load_checkpoint(out / "checkpoints" / "best", model, None, device)
    calibrator = None
    if data.val is not None:
        topk, scores = predict_topk(model, data.val, cfg.topk, 4 * cfg.batch_size, device)
        calibrator = M.IsotonicCalibrator().fit_topk(topk, scores, data.val.Y, min(cfg.topk, max(KS)))
        summary["val"] = evaluate_split(topk, scores, data.val.Y, data.inv_propensity)
    from .plots import plot_history, plot_reliability

    summary["plots"] = [plot_history(state["history"], out / "p_at_k.png")] if data.val is not None else []
    if data.test is not None:
        topk, scores = predict_topk(model, data.test, cfg.topk, 4 * cfg.batch_size, device)
        summary["test"] = evaluate_split(topk, scores, data.test.Y, data.inv_propensity, calibrator)
        log_file.write({"split": "test", "epoch": state["best_epoch"], **summary["test"]})
        summary["plots"].append(
            plot_reliability(topk, scores, data.test.Y, calibrator, min(cfg.topk, max(KS)), out / "reliability.png"))
    else:
        log(f"data: {data.source} has no test split: no test metrics")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
