"""Evaluation metrics for extreme multi-label classification (XMC).

Every metric is computed from **top-k predictions**, never from dense ``[N, L]``
score matrices, so it scales to N ~ 1M test points and L ~ 10M labels:

* ``topk_labels``: integer array ``[N, >=k]`` (numpy array or torch tensor),
  the predicted label ids of each row ordered best first. Only the first ``k``
  columns are used; they must be distinct within a row and lie in ``[0, L)``.
* ``Y_true``: ``scipy.sparse`` matrix ``[N, L]`` (CSR preferred; other sparse
  formats are converted) whose stored non-zero entries are the positive labels.
  Stored values must be 0 or 1 (explicit zeros are ignored, duplicated entries
  of a non-canonical CSR count once).

Ranking metrics return a python ``float`` in ``[0, 1]``; with
``hit(i, r) = 1`` iff the r-th prediction of row i is in ``y_i`` and
``disc(r) = 1 / log2(r + 1)``:

* ``precision_at_k``  P@k = (1/N) sum_i |top_k(i) ∩ y_i| / k.
* ``ndcg_at_k``       nDCG@k = (1/N) sum_i DCG_i / IDCG_i with
  DCG_i = sum_{r=1..k} hit(i, r) disc(r) and IDCG_i = sum_{r=1..min(k, |y_i|)} disc(r).
* ``recall_at_k``     R@k = (1/N) sum_i |top_k(i) ∩ y_i| / |y_i|.
* ``psprecision_at_k`` PSP@k = [sum_i sum_{l in top_k(i) ∩ y_i} w_l / k]
  / [sum_i (sum of the k largest w_l over l in y_i) / k], with w = inverse
  propensities. This is the normalised PSP of the Extreme Classification
  Repository's evaluation code (Jain et al. 2016; pyxclib's ``psprecision``):
  the propensity-scored precision divided by that of the ideal ranking, so it
  lies in [0, 1].
* ``psndcg_at_k``     PSnDCG@k = [sum_i PSDCG_i / IDCG_i] / [sum_i PSDCG*_i / IDCG_i]
  with PSDCG_i = sum_r hit(i, r) w_{top_k(i)_r} disc(r), PSDCG*_i = sum_{r=1..min(k,|y_i|)}
  w*_{i,r} disc(r) where w*_{i,1} >= w*_{i,2} >= ... are the inverse propensities of
  y_i sorted decreasingly, and IDCG_i the unweighted ideal DCG of nDCG@k: each row's
  propensity-weighted DCG normalised as in nDCG@k, over the same for the ideal
  ranking. This is pyxclib's ``psndcg`` (with uniform weights it equals nDCG@k
  whenever every row has a positive).
* ``coverage_at_k``   Cov@k = |{l : l in top_k(i) ∩ y_i for some i}| / |{l : l in y_i for some i}|.

Rows without positives stay in N and contribute 0 to P@k, nDCG@k and R@k (and
nothing to the numerator or denominator of PSP@k / PSnDCG@k). When a ratio has a
zero denominator (no positives at all) the metric is 0.0.

Calibration (``ece_at_k``, ``reliability_diagram``, ``IsotonicCalibrator``)
treats each of the N*k top-k predictions as one prediction with confidence =
its score (a probability in [0, 1]) and correctness = whether the label is in
``Y_true``. Confidences are binned into ``num_bins`` equal-width bins
``[b/B, (b+1)/B)`` (the last bin also contains 1.0) and
ECE = sum_b (n_b / n) |acc_b - conf_b|.

Implementation: the positives of ``Y_true`` are turned into sorted int64 linear
keys ``row * L + label``; a prediction is a hit iff ``row * L + topk`` is found
by ``np.searchsorted`` among them. Everything is vectorised numpy/scipy (no
Python loop over rows). Inputs are never modified. Requires scipy.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Dict, Iterable, Optional

import numpy as np
import scipy.sparse as sp

__all__ = [
    "precision_at_k",
    "ndcg_at_k",
    "recall_at_k",
    "psprecision_at_k",
    "psndcg_at_k",
    "coverage_at_k",
    "inverse_propensity",
    "evaluate",
    "ece_at_k",
    "reliability_diagram",
    "isotonic_regression",
    "IsotonicCalibrator",
]

_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- input handling


def _to_numpy(x, name: str) -> np.ndarray:
    """numpy view of an array-like or torch tensor (never written to)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float64)  # bfloat16/float16 have no (exact) numpy equivalent
        return t.numpy()
    if sp.issparse(x):
        raise TypeError(f"{name} must be a dense numpy array or torch tensor, got a scipy.sparse matrix")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be array-like (numpy array or torch tensor), got {type(x).__name__}") from e


