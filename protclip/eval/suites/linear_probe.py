"""Linear probe on frozen protein embeddings.

single_label: standardised features + multinomial ``LogisticRegression`` -> accuracy.
multi_label: one ``LogisticRegression`` per label (one-vs-rest) -> Fmax, micro AUPR, PR curve.
regression: standardised features + ``Ridge`` -> Spearman (and MAE/RMSE).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from protclip.eval.embedder import Embedder
from protclip.eval.suites.base import (
    LabeledDataFields,
    SplitFields,
    SuiteConfig,
    SuiteResult,
    check_labeled_data,
    check_split,
    clean_metrics,
    embed_unique,
    require,
    train_test,
)
from protclip.eval.suites.tasks import EncodedLabels, encode_labels, score


@dataclass(kw_only=True)
class LinearProbeConfig(SuiteConfig, LabeledDataFields, SplitFields):
    C: float = 1.0  # inverse L2 strength of LogisticRegression (classification)
    alpha: float = 1.0  # L2 strength of Ridge (regression)
    max_iter: int = 2000  # LogisticRegression solver iterations

    def __post_init__(self) -> None:
        super().__post_init__()
        check_labeled_data(self)
        check_split(self)
        require(self.C > 0 and self.alpha > 0, f"C and alpha must be > 0, got C={self.C}, alpha={self.alpha}")
        require(self.max_iter >= 1, f"max_iter must be >= 1, got {self.max_iter}")


def fit_predict(
    cfg: LinearProbeConfig, enc: EncodedLabels, x_train: np.ndarray, x_test: np.ndarray
) -> np.ndarray:
    """Class scores ``[N_test, C]`` or regression values ``[N_test]``."""
    scaler = StandardScaler().fit(x_train)
    xtr, xte = scaler.transform(x_train), scaler.transform(x_test)
    if enc.task_type == "regression":
        return Ridge(alpha=cfg.alpha).fit(xtr, enc.y_train).predict(xte)
    with warnings.catch_warnings():
        # a capped solver is a deliberate budget, not an error worth a warning per label
        warnings.simplefilter("ignore", ConvergenceWarning)
        if enc.task_type == "single_label":
            clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed).fit(
                xtr, enc.y_train
            )
            out = np.zeros((len(xte), len(enc.classes)))
            out[:, clf.classes_] = clf.predict_proba(xte)
            return out
        out = np.zeros((len(xte), len(enc.classes)))
        for j in range(len(enc.classes)):
            col = enc.y_train[:, j]
            if col.min() == col.max():  # label constant in train: predict its training prevalence
                out[:, j] = col[0]
                continue
            clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed).fit(xtr, col)
            out[:, j] = clf.predict_proba(xte)[:, 1]
        return out


def run(cfg: LinearProbeConfig, embedder: Embedder) -> SuiteResult:
    train, test, info = train_test(cfg)
    x = embed_unique(embedder, train.sequences + test.sequences, cfg.batch_size)
    x_train, x_test = x[: len(train)], x[len(train) :]
    enc = encode_labels(cfg.task_type, train.labels, test.labels)
    pred = fit_predict(cfg, enc, x_train, x_test)
    metrics, figs = score(enc, pred, cfg.make_figures, "linear probe")
    info["n_classes"] = len(enc.classes)
    return SuiteResult(clean_metrics(metrics), figs, len(test), info)
