"""Task datasets for LoRA fine-tuning: reading, labels, deterministic splits, batching and collation.

Task sets are small (thousands to a few hundred thousand proteins), so they are read once on the driver into a
:class:`TaskData` and shipped to the workers whole. Each worker then takes its slice of a per-epoch permutation
drawn from ``(seed, epoch)``; the data position is just the step number, so a resumed run sees exactly the
batches the uninterrupted run would have (Ray Data's streaming split does not fix which rows reach which rank).

Splits are by a hash of the protein id (``protclip.data.splits.split_by_hash``), so a protein's split depends on
(id, seed) only and never moves when rows are added or reordered; a file's own split column can be used instead.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protclip.data.formats import FormatError, LabeledSequences, clean_sequence, read_labeled
from protclip.data.masking import IGNORE_INDEX
from protclip.data.splits import split_by_hash, subsample_by_hash
from protclip.data.tokenizers import ESM_CLS, ESM_EOS, ESM_PAD, ProteinTokenizer
from protclip.finetune.config import FinetuneDataConfig, TaskConfig
from protclip.storage import StorageConfig, filesystem, is_remote

_log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": 0, "training": 0, "valid": 1, "validation": 1, "val": 1, "dev": 1, "test": 2}


@dataclass
class TaskData:
    """Labelled sequences with encoded targets and a split per row.

    ``targets`` per task type: class index (single_label), list of class indices (multi_label), float
    (regression), int8 array with one 0/1 label per residue (per_residue).
    """

    task_type: str
    label_names: list[str]
    ids: list[str]
    sequences: list[str]
    targets: list[Any]
    split: np.ndarray  # 0 train, 1 valid, 2 test
    source: str
    dropped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sequences)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def sizes(self) -> dict[str, int]:
        return {s: int((self.split == i).sum()) for i, s in enumerate(SPLITS)}


# ---------------------------------------------------------------------------------------------------- reading


@contextmanager
def local_path(uri: str, storage: StorageConfig | None = None) -> Iterator[Path]:
    """A local path for ``uri``: itself when local, else a temporary download (file or folder)."""
    if not is_remote(uri):
        p = Path(uri.split("://", 1)[1] if uri.startswith("file://") else uri).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"data.path {uri}: no such file or folder")
        yield p
        return
    fs, path = filesystem(uri, storage)
    if not fs.exists(path):
        raise FileNotFoundError(f"data.path {uri}: no such object or prefix")
    with tempfile.TemporaryDirectory(prefix="protclip_ft_data_") as tmp:
        dst = Path(tmp) / os.path.basename(path.rstrip("/"))
        fs.get(path, str(dst), recursive=fs.isdir(path))
        yield dst


def load_task_data(data: FinetuneDataConfig, task: TaskConfig, storage: StorageConfig | None = None) -> TaskData:
    """Read ``data.path``, encode labels, subsample and split; raises naming file/record/field on bad input."""
    if not data.path:
        raise ValueError("data.path is empty: point it at the task's FASTA/CSV/Parquet/ProtAnno file")
    splits: list[str] | None = None
    if task.type == "per_residue":
        if data.split_column:
            raise ValueError("data.split_column is not supported for per_residue data; splits are by id hash")
        ids, seqs, raw, dropped, errors = _read_per_residue(data, storage)
    else:
        with local_path(data.path, storage) as path:
            table_kw: dict[str, Any] = {"on_error": data.on_error, "label_sep": data.label_sep}
            if data.format not in ("deeploc", "fasta") and path.suffix.lower() not in (".fasta", ".fa", ".faa"):
                table_kw.update(sequence_column=data.sequence_column, label_column=data.label_column,
                                id_column=data.id_column, split_column=data.split_column)
            ls: LabeledSequences = read_labeled(path, fmt=data.format, task_type=task.type,
                                                deeploc_label=data.deeploc_label, **table_kw)
        ids, seqs, raw = ls.ids, ls.sequences, ls.labels
        dropped, errors = dict(ls.dropped), list(ls.errors)
        splits = ls.splits if data.split_column else None
    if not seqs:
        raise ValueError(f"{data.path}: no usable records (dropped {dropped}, {len(errors)} malformed)")
    if errors:
        _log.warning("%s: skipped %d malformed records, e.g. %s", data.path, len(errors), errors[0])

    keep = np.arange(len(ids))
    if data.max_rows is not None and data.max_rows < len(ids):
        keep = subsample_by_hash(ids, data.max_rows, data.split_seed)
        ids, seqs, raw = [ids[i] for i in keep], [seqs[i] for i in keep], [raw[i] for i in keep]
        splits = None if splits is None else [splits[i] for i in keep]

    names, targets = encode_targets(raw, task, data.path)
    split = _assign_splits(ids, splits, data, data.path)
    out = TaskData(task.type, names, list(ids), list(seqs), targets, split, data.path, dropped, errors)
    if len(out.indices("train")) == 0:
        raise ValueError(f"{data.path}: the training split is empty ({out.sizes()})")
    _log.info("%s: %d rows, splits %s, %d labels", data.path, len(out), out.sizes(), len(names))
    return out


def _assign_splits(ids: list[str], splits: list[str] | None, data: FinetuneDataConfig, source: str) -> np.ndarray:
    if splits is not None:
        out = np.empty(len(ids), dtype=np.int8)
        for i, s in enumerate(splits):
            k = _SPLIT_ALIASES.get(str(s).strip().lower())
            if k is None:
                raise FormatError(source, f"record {ids[i]}", data.split_column or "split",
                                  f"unknown split {s!r}; expected train/valid/test")
            out[i] = k
        return out
    parts = split_by_hash(ids, data.split_fractions, data.split_seed)
    out = np.empty(len(ids), dtype=np.int8)
    for k, idx in enumerate(parts):
        out[idx] = k
    return out


def encode_targets(raw: list[Any], task: TaskConfig, source: str) -> tuple[list[str], list[Any]]:
    """Label names (output order) and encoded targets; labels outside ``task.labels`` are an error."""
    if task.type == "regression":
        return list(task.labels or ["value"]), [float(v) for v in raw]
    if task.type == "per_residue":
        return list(task.labels or ["0", "1"]), raw
    if task.type == "single_label":
        seen = sorted({str(v) for v in raw})
    else:
        seen = sorted({str(x) for v in raw for x in v})
    names = list(task.labels) if task.labels is not None else seen
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(seen) - set(index))
    if unknown:
        raise ValueError(f"{source}: labels {unknown[:10]} are not in task.labels {names}")
    if len(names) < 2 and task.type == "single_label":
        raise ValueError(f"{source}: a classification task needs >= 2 classes, found {names}")
    if task.type == "single_label":
        return names, [index[str(v)] for v in raw]
    return names, [[index[str(x)] for x in v] for v in raw]


def _per_residue_rows(data: FinetuneDataConfig, storage: StorageConfig | None) -> tuple[list[dict[str, Any]], str]:
    """Rows with the needed columns: ProtAnno (schema-checked shards, read in place, s3 too) or any parquet."""
    import pyarrow as pa

    from protclip.data.parquet_files import inspect_parquet, read_fragment

    if data.format == "protanno":
        cols = ["accession", "sequence", "features"]
        inv = inspect_parquet(data.path, storage)
        parts = [read_fragment(inv.fs, f, cols, data.path) for f in inv.fragments]
        return (pa.concat_tables(parts).to_pylist() if parts else []), "sequence"
    import pyarrow.dataset as pads

    cols = [c for c in (data.id_column, data.sequence_column, data.label_column) if c]
    with local_path(data.path, storage) as path:
        dataset = pads.dataset(str(path), format="parquet")
        missing = [c for c in cols if c not in dataset.schema.names]
        if missing:
            raise FormatError(data.path, "schema", ",".join(missing), f"missing column(s); has {dataset.schema.names}")
        return dataset.to_table(columns=cols).to_pylist(), data.sequence_column


def _read_per_residue(data: FinetuneDataConfig, storage: StorageConfig | None) -> tuple[list, list, list, dict, list]:
    """ProtAnno rows -> per-residue 0/1 labels from ``features``; or a parquet with a per-residue label list."""
    rows, seq_col = _per_residue_rows(data, storage)
    path = data.path
    ids, seqs, labels, errors = [], [], [], []
    dropped: dict[str, int] = {}
    wanted = {t.upper() for t in data.residue_features}
    for i, row in enumerate(rows):
        where = f"row {i + 1}" + (f" ({row['accession']})" if data.format == "protanno" else "")
        try:
            seq = clean_sequence(row[seq_col], path, where, seq_col)
            if data.format == "protanno":
                lab, n_feat, bad = residue_labels(seq, row["features"] or [], wanted, data.residue_note_contains)
                for k, v in bad.items():
                    dropped[k] = dropped.get(k, 0) + v
                if n_feat == 0 and data.residue_require_feature:
                    dropped["no_matching_feature"] = dropped.get("no_matching_feature", 0) + 1
                    continue
                rid = row["accession"]
            else:
                lab = np.asarray(row[data.label_column], dtype=np.int64)
                if lab.shape != (len(seq),) or not np.isin(lab, (0, 1)).all():
                    raise FormatError(path, where, data.label_column,
                                      f"expected {len(seq)} labels in {{0, 1}} (one per residue), got {lab.shape}")
                lab = lab.astype(np.int8)
                rid = str(row[data.id_column]) if data.id_column else f"row{i + 1}"
        except FormatError as err:
            if data.on_error == "raise":
                raise
            errors.append(str(err))
            continue
        ids.append(rid)
        seqs.append(seq)
        labels.append(lab)
    return ids, seqs, labels, dropped, errors


def residue_labels(sequence: str, features: list[dict[str, Any]], types: set[str],
                   note_contains: str | None = None) -> tuple[np.ndarray, int, dict[str, int]]:
    """0/1 per residue: 1 inside any feature of ``types`` (1-based inclusive ``start..end``).

    Returns (labels, number of features used, counts of features skipped by reason): positions unknown
    (None) or outside the sequence (features on another isoform) are skipped and counted, not guessed.
    """
    lab = np.zeros(len(sequence), dtype=np.int8)
    used = 0
    bad: dict[str, int] = {}
    for f in features:
        if str(f.get("type", "")).upper() not in types:
            continue
        if note_contains and note_contains.lower() not in str(f.get("note") or "").lower():
            continue
        start, end = f.get("start"), f.get("end")
        if start is None or end is None:
            bad["feature_position_unknown"] = bad.get("feature_position_unknown", 0) + 1
            continue
        if not 1 <= start <= end <= len(sequence):
            bad["feature_out_of_range"] = bad.get("feature_out_of_range", 0) + 1
            continue
        lab[start - 1 : end] = 1
        used += 1
    return lab, used, bad


# ---------------------------------------------------------------------------------------------------- weights


def class_weights(data: TaskData, mode: str) -> np.ndarray | None:
    """Loss weights from the training split, or None for ``mode="none"``.

    single_label / per_residue: CE class weights ``N / (C * n_c)`` ("balanced"), or their square root;
    classes absent from the training split get weight 1. multi_label: BCE ``pos_weight`` ``n_neg / n_pos``
    per label (or its square root). Regression has none.
    """
    if mode == "none" or data.task_type == "regression":
        return None
    idx = data.indices("train")
    c = len(data.label_names)
    if data.task_type == "multi_label":
        pos = np.zeros(c)
        for i in idx:
            pos[data.targets[i]] += 1
        neg = len(idx) - pos
        w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    else:
        if data.task_type == "single_label":
            counts = np.bincount([data.targets[i] for i in idx], minlength=c).astype(np.float64)
        else:
            counts = np.bincount(np.concatenate([data.targets[i] for i in idx]).astype(np.int64),
                                 minlength=c).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / (c * np.maximum(counts, 1)), 1.0)
    if mode == "sqrt":
        w = np.sqrt(w)
    return w.astype(np.float32)


def regression_stats(data: TaskData) -> tuple[float, float]:
    """Mean and std of the training targets (the head predicts standardised values)."""
    y = np.asarray([data.targets[i] for i in data.indices("train")], dtype=np.float64)
    std = float(y.std()) if len(y) > 1 else 1.0
    return float(y.mean()), (std if std > 0 else 1.0)


# ---------------------------------------------------------------------------------------------------- batching


def steps_per_epoch(n_train: int, world_size: int, batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped; every rank takes the same number of steps)."""
    spe = n_train // (world_size * batch_size)
    if spe < 1:
        raise ValueError(f"the training split has {n_train} rows, fewer than one global batch "
                         f"({world_size} workers x {batch_size}); lower train.batch_size")
    return spe