def _check_int(k, name: str = "k", minimum: int = 1) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {k!r} of type {type(k).__name__}")
    if k < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {int(k)}")
    return int(k)


def _check_real(x, name: str) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a finite real number, got {x!r} of type {type(x).__name__}")
    if not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite real number, got {x!r}")
    return float(x)


class _Truth:
    """Positives of a sparse 0/1 matrix as sorted int64 keys ``row * L + label``."""

    __slots__ = ("N", "L", "keys", "start", "npos", "_labels")

    def __init__(self, Y, name: str):
        if not sp.issparse(Y):
            raise TypeError(
                f"{name} must be a scipy.sparse matrix of shape [N, L] with 0/1 entries (CSR preferred), "
                f"got {type(Y).__module__}.{type(Y).__name__}"
            )
        if len(Y.shape) != 2:
            raise ValueError(f"{name} must be 2-D [N, L], got shape {tuple(Y.shape)}")
        N, L = (int(s) for s in Y.shape)
        if N < 1:
            raise ValueError(f"{name} must have at least one row, got shape {(N, L)}")
        if N * L > _INT64_MAX:
            raise ValueError(f"{name} of shape {(N, L)} is too large: N * L must fit in int64 linear keys")
        if Y.format == "csr":  # Y itself, never written to
            data = np.asarray(Y.data)
            rows = np.repeat(np.arange(N, dtype=np.int64), np.diff(np.asarray(Y.indptr, dtype=np.int64)))
            cols = Y.indices
        else:  # through COO, which keeps duplicated entries apart (tocsr would sum them)
            C = Y.tocoo()
            data, rows, cols = np.asarray(C.data), np.asarray(C.row, dtype=np.int64), C.col
        if data.dtype == np.bool_:
            pos = data
        else:
            if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
                raise TypeError(f"{name} must have a boolean, integer or float dtype, got {data.dtype}")
            pos = data != 0
            bad = pos & (data != 1)
            if bad.any():
                v = data[np.flatnonzero(bad)[0]].item()
                raise ValueError(f"{name} must contain only 0/1 entries, found the value {v!r}")
        keys = rows[pos] * np.int64(L) + np.asarray(cols, dtype=np.int64)[pos]
        if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
            keys = np.unique(keys)  # unsorted indices / duplicates (non-canonical CSR, COO)
        self.N, self.L, self.keys = N, L, keys
        self.start = np.searchsorted(keys, np.arange(N + 1, dtype=np.int64) * np.int64(L))
        self.npos = np.diff(self.start)
        self._labels = None

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self.keys % np.int64(self.L) if self.keys.size else self.keys
        return self._labels

    def hits(self, topk: np.ndarray) -> np.ndarray:
        """bool [N, k]: topk[i, r] in y_i (membership test on the linear keys)."""
        keys = self.keys
        if keys.size == 0:
            return np.zeros(topk.shape, dtype=bool)
        q = topk + (np.arange(self.N, dtype=np.int64) * np.int64(self.L))[:, None]
        pos = np.searchsorted(keys, q)
        np.minimum(pos, keys.size - 1, out=pos)
        return keys[pos] == q


