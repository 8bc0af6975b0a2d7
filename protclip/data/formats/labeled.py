"""Labelled-sequence readers: DeepLoc FASTA, plain labelled FASTA, CSV/TSV/Parquet tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protclip.data.formats.core import (
    ErrorCollector,
    FormatError,
    LabeledSequences,
    clean_sequence,
    iter_rows,
    parse_label,
    read_fasta,
    read_table_frame,
)


def read_deeploc_fasta(
    path: str | Path, label: str = "location", on_error: str = "raise"
) -> LabeledSequences:
    """DeepLoc FASTA: ``>ACC Location-M|S|U [test]``; ``splits`` is ``"test"`` where flagged, else ``"train"``."""
    if label not in ("location", "membrane"):
        raise ValueError(f"label must be 'location' or 'membrane', got {label!r}")
    path = Path(path)
    out = LabeledSequences([], [], [], "single_label", str(path), splits=[])
    collect = ErrorCollector(on_error)
    for rec in read_fasta(path):
        where = f"line {rec.line} ({rec.id})"
        try:
            tokens = rec.description.split()
            if len(tokens) < 2 or "-" not in tokens[1]:
                raise FormatError(
                    path, where, "label", f"expected 'Location-M|S|U', header is {rec.description!r}"
                )
            loc, mem = tokens[1].rsplit("-", 1)
            if not loc or mem not in ("M", "S", "U"):
                raise FormatError(path, where, "label", f"expected 'Location-M|S|U', got {tokens[1]!r}")
            if len(tokens) > 3 or (len(tokens) == 3 and tokens[2] != "test"):
                raise FormatError(
                    path, where, "flag", f"expected nothing or 'test' after the label: {rec.description!r}"
                )
            seq = clean_sequence(rec.sequence, path, where)
        except FormatError as err:
            collect(err)
            continue
        if label == "membrane" and mem == "U":
            out.dropped["membrane_unknown"] = out.dropped.get("membrane_unknown", 0) + 1
            continue
        out.ids.append(rec.id)
        out.sequences.append(seq)
        out.labels.append(loc if label == "location" else mem)
        out.splits.append("test" if len(tokens) == 3 else "train")  # type: ignore[union-attr]
    out.errors = collect.errors
    return out


def read_labeled_fasta(
    path: str | Path, task_type: str, label_sep: str = ";", on_error: str = "raise"
) -> LabeledSequences:
    """Plain labelled FASTA: ``>ID label`` (label = rest of the header)."""
    path = Path(path)
    out = LabeledSequences([], [], [], task_type, str(path))
    collect = ErrorCollector(on_error)
    for rec in read_fasta(path):
        where = f"line {rec.line} ({rec.id})"
        try:
            parts = rec.description.split(None, 1)
            if len(parts) < 2:
                raise FormatError(path, where, "label", "header has no label after the id")
            lab = parse_label(parts[1], task_type, path, where, "label", label_sep)
            seq = clean_sequence(rec.sequence, path, where)
        except FormatError as err:
            collect(err)
            continue
        out.ids.append(rec.id)
        out.sequences.append(seq)
        out.labels.append(lab)
    out.errors = collect.errors
    return out


def read_table(
    path: str | Path,
    *,
    task_type: str,
    sequence_column: str = "sequence",
    label_column: str = "label",
    id_column: str | None = None,
    split_column: str | None = None,
    label_sep: str = ";",
    fmt: str = "auto",
    on_error: str = "raise",
) -> LabeledSequences:
    """CSV/TSV/Parquet with a sequence and a label column (single-label, multi-label or regression)."""
    path = Path(path)
    cols = tuple(c for c in (sequence_column, label_column, id_column, split_column) if c)
    df = read_table_frame(path, fmt, cols)

    def parse(where: str, row: dict[str, Any]) -> tuple[str, str, Any, str | None]:
        seq = clean_sequence(row[sequence_column], path, where, sequence_column)
        lab = parse_label(row[label_column], task_type, path, where, label_column, label_sep)
        rid = str(row[id_column]) if id_column else where.split(" (")[0].replace(" ", "")
        split = str(row[split_column]).strip() if split_column else None
        if split_column and not split:
            raise FormatError(path, where, split_column, "missing split name")
        return rid, seq, lab, split

    values, _, errors = iter_rows(path, df, fmt, parse, on_error)
    return LabeledSequences(
        ids=[v[0] for v in values],
        sequences=[v[1] for v in values],
        labels=[v[2] for v in values],
        task_type=task_type,
        source=str(path),
        splits=[v[3] for v in values] if split_column else None,
        errors=errors,
    )


def read_labeled(
    path: str | Path,
    *,
    fmt: str = "auto",
    task_type: str = "single_label",
    deeploc_label: str = "location",
    **table_kwargs: Any,
) -> LabeledSequences:
    """Dispatch on ``fmt``: ``deeploc`` / ``fasta`` (plain labelled) / a table format / ``auto`` (extension)."""
    suffix = Path(path).suffix.lower()
    if fmt == "auto" and suffix in (".fasta", ".fa", ".faa"):
        fmt = "fasta"
    if fmt == "deeploc":
        if task_type != "single_label":
            raise ValueError(f"DeepLoc files are single-label, got task_type={task_type!r}")
        return read_deeploc_fasta(path, deeploc_label, table_kwargs.get("on_error", "raise"))
    if fmt == "fasta":
        return read_labeled_fasta(
            path, task_type, table_kwargs.get("label_sep", ";"), table_kwargs.get("on_error", "raise")
        )
    return read_table(path, task_type=task_type, fmt=fmt, **table_kwargs)
