"""Eval metrics against hand-computed cases, brute-force reimplementations and scikit-learn / scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score, f1_score

from protclip import metrics as M
from tests.helpers.tolerance import approx_rounding, assert_close_rounding

# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_case():
    sim = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.1, 0.2, 0.3]])
    # ranks of the diagonal: 1, 2 (0.8 beats 0.5), 1
    out = M.retrieval_metrics(sim, ks=(1, 2))
    assert out["r1"] == approx_rounding(2 / 3)
    assert out["r2"] == approx_rounding(1.0)
    assert out["mrr"] == approx_rounding((1 + 0.5 + 1) / 3)


def test_retrieval_all_tied_is_chance_not_perfect():
    n = 4
    out = M.retrieval_metrics(np.zeros((n, n)), ks=(1, 2, 5))
    assert out["r1"] == approx_rounding(1 / n)
    assert out["r2"] == approx_rounding(2 / n)
    assert out["r5"] == approx_rounding(1.0)
    assert out["mrr"] == approx_rounding(sum(1 / r for r in range(1, n + 1)) / n)


def _brute_force_expected(sim: np.ndarray, pos: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Average over every tie-breaking order consistent with the scores (all permutations of the candidates)."""
    n_q, n_c = sim.shape
    rec = {k: [] for k in ks}
    rr = []
    for q in range(n_q):
        hits = {k: [] for k in ks}
        rrs = []
        for perm in itertools.permutations(range(n_c)):
            scores = sim[q, list(perm)]
            if np.any(np.diff(scores) > 0):  # not a descending order of the scores
                continue
            rank = 1 + next(i for i, c in enumerate(perm) if pos[q, c])
            rrs.append(1 / rank)
            for k in ks:
                hits[k].append(rank <= k)
        rr.append(np.mean(rrs))
        for k in ks:
            rec[k].append(np.mean(hits[k]))
    out = {f"r{k}": float(np.mean(rec[k])) for k in ks}
    out["mrr"] = float(np.mean(rr))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_ties_match_brute_force_expectation(seed):
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 3, size=(5, 6)).astype(float)  # many ties
    pos = rng.random((5, 6)) < 0.3
    pos[np.arange(5), rng.integers(0, 6, 5)] = True  # >= 1 positive per query, sometimes several
    got = M.retrieval_metrics(sim, pos, ks=(1, 2, 3))
    want = _brute_force_expected(sim, pos, (1, 2, 3))
    for key in want:
        assert got[key] == approx_rounding(want[key]), key


def test_retrieval_matched_embeddings_are_perfect_both_ways():
    rng = np.random.default_rng(0)
    prot = rng.normal(size=(40, 16))
    text = prot + 0.01 * rng.normal(size=prot.shape)
    sim = M.similarity_matrix(prot, text)
    for s in (sim, sim.T):
        out = M.retrieval_metrics(s)
        assert out["r1"] == 1.0 and out["r5"] == 1.0 and out["r10"] == 1.0 and out["mrr"] == 1.0


def test_retrieval_unrelated_embeddings_are_at_chance():
    n, seeds = 50, 20
    r1, r10, mrr = [], [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        out = M.retrieval_metrics(M.similarity_matrix(rng.normal(size=(n, 16)), rng.normal(size=(n, 16))))
        r1.append(out["r1"])
        r10.append(out["r10"])
        mrr.append(out["mrr"])
    # expectations under random ranking: R@k = k/N, MRR = H_N / N; tolerances ~3 standard errors
    assert np.mean(r1) == pytest.approx(1 / n, abs=0.015)
    assert np.mean(r10) == pytest.approx(10 / n, abs=0.04)
    assert np.mean(mrr) == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n, abs=0.02)


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="no positive"):
        M.retrieval_metrics(np.zeros((2, 2)), np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="non-square"):
        M.retrieval_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.retrieval_metrics(np.array([[np.nan, 0], [0, 1]]))


def test_similarity_matrix_is_cosine():
    a = np.array([[3.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 5.0]])
    assert_close_rounding(M.similarity_matrix(a, b), torch.tensor([[1, 0], [1 / math.sqrt(2), 1 / math.sqrt(2)]],
                                                                    dtype=torch.float64))


# ---------------------------------------------------------------- classification


def test_accuracy_and_f1_hand_and_sklearn():
    y, p = [1, 0, 1, 1], [1, 1, 0, 1]
    assert M.accuracy(y, p) == 0.5
    assert M.f1(y, p) == approx_rounding(2 / 3)  # tp 2, fp 1, fn 1
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert M.f1(y, p, average="macro") == approx_rounding(f1_score(y, p, average="macro"))
    with pytest.raises(ValueError):
        M.accuracy([1, 2], [1])