def _topk(topk_labels, truth: _Truth, k: int, name: str = "topk_labels") -> np.ndarray:
    a = _to_numpy(topk_labels, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D integer array of shape [N, >=k], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype (label ids), got {a.dtype}")
    if a.shape[0] != truth.N:
        raise ValueError(f"{name} has {a.shape[0]} rows but Y_true has {truth.N} rows (N must match)")
    if a.shape[1] < k:
        raise ValueError(f"{name} must have at least k={k} columns, got {a.shape[1]} (shape {a.shape})")
    if a.dtype == np.uint64 and a.size and a[:, :k].max() > _INT64_MAX:
        raise ValueError(f"{name} must contain label ids in [0, L={truth.L}), got values up to {a[:, :k].max()}")
    t = a[:, :k].astype(np.int64)  # copy: the caller's array is never touched
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= truth.L:
        raise ValueError(
            f"{name} must contain label ids in [0, L={truth.L}) (L = number of columns of Y_true), "
            f"got values in [{lo}, {hi}]"
        )
    if k > 1:
        s = np.sort(t, axis=1)
        dup = s[:, 1:] == s[:, :-1]
        if dup.any():
            r, c = np.argwhere(dup)[0]
            raise ValueError(
                f"{name} must not repeat a label within a row: row {r} contains label {s[r, c]} "
                f"more than once among its first k={k} predictions"
            )
    return t


def _inv_propensity(inv_propensity, L: int) -> np.ndarray:
    if inv_propensity is None:
        raise TypeError(f"inv_propensity must be a 1-D array of length L={L} (e.g. from inverse_propensity), got None")
    w = _to_numpy(inv_propensity, "inv_propensity")
    if w.ndim != 1 or w.shape[0] != L:
        raise ValueError(
            f"inv_propensity must be a 1-D array of length L={L} (number of columns of Y_true), got shape {w.shape}"
        )
    if not (np.issubdtype(w.dtype, np.integer) or np.issubdtype(w.dtype, np.floating)):
        raise TypeError(f"inv_propensity must be a real (integer or float) array, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if w.size and np.isnan(w).any():
        raise ValueError(f"inv_propensity must be finite and >= 0, got NaN at label {int(np.flatnonzero(np.isnan(w))[0])}")
    if w.size and not (np.all(np.isfinite(w)) and w.min() >= 0):
        raise ValueError(f"inv_propensity must be finite and >= 0, got values in [{w.min()}, {w.max()}]")
    return w


def _scores(topk_scores, N: int, k: int, name: str = "topk_scores", probabilities: bool = True) -> np.ndarray:
    s = _to_numpy(topk_scores, name)
    if s.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape [N, >=k], got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise TypeError(f"{name} must be a real (float) array, got dtype {s.dtype}")
    if s.shape[0] != N:
        raise ValueError(f"{name} has {s.shape[0]} rows but Y_true has {N} rows (N must match)")
    if s.shape[1] < k:
        raise ValueError(f"{name} must have at least k={k} columns, got {s.shape[1]} (shape {s.shape})")
    c = s[:, :k].astype(np.float64).ravel()
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} must be finite, got NaN or inf among the first k={k} columns")
    if probabilities and c.size and (c.min() < 0.0 or c.max() > 1.0):
        raise ValueError(
            f"{name} must be probabilities in [0, 1] for calibration metrics, got values in [{c.min()}, {c.max()}]"
        )
    return c


def _disc(k: int) -> np.ndarray:
    """disc(r) = 1 / log2(r + 1) for r = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


# --------------------------------------------------------------------------- metric kernels


def _precision(hits: np.ndarray) -> float:
    N, k = hits.shape
    return float(np.count_nonzero(hits)) / (N * k)


def _ndcg(hits: np.ndarray, truth: _Truth) -> float:
    N, k = hits.shape
    disc = _disc(k)
    has = truth.npos > 0
    dcg = hits[has] @ disc
    idcg = np.cumsum(disc)[np.minimum(truth.npos[has], k) - 1]
    return min(1.0, float(np.sum(dcg / idcg)) / N)


def _recall(hits: np.ndarray, truth: _Truth) -> float:
    has = truth.npos > 0
    nhit = np.count_nonzero(hits[has], axis=1)
    return min(1.0, float(np.sum(nhit / truth.npos[has])) / truth.N)


def _coverage(hits: np.ndarray, topk: np.ndarray, truth: _Truth) -> float:
    if truth.keys.size == 0:
        return 0.0
    seen = np.zeros(truth.L, dtype=bool)
    seen[truth.labels] = True
    denom = int(np.count_nonzero(seen))
    seen[:] = False
    seen[topk[hits]] = True
    return float(np.count_nonzero(seen)) / denom


def _ideal_weights(truth: _Truth, w: np.ndarray):
    """Inverse propensities of each row's positives sorted decreasingly within the row,
    with their 0-based rank inside the row."""
    wl = w[truth.labels]
    rows = np.repeat(np.arange(truth.N, dtype=np.int64), truth.npos)
    order = np.lexsort((-wl, rows))
    rank = np.arange(wl.size, dtype=np.int64) - np.repeat(truth.start[:-1], truth.npos)
    return wl[order], rank


def _ps(hits, topk, w, ideal, dcg: bool, truth: _Truth) -> float:
    k = hits.shape[1]
    ws, rank = ideal
    gain = np.where(hits, w[topk], 0.0)
    m = rank < k
    if dcg:  # each row's DCGs over its unweighted IDCG (as nDCG@k), then a ratio of sums
        disc = _disc(k)
        has = truth.npos > 0
        idcg = np.cumsum(disc)[np.minimum(truth.npos[has], k) - 1]
        rows = np.repeat(np.arange(truth.N, dtype=np.int64), truth.npos)
        best = np.bincount(rows[m], weights=ws[m] * disc[rank[m]], minlength=truth.N)
        num = float(np.sum((gain @ disc)[has] / idcg))
        den = float(np.sum(best[has] / idcg))
    else:
        num = float(np.sum(gain))
        den = float(np.sum(ws[m]))
    if den <= 0.0:
        return 0.0
    return min(1.0, max(0.0, num / den))


def _setup(topk_labels, Y_true, k):
    k = _check_int(k, "k")
    truth = _Truth(Y_true, "Y_true")
    topk = _topk(topk_labels, truth, k)
    return truth, topk, truth.hits(topk)


# --------------------------------------------------------------------------- public ranking metrics


def precision_at_k(topk_labels, Y_true, k: int) -> float:
    """Precision@k = (1/N) sum_i |top_k(i) ∩ y_i| / k.

    ``topk_labels``: int ``[N, >=k]`` (numpy or torch), best first; ``Y_true``:
    scipy.sparse 0/1 ``[N, L]``. Rows without positives contribute 0 (they stay in N).
    """
    _, _, hits = _setup(topk_labels, Y_true, k)
    return _precision(hits)


def ndcg_at_k(topk_labels, Y_true, k: int) -> float:
    """nDCG@k = (1/N) sum_i DCG@k(i) / IDCG@k(i).

    DCG@k(i) = sum_{r=1..k} rel_r / log2(r + 1) with rel_r = 1 iff the r-th
    prediction is a positive of row i; IDCG@k(i) is the DCG of min(k, |y_i|)
    ones, i.e. sum_{r=1..min(k,|y_i|)} 1 / log2(r + 1). Rows without positives
    contribute 0 to the average (they stay in N).
    """
    truth, _, hits = _setup(topk_labels, Y_true, k)
    return _ndcg(hits, truth)


def recall_at_k(topk_labels, Y_true, k: int) -> float:
    """Recall@k = (1/N) sum_i |top_k(i) ∩ y_i| / |y_i|; rows without positives contribute 0
    (they stay in N)."""
    truth, _, hits = _setup(topk_labels, Y_true, k)
    return _recall(hits, truth)


def psprecision_at_k(topk_labels, Y_true, k: int, inv_propensity) -> float:
    """Normalised propensity-scored precision@k.

    PSP@k = [sum_i sum_{l in top_k(i) ∩ y_i} w_l / k] / [sum_i (sum of the k
    largest w_l among l in y_i) / k], ``w = inv_propensity`` (1-D, length L,
    e.g. from :func:`inverse_propensity`). The denominator is the PSP of the ideal
    ranking, so the result lies in [0, 1]; this is the normalisation used by the
    Extreme Classification Repository's evaluation code (Jain et al. 2016, pyxclib).
    Returns 0.0 when the ideal score is 0 (no positives).
    """
    truth, topk, hits = _setup(topk_labels, Y_true, k)
    w = _inv_propensity(inv_propensity, truth.L)
    return _ps(hits, topk, w, _ideal_weights(truth, w), dcg=False, truth=truth)


def psndcg_at_k(topk_labels, Y_true, k: int, inv_propensity) -> float:
    """Normalised propensity-scored nDCG@k.

    PSnDCG@k = [sum_i PSDCG_i / IDCG_i] / [sum_i PSDCG*_i / IDCG_i] with
    PSDCG_i = sum_{r=1..k} rel_r w_{l_r} / log2(r + 1), PSDCG*_i =
    sum_{r=1..min(k,|y_i|)} w*_{i,r} / log2(r + 1) and IDCG_i = sum_{r=1..min(k,|y_i|)}
    1 / log2(r + 1), where l_r is the r-th prediction of row i, rel_r = [l_r in y_i]
    and w*_{i,1} >= w*_{i,2} >= ... are the inverse propensities of y_i sorted
    decreasingly: each row's propensity-weighted DCG normalised as in
    :func:`ndcg_at_k`, divided by the same for the ideal ranking, hence in [0, 1].
    This is the Extreme Classification Repository's normalisation (pyxclib's
    ``psndcg``); rows without positives add nothing to either sum. Returns 0.0 when
    the ideal score is 0.
    """
    truth, topk, hits = _setup(topk_labels, Y_true, k)
    w = _inv_propensity(inv_propensity, truth.L)
    return _ps(hits, topk, w, _ideal_weights(truth, w), dcg=True, truth=truth)


def coverage_at_k(topk_labels, Y_true, k: int) -> float:
    """Label coverage@k.

    Cov@k = (number of distinct labels l predicted correctly, i.e. l in
    top_k(i) ∩ y_i for at least one row i) / (number of distinct labels that occur
    in ``Y_true``, i.e. have at least one positive). Labels that never occur in
    ``Y_true`` count in neither. Returns 0.0 if ``Y_true`` has no positives.
    """
    truth, topk, hits = _setup(topk_labels, Y_true, k)
    return _coverage(hits, topk, truth)


def inverse_propensity(Y_train, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Inverse label propensities 1 / p_l of the Jain et al. (2016) propensity model.

    p_l = 1 / (1 + C exp(-A log(N_l + B))), C = (log N - 1) (B + 1)^A, where N is
    the number of training points (rows of ``Y_train``, a scipy.sparse 0/1
    ``[N, L]`` matrix) and N_l the number of training points labelled l. Returns
    float64 ``[L]``: ``1 + C (N_l + B)^(-A)``; rare labels get large weights.

    Usual values: A=0.55, B=1.5 for most datasets; A=0.6, B=2.6 for Amazon
    datasets; A=0.5, B=0.4 for Wikipedia datasets. (log is natural; C > 0 needs
    N > e, i.e. N >= 3: fewer rows raise ``ValueError``.)
    """
    A = _check_real(A, "A")
    B = _check_real(B, "B")
    if A <= 0:
        raise ValueError(f"A must be > 0 (rarer labels get larger weights only then), got {A}")
    if B <= 0:
        raise ValueError(f"B must be > 0 (log(N_l + B) is taken for labels with N_l = 0), got {B}")
    truth = _Truth(Y_train, "Y_train")
    if truth.N < 3:
        raise ValueError(f"Y_train must have at least 3 rows (the model's C = (log N - 1) (B + 1)^A is > 0 "
                         f"only for N > e); got {truth.N}")
    freq = np.bincount(truth.labels, minlength=truth.L).astype(np.float64)
    C = (math.log(truth.N) - 1.0) * (B + 1.0) ** A
    return 1.0 + C * np.exp(-A * np.log(freq + B))


