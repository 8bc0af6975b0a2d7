"""Shared pieces of the format readers: the error type, the dataset record, validation, FASTA and tables."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TASK_TYPES = ("single_label", "multi_label", "regression")
TABLE_FORMATS = ("csv", "tsv", "parquet")
_SEQ_RE = re.compile(r"[A-Z]+")


class FormatError(ValueError):
    """Malformed input; the message names file, record and field."""

    def __init__(self, path: str | Path, record: str, field_name: str, message: str) -> None:
        super().__init__(f"{path}: {record}: field {field_name!r}: {message}")


@dataclass
class LabeledSequences:
    """Sequences with one label each: ``str`` (single-label), ``list[str]`` (multi-label) or ``float``."""

    ids: list[str]
    sequences: list[str]
    labels: list[Any]
    task_type: str
    source: str
    splits: list[str] | None = None  # per-record split name when the file carries one
    dropped: dict[str, int] = field(default_factory=dict)  # well-formed records left out, by reason
    errors: list[str] = field(default_factory=list)  # malformed records skipped (on_error="skip")

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, idx: list[int] | np.ndarray) -> LabeledSequences:
        idx = [int(i) for i in idx]
        return LabeledSequences(
            ids=[self.ids[i] for i in idx],
            sequences=[self.sequences[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            task_type=self.task_type,
            source=self.source,
            splits=None if self.splits is None else [self.splits[i] for i in idx],
        )


@dataclass
class FastaRecord:
    id: str
    description: str  # the header without ">" (id included)
    sequence: str
    line: int  # 1-based line of the header


class ErrorCollector:
    """Raise at the first malformed record, or collect it and go on (``on_error="skip"``)."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.errors: list[str] = []

    def __call__(self, err: FormatError) -> None:
        if self.on_error == "raise":
            raise err
        self.errors.append(str(err))


def clean_sequence(raw: Any, path: str | Path, record: str, field_name: str = "sequence") -> str:
    """Upper-case, strip whitespace; a trailing stop ``*`` is dropped; anything but A-Z is an error."""
    if not isinstance(raw, str):
        raise FormatError(path, record, field_name, f"expected a sequence string, got {raw!r}")
    s = "".join(raw.split()).upper().removesuffix("*")
    if not s:
        raise FormatError(path, record, field_name, "empty sequence")
    if not _SEQ_RE.fullmatch(s):
        bad = sorted({c for c in s if not ("A" <= c <= "Z")})
        raise FormatError(path, record, field_name, f"non-letter characters {bad} in sequence")
    return s


def parse_label(
    raw: Any, task_type: str, path: str | Path, record: str, field_name: str, sep: str = ";"
) -> Any:
    """One label cell -> ``str`` / ``list[str]`` / ``float`` according to ``task_type``."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if task_type == "multi_label":
        if isinstance(raw, (list, tuple, np.ndarray)):
            items = [str(x).strip() for x in raw]
        elif isinstance(raw, str):
            items = [x.strip() for x in raw.split(sep)]
        else:
            raise FormatError(
                path, record, field_name, f"expected a {sep!r}-separated string or a list, got {raw!r}"
            )
        return sorted({x for x in items if x})
    if task_type == "regression":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise FormatError(path, record, field_name, f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise FormatError(path, record, field_name, f"expected a finite number, got {raw!r}")
        return value
    label = "" if raw is None else str(raw).strip()
    if not label or label.lower() == "nan":
        raise FormatError(path, record, field_name, "missing label")
    return label


# ---------------------------------------------------------------- FASTA


def read_fasta(path: str | Path) -> list[FastaRecord]:
    """Plain FASTA (wrapped lines, blank lines allowed). Sequences are returned raw (not validated)."""
    path = Path(path)
    records: list[FastaRecord] = []
    header: str | None = None
    header_line = 0
    chunks: list[str] = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if header is not None:
                    records.append(_fasta_record(path, header, header_line, chunks))
                header, header_line, chunks = line[1:].strip(), lineno, []
            elif header is None:
                raise FormatError(
                    path, f"line {lineno}", "header", "sequence data before the first '>' header"
                )
            else:
                chunks.append(line)
    if header is not None:
        records.append(_fasta_record(path, header, header_line, chunks))
    if not records:
        raise FormatError(path, "file", "header", "no FASTA records found")
    return records


def _fasta_record(path: Path, header: str, line: int, chunks: list[str]) -> FastaRecord:
    if not header:
        raise FormatError(path, f"line {line}", "header", "empty FASTA header")
    return FastaRecord(id=header.split()[0], description=header, sequence="".join(chunks), line=line)


# ---------------------------------------------------------------- tables


def table_format(path: str | Path, fmt: str = "auto") -> str:
    """``auto`` -> by extension (.csv, .tsv/.tab/.txt, .parquet/.pq)."""
    if fmt != "auto":
        if fmt not in TABLE_FORMATS:
            raise ValueError(f"table format must be one of {TABLE_FORMATS} or 'auto', got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    by_ext = {
        ".csv": "csv",
        ".tsv": "tsv",
        ".tab": "tsv",
        ".txt": "tsv",
        ".parquet": "parquet",
        ".pq": "parquet",
    }
    if suffix not in by_ext:
        raise ValueError(f"{path}: cannot tell the table format from {suffix!r}; set the format explicitly")
    return by_ext[suffix]


def read_table_frame(
    path: str | Path, fmt: str = "auto", required: tuple[str, ...] = (), only_required: bool = False
) -> pd.DataFrame:
    """Load a table; text formats keep every cell a string (no NA guessing). Checks required columns.

    ``only_required`` reads just those columns from Parquet (ProtAnno files carry many wide list columns).
    """
    path = Path(path)
    kind = table_format(path, fmt)
    if kind == "parquet":
        if only_required:
            import pyarrow.parquet as pq

            present = set(pq.read_schema(path).names)
            missing = [c for c in required if c not in present]
            if missing:
                raise FormatError(
                    path, "header", ",".join(missing), f"missing column(s); the table has {sorted(present)}"
                )
        df = pd.read_parquet(path, columns=list(dict.fromkeys(required)) if only_required else None)
    else:
        df = pd.read_csv(path, sep="," if kind == "csv" else "\t", dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FormatError(
            path, "header", ",".join(missing), f"missing column(s); the table has {list(df.columns)}"
        )
    return df


def row_name(i: int, kind: str) -> str:
    """1-based data row, plus the file line for text tables with one header line."""
    return f"row {i + 1}" if kind == "parquet" else f"row {i + 1} (line {i + 2})"


def iter_rows(
    path: str | Path, df: pd.DataFrame, fmt: str, parse: Callable[[str, dict[str, Any]], Any], on_error: str
) -> tuple[list[Any], list[int], list[str]]:
    """Apply ``parse(record_name, row)`` to each row; returns (parsed values, kept row indices, errors)."""
    kind = table_format(path, fmt)
    collect = ErrorCollector(on_error)
    values, kept = [], []
    for i, row in enumerate(df.to_dict("records")):
        try:
            values.append(parse(row_name(i, kind), row))
            kept.append(i)
        except FormatError as err:
            collect(err)
    return values, kept, collect.errors
