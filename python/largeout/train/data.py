"""Datasets for the trainer: splits, batches and propensities."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import scipy.sparse as sp
import torch

from .. import data as lodata
from ..data.formats import read_xc_header
from ..metrics import inverse_propensity
from .config import TrainConfig

__all__ = ["Split", "Dataset", "load_dataset", "load_split", "Batch", "batches"]


@dataclass
class Split:
    Y: sp.csr_matrix
    X: Optional[sp.csr_matrix] = None  # sparse features (tfidf encoder)
    texts: Optional[List[str]] = None  # raw text (hf encoders)

    @property
    def num_rows(self) -> int:
        return self.Y.shape[0]

    def rows(self, idx: np.ndarray) -> "Split":
        return Split(
            Y=self.Y[idx],
            X=self.X[idx] if self.X is not None else None,
            texts=[self.texts[i] for i in idx] if self.texts is not None else None,
        )


@dataclass
class Dataset:
    train: Split
    val: Optional[Split]
    test: Optional[Split]
    num_features: int
    num_labels: int
    inv_propensity: np.ndarray
    source: str


def _find(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def _load_split(directory: Path, part: str, need_text: bool, num_labels: Optional[int],
                need_features: bool = True) -> Optional[Split]:
    xc = _find(directory, f"{part}.txt")
    js = _find(directory, f"{part}.jsonl")
    if need_text and need_features and (xc is None) != (js is None):
        have, want = (xc, f"{part}.jsonl") if js is None else (js, f"{part}.txt")
        raise FileNotFoundError(f"data: {have} has no {want} (or .gz) beside it; the encoder needs both")
    if need_text and not need_features and xc is not None and js is None:
        raise FileNotFoundError(f"data: {xc} has no {part}.jsonl (or .gz) beside it; the encoder reads the texts")
    header = None
    if need_text and not need_features and num_labels is None and xc is not None:
        num_labels = header = _xc_num_labels(xc)  # the label space the XC file declares, not the largest label seen
    try:
        return _load_files(xc, js, need_text, num_labels, need_features)
    except lodata.DataFormatError as e:
        if header is None:
            raise
        raise lodata.DataFormatError(e.path, e.lineno, f"{e.reason} (the label space: {header} labels, "
                                     f"the header of {xc})") from None


def _xc_num_labels(xc: Path) -> Optional[int]:
    """L of an XC file's header line ``N D L`` (None if it has no such header)."""
    try:
        return read_xc_header(xc)[2]
    except (OSError, lodata.DataFormatError):
        return None


def _load_files(xc: Optional[Path], js: Optional[Path], need_text: bool, num_labels: Optional[int],
                need_features: bool = True, labels_optional: bool = False) -> Optional[Split]:
    """The split in the XC file ``xc`` and/or the jsonl file ``js``, those the encoder
    needs; None when one it needs is None. ``labels_optional``: jsonl examples may lack
    "labels" (texts to predict for)."""
    if need_text and not need_features:
        if js is None:
            return None
        texts, Y = lodata.read_jsonl(js, text_fields=("text",), label_field="labels", num_labels=num_labels,
                                     require_text=True, require_labels=not labels_optional)
        return Split(Y=Y, texts=texts)
    if xc is None:
        return None
    X, Y = lodata.read_xc(xc)
    if not need_text:
        return Split(Y=Y, X=X)
    if js is None:
        return None
    texts, Yj = lodata.read_jsonl(js, text_fields=("text",), label_field="labels", num_labels=Y.shape[1],
                                  require_text=True, require_labels=not labels_optional)
    if labels_optional and Yj.nnz == 0:  # (a jsonl of texts only: the XC file's labels stand)
        Yj = Y if len(texts) == Y.shape[0] else Yj
    if len(texts) != Y.shape[0] or (Yj != Y).nnz:
        raise ValueError(f"data: {js} and {xc} must hold the same examples in the same order "
                         f"({len(texts)} vs {Y.shape[0]} rows{', different labels' if len(texts) == Y.shape[0] else ''})")
    return Split(Y=Y, X=X, texts=texts)