def _fmax_brute(y: np.ndarray, s: np.ndarray) -> float:
    """Fmax straight from the definition: every distinct score as threshold, predictions are score >= t."""
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        n_pred = pred.sum(1)
        tp = (pred & (y == 1)).sum(1)
        has = n_pred > 0
        precision = (tp[has] / n_pred[has]).mean()
        n_true = y.sum(1)
        recall = np.where(n_true > 0, tp / np.maximum(n_true, 1), 0.0).mean()  # over all proteins
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _torchdrug_f1_max(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TorchDrug's ``torchdrug.metrics.f1_max`` (v0.2.1), copied for comparison."""
    order = pred.argsort(descending=True, dim=1)
    target = target.gather(1, order)
    precision = target.cumsum(1) / torch.ones_like(target).cumsum(1)
    recall = target.cumsum(1) / (target.sum(1, keepdim=True) + 1e-10)
    is_start = torch.zeros_like(target).bool()
    is_start[:, 0] = 1
    is_start = torch.scatter(is_start, 1, order, is_start)
    all_order = pred.flatten().argsort(descending=True)
    order = order + torch.arange(order.shape[0]).unsqueeze(1) * order.shape[1]
    order = order.flatten()
    inv_order = torch.zeros_like(order)
    inv_order[order] = torch.arange(order.shape[0])
    is_start = is_start.flatten()[all_order]
    all_order = inv_order[all_order]
    precision = precision.flatten()
    recall = recall.flatten()
    all_precision = precision[all_order] - torch.where(
        is_start, torch.zeros_like(precision), precision[all_order - 1]
    )
    all_precision = all_precision.cumsum(0) / is_start.cumsum(0)
    all_recall = recall[all_order] - torch.where(is_start, torch.zeros_like(recall), recall[all_order - 1])
    all_recall = all_recall.cumsum(0) / pred.shape[0]
    all_f1 = 2 * all_precision * all_recall / (all_precision + all_recall + 1e-10)
    return all_f1.max()


def test_fmax_hand_case():
    y = np.array([[1, 0, 0], [0, 1, 1]])
    s = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]])
    # best threshold 0.6: protein 0 precision 1/2 recall 1, protein 1 precision 1 recall 1 -> P 0.75, R 1
    assert M.fmax(y, s) == approx_rounding(2 * 0.75 / 1.75)


@pytest.mark.parametrize("seed", range(5))
def test_fmax_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = 30, 12
    y = (rng.random((n, c)) < 0.25).astype(int)
    y[0] = 0  # one protein without labels: recall 0, still counted in the recall mean
    s = np.round(rng.random((n, c)), 1)  # heavy ties
    # fmax accumulates precision and recall in running sums over all y.size scores: <= y.size roundings
    assert M.fmax(y, s) == approx_rounding(_fmax_brute(y, s), ulps=y.size)


@pytest.mark.parametrize("seed", range(3))
def test_fmax_matches_torchdrug_on_continuous_scores(seed):
    rng = np.random.default_rng(100 + seed)
    y = (rng.random((60, 25)) < 0.2).astype(np.float64)
    y[y.sum(1) == 0, 0] = 1.0
    s = rng.random((60, 25))
    td = _torchdrug_f1_max(torch.tensor(s), torch.tensor(y)).item()
    # not rounding: TorchDrug adds 1e-10 to the recall and F1 denominators, moving F1 by < 1e-9
    assert M.fmax(y, s) == pytest.approx(td, abs=1e-8)
    assert M.fmax(y, s) == approx_rounding(_fmax_brute(y.astype(int), s), ulps=y.size)  # running sums, as above


def test_fmax_perfect_and_input_checks():
    y = np.array([[1, 0], [0, 1]])
    assert M.fmax(y, y * 0.9 + 0.05) == approx_rounding(1.0)
    with pytest.raises(ValueError, match="0/1"):
        M.fmax(np.array([[2, 0]]), np.array([[0.1, 0.2]]))
    with pytest.raises(ValueError, match="NaN"):
        M.fmax(np.array([[1, 0]]), np.array([[np.nan, 0.2]]))


def _torchdrug_area_under_prc(pred: np.ndarray, target: np.ndarray) -> float:
    order = np.argsort(-pred, kind="stable")
    t = target[order]
    precision = np.cumsum(t) / np.arange(1, len(t) + 1)
    return float(precision[t == 1].sum() / (t == 1).sum())


def test_aupr_micro_hand_sklearn_and_torchdrug():
    y = np.array([[1, 0], [1, 0]])
    s = np.array([[0.9, 0.8], [0.7, 0.1]])  # flattened order: 1, 0, 1, 0 -> AP = (1 + 2/3) / 2
    assert M.aupr_micro(y, s) == approx_rounding((1 + 2 / 3) / 2)
    rng = np.random.default_rng(7)
    y = (rng.random((40, 10)) < 0.3).astype(int)
    s = rng.random((40, 10))
    # AP sums precision over the ranked scores: other implementations round <= y.size times differently
    assert M.aupr_micro(y, s) == approx_rounding(average_precision_score(y.ravel(), s.ravel()), ulps=y.size)
    assert M.aupr_micro(y, s) == approx_rounding(_torchdrug_area_under_prc(s.ravel(), y.ravel()), ulps=y.size)
    s_tied = np.round(s, 1)
    assert M.aupr_micro(y, s_tied) == approx_rounding(average_precision_score(y.ravel(), s_tied.ravel()),
                                                      ulps=y.size)
    assert math.isnan(M.aupr_micro(np.zeros((2, 2)), s[:2, :2]))


# ---------------------------------------------------------------- regression


def test_regression_metrics():
    assert M.spearman([1, 2, 3], [30, 20, 10]) == approx_rounding(-1.0)
    assert math.isnan(M.spearman([1, 2, 3], [5, 5, 5]))
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50), rng.normal(size=50)
    b[:10] = b[0]  # ties: average ranks, as scipy
    assert M.spearman(a, b) == approx_rounding(stats.spearmanr(a, b).statistic)
    assert M.mae([1, 2, 3], [2, 2, 5]) == approx_rounding(1.0)
    assert M.rmse([1, 2, 3], [2, 2, 5]) == approx_rounding(math.sqrt(5 / 3))
