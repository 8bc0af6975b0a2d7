"""Protein–protein interaction pair tables and the id -> sequence maps they refer to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protclip.data.formats.core import FormatError, clean_sequence, iter_rows, read_fasta, read_table_frame

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


@dataclass
class PairSet:
    ids_a: list[str]
    ids_b: list[str]
    seqs_a: list[str]
    seqs_b: list[str]
    labels: list[int]  # 1 = interacting
    source: str
    splits: list[str] | None = None
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def pair_ids(self) -> list[str]:
        """Order-independent pair keys (``a|b`` with a <= b), for hash splits that keep a pair together."""
        return ["|".join(sorted((a, b))) for a, b in zip(self.ids_a, self.ids_b, strict=True)]


def read_sequence_map(path: str | Path) -> dict[str, str]:
    """id -> sequence from a FASTA file or a header-less 2-column TSV (``id<TAB>sequence``)."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        first = fh.read(1)
    if first == ">":
        return {r.id: clean_sequence(r.sequence, path, f"line {r.line} ({r.id})") for r in read_fasta(path)}
    out: dict[str, str] = {}
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise FormatError(
                    path,
                    f"line {lineno}",
                    "id/sequence",
                    f"expected 2 tab-separated fields, got {len(parts)}",
                )
            out[parts[0].strip()] = clean_sequence(parts[1], path, f"line {lineno}")
    return out


def parse_binary(raw: Any, path: str | Path, where: str, field_name: str) -> int:
    text = str(raw).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise FormatError(path, where, field_name, f"expected a 0/1 label, got {raw!r}")


def read_ppi_pairs(
    path: str | Path,
    *,
    sequences: dict[str, str] | str | Path | None = None,
    label_column: str = "label",
    split_column: str | None = None,
    fmt: str = "auto",
    on_error: str = "raise",
) -> PairSet:
    """Pairs with ``seq_a``/``seq_b`` columns, or ``id_a``/``id_b`` resolved through ``sequences``."""
    path = Path(path)
    seq_map = read_sequence_map(sequences) if isinstance(sequences, (str, Path)) else sequences
    df = read_table_frame(path, fmt, (label_column,) + ((split_column,) if split_column else ()))
    cols = set(df.columns)
    inline = {"seq_a", "seq_b"} <= cols
    has_ids = {"id_a", "id_b"} <= cols
    if not inline and not has_ids:
        raise FormatError(
            path, "header", "seq_a/seq_b or id_a/id_b", f"missing; the table has {sorted(cols)}"
        )
    if not inline and seq_map is None:
        raise ValueError(
            f"{path}: pairs are given by id_a/id_b; pass `sequences` (a FASTA or id<TAB>seq file)"
        )

    def side(row: dict[str, Any], where: str, s: str) -> tuple[str, str]:
        if inline:
            seq = clean_sequence(row[f"seq_{s}"], path, where, f"seq_{s}")
            return (str(row[f"id_{s}"]).strip() if has_ids else seq), seq
        pid = str(row[f"id_{s}"]).strip()
        if pid not in seq_map:  # type: ignore[operator]
            raise FormatError(path, where, f"id_{s}", f"id {pid!r} has no sequence in the sequence map")
        return pid, seq_map[pid]  # type: ignore[index]

    def parse(where: str, row: dict[str, Any]) -> tuple[str, str, str, str, int, str | None]:
        ia, sa = side(row, where, "a")
        ib, sb = side(row, where, "b")
        label = parse_binary(row[label_column], path, where, label_column)
        split = str(row[split_column]).strip() if split_column else None
        return ia, ib, sa, sb, label, split

    values, _, errors = iter_rows(path, df, fmt, parse, on_error)
    return PairSet(
        ids_a=[v[0] for v in values],
        ids_b=[v[1] for v in values],
        seqs_a=[v[2] for v in values],
        seqs_b=[v[3] for v in values],
        labels=[v[4] for v in values],
        source=str(path),
        splits=[v[5] for v in values] if split_column else None,
        errors=errors,
    )