def load_split(cfg: TrainConfig, directory: Path, part: str, num_labels: Optional[int] = None) -> Optional[Split]:
    """DIR/PART.txt and/or DIR/PART.jsonl as the config's encoder reads them (for
    "tfidf+hf:PATH" the sparse features with the texts' sentence embeddings appended);
    None when the files the encoder needs are absent."""
    return _with_embeddings(cfg, _load_split(Path(directory), part, cfg.reads_text, num_labels, cfg.reads_features))


def load_split_files(cfg: TrainConfig, xc: Optional[Path], js: Optional[Path],
                     num_labels: Optional[int] = None, labels_optional: bool = False) -> Optional[Split]:
    """As :func:`load_split`, from the files named: ``xc`` (XC format) and/or ``js``
    (jsonl), those the config's encoder reads; None when one it needs is None.
    ``labels_optional``: jsonl examples may lack "labels" (``largeout predict``)."""
    return _with_embeddings(cfg, _load_files(xc, js, cfg.reads_text, num_labels, cfg.reads_features,
                                             labels_optional))


def _with_embeddings(cfg: TrainConfig, split: Optional[Split]) -> Optional[Split]:
    if split is not None and cfg.reads_text and cfg.reads_features:
        from .trainer import resolve_device  # (the trainer imports this module)

        split = _append_text_embeddings(cfg, split, resolve_device(cfg.device))
    return split


def _append_text_embeddings(cfg: TrainConfig, split: Split, device: torch.device) -> Split:
    """The split with its texts' frozen sentence embeddings appended to X as dense columns."""
    from .model import text_embeddings  # (model imports this module)

    E = text_embeddings(split.texts, cfg.hf_path, cfg.max_length, device)
    return Split(Y=split.Y, X=sp.hstack([split.X, sp.csr_matrix(E)], format="csr", dtype=np.float32))


_DATA_FILES = tuple(f"{part}.{ext}{gz}" for part in ("train", "test") for ext in ("txt", "jsonl") for gz in ("", ".gz"))


