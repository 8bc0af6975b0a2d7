"""Pieces shared by the suites: the result type, the config base class and field groups, data loading and
splitting."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from protclip.data.formats import TASK_TYPES, LabeledSequences, read_labeled
from protclip.data.splits import split_by_hash, subsample_by_hash
from protclip.eval.embedder import Embedder

DATA_FORMATS = ("auto", "deeploc", "fasta", "csv", "tsv", "parquet", "protanno")
PROTANNO_LABELS = ("location",)
SPLIT_MODES = ("hash", "column", "files")


@dataclass
class SuiteResult:
    """What every suite returns. Metric names are bare (``p2t_r1``); the Ray wrapper prefixes ``eval/<suite>/``."""

    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)
    n_examples: int = 0  # examples scored (test rows, queries, variants, pairs)
    info: dict[str, Any] = field(default_factory=dict)  # non-metric facts: split sizes, skipped records, ...


@dataclass(kw_only=True)
class SuiteConfig:
    """Fields every suite has."""

    batch_size: int = 32  # sequences per embedder call batch
    seed: int = 0  # for hash splits, subsampling and head initialisation
    max_examples: int | None = None  # deterministic hash subsample of the input (None = all rows)
    make_figures: bool = True  # build matplotlib figures (off for cheap periodic evals)

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(
            self.max_examples is None or self.max_examples >= 1,
            f"max_examples must be >= 1, got {self.max_examples}",
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SuiteConfig:
        """Build from a YAML mapping; unknown keys are an error naming the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**values)


@dataclass(kw_only=True)
class LabeledDataFields:
    """Field group (no behaviour) of suites that read a file of sequences with labels (formats in
    :mod:`protclip.data.formats`); a suite config lists it beside :class:`SuiteConfig` and calls
    :func:`check_labeled_data`, so every suite config is one level deep."""

    path: str = ""  # data file (FASTA / CSV / TSV / Parquet)
    format: str = "auto"  # one of DATA_FORMATS; "auto" decides by extension (.fasta -> plain labelled FASTA)
    task_type: str = "single_label"  # single_label | multi_label | regression
    sequence_column: str = "sequence"  # tables only
    label_column: str = "label"  # tables only
    id_column: str | None = None  # tables only; default ids are row numbers
    label_sep: str = ";"  # multi-label separator in text cells / FASTA headers
    deeploc_label: str = "location"  # deeploc format: "location" (10 classes) or "membrane" (M/S, U dropped)
    go_obo: str | None = None  # multi-label GO terms: propagate labels to ancestors with this ontology
    on_error: str = "raise"  # malformed records: "raise" or "skip" (skipped ones are reported in info)
    # format "protanno": path is a ProtAnno folder/URI, the label is derived from its rows (PROTANNO_LABELS:
    # "location" = DeepLoc class of the SUBCELLULAR LOCATION text), restricted to one held-out split
    protanno_label: str = "location"
    protanno_split: str | None = None  # "test" | "val" | "train" of the build's holdout; None = all rows


@dataclass(kw_only=True)
class SplitFields:
    """Field group (no behaviour) of suites that split labelled data into train and test; checked by
    :func:`check_split`."""

    split: str = "hash"  # "hash": split_by_hash on ids; "column": the file's split names; "files": test_path
    test_fraction: float = 0.2  # split="hash": share of ids in the test bucket
    split_column: str | None = (
        None  # split="column", tables: column holding split names (DeepLoc: header flag)
    )
    train_split: str = "train"  # split="column": name of the training split
    test_split: str = "test"  # split="column": name of the test split
    test_path: str | None = None  # split="files": separate test file, same format and columns


def check_labeled_data(cfg: LabeledDataFields) -> None:
    """Validate the :class:`LabeledDataFields` of a suite config."""
    require(bool(cfg.path), "path must be set")
    require(cfg.format in DATA_FORMATS, f"format must be one of {DATA_FORMATS}, got {cfg.format!r}")
    require(cfg.task_type in TASK_TYPES, f"task_type must be one of {TASK_TYPES}, got {cfg.task_type!r}")
    require(cfg.deeploc_label in ("location", "membrane"), f"bad deeploc_label {cfg.deeploc_label!r}")
    require(cfg.on_error in ("raise", "skip"), f"on_error must be 'raise' or 'skip', got {cfg.on_error!r}")
    require(cfg.go_obo is None or cfg.task_type == "multi_label", "go_obo needs task_type multi_label")
    require(bool(cfg.label_sep), "label_sep must not be empty")
    require(cfg.protanno_label in PROTANNO_LABELS, f"protanno_label must be one of {PROTANNO_LABELS}")
    require(cfg.format != "protanno" or cfg.task_type == "single_label", "format protanno is single-label")


def check_split(cfg: SplitFields) -> None:
    """Validate the :class:`SplitFields` of a suite config (the deeploc format carries its own test flag)."""
    require(cfg.split in SPLIT_MODES, f"split must be one of {SPLIT_MODES}, got {cfg.split!r}")
    require(0.0 < cfg.test_fraction < 1.0, f"test_fraction must be in (0, 1), got {cfg.test_fraction}")
    require(cfg.split != "files" or bool(cfg.test_path), "split='files' needs test_path")
    require(
        cfg.split != "column" or cfg.split_column is not None or getattr(cfg, "format", None) == "deeploc",
        "split='column' needs split_column (or the deeploc format's test flag)",
    )


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# ---------------------------------------------------------------- data


