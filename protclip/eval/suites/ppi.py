"""Protein–protein interaction: logistic regression on symmetric pair features [a * b, |a - b|] -> F1.

The features do not depend on the order of the pair. Splits: by hashed *pair* key (default), by a split
column, or by separate files. Note that GNN-PPI's harder BFS/DFS splits hold out proteins, not pairs; supply
such splits through ``split="column"`` or ``split="files"``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from protclip import metrics as M
from protclip.data.formats import PairSet, read_ppi_pairs, read_sequence_map
from protclip.data.splits import split_by_hash, subsample_by_hash
from protclip.eval.embedder import Embedder
from protclip.eval.suites.base import (
    SPLIT_MODES,
    SuiteConfig,
    SuiteResult,
    clean_metrics,
    embed_unique,
    require,
)


@dataclass(kw_only=True)
class PPIConfig(SuiteConfig):
    path: str = ""  # pair table: seq_a/seq_b or id_a/id_b, plus the label column
    format: str = "auto"  # csv | tsv | parquet | auto
    sequences_path: str | None = None  # id -> sequence map (FASTA or id<TAB>seq) when pairs are given by id
    label_column: str = "label"  # 0/1
    split: str = "hash"  # "hash" (pair key), "column" (split_column) or "files" (test_path)
    test_fraction: float = 0.2  # split="hash": share of pairs in test
    split_column: str | None = None  # split="column"
    train_split: str = "train"
    test_split: str = "test"
    test_path: str | None = None  # split="files"
    C: float = 1.0  # inverse L2 strength of the logistic regression
    max_iter: int = 2000
    on_error: str = "raise"  # malformed rows: "raise" or "skip"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.path), "path must be set")
        require(self.format in ("auto", "csv", "tsv", "parquet"), f"bad format {self.format!r}")
        require(self.split in SPLIT_MODES, f"split must be one of {SPLIT_MODES}, got {self.split!r}")
        require(0.0 < self.test_fraction < 1.0, f"test_fraction must be in (0, 1), got {self.test_fraction}")
        require(self.split != "column" or self.split_column is not None, "split='column' needs split_column")
        require(self.split != "files" or self.test_path is not None, "split='files' needs test_path")
        require(self.C > 0 and self.max_iter >= 1, "C must be > 0 and max_iter >= 1")
        require(self.on_error in ("raise", "skip"), f"bad on_error {self.on_error!r}")


def _subset(p: PairSet, idx: np.ndarray) -> PairSet:
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    return PairSet(
        pick(p.ids_a),
        pick(p.ids_b),
        pick(p.seqs_a),
        pick(p.seqs_b),
        pick(p.labels),
        p.source,
        None if p.splits is None else pick(p.splits),
    )


def _read(cfg: PPIConfig, path: str, seq_map: dict[str, str] | None) -> PairSet:
    if not Path(path).is_file():
        raise FileNotFoundError(f"PPIConfig: data file {path} does not exist")
    split_column = cfg.split_column if cfg.split == "column" else None
    pairs = read_ppi_pairs(
        path,
        sequences=seq_map,
        label_column=cfg.label_column,
        split_column=split_column,
        fmt=cfg.format,
        on_error=cfg.on_error,
    )
    if cfg.max_examples is not None and len(pairs) > cfg.max_examples:
        errors = pairs.errors
        pairs = _subset(pairs, subsample_by_hash(pairs.pair_ids(), cfg.max_examples, cfg.seed))
        pairs.errors = errors
    return pairs


def pair_features(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    return np.concatenate([emb_a * emb_b, np.abs(emb_a - emb_b)], axis=1)


def run(cfg: PPIConfig, embedder: Embedder) -> SuiteResult:
    seq_map = read_sequence_map(cfg.sequences_path) if cfg.sequences_path else None
    data = _read(cfg, cfg.path, seq_map)
    if cfg.split == "files":
        train, test = data, _read(cfg, str(cfg.test_path), seq_map)
    elif cfg.split == "column":
        names = np.asarray(data.splits)
        train = _subset(data, np.flatnonzero(names == cfg.train_split))
        test = _subset(data, np.flatnonzero(names == cfg.test_split))
    else:
        tr, te = split_by_hash(data.pair_ids(), [1 - cfg.test_fraction, cfg.test_fraction], cfg.seed)
        train, test = _subset(data, tr), _subset(data, te)
    if len(train) == 0 or len(test) == 0 or len(set(train.labels)) < 2:
        raise ValueError(
            f"{cfg.path}: need non-empty train/test and both labels in train "
            f"(train {len(train)}, test {len(test)}, train labels {sorted(set(train.labels))})"
        )
    seqs = train.seqs_a + train.seqs_b + test.seqs_a + test.seqs_b
    emb = embed_unique(embedder, seqs, cfg.batch_size)
    n, m = len(train), len(test)
    x_train = pair_features(emb[:n], emb[n : 2 * n])
    x_test = pair_features(emb[2 * n : 2 * n + m], emb[2 * n + m :])
    scaler = StandardScaler().fit(x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)
        clf.fit(scaler.transform(x_train), train.labels)
    pred = clf.predict(scaler.transform(x_test))
    metrics = {
        "f1": M.f1(test.labels, pred),
        "acc": M.accuracy(test.labels, pred),
        "positive_rate": float(np.mean(test.labels)),
    }
    info = {"n_train": n, "n_test": m, "n_malformed_skipped": len(data.errors)}
    return SuiteResult(clean_metrics(metrics), {}, m, info)
