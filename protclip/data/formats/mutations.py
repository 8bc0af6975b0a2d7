"""Mutation-effect tables: ``mutant`` strings (``A123G``, multi ``A123G:K45R``), a measured ``score``, a WT."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protclip.data.alphabet import AA_INDEX
from protclip.data.formats.core import FormatError, clean_sequence, iter_rows, parse_label, read_table_frame

_MUT_RE = re.compile(r"([A-Z])(-?\d+)([A-Z])")


@dataclass(frozen=True)
class Mutation:
    wt: str  # wild-type residue
    position: int  # 0-based index into the wild-type sequence
    mt: str  # mutant residue


@dataclass
class MutationSet:
    """One row per variant; ``mutations[i]`` lists the substitutions of row i against ``wt_sequences[i]``."""

    ids: list[str]  # the mutant strings as written
    wt_sequences: list[str]
    mutations: list[list[Mutation]]
    scores: list[float]
    source: str
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)


def parse_mutant(text: str, first_position: int = 1) -> list[Mutation]:
    """``"A123G:K45R"`` -> mutations; position numbers count from ``first_position`` (1 = first residue).

    Raises ``ValueError`` for bad syntax, non-standard mutant residues or a position given twice.
    """
    parts = [p.strip() for p in str(text).strip().split(":")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"empty mutation in {text!r}")
    out = []
    for p in parts:
        m = _MUT_RE.fullmatch(p)
        if m is None:
            raise ValueError(f"{p!r} is not a substitution like 'A123G'")
        wt, num, mt = m.group(1), int(m.group(2)), m.group(3)
        if mt not in AA_INDEX or wt not in AA_INDEX:
            raise ValueError(f"{p!r}: only the 20 standard amino acids can be scored")
        out.append(Mutation(wt, num - first_position, mt))
    positions = [m.position for m in out]
    if len(set(positions)) != len(positions):
        raise ValueError(f"{text!r} mutates a position twice")
    return out


def check_against_wt(muts: list[Mutation], wt: str, first_position: int = 1) -> None:
    """Every WT residue must match the sequence; raises ``ValueError`` naming the mismatch."""
    for m in muts:
        number = m.position + first_position
        if not 0 <= m.position < len(wt):
            raise ValueError(
                f"position {number} is outside the wild type (length {len(wt)}, numbering from {first_position})"
            )
        if wt[m.position] != m.wt:
            raise ValueError(
                f"{m.wt}{number}{m.mt}: wild type has {wt[m.position]!r} at position {number}, not {m.wt!r}"
            )


def read_mutations(
    path: str | Path,
    *,
    wt_sequence: str | None = None,
    wt_column: str | None = None,
    mutant_column: str = "mutant",
    score_column: str = "score",
    first_position: int = 1,
    fmt: str = "auto",
    on_error: str = "raise",
) -> MutationSet:
    """Read a mutation table; exactly one of ``wt_sequence`` (whole file) or ``wt_column`` (per row)."""
    path = Path(path)
    if (wt_sequence is None) == (wt_column is None):
        raise ValueError("give exactly one of wt_sequence or wt_column")
    wt_fixed = (
        clean_sequence(wt_sequence, path, "argument", "wt_sequence") if wt_sequence is not None else None
    )
    required = (mutant_column, score_column) + ((wt_column,) if wt_column else ())
    df = read_table_frame(path, fmt, required)

    def parse(where: str, row: dict[str, Any]) -> tuple[str, str, list[Mutation], float]:
        wt = wt_fixed if wt_fixed is not None else clean_sequence(row[wt_column], path, where, str(wt_column))
        text = str(row[mutant_column]).strip()
        try:
            muts = parse_mutant(text, first_position)
            check_against_wt(muts, wt, first_position)
        except ValueError as err:
            raise FormatError(path, where, mutant_column, str(err)) from None
        score = parse_label(row[score_column], "regression", path, where, score_column)
        return text, wt, muts, score

    values, _, errors = iter_rows(path, df, fmt, parse, on_error)
    return MutationSet(
        ids=[v[0] for v in values],
        wt_sequences=[v[1] for v in values],
        mutations=[v[2] for v in values],
        scores=[v[3] for v in values],
        source=str(path),
        errors=errors,
    )