def load_labeled(cfg: LabeledDataFields, path: str | None = None) -> LabeledSequences:
    """Read ``path`` (default ``cfg.path``) as configured, GO-propagate if asked, subsample if asked.

    ``cfg`` is a suite config: :class:`LabeledDataFields` plus :class:`SuiteConfig`'s ``seed`` and
    ``max_examples`` (and :class:`SplitFields` when it splits by a column)."""
    path = path or cfg.path
    if cfg.format == "protanno":
        data = _protanno_labeled(path, cfg.protanno_split)
        return _subsample(cfg, data, path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{type(cfg).__name__}: data file {path} does not exist")
    table_kwargs: dict[str, Any] = {"on_error": cfg.on_error, "label_sep": cfg.label_sep}
    if cfg.format not in ("deeploc", "fasta") and not str(path).lower().endswith((".fasta", ".fa", ".faa")):
        table_kwargs |= {
            "sequence_column": cfg.sequence_column,
            "label_column": cfg.label_column,
            "id_column": cfg.id_column,
            "split_column": cfg.split_column if isinstance(cfg, SplitFields) and cfg.split == "column" else None,
        }
    data = read_labeled(
        path, fmt=cfg.format, task_type=cfg.task_type, deeploc_label=cfg.deeploc_label, **table_kwargs
    )
    if cfg.go_obo:
        from protclip.eval.go import propagate, read_obo

        terms = read_obo(cfg.go_obo)
        data.labels = [propagate(labs, terms) for labs in data.labels]
    return _subsample(cfg, data, path)


def _subsample(cfg: LabeledDataFields, data: LabeledSequences, path: str | Path) -> LabeledSequences:
    if len(data) == 0:
        raise ValueError(f"{path}: no usable records ({len(data.errors)} malformed, dropped: {data.dropped})")
    if cfg.max_examples is not None and len(data) > cfg.max_examples:  # type: ignore[attr-defined]
        keep = subsample_by_hash(data.ids, cfg.max_examples, cfg.seed)  # type: ignore[attr-defined]
        sub = data.subset(keep)
        sub.errors, sub.dropped = data.errors, data.dropped
        data = sub
    return data


def _protanno_labeled(uri: str | Path, split: str | None) -> LabeledSequences:
    """Location-labelled rows of a ProtAnno folder's held-out ``split`` (rows without one class are counted)."""
    from protclip.data.formats.protanno import protanno_locations
    from protclip.data.holdout import load_split_rows

    t = load_split_rows(str(uri), split, ["accession", "sequence", "subcellular_location"])
    return protanno_locations(t["accession"].to_pylist(), t["sequence"].to_pylist(),
                              t["subcellular_location"].to_pylist(), f"{uri} ({split or 'all'} split)")


def train_test(cfg: SplitFields) -> tuple[LabeledSequences, LabeledSequences, dict[str, Any]]:
    """Load and split as configured; info carries split sizes and skipped-record counts.

    ``cfg`` is a suite config with both :class:`LabeledDataFields` and :class:`SplitFields`."""
    assert isinstance(cfg, LabeledDataFields)
    data = load_labeled(cfg)
    if cfg.split == "files":
        assert cfg.test_path is not None
        train, test = data, load_labeled(cfg, cfg.test_path)
    elif cfg.split == "column":
        if data.splits is None:
            raise ValueError(f"{cfg.path}: split='column' but the file carries no split names")
        names = np.asarray(data.splits)
        train = data.subset(np.flatnonzero(names == cfg.train_split))
        test = data.subset(np.flatnonzero(names == cfg.test_split))
    else:
        tr, te = split_by_hash(data.ids, [1.0 - cfg.test_fraction, cfg.test_fraction], cfg.seed)
        train, test = data.subset(tr), data.subset(te)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"{cfg.path}: empty split (train {len(train)}, test {len(test)})")
    info = {
        "n_train": len(train),
        "n_test": len(test),
        "n_malformed_skipped": len(data.errors),
        "dropped": dict(data.dropped),
        "malformed_examples": data.errors[:5],
    }
    return train, test, info


def embed_unique(embedder: Embedder, sequences: list[str], batch_size: int) -> np.ndarray:
    """Embed each distinct sequence once; rows follow ``sequences``."""
    uniq = list(dict.fromkeys(sequences))
    emb = np.asarray(embedder.embed_proteins(uniq, batch_size), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(uniq):
        raise ValueError(f"embed_proteins returned shape {emb.shape} for {len(uniq)} sequences")
    if not np.isfinite(emb).all():
        raise ValueError("embed_proteins returned NaN or inf")
    pos = {s: i for i, s in enumerate(uniq)}
    return emb[[pos[s] for s in sequences]]


def majority_accuracy(train_labels: list[str], test_labels: list[str]) -> float:
    """Accuracy of always predicting the most frequent training label (the floor a probe must beat)."""
    top = Counter(train_labels).most_common(1)[0][0]
    return float(np.mean([y == top for y in test_labels]))


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Plain Python floats (numpy scalars converted; NaN kept: an undefined metric is reported, not dropped)."""
    return {k: float(v) for k, v in metrics.items()}