def train_batch(train_idx: np.ndarray, step: int, spe: int, seed: int, rank: int, world: int,
                batch: int) -> np.ndarray:
    """Row indices of this rank's batch at optimizer step ``step`` (depends on (seed, epoch) only)."""
    epoch, pos = divmod(step, spe)
    perm = np.random.default_rng([seed, epoch]).permutation(len(train_idx))
    start = pos * world * batch + rank * batch
    return train_idx[perm[start : start + batch]]


def eval_batches(idx: np.ndarray, rank: int, world: int, batch: int) -> list[np.ndarray]:
    """This rank's slices of ``idx``; every rank gets the same number of (possibly empty) batches, because
    FSDP2/DDP forwards are collectives that all ranks must enter together."""
    n_steps = max(1, math.ceil(len(idx) / (world * batch)))
    out = []
    for s in range(n_steps):
        lo = s * world * batch + rank * batch
        out.append(idx[lo : min(lo + batch, (s + 1) * world * batch, len(idx))])
    return out


def crop_positions(n: int, max_residues: int, mode: str) -> np.ndarray:
    """Residue positions (0-based) kept when a sequence is cropped to ``max_residues``."""
    if n <= max_residues:
        return np.arange(n)
    if mode == "head":
        return np.arange(max_residues)
    head = max_residues // 2
    return np.concatenate([np.arange(head), np.arange(n - (max_residues - head), n)])