def evaluate(topk_labels, Y_true, ks: Iterable[int] = (1, 3, 5), inv_propensity=None) -> Dict[str, float]:
    """All ranking metrics for several k at once (the membership test is done once).

    Returns ``{"P@k": ..., "nDCG@k": ..., "R@k": ..., ["PSP@k": ..., "PSnDCG@k": ...]}``
    for every k in ``ks`` (grouped by metric, ks in the given order); the
    propensity-scored metrics only when ``inv_propensity`` is given. Same
    conventions as the individual functions.
    """
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    try:
        ks = list(ks)
    except TypeError:
        raise TypeError(f"ks must be an iterable of integers >= 1, got {ks!r}") from None
    if not ks:
        raise ValueError("ks must contain at least one k, got an empty sequence")
    ks = list(dict.fromkeys(_check_int(k, "ks entry") for k in ks))
    kmax = max(ks)
    truth = _Truth(Y_true, "Y_true")
    topk = _topk(topk_labels, truth, kmax)
    hits = truth.hits(topk)
    out: Dict[str, float] = {}
    for k in ks:
        out[f"P@{k}"] = _precision(hits[:, :k])
    for k in ks:
        out[f"nDCG@{k}"] = _ndcg(hits[:, :k], truth)
    for k in ks:
        out[f"R@{k}"] = _recall(hits[:, :k], truth)
    if inv_propensity is not None:
        w = _inv_propensity(inv_propensity, truth.L)
        ideal = _ideal_weights(truth, w)
        for k in ks:
            out[f"PSP@{k}"] = _ps(hits[:, :k], topk[:, :k], w, ideal, dcg=False, truth=truth)
        for k in ks:
            out[f"PSnDCG@{k}"] = _ps(hits[:, :k], topk[:, :k], w, ideal, dcg=True, truth=truth)
    return out


