"""largeout.metrics: XMC ranking metrics from top-k predictions, propensities, calibration."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from largeout import metrics as M
from largeout.metrics import (
    IsotonicCalibrator,
    coverage_at_k,
    ece_at_k,
    evaluate,
    inverse_propensity,
    isotonic_regression,
    ndcg_at_k,
    precision_at_k,
    psndcg_at_k,
    psprecision_at_k,
    recall_at_k,
    reliability_diagram,
)


def csr_from_sets(label_sets, L):
    rows = [i for i, s in enumerate(label_sets) for _ in s]
    cols = [l for s in label_sets for l in sorted(s)]
    return sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(label_sets), L))


# --------------------------------------------------------------------------- hand-computed example
#
#   Y_true (4 x 6)         top-3 predictions     hits
#   row 0: {0, 2}          [0, 1, 2]             1 0 1
#   row 1: {1, 3, 5}       [0, 3, 1]             0 1 1
#   row 2: {4}             [1, 2, 4]             0 0 1
#   row 3: {} (no label)   [5, 0, 1]             0 0 0
#
# inv_propensity w_l = l + 1 = [1, 2, 3, 4, 5, 6]

HAND_SETS = [{0, 2}, {1, 3, 5}, {4}, set()]
HAND_TOPK = np.array([[0, 1, 2], [0, 3, 1], [1, 2, 4], [5, 0, 1]])
HAND_W = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
L3 = math.log2(3)  # 1.5849625007211562; 1/log2(2) = 1, 1/log2(4) = 0.5


@pytest.fixture
def hand():
    return HAND_TOPK.copy(), csr_from_sets(HAND_SETS, 6)


def test_hand_precision(hand):
    topk, Y = hand
    # P@1 = (1 + 0 + 0 + 0) / (4 * 1) = 0.25
    assert precision_at_k(topk, Y, 1) == pytest.approx(0.25, abs=1e-15)
    # P@3 = (2 + 2 + 1 + 0) / (4 * 3) = 5/12 = 0.41666...
    assert precision_at_k(topk, Y, 3) == pytest.approx(5 / 12, abs=1e-15)
    # P@2 = (1 + 1 + 0 + 0) / 8 = 0.25
    assert precision_at_k(topk, Y, 2) == pytest.approx(0.25, abs=1e-15)


def test_hand_ndcg(hand):
    topk, Y = hand
    # nDCG@1: row 0 hit at rank 1 -> 1/1; others 0  => 1/4
    assert ndcg_at_k(topk, Y, 1) == pytest.approx(0.25, abs=1e-15)
    # nDCG@3, disc = [1, 1/log2(3), 1/log2(4) = 0.5]
    # row 0: DCG = 1 + 0.5 = 1.5,               IDCG(min(3,2)=2) = 1 + 1/log2(3) = 1.63093 -> 0.919721
    # row 1: DCG = 1/log2(3) + 0.5 = 1.13093,   IDCG(3) = 1 + 1/log2(3) + 0.5 = 2.13093   -> 0.530721
    # row 2: DCG = 0.5,                         IDCG(1) = 1                                -> 0.5
    # row 3: no positives -> 0 (still counted in N = 4)
    expected = ((1 + 0.5) / (1 + 1 / L3) + (1 / L3 + 0.5) / (1 + 1 / L3 + 0.5) + 0.5 / 1 + 0.0) / 4
    assert expected == pytest.approx(0.4876105157813577, abs=1e-15)
    assert ndcg_at_k(topk, Y, 3) == pytest.approx(expected, abs=1e-14)


def test_hand_recall(hand):
    topk, Y = hand
    # R@1 = (1/2 + 0 + 0 + 0) / 4 = 0.125
    assert recall_at_k(topk, Y, 1) == pytest.approx(0.125, abs=1e-15)
    # R@3 = (2/2 + 2/3 + 1/1 + 0) / 4 = (8/3) / 4 = 2/3
    assert recall_at_k(topk, Y, 3) == pytest.approx(2 / 3, abs=1e-15)


def test_hand_coverage(hand):
    topk, Y = hand
    # labels occurring in Y_true: {0,1,2,3,4,5} (6)
    # k=1: correct {0} -> 1/6;  k=3: correct {0,2} u {3,1} u {4} = 5 labels -> 5/6
    assert coverage_at_k(topk, Y, 1) == pytest.approx(1 / 6, abs=1e-15)
    assert coverage_at_k(topk, Y, 3) == pytest.approx(5 / 6, abs=1e-15)


def test_hand_psprecision(hand):
    topk, Y = hand
    # k=3: gained w: row0 w0+w2 = 1+3 = 4; row1 w3+w1 = 4+2 = 6; row2 w4 = 5  -> 15
    #      ideal (k largest w among positives): row0 3+1 = 4; row1 6+4+2 = 12; row2 5 -> 21
    #      PSP@3 = (15/3) / (21/3) = 5/7 = 0.714285...
    assert psprecision_at_k(topk, Y, 3, HAND_W) == pytest.approx(5 / 7, abs=1e-15)
    # k=1: gained row0 w0 = 1; ideal 3 + 6 + 5 = 14 -> 1/14
    assert psprecision_at_k(topk, Y, 1, HAND_W) == pytest.approx(1 / 14, abs=1e-15)


def test_hand_psndcg(hand):
    topk, Y = hand
    # k=3, each row's weighted DCG over its unweighted IDCG (as nDCG@3), the ideal's likewise:
    #   row0 PSDCG 1*1 + 3*0.5 = 2.5,          ideal 3*1 + 1/log2(3),             IDCG 1 + 1/log2(3)
    #   row1 PSDCG 4/log2(3) + 2*0.5,          ideal 6*1 + 4/log2(3) + 2*0.5,     IDCG 1 + 1/log2(3) + 0.5
    #   row2 PSDCG 5*0.5 = 2.5,                ideal 5*1,                         IDCG 1
    i0, i1 = 1 + 1 / L3, 1 + 1 / L3 + 0.5
    expected = (2.5 / i0 + (4 / L3 + 1) / i1 + 2.5) / ((3 + 1 / L3) / i0 + (7 + 4 / L3) / i1 + 5)
    assert expected == pytest.approx(0.48620741348556756, abs=1e-14)
    assert psndcg_at_k(topk, Y, 3, HAND_W) == pytest.approx(expected, abs=1e-14)
    # k=1: disc(1) = 1 so PSnDCG@1 = PSP@1 = 1/14
    assert psndcg_at_k(topk, Y, 1, HAND_W) == pytest.approx(1 / 14, abs=1e-15)


def test_psndcg_uniform_weights_is_ndcg():
    # pyxclib's normalisation: each row's DCG over its own IDCG, so with equal weights PSnDCG@k
    # is nDCG@k wherever every row has a positive (a ratio of summed DCGs would weight rows
    # with many labels more: 0.6806 against nDCG's 0.7654 here).
    Y = csr_from_sets([{0}, {1, 2, 3, 4}], 6)
    topk = np.array([[0, 5, 4], [5, 4, 3]])
    assert ndcg_at_k(topk, Y, 3) == pytest.approx(0.7654, abs=1e-4)
    assert psndcg_at_k(topk, Y, 3, np.ones(6)) == pytest.approx(ndcg_at_k(topk, Y, 3), abs=1e-14)
    topk2, sets, _ = random_case(5)
    keep = [i for i, y in enumerate(sets) if y]
    Y2 = csr_from_sets([sets[i] for i in keep], 40)
    for k in (1, 3, 7):
        assert psndcg_at_k(topk2[keep], Y2, k, np.full(40, 2.5)) == pytest.approx(ndcg_at_k(topk2[keep], Y2, k),
                                                                                 abs=1e-12)


def test_hand_evaluate(hand):
    topk, Y = hand
    out = evaluate(topk, Y, ks=(1, 3), inv_propensity=HAND_W)
    assert set(out) == {f"{m}@{k}" for m in ("P", "nDCG", "R", "PSP", "PSnDCG") for k in (1, 3)}
    assert out["P@1"] == pytest.approx(0.25) and out["P@3"] == pytest.approx(5 / 12)
    assert out["nDCG@3"] == pytest.approx(0.4876105157813577)
    assert out["R@3"] == pytest.approx(2 / 3)
    assert out["PSP@1"] == pytest.approx(1 / 14) and out["PSP@3"] == pytest.approx(5 / 7)
    assert out["PSnDCG@3"] == pytest.approx(0.48620741348556756)
    assert all(type(v) is float for v in out.values())
    no_ps = evaluate(topk, Y, ks=(1, 2))
    assert set(no_ps) == {"P@1", "P@2", "nDCG@1", "nDCG@2", "R@1", "R@2"}
    assert no_ps["P@2"] == pytest.approx(0.25)


def test_returns_python_float_in_unit_interval(hand):
    topk, Y = hand
    for v in (
        precision_at_k(topk, Y, 3),
        ndcg_at_k(topk, Y, 3),
        recall_at_k(topk, Y, 3),
        coverage_at_k(topk, Y, 3),
        psprecision_at_k(topk, Y, 3, HAND_W),
        psndcg_at_k(topk, Y, 3, HAND_W),
    ):
        assert type(v) is float and 0.0 < v <= 1.0


def test_perfect_ranking_scores_one():
    sets = [{0, 2}, {1, 3, 5}, {4}]
    Y = csr_from_sets(sets, 6)
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # positives sorted by decreasing w first (ideal for PS metrics too), then the rest
    topk = np.array([[2, 0, 1], [5, 3, 1], [4, 0, 1]])
    assert ndcg_at_k(topk, Y, 3) == pytest.approx(1.0)
    assert recall_at_k(topk, Y, 3) == pytest.approx(1.0)
    assert psprecision_at_k(topk, Y, 3, w) == pytest.approx(1.0)
    assert psndcg_at_k(topk, Y, 3, w) == pytest.approx(1.0)
    # swapping rank 1 and 2 of row 1 keeps PSP but lowers PSnDCG
    topk2 = np.array([[2, 0, 1], [3, 5, 1], [4, 0, 1]])
    assert psprecision_at_k(topk2, Y, 3, w) == pytest.approx(1.0)
    assert psndcg_at_k(topk2, Y, 3, w) < 1.0 - 1e-3


# --------------------------------------------------------------------------- brute-force reference


def ref_ranking(topk, sets, k, w):
    """Pure-Python loops over rows, written directly from the definitions."""
    N = len(sets)
    p = nd = rc = psp_num = psp_den = psn_num = psn_den = 0.0
    correct_labels, all_labels = set(), set()
    for i in range(N):
        y = sets[i]
        preds = [int(l) for l in topk[i][:k]]
        all_labels |= y
        nhit = 0
        dcg = 0.0
        for r, l in enumerate(preds):
            if l in y:
                nhit += 1
                dcg += 1.0 / math.log2(r + 2)
                psp_num += w[l]
                correct_labels.add(l)
        p += nhit / k
        if y:
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(y))))
            nd += dcg / idcg
            rc += nhit / len(y)
            best = sorted((w[l] for l in y), reverse=True)[:k]
            psp_den += sum(best)
            psn_num += sum(w[l] / math.log2(r + 2) for r, l in enumerate(preds) if l in y) / idcg
            psn_den += sum(v / math.log2(r + 2) for r, v in enumerate(best)) / idcg
    return {
        "P": p / N,
        "nDCG": nd / N,
        "R": rc / N,
        "PSP": psp_num / psp_den if psp_den else 0.0,
        "PSnDCG": psn_num / psn_den if psn_den else 0.0,
        "Cov": len(correct_labels) / len(all_labels) if all_labels else 0.0,
    }


def random_case(seed, N=150, L=40, kmax=7):
    rng = np.random.default_rng(seed)
    sets = []
    topk = np.empty((N, kmax), dtype=np.int64)
    for i in range(N):
        n = int(rng.choice([0, 0, 1, 2, 3, 5, 9, 12]))  # empty rows and rows with > kmax positives
        y = set(rng.choice(L, size=n, replace=False).tolist())
        sets.append(y)
        # duplicate-free predictions mixing positives and negatives in random order
        pos = list(y)
        rng.shuffle(pos)
        take = pos[: int(rng.integers(0, min(len(pos), kmax) + 1))]
        rest = [l for l in rng.permutation(L).tolist() if l not in take][: kmax - len(take)]
        row = np.array(take + rest)
        rng.shuffle(row)
        topk[i] = row
    w = rng.choice([1.0, 1.5, 3.0, 7.25], size=L)  # ties among inverse propensities
    return topk, sets, w


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_matches_bruteforce_reference(seed, k):
    topk, sets, w = random_case(seed)
    Y = csr_from_sets(sets, 40)
    ref = ref_ranking(topk, sets, k, w)
    assert 0.05 < ref["P"] < 0.95  # non-degenerate data
    assert precision_at_k(topk, Y, k) == pytest.approx(ref["P"], abs=1e-12)
    assert ndcg_at_k(topk, Y, k) == pytest.approx(ref["nDCG"], abs=1e-12)
    assert recall_at_k(topk, Y, k) == pytest.approx(ref["R"], abs=1e-12)
    assert psprecision_at_k(topk, Y, k, w) == pytest.approx(ref["PSP"], abs=1e-12)
    assert psndcg_at_k(topk, Y, k, w) == pytest.approx(ref["PSnDCG"], abs=1e-12)
    assert coverage_at_k(topk, Y, k) == pytest.approx(ref["Cov"], abs=1e-12)
    out = evaluate(topk, Y, ks=(k, 1), inv_propensity=w)
    for name in ("P", "nDCG", "R", "PSP", "PSnDCG"):
        assert out[f"{name}@{k}"] == pytest.approx(ref[name], abs=1e-12)


def test_torch_and_numpy_inputs_agree():
    topk, sets, w = random_case(3)
    Y = csr_from_sets(sets, 40)
    tt, tw = torch.from_numpy(topk).to(torch.int32), torch.from_numpy(w)
    ev_np = evaluate(topk, Y, ks=(1, 3, 5), inv_propensity=w)
    ev_t = evaluate(tt, Y, ks=(1, 3, 5), inv_propensity=tw)
    assert ev_np == pytest.approx(ev_t, abs=1e-15)
    # only the first k columns matter
    wide = np.concatenate([topk, topk[:, :2] * 0 + 39], axis=1)
    assert ndcg_at_k(wide, Y, 5) == ndcg_at_k(topk, Y, 5)


def test_inputs_not_modified():
    topk, sets, w = random_case(4)
    Y = csr_from_sets(sets, 40)
    scores = np.random.default_rng(0).random(topk.shape)
    copies = [a.copy() for a in (topk, w, scores, Y.data, Y.indices, Y.indptr)]
    evaluate(topk, Y, ks=(1, 5), inv_propensity=w)
    coverage_at_k(topk, Y, 5)
    ece_at_k(topk, scores, Y, 5)
    reliability_diagram(topk, scores, Y, 5)
    IsotonicCalibrator().fit_topk(topk, scores, Y, 5)
    inverse_propensity(Y)
    for a, b in zip((topk, w, scores, Y.data, Y.indices, Y.indptr), copies):
        np.testing.assert_array_equal(a, b)


def test_noncanonical_csr_explicit_zeros_and_formats():
    topk, sets, w = random_case(5)
    Y = csr_from_sets(sets, 40)
    ref = evaluate(topk, Y, ks=(1, 3, 5), inv_propensity=w)
    coo = Y.tocoo()
    # shuffled column order within rows, one duplicated entry, and explicit zeros at predicted labels
    rng = np.random.default_rng(0)
    perm = rng.permutation(coo.nnz)
    r = np.concatenate([coo.row[perm], coo.row[:1], np.arange(10)])
    c = np.concatenate([coo.col[perm], coo.col[:1], topk[:10, 0]])
    d = np.concatenate([np.ones(coo.nnz), [1.0], np.zeros(10)])
    zeros_mask = np.array([topk[i, 0] not in sets[i] for i in range(10)])
    r = np.concatenate([r[: coo.nnz + 1], r[coo.nnz + 1 :][zeros_mask]])
    c = np.concatenate([c[: coo.nnz + 1], c[coo.nnz + 1 :][zeros_mask]])
    d = np.concatenate([d[: coo.nnz + 1], d[coo.nnz + 1 :][zeros_mask]])
    order = np.lexsort((rng.random(r.size), r))  # rows grouped, columns unsorted
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=Y.shape[0]))])
    Ync = sp.csr_matrix((d[order], c[order], indptr), shape=Y.shape)
    assert Ync.nnz > Y.nnz and (Ync.data == 0).any() and not Ync.has_sorted_indices
    assert evaluate(topk, Ync, ks=(1, 3, 5), inv_propensity=w) == pytest.approx(ref, abs=1e-12)
    assert evaluate(topk, sp.csr_array(Y), ks=(1, 3, 5), inv_propensity=w) == pytest.approx(ref, abs=1e-12)
    assert evaluate(topk, Y.tocsc(), ks=(1, 3, 5), inv_propensity=w) == pytest.approx(ref, abs=1e-12)
    assert evaluate(topk, Y.astype(bool), ks=(1, 3, 5), inv_propensity=w) == pytest.approx(ref, abs=1e-12)


def test_large_label_space_uses_int64_keys():
    # N * L = 2e12 >> 2^31: int32 linear keys would overflow and give wrong hits.
    N, L, k = 200_000, 10_000_000, 3
    rows = np.arange(N)
    label = (rows * 7919 + 12345) % L
    Y = sp.csr_matrix((np.ones(N), (rows, label)), shape=(N, L))
    other = (label + 1 + rows % 1000) % L
    topk = np.stack([label, other, (other + 1) % L], axis=1)
    topk[::2] = topk[::2, [1, 0, 2]]  # even rows: the positive is ranked 2nd
    w = np.linspace(1.0, 5.0, L)
    out = evaluate(topk, Y, ks=(1, 3), inv_propensity=w)
    assert out["P@1"] == pytest.approx(0.5)
    assert out["P@3"] == pytest.approx(1 / 3)
    assert out["R@3"] == pytest.approx(1.0)
    assert out["nDCG@3"] == pytest.approx(0.5 * 1 + 0.5 / math.log2(3))
    assert out["PSP@3"] == pytest.approx(1.0)
    assert coverage_at_k(topk, Y, 1) == pytest.approx(0.5)


# --------------------------------------------------------------------------- inverse propensity


@pytest.mark.parametrize(
    "A,B,expected",
    [
        # N = 5, N_l = [4, 2, 0]; C = (ln 5 - 1) (B + 1)^A; 1/p_l = 1 + C (N_l + B)^-A
        (0.55, 1.5, [1.39499990687448, 1.5064762069667912, 1.8071351855501954]),  # C = 1.00878002
        (0.6, 2.6, [1.4236279506733003, 1.526085423961729, 1.7408443265529114]),  # C = 1.31434981 (Amazon)
        (0.5, 0.4, [1.3437693454909607, 1.465465894184189, 2.1401539334195707]),  # C = 0.72109666 (Wikipedia)
    ],
)
def test_inverse_propensity_closed_form(A, B, expected):
    Y_train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]]))
    N, freq = 5, np.array([4, 2, 0])
    C = (math.log(N) - 1) * (B + 1) ** A
    p = 1.0 / (1.0 + C * np.exp(-A * np.log(freq + B)))
    got = inverse_propensity(Y_train, A=A, B=B)
    assert got.shape == (3,) and got.dtype == np.float64
    np.testing.assert_allclose(got, 1.0 / p, rtol=1e-13)
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    assert got[2] > got[1] > got[0] > 1.0  # rarer labels weigh more


def test_inverse_propensity_defaults():
    Y_train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]]))
    np.testing.assert_allclose(inverse_propensity(Y_train), inverse_propensity(Y_train, A=0.55, B=1.5))
    np.testing.assert_allclose(inverse_propensity(Y_train)[0], 1.39499990687448, rtol=1e-13)


@pytest.mark.parametrize("N", [1, 2])
def test_inverse_propensity_needs_three_rows(N):
    # C = (log N - 1)(B + 1)^A is <= 0 for N <= e: weights of 1 or less, some negative
    Y_train = sp.csr_matrix(np.ones((N, 3)))
    with pytest.raises(ValueError, match=f"Y_train must have at least 3 rows .*; got {N}"):
        inverse_propensity(Y_train)
    assert inverse_propensity(sp.csr_matrix(np.ones((3, 3)))).min() > 1.0


# --------------------------------------------------------------------------- calibration


def calib_case(col0_scores, col1_scores, col0_correct, col1_correct):
    """N rows, 2 predictions per row: label 0 then label 1."""
    N = len(col0_scores)
    sets = [{l for l, c in ((0, col0_correct[i]), (1, col1_correct[i])) if c} for i in range(N)]
    topk = np.tile(np.array([0, 1]), (N, 1))
    scores = np.stack([np.asarray(col0_scores, float), np.asarray(col1_scores, float)], axis=1)
    return topk, scores, csr_from_sets(sets, 2)


def test_ece_perfectly_calibrated_is_zero():
    # 10 predictions at confidence 0.8 with 8 correct; 10 at confidence 0.3 with 3 correct
    # bin 8: acc 0.8 = conf 0.8; bin 3: acc 0.3 = conf 0.3  -> ECE = 0
    N = 10
    topk, scores, Y = calib_case([0.8] * N, [0.3] * N, [i < 8 for i in range(N)], [i < 3 for i in range(N)])
    assert ece_at_k(topk, scores, Y, 2) == pytest.approx(0.0, abs=1e-12)
    # k=1 only looks at column 0 (0.8 confidence, 80 % correct): still 0
    assert ece_at_k(topk, scores, Y, 1) == pytest.approx(0.0, abs=1e-12)


def test_ece_miscalibrated_known_value():
    # column 0: confidences 0.92 (rows 0-4) and 0.98 (rows 5-9) -> bin 9, mean conf 0.95,
    #           correct rows {0,1,2,5,6,7}: acc 0.6, gap 0.35
    # column 1: confidence 0.25 for all rows -> bin 2, correct rows 0-4: acc 0.5, gap 0.25
    # ECE@2 = (10/20) * 0.35 + (10/20) * 0.25 = 0.30;  ECE@1 = 0.35
    N = 10
    c0 = [0.92] * 5 + [0.98] * 5
    topk, scores, Y = calib_case(c0, [0.25] * N, [i in (0, 1, 2, 5, 6, 7) for i in range(N)], [i < 5 for i in range(N)])
    assert ece_at_k(topk, scores, Y, 2) == pytest.approx(0.30, abs=1e-12)
    assert ece_at_k(topk, scores, Y, 1) == pytest.approx(0.35, abs=1e-12)
    # one bin: conf = (0.95*10 + 0.25*10)/20 = 0.6, acc = 11/20 = 0.55 -> 0.05
    assert ece_at_k(topk, scores, Y, 2, num_bins=1) == pytest.approx(0.05, abs=1e-12)
    d = reliability_diagram(topk, scores, Y, 2)
    np.testing.assert_allclose(d["bin_edges"], np.arange(11) / 10)
    np.testing.assert_array_equal(d["count"], [0, 0, 10, 0, 0, 0, 0, 0, 0, 10])
    assert d["count"].dtype == np.int64
    np.testing.assert_allclose(d["mean_confidence"][[2, 9]], [0.25, 0.95])
    np.testing.assert_allclose(d["accuracy"][[2, 9]], [0.5, 0.6])
    empty = np.array([0, 1, 3, 4, 5, 6, 7, 8])
    assert np.isnan(d["mean_confidence"][empty]).all() and np.isnan(d["accuracy"][empty]).all()


def test_ece_bin_edges_and_extremes():
    # confidence exactly 1.0 goes to the last bin, 0.0 to the first, 0.3 to bin [0.3, 0.4)
    topk, scores, Y = calib_case([1.0, 0.3, 0.0], [0.3, 0.0, 1.0], [1, 1, 0], [0, 0, 1])
    d = reliability_diagram(topk, scores, Y, 2)
    np.testing.assert_array_equal(d["count"], [2, 0, 0, 2, 0, 0, 0, 0, 0, 2])
    np.testing.assert_allclose(d["accuracy"][[0, 3, 9]], [0.0, 0.5, 1.0])
    # |0-0| + |1 - 0.6| + |2 - 2| over 6 predictions
    assert ece_at_k(topk, scores, Y, 2) == pytest.approx(0.4 / 6, abs=1e-12)


def ref_ece(conf, correct, B):
    n_b, s_conf, s_acc = [0] * B, [0.0] * B, [0.0] * B
    for c, ok in zip(conf, correct):
        b = max(j for j in range(B) if c >= j / B)
        n_b[b] += 1
        s_conf[b] += c
        s_acc[b] += float(ok)
    n = len(conf)
    return sum(n_b[b] / n * abs(s_acc[b] / n_b[b] - s_conf[b] / n_b[b]) for b in range(B) if n_b[b])


@pytest.mark.parametrize("num_bins", [1, 7, 10, 20])
def test_ece_matches_reference(num_bins):
    topk, sets, _ = random_case(6)
    Y = csr_from_sets(sets, 40)
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(topk.shape) * 20) / 20  # ties, and values on the bin edges
    k = 5
    conf = scores[:, :k].ravel().tolist()
    correct = [int(topk[i, r]) in sets[i] for i in range(len(sets)) for r in range(k)]
    expected = ref_ece(conf, correct, num_bins)
    assert expected > 0.05
    assert ece_at_k(topk, scores, Y, k, num_bins=num_bins) == pytest.approx(expected, abs=1e-12)
    d = reliability_diagram(topk, torch.from_numpy(scores).float(), Y, k, num_bins=num_bins)
    assert d["count"].sum() == len(conf)


# --------------------------------------------------------------------------- isotonic regression / calibrator


def ref_isotonic(y, w):
    """Independent closed form: f_i = max_{j<=i} min_{l>=i} weighted mean(y[j..l])."""
    n = len(y)
    f = []
    for i in range(n):
        best = -math.inf
        for j in range(i + 1):
            lo = math.inf
            for l in range(i, n):
                lo = min(lo, sum(w[t] * y[t] for t in range(j, l + 1)) / sum(w[j : l + 1]))
            best = max(best, lo)
        f.append(best)
    return f


def test_pav_known_sequences():
    np.testing.assert_allclose(isotonic_regression([1, 3, 2, 4]), [1, 2.5, 2.5, 4])
    # 3, 2 pool to 2.5 which then pools with 0: (3 + 2 + 0) / 3 = 5/3
    np.testing.assert_allclose(isotonic_regression([1, 3, 2, 0, 5]), [1, 5 / 3, 5 / 3, 5 / 3, 5])
    np.testing.assert_allclose(isotonic_regression([5, 4, 3, 2, 1]), [3, 3, 3, 3, 3])
    # weights: (1*3 + 3*2) / 4 = 2.25
    np.testing.assert_allclose(isotonic_regression([1, 3, 2, 4], sample_weight=[1, 1, 3, 1]), [1, 2.25, 2.25, 4])
    np.testing.assert_allclose(isotonic_regression([0.5, 1, 2]), [0.5, 1, 2])
    with pytest.raises(TypeError, match="sample_weight must be a real array, got dtype <U1"):
        isotonic_regression([1, 3, 2], sample_weight=["a", "b", "c"])


@pytest.mark.parametrize("path", ["vectorized", "stack"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pav_matches_reference(path, seed, monkeypatch):
    if path == "stack":
        monkeypatch.setattr(M, "_PAV_VECTOR_PASSES", 0)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=40).astype(float) + 0.3 * rng.standard_normal(40)
    w = rng.choice([0.5, 1.0, 2.0], size=40)
    f = isotonic_regression(y, sample_weight=w)
    np.testing.assert_allclose(f, ref_isotonic(y.tolist(), w.tolist()), atol=1e-12)
    assert np.all(np.diff(f) >= -1e-12)


def test_pav_many_passes_falls_back_correctly():
    # the trailing outlier pools with one more block per vectorised pass -> exceeds the pass budget
    y = np.concatenate([np.arange(1.0, 120.0), [-1e6]])
    f = isotonic_regression(y)
    np.testing.assert_allclose(f, np.full(120, y.mean()), rtol=1e-12)
    y2 = np.concatenate([np.arange(1.0, 60.0), [-3000.0]])
    np.testing.assert_allclose(isotonic_regression(y2), ref_isotonic(y2.tolist(), [1.0] * 60), atol=1e-9)


def test_calibrator_hand_interpolation():
    # sorted scores 0.1 0.2 0.3 0.4 with correctness 0 1 0 1 -> PAV [0, 0.5, 0.5, 1]
    cal = IsotonicCalibrator().fit(np.array([0.3, 0.1, 0.4, 0.2]), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(cal.x_thresholds_, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(cal.y_thresholds_, [0.0, 0.5, 0.5, 1.0])
    got = cal.transform(np.array([[-5.0, 0.1, 0.15], [0.25, 0.35, 9.0]]))
    # clipped below, knot, midway 0 -> 0.5, flat block, midway 0.5 -> 1, clipped above
    np.testing.assert_allclose(got, [[0.0, 0.0, 0.25], [0.5, 0.75, 1.0]])
    # tied scores are pooled first: score 0.5 twice with 1 of 2 correct -> 0.5
    cal2 = IsotonicCalibrator().fit([0.5, 0.5, 0.2, 0.9], [True, False, False, True])
    np.testing.assert_allclose(cal2.x_thresholds_, [0.2, 0.5, 0.9])
    np.testing.assert_allclose(cal2.transform([0.2, 0.5, 0.9, 0.35]), [0.0, 0.5, 1.0, 0.25])


def miscalibrated(seed, N):
    rng = np.random.default_rng(seed)
    p = rng.random((N, 2))  # true probability of being correct
    correct = rng.random((N, 2)) < p
    scores = p**3  # monotone but badly under-confident
    return calib_case(scores[:, 0], scores[:, 1], correct[:, 0], correct[:, 1])


def test_calibrator_monotone_and_reduces_ece():
    topk_v, s_v, Y_v = miscalibrated(0, 20_000)  # validation split
    topk_t, s_t, Y_t = miscalibrated(1, 20_000)  # test split
    cal = IsotonicCalibrator().fit_topk(topk_v, s_v, Y_v, k=2)
    grid = np.linspace(-0.5, 1.5, 2001)
    g = cal.transform(grid)
    assert np.all(np.diff(g) >= 0) and g.min() >= 0 and g.max() <= 1
    assert np.all(np.diff(cal.y_thresholds_) >= 0) and np.all(np.diff(cal.x_thresholds_) > 0)
    raw = ece_at_k(topk_t, s_t, Y_t, 2)
    calibrated = ece_at_k(topk_t, cal.transform(s_t), Y_t, 2)
    assert raw > 0.2  # ≈ E|p - p^3| = 1/4
    assert calibrated < 0.03
    # fit_topk == fit on the flattened top-k scores and correctness
    positives = [set(Y_v[i].indices.tolist()) for i in range(Y_v.shape[0])]
    correct = np.array([[int(l) in pos for l in row] for row, pos in zip(topk_v, positives)])
    cal2 = IsotonicCalibrator().fit(s_v.ravel(), correct.ravel())
    np.testing.assert_array_equal(cal.x_thresholds_, cal2.x_thresholds_)
    np.testing.assert_allclose(cal.y_thresholds_, cal2.y_thresholds_)
    np.testing.assert_allclose(cal(torch.from_numpy(s_t)), cal.transform(s_t))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda t, Y: precision_at_k(t, Y, 0), ValueError, r"k must be an integer >= 1, got 0"),
        (lambda t, Y: ndcg_at_k(t, Y, 1.5), TypeError, r"k must be an integer"),
        (lambda t, Y: precision_at_k(t, Y, 4), ValueError, r"topk_labels must have at least k=4 columns, got 3"),
        (lambda t, Y: recall_at_k(t[:3], Y, 2), ValueError, r"topk_labels has 3 rows but Y_true has 4 rows"),
        (lambda t, Y: ndcg_at_k(np.where(t == 5, 6, t), Y, 3), ValueError, r"topk_labels must contain label ids in \[0, L=6\).*\[0, 6\]"),
        (lambda t, Y: ndcg_at_k(t - 1, Y, 3), ValueError, r"topk_labels must contain label ids in \[0, L=6\)"),
        (lambda t, Y: precision_at_k(np.array([[0, 1, 2], [3, 3, 1], [0, 1, 2], [0, 1, 2]]), Y, 2), ValueError, r"topk_labels must not repeat a label.*row 1.*label 3"),
        (lambda t, Y: precision_at_k(t.astype(float), Y, 1), TypeError, r"topk_labels must have an integer dtype"),
        (lambda t, Y: precision_at_k(t[:, 0], Y, 1), ValueError, r"topk_labels must be a 2-D integer array"),
        (lambda t, Y: precision_at_k(t, Y.toarray(), 1), TypeError, r"Y_true must be a scipy.sparse matrix"),
        (lambda t, Y: precision_at_k(t, Y * 2, 1), ValueError, r"Y_true must contain only 0/1 entries, found the value 2"),
        (lambda t, Y: psprecision_at_k(t, Y, 3, np.ones(5)), ValueError, r"inv_propensity must be a 1-D array of length L=6.*got shape \(5,\)"),
        (lambda t, Y: psndcg_at_k(t, Y, 3, -np.ones(6)), ValueError, r"inv_propensity must be finite and >= 0"),
        (lambda t, Y: evaluate(t, Y, ks=(1, 3), inv_propensity=np.ones((6, 1))), ValueError, r"inv_propensity must be a 1-D array"),
        (lambda t, Y: evaluate(t, Y, ks=()), ValueError, r"ks must contain at least one k"),
        (lambda t, Y: evaluate(t, Y, ks=(1, 5)), ValueError, r"topk_labels must have at least k=5 columns"),
        (lambda t, Y: evaluate(t, Y, ks=(0, 1)), ValueError, r"ks entry must be an integer >= 1"),
        (lambda t, Y: ece_at_k(t, np.full((4, 3), 1.2), Y, 3), ValueError, r"topk_scores must be probabilities in \[0, 1\].*1\.2"),
        (lambda t, Y: ece_at_k(t, np.full((4, 3), -0.1), Y, 3), ValueError, r"topk_scores must be probabilities in \[0, 1\]"),
        (lambda t, Y: ece_at_k(t, np.full((3, 3), 0.5), Y, 3), ValueError, r"topk_scores has 3 rows but Y_true has 4 rows"),
        (lambda t, Y: ece_at_k(t, np.full((4, 2), 0.5), Y, 3), ValueError, r"topk_scores must have at least k=3 columns, got 2"),
        (lambda t, Y: ece_at_k(t, np.full((4, 3), np.nan), Y, 3), ValueError, r"topk_scores must be finite"),
        (lambda t, Y: ece_at_k(t, np.full((4, 3), 0.5), Y, 3, num_bins=0), ValueError, r"num_bins must be an integer >= 1"),
        (lambda t, Y: reliability_diagram(t, np.full((4, 3), 0.5), Y, 3, num_bins=2.0), TypeError, r"num_bins must be an integer"),
        (lambda t, Y: IsotonicCalibrator().fit_topk(t, np.full((4, 1), 0.5), Y, 3), ValueError, r"topk_scores must have at least k=3"),
    ],
)
def test_errors_name_the_argument(hand, call, exc, match):
    topk, Y = hand
    with pytest.raises(exc, match=match):
        call(topk, Y)


def test_other_errors():
    Y_train = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]]))
    with pytest.raises(ValueError, match=r"B must be > 0"):
        inverse_propensity(Y_train, A=0.5, B=0.0)
    for A in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"A must be > 0 \(rarer labels get larger weights only then\)"):
            inverse_propensity(Y_train, A=A)
    with pytest.raises(ValueError, match=r"A must be a finite real number"):
        inverse_propensity(Y_train, A=float("nan"))
    with pytest.raises(TypeError, match=r"A must be a finite real number, got '0.5' of type str"):
        inverse_propensity(Y_train, A="0.5")
    with pytest.raises(TypeError, match=r"Y_train must be a scipy.sparse matrix"):
        inverse_propensity(Y_train.toarray())
    with pytest.raises(RuntimeError, match=r"not fitted"):
        IsotonicCalibrator().transform([0.5])
    with pytest.raises(ValueError, match=r"scores and correct must have the same number of elements, got 3 and 2"):
        IsotonicCalibrator().fit([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match=r"correct must contain values in \[0, 1\] \(0/1 correctness\), got NaN at element 0"):
        IsotonicCalibrator().fit([0.1, 0.2], [float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"correct must contain values in \[0, 1\]"):
        IsotonicCalibrator().fit([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match=r"scores must be finite"):
        IsotonicCalibrator().fit([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match=r"y must be a 1-D array"):
        isotonic_regression(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"sample_weight must be finite and > 0"):
        isotonic_regression([1.0, 2.0], sample_weight=[1.0, 0.0])


def test_inv_propensity_none_and_nan_named():
    topk, Y = HAND_TOPK.copy(), csr_from_sets(HAND_SETS, 6)
    with pytest.raises(TypeError, match=r"inv_propensity must be a 1-D array of length L=6 .*got None"):
        psprecision_at_k(topk, Y, 1, None)
    w = HAND_W.copy()
    w[3] = np.nan
    with pytest.raises(ValueError, match=r"inv_propensity must be finite and >= 0, got NaN at label 3"):
        psndcg_at_k(topk, Y, 1, w)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "coo-bool"])
def test_duplicated_entries_count_once_in_every_format(fmt):
    # row 0 stores label 0 twice; as a float COO, tocsr() would sum them to 2 (then "not 0/1")
    rows, cols = np.array([0, 0, 1]), np.array([0, 0, 2])
    coo = sp.coo_matrix((np.ones(3), (rows, cols)), shape=(2, 3))
    Y = {"csr": sp.csr_matrix((np.ones(3), cols, np.array([0, 2, 3])), shape=(2, 3)), "csc": None,
         "coo": coo, "coo-bool": coo.astype(bool)}[fmt]
    if fmt == "csc":
        Y = sp.csc_matrix((np.ones(3), np.array([0, 0, 1]), np.array([0, 2, 2, 3])), shape=(2, 3))
    topk = np.array([[0, 1], [2, 0]])
    assert precision_at_k(topk, Y, 2) == pytest.approx(0.5)
    assert recall_at_k(topk, Y, 2) == pytest.approx(1.0)
    bad = sp.coo_matrix((np.array([1.0, 2.0]), (np.array([0, 1]), np.array([1, 1]))), shape=(2, 3))
    with pytest.raises(ValueError, match=r"Y_true must contain only 0/1 entries, found the value 2.0"):
        precision_at_k(topk, bad, 2)
