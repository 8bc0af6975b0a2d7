"""Evaluation metrics as ProtCLIP and ProtST define them (TorchDrug's, where they use TorchDrug;
docs/eval.md, "Metric definitions").

Conventions: inputs are numpy arrays (lists are accepted); outputs are plain floats so they log to MLflow as
is. A metric that is undefined on its input (e.g. Spearman of a constant vector) returns ``nan``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, f1_score

# ---------------------------------------------------------------- retrieval


def symmetric_infonce(sim: np.ndarray, logit_scale: float) -> float:
    """CLIP's symmetric InfoNCE over paired rows/columns of a square cosine matrix (pair i matches column i):
    the mean of the protein->text and text->protein cross-entropies of ``logit_scale * sim``. Chance = ln N."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.size == 0:
        raise ValueError(f"sim must be a non-empty square matrix, got shape {sim.shape}")
    logits = logit_scale * sim

    def ce(x: np.ndarray) -> float:
        top = x.max(1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(x - top).sum(1))
        return float(np.mean(lse - np.diag(x)))

    return 0.5 * (ce(logits) + ce(logits.T))


def retrieval_metrics(
    sim: np.ndarray, positives: np.ndarray | None = None, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k and MRR of queries (rows of ``sim``) against candidates (columns); higher score = better.

    ``positives[i, j]`` marks candidate j as a correct answer for query i; by default the diagonal of a
    square ``sim`` (pair i of a paired set is the answer to query i). Every query needs at least one positive.

    A query's rank is that of its best-ranked positive. **Ties** are broken uniformly at random and the
    metrics are the *expectation* over that tie-breaking, computed exactly: with ``g`` negatives scoring
    strictly above the best positive score ``s``, ``p`` positives and ``t`` negatives scoring exactly ``s``,
    the first positive lands at position ``g + j`` of the ranking with the probability that the first ``j - 1``
    tied items are all negatives. So a collapsed model (all scores equal) gets chance level (R@1 = p / N),
    not the optimistic 1.0 that counting only strictly-higher scores would give, nor the pessimistic 1/N-ish
    that counting ``>=`` would give for a perfect but tied model.

    Returns ``{"r1": ..., "r5": ..., "r10": ..., "mrr": ...}`` (keys ``r{k}`` for each k in ``ks``), means
    over queries.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.size == 0:
        raise ValueError(f"sim must be a non-empty 2-D matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("sim contains NaN or inf")
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"sim is {sim.shape}; pass `positives` for a non-square matrix")
        positives = np.eye(sim.shape[0], dtype=bool)
    positives = np.asarray(positives, dtype=bool)
    if positives.shape != sim.shape:
        raise ValueError(f"positives shape {positives.shape} != sim shape {sim.shape}")
    n_pos = positives.sum(1)
    if (n_pos == 0).any():
        raise ValueError(f"queries {np.flatnonzero(n_pos == 0)[:10].tolist()} have no positive candidate")

    best = np.where(positives, sim, -np.inf).max(1, keepdims=True)
    neg = ~positives
    g = (neg & (sim > best)).sum(1)
    t = (neg & (sim == best)).sum(1)
    p = (positives & (sim == best)).sum(1)

    rank = g + 1.0  # exact when nothing ties with the best positive
    recall = {k: (rank <= k).astype(np.float64) for k in ks}
    mrr = 1.0 / rank
    for q in np.flatnonzero(t > 0):
        # probability that the first tied positive sits at position j (1-based) inside the tie block
        probs = _first_positive_position_probs(int(p[q]), int(t[q]))
        positions = g[q] + np.arange(1, len(probs) + 1)
        mrr[q] = float((probs / positions).sum())
        for k in ks:
            recall[k][q] = float(probs[positions <= k].sum())
    out = {f"r{k}": float(recall[k].mean()) for k in ks}
    out["mrr"] = float(mrr.mean())
    return out


def _first_positive_position_probs(p: int, t: int) -> np.ndarray:
    """P(first positive at position j), j = 1..t+1, for a random order of p positives and t negatives."""
    if t == 0:
        return np.ones(1)
    probs = np.empty(t + 1)
    all_neg = 1.0  # P(first j-1 items are negatives)
    for j in range(t + 1):
        remaining = p + t - j
        probs[j] = all_neg * p / remaining
        all_neg *= (t - j) / remaining
    return probs


def similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[len(a), len(b)]`` (rows L2-normalised; zero rows stay zero)."""
    return _l2n(np.asarray(a, dtype=np.float64)) @ _l2n(np.asarray(b, dtype=np.float64)).T


def _l2n(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


# ---------------------------------------------------------------- classification


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _same_len(y_true, y_pred)
    return float((y_true == y_pred).mean())


def f1(y_true, y_pred, average: str = "binary") -> float:
    """F1 (sklearn ``f1_score``); ``average="binary"`` for PPI (positive label 1), ``"macro"`` for classes."""
    _same_len(np.asarray(y_true), np.asarray(y_pred))
    return float(f1_score(y_true, y_pred, average=average, zero_division=0))


def fmax(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Protein-centric Fmax (CAFA; TorchDrug ``f1_max``). ``y_true`` ``[N, C]`` in {0,1}, ``scores`` ``[N, C]``.

    For each threshold τ a protein's predictions are the labels with score ≥ τ. Precision is averaged over the
    proteins with at least one prediction; recall (TP / #true labels, 0 for a protein without true labels) is
    averaged over **all** N proteins, as TorchDrug does (CAFA averages recall over annotated proteins only;
    the two agree when every protein has a label, as in the DeepFRI EC/GO sets). F = 2PR / (P + R), maximised
    over every distinct score as τ. Tied scores enter together; TorchDrug sweeps a sorted order and thus
    splits ties arbitrarily, which makes no difference for continuous scores.

    O(NC log NC), after TorchDrug: one global descending sort; per-protein precision/recall increments are
    accumulated along it and read at the end of each block of equal scores.
    """
    y, s = _check_multilabel(y_true, scores)
    n, c = s.shape
    flat = s.ravel()
    order = np.lexsort((np.arange(n * c), -flat))  # score descending, ties by (row, column)
    rows = order // c
    by_row = np.argsort(rows, kind="stable")  # row r's items, in global order, at [r*c, (r+1)*c)
    y_row = y.ravel()[order][by_row].reshape(n, c)
    tp = np.cumsum(y_row, axis=1)
    count = np.arange(1, c + 1, dtype=np.float64)
    prec = tp / count
    n_true = y.sum(1, keepdims=True)
    rec = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    d_prec = np.diff(prec, axis=1, prepend=0.0).ravel()
    d_rec = np.diff(rec, axis=1, prepend=0.0).ravel()
    start = np.zeros((n, c), dtype=np.float64)
    start[:, 0] = 1.0
    glob_d_prec = np.empty(n * c)
    glob_d_rec = np.empty(n * c)
    glob_start = np.empty(n * c)
    glob_d_prec[by_row] = d_prec
    glob_d_rec[by_row] = d_rec
    glob_start[by_row] = start.ravel()
    precision = np.cumsum(glob_d_prec) / np.cumsum(glob_start)
    recall = np.cumsum(glob_d_rec) / n
    sorted_scores = flat[order]
    block_end = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    p, r = precision[block_end], recall[block_end]
    denom = p + r
    f = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f.max())