# --------------------------------------------------------------------------- calibration


def _topk_confidences(topk_labels, topk_scores, Y_true, k, probabilities: bool):
    k = _check_int(k, "k")
    truth = _Truth(Y_true, "Y_true")
    topk = _topk(topk_labels, truth, k)
    conf = _scores(topk_scores, truth.N, k, probabilities=probabilities)
    return conf, truth.hits(topk).ravel()


def _binned(conf: np.ndarray, correct: np.ndarray, num_bins: int):
    edges = np.arange(num_bins + 1, dtype=np.float64) / num_bins
    idx = np.searchsorted(edges, conf, side="right") - 1  # bin b holds [b/B, (b+1)/B)
    np.clip(idx, 0, num_bins - 1, out=idx)  # 1.0 goes to the last bin
    count = np.bincount(idx, minlength=num_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=num_bins)
    sum_correct = np.bincount(idx, weights=correct.astype(np.float64), minlength=num_bins)
    return edges, count, sum_conf, sum_correct


def ece_at_k(topk_labels, topk_scores, Y_true, k: int, num_bins: int = 10) -> float:
    """Expected calibration error over the top-k predictions (calibration@k).

    Each of the N*k predictions ``topk_labels[i, r]`` (r < k) has confidence
    ``topk_scores[i, r]`` (must be a probability in [0, 1]) and correctness
    ``topk_labels[i, r] in y_i``. Confidences are binned into ``num_bins``
    equal-width bins [b/B, (b+1)/B) (1.0 in the last bin) and
    ECE = sum_b (n_b / n) |acc_b - conf_b| with n = N*k, acc_b / conf_b the mean
    correctness / confidence in bin b (empty bins contribute 0).
    """
    num_bins = _check_int(num_bins, "num_bins")
    conf, correct = _topk_confidences(topk_labels, topk_scores, Y_true, k, probabilities=True)
    _, _, sum_conf, sum_correct = _binned(conf, correct, num_bins)
    # sum_b (n_b/n) |sum_correct_b/n_b - sum_conf_b/n_b| = sum_b |sum_correct_b - sum_conf_b| / n
    return float(np.sum(np.abs(sum_correct - sum_conf)) / conf.size)


