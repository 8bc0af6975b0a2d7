"""Reader for the UniProt TSV export (the input of ProtCLIP's original ``sampling.py``).

Columns are mapped by header name (case-insensitive; both the current REST headers and the legacy ones such as
``Status``/``Entry name`` are accepted), so column order and extra columns do not matter. Required:
``Entry``, ``Protein names``, ``Protein existence``, ``Sequence``, and ``Reviewed``/``Status`` unless the caller
passes ``reviewed=`` for the whole file. Missing optional columns give None / empty lists.

A header problem raises :class:`TsvFormatError` naming the file. A bad row becomes a
:class:`MalformedRecord` whose reason names the column and value (``strict=True`` raises instead), so the
build job can count good + bad == rows as for flat files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from protclip.data.uniprot.entry import VALID_RESIDUES
from protclip.data.uniprot.records import MalformedRecord, ParseReport, ParseResult, UniProtRecord
from protclip.data.uniprot.split import open_uniprot

# canonical field -> accepted header names (lower-case)
HEADERS: dict[str, tuple[str, ...]] = {
    "accession": ("entry", "accession"),
    "entry_name": ("entry name",),
    "reviewed": ("reviewed", "status"),
    "protein_name": ("protein names",),
    "function": ("function [cc]",),
    "subcellular_location": ("subcellular location [cc]", "subcellular location"),
    "similarity": ("sequence similarities",),
    "protein_existence": ("protein existence",),
    "sequence": ("sequence",),
    "organism": ("organism",),
    "taxon_id": ("organism (id)", "organism id", "organism identifier"),
    "go_terms": ("gene ontology ids", "gene ontology (go ids)"),
    "ec_numbers": ("ec number",),
    "keywords": ("keywords",),
    "length": ("length",),
    "secondary_accessions": ("secondary accessions",),
}
REQUIRED = ("accession", "protein_name", "protein_existence", "sequence")

PE_LEVELS = {
    "evidence at protein level": 1,
    "evidence at transcript level": 2,
    "inferred from homology": 3,
    "predicted": 4,
    "uncertain": 5,
}
_REVIEWED = {
    "reviewed": True,
    "unreviewed": False,
    "swiss-prot": True,
    "trembl": False,
    "true": True,
    "false": False,
}


class TsvFormatError(ValueError):
    """A TSV file or row that cannot be read; the message names file, line and column."""


class _BadValue(Exception):
    def __init__(self, field: str, value: str, why: str) -> None:
        super().__init__(field, value, why)
        self.field, self.value, self.why = field, value, why


def _map_header(cols: list[str], source: str, need_reviewed: bool) -> dict[str, int]:
    lower = [c.strip().lower() for c in cols]
    idx: dict[str, int] = {}
    for fld, names in HEADERS.items():
        for n in names:
            if n in lower:
                idx[fld] = lower.index(n)
                break
    missing = [f for f in REQUIRED if f not in idx]
    if need_reviewed and "reviewed" not in idx:
        missing.append("reviewed")
    if missing:
        want = ", ".join(repr(HEADERS[f][0].title()) for f in missing)
        raise TsvFormatError(f"{source}:1: header lacks required column(s) {want}; header is {cols}")
    return idx


def _parse_row(
    fields: list[str],
    idx: dict[str, int],
    header: list[str],
    reviewed: bool | None,
    source: str,
    offset: int,
    line: int,
) -> UniProtRecord:
    def get(fld: str) -> str | None:
        i = idx.get(fld)
        if i is None:
            return None
        v = fields[i].strip()
        return v or None

    def bad(fld: str, why: str) -> _BadValue:
        return _BadValue(header[idx[fld]], fields[idx[fld]], why)

    acc = get("accession")
    if acc is None or not acc.isalnum():
        raise bad("accession", "expected a UniProt accession")
    name = get("protein_name")
    if name is None:
        raise bad("protein_name", "empty protein name")
    pe_raw = get("protein_existence") or ""
    pe = PE_LEVELS.get(pe_raw.lower().split(":", 1)[-1].strip())
    if pe is None and pe_raw[:1].isdigit() and (len(pe_raw) == 1 or pe_raw[1] == ":"):
        pe = int(pe_raw[0])
    if pe is None or not 1 <= pe <= 5:
        raise bad("protein_existence", f"expected one of {sorted(PE_LEVELS)} or 1..5")
    seq = get("sequence") or ""
    if not seq or not VALID_RESIDUES.issuperset(seq):
        raise bad(
            "sequence",
            f"invalid residue characters {''.join(sorted(set(seq) - VALID_RESIDUES))!r}"
            if seq
            else "empty sequence",
        )
    length = get("length")
    if length is not None and (not length.isdigit() or int(length) != len(seq)):
        raise bad("length", f"does not match the sequence length {len(seq)}")
    if "reviewed" in idx:
        rv = _REVIEWED.get((get("reviewed") or "").lower())
        if rv is None:
            raise bad("reviewed", "expected 'reviewed' or 'unreviewed'")
    else:
        rv = bool(reviewed)
    taxon: int | None = None
    tx = get("taxon_id")
    if tx is not None:
        if not tx.isdigit():
            raise bad("taxon_id", "expected an integer NCBI taxonomy id")
        taxon = int(tx)
    go = [g.strip() for g in (get("go_terms") or "").split(";") if g.strip()]
    if any(not g.startswith("GO:") for g in go):
        raise bad("go_terms", "expected 'GO:nnnnnnn' ids separated by ';'")
    ecs = sorted({e.strip() for e in (get("ec_numbers") or "").split(";") if e.strip()})
    kws = [k.strip() for k in (get("keywords") or "").split(";") if k.strip()]
    sec = [s.strip() for s in (get("secondary_accessions") or "").split(";") if s.strip()]
    return UniProtRecord(
        accession=acc,
        secondary_accessions=sec,
        entry_name=get("entry_name") or "",
        reviewed=rv,
        organism=get("organism"),
        taxon_id=taxon,
        protein_existence=pe,
        protein_name=name,
        function=get("function"),
        subcellular_location=get("subcellular_location"),
        similarity=get("similarity"),
        sequence=seq,
        go_terms=go,
        ec_numbers=ecs,
        keywords=kws,
        source_file=source,
        source_offset=offset,
        source_line=line,
    )


def iter_tsv_records(
    stream: BinaryIO, source_name: str, reviewed: bool | None = None, strict: bool = False
) -> Iterator[ParseResult]:
    """Parse a UniProt TSV byte stream; one result per data row (blank lines are skipped)."""
    head = stream.readline()
    if not head.strip():
        raise TsvFormatError(f"{source_name}:1: empty file or empty header line")
    header = head.decode("utf-8-sig").rstrip("\r\n").split("\t")
    idx = _map_header(header, source_name, need_reviewed=reviewed is None)
    offset, line = len(head), 1
    for raw in stream:
        line += 1
        here, offset = offset, offset + len(raw)
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text.strip():
            continue
        fields = text.split("\t")
        acc = fields[idx["accession"]].strip() or None if len(fields) > idx["accession"] else None
        try:
            if len(fields) != len(header):
                raise TsvFormatError(f"{len(fields)} fields, header has {len(header)}")
            yield _parse_row(fields, idx, header, reviewed, source_name, here, line)
        except _BadValue as e:
            msg = f"column {e.field!r}: bad value {e.value[:60]!r}: {e.why}"
            if strict:
                raise TsvFormatError(f"{source_name}:{line}: {msg}") from None
            yield MalformedRecord(source_name, here, line, acc, msg)
        except TsvFormatError as e:
            if strict:
                raise TsvFormatError(f"{source_name}:{line}: {e}") from None
            yield MalformedRecord(source_name, here, line, acc, str(e))


def read_tsv(
    path: str | os.PathLike[str],
    source_name: str | None = None,
    reviewed: bool | None = None,
    strict: bool = False,
) -> ParseReport:
    """Read a whole local ``.tsv`` / ``.tsv.gz`` into a :class:`ParseReport`."""
    src = source_name if source_name is not None else os.fspath(path)
    report = ParseReport()
    with open_uniprot(path) as f:
        for res in iter_tsv_records(f, src, reviewed=reviewed, strict=strict):
            if isinstance(res, UniProtRecord):
                report.records.append(res)
            else:
                report.errors.append(res)
    return report
