"""Label encoding and scoring shared by the supervised suites (linear probe, fine-tune head).

Metric names per task type:
- single_label: ``acc``, ``f1_macro``, ``majority_acc`` (always predicting the most frequent training label).
- multi_label: ``fmax`` (protein-centric, TorchDrug ``f1_max``), ``aupr_micro``.
- regression: ``spearman`` (reported), ``mae`` (the selection metric in ProtCLIP's fine-tuning), ``rmse``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from protclip import metrics as M
from protclip.eval.suites import figures
from protclip.eval.suites.base import majority_accuracy


@dataclass
class EncodedLabels:
    task_type: str
    classes: list[str]  # class names (single/multi-label); empty for regression
    y_train: np.ndarray  # int class index [N] | 0/1 matrix [N, C] | float [N]
    y_test: np.ndarray


def encode_labels(task_type: str, train: list[Any], test: list[Any]) -> EncodedLabels:
    """Classes are the union of train and test labels, so test-only classes count as errors, not crashes."""
    if task_type == "regression":
        return EncodedLabels(task_type, [], np.asarray(train, np.float64), np.asarray(test, np.float64))
    if task_type == "single_label":
        classes = sorted(set(train) | set(test))
        index = {c: i for i, c in enumerate(classes)}
        return EncodedLabels(
            task_type, classes, np.array([index[y] for y in train]), np.array([index[y] for y in test])
        )
    classes = sorted({c for labs in list(train) + list(test) for c in labs})
    index = {c: i for i, c in enumerate(classes)}

    def binarize(rows: list[list[str]]) -> np.ndarray:
        out = np.zeros((len(rows), len(classes)), dtype=np.float64)
        for i, labs in enumerate(rows):
            out[i, [index[c] for c in labs]] = 1.0
        return out

    return EncodedLabels(task_type, classes, binarize(list(train)), binarize(list(test)))


def score(
    enc: EncodedLabels, pred: np.ndarray, make_figures: bool, title: str
) -> tuple[dict[str, float], dict[str, Figure]]:
    """``pred``: class scores ``[N, C]`` (single/multi-label; argmax is the prediction) or values ``[N]``."""
    figs: dict[str, Figure] = {}
    if enc.task_type == "single_label":
        y_hat = np.asarray(pred).argmax(1)
        names_true = [enc.classes[i] for i in enc.y_test]
        names_pred = [enc.classes[i] for i in y_hat]
        out = {
            "acc": M.accuracy(enc.y_test, y_hat),
            "f1_macro": M.f1(enc.y_test, y_hat, average="macro"),
            "majority_acc": majority_accuracy([enc.classes[i] for i in enc.y_train], names_true),
        }
        if make_figures:
            figs["confusion"] = figures.confusion(names_true, names_pred, enc.classes, f"{title}: confusion")
        return out, figs
    if enc.task_type == "multi_label":
        out = {"fmax": M.fmax(enc.y_test, pred), "aupr_micro": M.aupr_micro(enc.y_test, pred)}
        if make_figures and enc.y_test.sum() > 0:
            figs["pr_curve"] = figures.pr_curve(enc.y_test, pred, f"{title}: micro PR curve")
        return out, figs
    pred = np.asarray(pred, dtype=np.float64).ravel()
    out = {
        "spearman": M.spearman(enc.y_test, pred),
        "mae": M.mae(enc.y_test, pred),
        "rmse": M.rmse(enc.y_test, pred),
    }
    if make_figures:
        figs["scatter"] = figures.scatter(
            pred, enc.y_test, f"{title}: predicted vs measured", "predicted", "measured"
        )
    return out, figs