def reliability_diagram(topk_labels, topk_scores, Y_true, k: int, num_bins: int = 10) -> Dict[str, np.ndarray]:
    """Per-bin statistics of the top-k predictions for a reliability diagram.

    Same binning as :func:`ece_at_k`. Returns a dict of numpy arrays:
    ``bin_edges`` [num_bins + 1], and per bin [num_bins]: ``mean_confidence``,
    ``accuracy`` (fraction correct; both NaN for empty bins) and ``count`` (int64).
    Plot ``accuracy`` against ``mean_confidence`` (or the bin centres) and compare
    with the diagonal.
    """
    num_bins = _check_int(num_bins, "num_bins")
    conf, correct = _topk_confidences(topk_labels, topk_scores, Y_true, k, probabilities=True)
    edges, count, sum_conf, sum_correct = _binned(conf, correct, num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / count, np.nan)
        acc = np.where(count > 0, sum_correct / count, np.nan)
    return {"bin_edges": edges, "mean_confidence": mean_conf, "accuracy": acc, "count": count.astype(np.int64)}


_PAV_VECTOR_PASSES = 64


def _pav(sw: np.ndarray, swy: np.ndarray):
    """Pool-adjacent-violators on blocks given by weight sums ``sw`` and weighted sums ``swy``.

    Returns (block start indices, block means, block weights) of the weighted
    least-squares non-decreasing fit. Whole maximal non-increasing runs of
    adjacent blocks are pooled per vectorised pass (each such pooling is a valid
    PAV step, and PAV's result does not depend on the pooling order); if that has
    not converged after a few passes the remaining blocks are finished with the
    classic stack-based PAV.
    """
    starts = np.arange(sw.size, dtype=np.int64)
    for _ in range(_PAV_VECTOR_PASSES):
        if sw.size <= 1:
            break
        m = swy / sw
        merge = m[:-1] >= m[1:]  # block b+1 is pooled into block b
        if not merge.any():
            break
        new = np.empty(sw.size, dtype=bool)
        new[0] = True
        new[1:] = ~merge
        gid = np.cumsum(new) - 1
        sw = np.bincount(gid, weights=sw)
        swy = np.bincount(gid, weights=swy)
        starts = starts[new]
    else:
        st, w_, wy_ = [], [], []
        for s, w, wy in zip(starts.tolist(), sw.tolist(), swy.tolist()):
            while w_ and wy_[-1] / w_[-1] >= wy / w:
                s = st.pop()
                w += w_.pop()
                wy += wy_.pop()
            st.append(s)
            w_.append(w)
            wy_.append(wy)
        starts, sw, swy = np.asarray(st, dtype=np.int64), np.asarray(w_), np.asarray(wy_)
    return starts, swy / sw, sw


