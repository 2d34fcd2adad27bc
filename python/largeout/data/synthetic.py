"""A built-in synthetic XMC dataset with power-law labels and learnable structure."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import scipy.sparse as sp
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["synthetic", "train_test_split"]

# Feature entries generated (and sorted) at once; bounds the temporaries.
_BLOCK_ELEMS = 1 << 21


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    return int(v)


def _random_bytes(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` uniform random uint8 from the generator's raw 64-bit stream."""
    return rng.bit_generator.random_raw((size + 7) // 8).view(np.uint8)[:size]


def _idf_like(rng: np.random.Generator, shape) -> np.ndarray:
    """Positive float32 weights in ``[1, 4)``, skewed towards 1 (``1 + 3 u^2``).

    Only IEEE-exact arithmetic (no exp/log), so the values do not depend on the
    CPU's vector math library."""
    u = rng.random(shape, dtype=np.float32)
    return (u * u * np.float32(3) + np.float32(1)).astype(np.float32)


def _label_log_weights(num_labels: int, power: float, zipf_offset: float) -> np.ndarray:
    """``log((r + zipf_offset) / (1 + zipf_offset)) * -power`` for ranks ``r = 1..L``:
    the log of the label probabilities up to a constant, 0 at the head (finite for
    any ``power``, where the probabilities themselves underflow)."""
    base = np.arange(1, num_labels + 1, dtype=np.float64) + zipf_offset
    return np.log(base / base[0]) * -float(power)


def _label_probs(num_labels: int, power: float, zipf_offset: float) -> np.ndarray:
    """Label probabilities by frequency rank, ``(r + zipf_offset)^-power`` normalised."""
    with np.errstate(under="ignore"):
        probs = (np.arange(1, num_labels + 1, dtype=np.float64) + zipf_offset) ** (-float(power))
    if not probs[-1] >= np.finfo(np.float64).tiny:
        # (a large power: the powers underflow; scale them so that the head is 1, in log space)
        logw = _label_log_weights(num_labels, power, zipf_offset)
        with np.errstate(under="ignore"):
            probs = np.exp(logw - logw.max())
    return probs / probs.sum()


def _sample_label_sets(rng: np.random.Generator, counts: np.ndarray, probs: np.ndarray, cap: int,
                       power: float, zipf_offset: float) -> np.ndarray:
    """``[N, cap]`` int64: row ``i`` holds ``counts[i]`` distinct labels drawn without
    replacement with probabilities ``probs`` (sequential draws, renormalised after
    each), then -1 padding.

    Uses that the first ``m`` distinct values of an i.i.d. stream are such a sample:
    draw a few more than needed per row, keep the first occurrences. (``power`` and
    ``zipf_offset`` give the log-probabilities for rows that need labels whose
    probability underflows to 0.)"""
    logw = None
    n = counts.size
    num_labels = probs.size
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    out = np.full((n, cap), -1, dtype=np.int64)
    width = 2 * cap + 8
    for r0 in range(0, n, max(1, _BLOCK_ELEMS // width)):
        r1 = min(n, r0 + max(1, _BLOCK_ELEMS // width))
        m = counts[r0:r1]
        draws = np.searchsorted(cdf, rng.random((r1 - r0, width)), side="right")
        np.minimum(draws, num_labels - 1, out=draws)
        order = np.argsort(draws, axis=1, kind="stable")
        s = np.take_along_axis(draws, order, axis=1)
        first_sorted = np.ones_like(s, dtype=bool)
        first_sorted[:, 1:] = s[:, 1:] != s[:, :-1]
        first = np.empty_like(first_sorted)
        np.put_along_axis(first, order, first_sorted, axis=1)
        rank = np.cumsum(first, axis=1) - 1  # position among the distinct values so far
        keep = first & (rank < m[:, None])
        rows, cols = np.nonzero(keep)
        out[r0 + rows, rank[rows, cols]] = draws[rows, cols]
        # rows that did not see enough distinct labels (rare; only with a very heavy head)
        for i in np.flatnonzero(rank[:, -1] + 1 < m):
            out[r0 + i] = -1
            if np.count_nonzero(probs) >= m[i]:
                out[r0 + i, : m[i]] = rng.choice(num_labels, size=int(m[i]), replace=False, p=probs)
            else:  # (too few labels with a probability > 0 in float64: an exponential race in
                # log space, which is sequential sampling without replacement)
                if logw is None:
                    logw = _label_log_weights(num_labels, power, zipf_offset)
                keys = np.log(rng.standard_exponential(num_labels)) - logw
                out[r0 + i, : m[i]] = np.argsort(keys, kind="stable")[: m[i]]
    return out


def synthetic(
    num_samples: int,
    num_features: int,
    num_labels: int,
    seed: int = 0,
    *,
    avg_labels: float = 3.0,
    power: float = 1.1,
    feature_density: float = 0.02,
    noise: float = 0.1,
    zipf_offset: float = 5.0,
    max_labels: Optional[int] = None,
    signature_keep: float = 0.5,
) -> Tuple[sp.csr_matrix, sp.csr_matrix]:
    r"""A deterministic synthetic extreme multi-label dataset.

    Labels have power-law (Zipf–Mandelbrot) frequencies: the label of frequency rank
    ``r`` (``r = 1, 2, ...``; ranks are assigned to label ids by a random
    permutation) is drawn with probability :math:`\propto (r + \text{zipf\_offset})^{-\text{power}}`
    (``zipf_offset = 0`` is plain Zipf; the offset flattens only the very head).

    Each label has a sparse random prototype: ``K`` "signature" features drawn
    uniformly from ``[0, num_features)``, in a random order, with positive idf-like
    weights (in ``[1, 4)``). Each example draws ``min(1 + Poisson(avg_labels - 1),
    max_labels)`` distinct labels from the label distribution (without replacement).
    For each of its labels it shows ``M = round(signature_keep * K)`` of the label's
    signature features (a cyclic window at a random offset, so different examples of
    a label share some but not all of them), valued weight x tf (tf random in
    ``[0.5, 1.5)``); features hit by several of its labels add up. On top come
    ``Poisson(noise * feature_density * num_features)`` uniformly random noise
    features (idf-like weight x tf), and every row is L2-normalised. ``K`` is chosen
    so that a row has about ``feature_density * num_features`` non-zeros, a fraction
    ``noise`` of them noise. A linear model (even the label centroids ``Y^T X``)
    learns this well.

    Returns ``(X, Y)``: ``X`` CSR float32 ``[num_samples, num_features]`` (rows of
    unit L2 norm, sorted indices), ``Y`` CSR float32 ``[num_samples, num_labels]``
    of ones, at least one per row. The same arguments give bitwise identical output
    (numpy ``Generator(PCG64(seed))``); another seed gives another dataset.

    Args:
        num_samples, num_features, num_labels: ``N``, ``D``, ``L``.
        seed: random seed, an integer >= 0.
        avg_labels: mean number of labels per example (>= 1; lower if capped).
        power: Zipf exponent of the label frequencies (>= 0; a large one puts
            nearly all the mass on the head labels).
        feature_density: expected fraction of non-zero features per row.
        noise: expected fraction of a row's non-zeros that are random noise, in [0, 1).
        zipf_offset: Zipf–Mandelbrot offset of the frequency ranks (>= 0).
        max_labels: cap on the labels per example (default ``ceil(4 * avg_labels)``,
            at most ``num_labels``).
        signature_keep: fraction of a label's signature features that each example
            of the label shows, in (0, 1].
    """
    seed = _check_int("seed", seed, 0)  # (None would draw fresh OS entropy: not deterministic)
    n = _check_int("num_samples", num_samples, 0)
    d = _check_int("num_features", num_features, 1)
    num_l = _check_int("num_labels", num_labels, 1)
    if not (math.isfinite(avg_labels) and avg_labels >= 1):
        raise ValueError(f"avg_labels must be >= 1; got {avg_labels}")
    if not (math.isfinite(power) and power >= 0):
        raise ValueError(f"power must be >= 0; got {power}")
    if not (0 < feature_density <= 1):
        raise ValueError(f"feature_density must be in (0, 1]; got {feature_density}")
    if not (0 <= noise < 1):
        raise ValueError(f"noise must be in [0, 1); got {noise}")
    if not (math.isfinite(zipf_offset) and zipf_offset >= 0):
        raise ValueError(f"zipf_offset must be >= 0; got {zipf_offset}")
    if not (0 < signature_keep <= 1):
        raise ValueError(f"signature_keep must be in (0, 1]; got {signature_keep}")
    cap = math.ceil(4 * avg_labels) if max_labels is None else _check_int("max_labels", max_labels, 1)
    cap = min(cap, num_l)

    rng = np.random.Generator(np.random.PCG64(seed))

    # label distribution: frequency rank -> probability; rank -> label id
    probs = _label_probs(num_l, power, zipf_offset)
    rank_to_label = rng.permutation(num_l)

    # prototypes: K signature features per label (by rank) in a random order, with
    # idf-like weights; an example of the label shows a cyclic window of M of them
    row_nnz = feature_density * d
    k = int(round((1 - noise) * row_nnz / (avg_labels * signature_keep)))
    k = max(1, min(k, d))
    m = max(1, min(k, int(round(signature_keep * k))))
    sig_idx = rng.integers(0, d, size=(num_l, k), dtype=np.int32)
    sig_w = _idf_like(rng, (num_l, k))
    feat_w = _idf_like(rng, d)  # the noise features' weights
    # win_*[l, s] = the window of label l starting at slot s (a view: no copy)
    win_idx = sliding_window_view(np.concatenate([sig_idx, sig_idx[:, : m - 1]], axis=1), m, axis=1)
    win_w = sliding_window_view(np.concatenate([sig_w, sig_w[:, : m - 1]], axis=1), m, axis=1)

    # label sets
    counts = np.minimum(rng.poisson(avg_labels - 1, size=n) + 1, cap)
    ranks = _sample_label_sets(rng, counts, probs, cap, power, zipf_offset)  # [n, cap], -1 padded
    valid = ranks >= 0
    pair_rank = ranks[valid]  # row-major: the label ranks of row 0, then row 1, ...
    labels = np.where(valid, rank_to_label[np.maximum(ranks, 0)], num_l)
    labels.sort(axis=1)
    y_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=y_ptr[1:])
    y_idx = labels[labels < num_l].astype(np.int32)
    Y = sp.csr_matrix((np.ones(y_idx.size, np.float32), y_idx, y_ptr), shape=(n, num_l))
    Y.has_canonical_format = True

    # features, in blocks of rows; tf = 0.5 + (random byte + 0.5) / 256
    tf_table = (0.5 + (np.arange(256, dtype=np.float32) + 0.5) / 256).astype(np.float32)
    noise_mean = noise * row_nnz
    per_row = avg_labels * m + noise_mean
    rows_per_block = max(1, min(_BLOCK_ELEMS // max(1, int(math.ceil(per_row))), (2**31 - 1) // d))
    n_noise_all = rng.poisson(noise_mean, size=n) if noise_mean > 0 else np.zeros(n, np.int64)
    bound = int(pair_rank.size) * m + int(n_noise_all.sum())  # entries before merging duplicates
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(bound, dtype=np.int32)
    data = np.empty(bound, dtype=np.float32)
    nnz = 0
    for r0 in range(0, n, rows_per_block):
        r1 = min(n, r0 + rows_per_block)
        b = r1 - r0
        p0, p1 = int(y_ptr[r0]), int(y_ptr[r1])
        pr = pair_rank[p0:p1]
        row_base = np.arange(b, dtype=np.int64) * d  # position = row_in_block * d + column
        # signature features
        st = rng.integers(0, k, size=p1 - p0)
        s_pos = win_idx[pr, st] + np.repeat(row_base, counts[r0:r1])[:, None]
        s_vals = win_w[pr, st] * tf_table[_random_bytes(rng, s_pos.size).reshape(s_pos.shape)]
        # noise features
        n_noise = n_noise_all[r0:r1]
        tot = int(n_noise.sum())
        z_cols = rng.integers(0, d, size=tot, dtype=np.int32)
        z_pos = np.repeat(row_base, n_noise) + z_cols
        z_vals = feat_w[z_cols] * tf_table[_random_bytes(rng, tot)]
        # sort by position with the (positive) float32 value bits packed below it:
        # one int64 sort instead of an argsort and gathers
        ns = s_pos.size
        keys = np.empty(ns + tot, dtype=np.int64)
        np.left_shift(s_pos.ravel(), 32, out=keys[:ns])
        np.left_shift(z_pos, 32, out=keys[ns:])
        keys[:ns] |= s_vals.astype(np.float32).view(np.uint32).ravel()
        keys[ns:] |= z_vals.astype(np.float32).view(np.uint32)
        keys.sort()
        pos = keys >> 32
        vals = (keys & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
        # sum the features that several labels (or noise) hit in the same example
        first = np.empty(pos.size, dtype=bool)
        first[:1] = True
        np.not_equal(pos[1:], pos[:-1], out=first[1:])
        upos = pos[first]
        v = vals[first].astype(np.float64)
        dup = np.flatnonzero(~first)
        if dup.size:
            np.add.at(v, dup - np.arange(1, dup.size + 1), vals[dup])
        # L2-normalise the rows (none is empty: every label shows >= 1 feature)
        rs = np.searchsorted(upos, np.append(row_base, b * d))
        cnt = np.diff(rs)
        norms = np.sqrt(np.add.reduceat(v * v, rs[:-1]))
        e = nnz + upos.size
        np.divide(v, np.repeat(norms, cnt), out=data[nnz:e], casting="unsafe")
        np.subtract(upos, np.repeat(row_base, cnt), out=indices[nnz:e], casting="unsafe")
        indptr[r0 + 1 : r1 + 1] = rs[1:] + nnz
        nnz = e
    if nnz < 2**31:
        indptr = indptr.astype(np.int32)
    X = sp.csr_matrix((data[:nnz], indices[:nnz], indptr), shape=(n, d), copy=False)
    X.has_canonical_format = True
    return X, Y


def train_test_split(
    X, Y, test_fraction: float = 0.2, seed: int = 0
) -> Tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """Split the rows of ``X`` and ``Y`` at random into a training and a test part.

    ``round(test_fraction * N)`` rows (a random subset, ``Generator(PCG64(seed))``)
    go to the test part, the others to the training part; both keep the original
    row order. Returns ``(X_train, Y_train, X_test, Y_test)`` as CSR matrices;
    deterministic for a given ``seed``.
    """
    X = sp.csr_matrix(X) if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    Y = sp.csr_matrix(Y) if sp.issparse(Y) else sp.csr_matrix(np.asarray(Y))
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows; got X {X.shape} and Y {Y.shape}")
    if not (0 <= test_fraction <= 1):
        raise ValueError(f"test_fraction must be in [0, 1]; got {test_fraction}")
    n = X.shape[0]
    n_test = int(round(test_fraction * n))
    rng = np.random.Generator(np.random.PCG64(seed))
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.permutation(n)[:n_test]] = True
    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return X[tr], Y[tr], X[te], Y[te]