def aupr_micro(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Micro-averaged AUPR: average precision over all flattened (protein, label) pairs.

    Uses sklearn's ``average_precision_score`` on the flattened arrays: AP = Σ (R_n − R_{n−1}) P_n over
    distinct thresholds. TorchDrug's ``area_under_prc`` computes the same sum over a sorted order (mean of
    precision at each positive), so the two agree exactly when scores have no ties; on ties sklearn's value is
    well defined (thresholds at distinct scores) while TorchDrug's depends on the sort order. Hence sklearn.
    ``nan`` when there is no positive pair.
    """
    y, s = _check_multilabel(y_true, scores)
    if y.sum() == 0:
        return math.nan
    return float(average_precision_score(y.ravel(), s.ravel()))


def _check_multilabel(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape or y.size == 0:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} must be equal non-empty [N, C] matrices")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must be 0/1")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return y, s


# ---------------------------------------------------------------- regression


def spearman(y_true, y_pred) -> float:
    """Spearman rank correlation (scipy, average ranks for ties); ``nan`` if either side is constant."""
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    _same_len(a, b)
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def mae(y_true, y_pred) -> float:
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    _same_len(a, b)
    return float(np.abs(a - b).mean())


def rmse(y_true, y_pred) -> float:
    a, b = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    _same_len(a, b)
    return float(np.sqrt(((a - b) ** 2).mean()))


def _same_len(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"need equal non-empty lengths, got {len(a)} and {len(b)}")