def isotonic_regression(y, sample_weight=None) -> np.ndarray:
    """Non-decreasing least-squares fit to the sequence ``y`` (in the given order) by the
    pool-adjacent-violators algorithm: minimises sum_i w_i (f_i - y_i)^2 subject to
    f_1 <= f_2 <= ...; returns f (float64, same length). ``[1, 3, 2, 4] -> [1, 2.5, 2.5, 4]``."""
    y = _to_numpy(y, "y")
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise TypeError(f"y must be a real array, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite, got NaN or inf")
    if sample_weight is None:
        w = np.ones_like(y)
    else:
        w = _to_numpy(sample_weight, "sample_weight")
        if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
            raise TypeError(f"sample_weight must be a real array, got dtype {w.dtype}")
        w = w.astype(np.float64)
        if w.shape != y.shape:
            raise ValueError(f"sample_weight must have the shape of y {y.shape}, got {w.shape}")
        if w.size and not (np.all(np.isfinite(w)) and w.min() > 0):
            raise ValueError("sample_weight must be finite and > 0")
    if y.size == 0:
        return y
    starts, means, _ = _pav(w, w * y)
    return np.repeat(means, np.diff(np.append(starts, y.size)))


class IsotonicCalibrator:
    """Monotone (non-decreasing) score -> probability-of-correctness map, fitted by
    isotonic regression (pool-adjacent-violators, :func:`isotonic_regression`).

    Fit it on a held-out validation split, then apply it to test scores::

        cal = IsotonicCalibrator().fit_topk(val_topk, val_scores, Y_val, k=5)
        probs = cal.transform(test_scores)

    ``fit`` pools equal scores first (their mean correctness), then runs PAV over the
    sorted distinct scores. ``transform`` interpolates linearly between the fitted
    values at the two ends of each constant block (``x_thresholds_`` /
    ``y_thresholds_``) and clips to the fitted range: scores below (above) the
    smallest (largest) fitted score get the first (last) fitted value.
    """

    def __init__(self):
        self.x_thresholds_: Optional[np.ndarray] = None
        self.y_thresholds_: Optional[np.ndarray] = None

    def fit(self, scores, correct) -> "IsotonicCalibrator":
        """Fit on ``scores`` (any real values, any shape) and ``correct`` (same size; bool or
        values in [0, 1], typically 0/1). Returns self."""
        x = _to_numpy(scores, "scores")
        c = _to_numpy(correct, "correct")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"scores must be a real array, got dtype {x.dtype}")
        if not (c.dtype == np.bool_ or np.issubdtype(c.dtype, np.floating) or np.issubdtype(c.dtype, np.integer)):
            raise TypeError(f"correct must be a boolean or 0/1 array, got dtype {c.dtype}")
        x = x.astype(np.float64).ravel()
        c = c.astype(np.float64).ravel()
        if x.size != c.size:
            raise ValueError(f"scores and correct must have the same number of elements, got {x.size} and {c.size}")
        if x.size == 0:
            raise ValueError("scores must not be empty")
        if not np.all(np.isfinite(x)):
            raise ValueError("scores must be finite, got NaN or inf")
        if np.isnan(c).any():
            raise ValueError(f"correct must contain values in [0, 1] (0/1 correctness), got NaN at element "
                             f"{int(np.flatnonzero(np.isnan(c))[0])}")
        if not (c.min() >= 0 and c.max() <= 1):
            raise ValueError(f"correct must contain values in [0, 1] (0/1 correctness), got [{c.min()}, {c.max()}]")
        order = np.argsort(x, kind="stable")
        xs, cs = x[order], c[order]
        first = np.empty(xs.size, dtype=bool)
        first[0] = True
        first[1:] = xs[1:] != xs[:-1]
        gid = np.cumsum(first) - 1
        ux = xs[first]
        starts, means, _ = _pav(np.bincount(gid).astype(np.float64), np.bincount(gid, weights=cs))
        ends = np.append(starts[1:], ux.size) - 1
        keep = np.zeros(ux.size, dtype=bool)
        keep[starts] = True
        keep[ends] = True
        vals = np.repeat(means, ends - starts + 1)
        self.x_thresholds_ = ux[keep]
        self.y_thresholds_ = np.clip(vals[keep], 0.0, 1.0)
        return self

    def fit_topk(self, topk_labels, topk_scores, Y_true, k: int) -> "IsotonicCalibrator":
        """Fit on the N*k top-k predictions: scores ``topk_scores[:, :k]`` (any real values)
        and correctness ``topk_labels[i, r] in y_i``. Returns self."""
        conf, correct = _topk_confidences(topk_labels, topk_scores, Y_true, k, probabilities=False)
        return self.fit(conf, correct)

    def transform(self, scores) -> np.ndarray:
        """Calibrated probabilities (float64 numpy array of the shape of ``scores``)."""
        if self.x_thresholds_ is None:
            raise RuntimeError("IsotonicCalibrator is not fitted: call fit() or fit_topk() first")
        x = _to_numpy(scores, "scores")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"scores must be a real array, got dtype {x.dtype}")
        x = x.astype(np.float64)
        if np.isnan(x).any():
            raise ValueError("scores must not contain NaN")
        return np.interp(x, self.x_thresholds_, self.y_thresholds_)

    __call__ = transform
