"""Matplotlib figures for the suites, built on ``matplotlib.figure.Figure`` (no pyplot global state, so they
are safe inside Ray tasks and threads). Callers save them with ``fig.savefig`` / ``mlflow.log_figure``."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def heatmap(sim: np.ndarray, title: str, xlabel: str, ylabel: str) -> Figure:
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    im = ax.imshow(sim, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.tight_layout()
    return fig


def confusion(y_true: list[str], y_pred: list[str], classes: list[str], title: str) -> Figure:
    """Row-normalised confusion matrix (rows: true class)."""
    index = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)))
    for t, p in zip(y_true, y_pred, strict=True):
        m[index[t], index[p]] += 1
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="share of true class")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def scatter(x: np.ndarray, y: np.ndarray, title: str, xlabel: str, ylabel: str) -> Figure:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.scatter(x, y, s=8, alpha=0.6)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.tight_layout()
    return fig


def pr_curve(y_true: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    """Micro-averaged precision-recall curve over flattened (protein, label) pairs."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(np.asarray(y_true).ravel(), np.asarray(scores).ravel())
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.step(recall, precision, where="post")
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    fig.tight_layout()
    return fig