def hash_file(h, path: Path) -> None:
    """Feeds the contents of ``path`` to the hash object ``h`` in 4 MB blocks."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


def data_fingerprint(cfg: TrainConfig) -> Optional[dict]:
    """{file name: [size, SHA-256]} of the data directory's train / test files (None for the
    synthetic data): ``--resume`` refuses a checkpoint trained on other contents."""
    if cfg.data == "synthetic" or str(cfg.data).startswith("in-memory"):
        return None
    out = {}
    for name in _DATA_FILES:
        path = Path(cfg.data) / name
        if path.is_file():
            h = hashlib.sha256()
            hash_file(h, path)
            out[name] = [path.stat().st_size, h.hexdigest()]
    return out


def load_dataset(cfg: TrainConfig) -> Dataset:
    """The train / validation / test splits the config names. The validation split
    is carved from the training data (seeded); the test split is only evaluated."""
    if cfg.data == "synthetic":
        if cfg.reads_text:
            raise ValueError("config: the synthetic data has no text; use encoder = \"tfidf\" with data = \"synthetic\"")
        X, Y = lodata.synthetic(**cfg.synthetic)
        Xtr, Ytr, Xte, Yte = lodata.train_test_split(X, Y, cfg.test_fraction, seed=cfg.seed)
        train, test = Split(Y=Ytr, X=Xtr), Split(Y=Yte, X=Xte)
        source = f"synthetic({', '.join(f'{k}={v}' for k, v in cfg.synthetic.items())})"
    else:
        directory = Path(cfg.data)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"config: data must be \"synthetic\" or a directory from `largeout data prepare`; "
                f"{cfg.data!r} is not a directory"
            )
        train = load_split(cfg, directory, "train")
        if train is None:
            want = "train.txt" if cfg.reads_features else "train.jsonl"
            raise FileNotFoundError(f"config: data directory {directory} has no {want} (or {want}.gz)")
        test = load_split(cfg, directory, "test", train.Y.shape[1])
        source = str(directory)
    num_labels = train.Y.shape[1]
    if test is not None and test.Y.shape[1] != num_labels:
        raise ValueError(f"data: test has {test.Y.shape[1]} labels but train has {num_labels}")
    if test is not None and train.X is not None and test.X is not None and test.X.shape[1] != train.X.shape[1]:
        raise ValueError(f"data: test has {test.X.shape[1]} features but train has {train.X.shape[1]} (the model "
                         f"reads train's feature space)")
    if train.num_rows < 3 + (cfg.val_fraction > 0):  # (the propensity model needs 3 rows; validation 1 more)
        raise ValueError(f"data: {source} has {train.num_rows} training rows; the trainer needs at least "
                         f"{3 + (cfg.val_fraction > 0)}")
    inv_p = inverse_propensity(train.Y, cfg.propensity_a, cfg.propensity_b)
    val = None
    if cfg.val_fraction > 0:
        rng = np.random.Generator(np.random.PCG64(cfg.seed + 1))
        perm = rng.permutation(train.num_rows)
        n_val = max(1, int(round(cfg.val_fraction * train.num_rows)))
        if train.num_rows - n_val < 3:
            raise ValueError(f"config: val_fraction = {cfg.val_fraction} leaves {train.num_rows - n_val} of "
                             f"{source}'s {train.num_rows} training rows to train on; the trainer needs at least 3")
        val, train = train.rows(np.sort(perm[:n_val])), train.rows(np.sort(perm[n_val:]))
    num_features = train.X.shape[1] if train.X is not None else 0
    return Dataset(train, val, test, num_features, num_labels, inv_p, source)


@dataclass
class Batch:
    """One minibatch, on the training device."""

    targets: torch.Tensor  # [B, L] float32 0/1 (dense; L fits per batch)
    feat_idx: Optional[torch.Tensor] = None  # EmbeddingBag inputs (tfidf)
    feat_off: Optional[torch.Tensor] = None
    feat_val: Optional[torch.Tensor] = None
    texts: Optional[List[str]] = None

    @property
    def size(self) -> int:
        return self.targets.shape[0]


def _to_batch(split: Split, idx: np.ndarray, device: torch.device, with_targets: bool = True) -> Batch:
    Y = split.Y[idx]
    n, L = Y.shape
    if with_targets:
        targets = torch.zeros(n, L, dtype=torch.float32)
        rows = np.repeat(np.arange(n), np.diff(Y.indptr))
        targets[torch.from_numpy(rows), torch.from_numpy(Y.indices.astype(np.int64))] = 1.0
        targets = targets.to(device, non_blocking=True)
    else:
        targets = torch.empty(n, 0, device=device)
    b = Batch(targets=targets)
    if split.X is not None:
        X = split.X[idx]
        b.feat_idx = torch.from_numpy(X.indices.astype(np.int64)).to(device)
        b.feat_off = torch.from_numpy(X.indptr[:-1].astype(np.int64)).to(device)
        b.feat_val = torch.from_numpy(X.data.astype(np.float32)).to(device)
    if split.texts is not None:
        b.texts = [split.texts[i] for i in idx]
    return b


def batches(
    split: Split, batch_size: int, device: torch.device, *, shuffle_seed: Optional[int] = None, targets: bool = True
) -> Iterator[Batch]:
    """Minibatches of a split; shuffled by a seed (the trainer passes seed + epoch,
    so a resumed run sees the same order)."""
    n = split.num_rows
    order = np.arange(n)
    if shuffle_seed is not None:
        order = np.random.Generator(np.random.PCG64(shuffle_seed)).permutation(n)
    for start in range(0, n, batch_size):
        yield _to_batch(split, order[start : start + batch_size], device, targets)