class Collator:
    """Sequences (+ targets) -> padded ``input_ids``/``attention_mask`` (+ ``labels``) tensors."""

    def __init__(self, task_type: str, num_labels: int, max_length: int, crop: str = "head",
                 target_mean: float = 0.0, target_std: float = 1.0) -> None:
        self.task_type = task_type
        self.num_labels = num_labels
        self.max_residues = max_length - 2
        self.crop = crop
        self.mean, self.std = target_mean, target_std
        self.tok = ProteinTokenizer()

    def kept(self, sequence: str) -> np.ndarray:
        return crop_positions(len(sequence), self.max_residues, self.crop)

    def __call__(self, sequences: list[str], targets: list[Any] | None = None) -> dict[str, torch.Tensor]:
        kept = [self.kept(s) for s in sequences]
        width = max(len(k) for k in kept) + 2
        ids = np.full((len(sequences), width), ESM_PAD, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for i, (s, k) in enumerate(zip(sequences, kept, strict=True)):
            res = self.tok.encode_residues(s)[k]
            ids[i, 0], ids[i, 1 : len(k) + 1], ids[i, len(k) + 1] = ESM_CLS, res, ESM_EOS
            mask[i, : len(k) + 2] = 1
        out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if targets is not None:
            out["labels"] = self._labels(targets, kept, width)
        return out

    def _labels(self, targets: list[Any], kept: list[np.ndarray], width: int) -> torch.Tensor:
        if self.task_type == "single_label":
            return torch.tensor(targets, dtype=torch.long)
        if self.task_type == "regression":
            return torch.tensor([(t - self.mean) / self.std for t in targets], dtype=torch.float32)
        if self.task_type == "multi_label":
            y = torch.zeros(len(targets), self.num_labels)
            for i, t in enumerate(targets):
                y[i, list(t)] = 1.0
            return y
        y = np.full((len(targets), width), IGNORE_INDEX, dtype=np.int64)
        for i, (t, k) in enumerate(zip(targets, kept, strict=True)):
            y[i, 1 : len(k) + 1] = np.asarray(t)[k]
        return torch.from_numpy(y)
