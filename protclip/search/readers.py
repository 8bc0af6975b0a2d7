"""Inputs of the embedding job, read from any storage URI into one table shape.

Proteins come from FASTA, UniProt flat files (``.dat`` / ``.dat.gz``) or ProtAnno Parquet; texts from ProtAnno
Parquet (its ``text`` column), a GO OBO file (term name and definition), a TSV of ``id<TAB>text`` or a plain list
of statements (one per line). Every reader returns the same columns (``id``, ``description``, and ``sequence`` or
``text``) plus the malformed records it skipped, each named by file, record and field: the job reports them
instead of dropping them silently. Pure: no Ray (the job runs one reader per input file in a Ray task).
"""

from __future__ import annotations

import io
import posixpath
import re
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from protclip import storage as st
from protclip.data.formats.core import FormatError, clean_sequence

__all__ = [
    "KINDS",
    "PROTEIN_FORMATS",
    "TEXT_FORMATS",
    "ReadResult",
    "detect_format",
    "read_input",
    "list_inputs",
    "parse_fasta_text",
    "parse_obo_texts",
]

Kind = Literal["protein", "text"]
KINDS = ("protein", "text")
PROTEIN_FORMATS = ("fasta", "uniprot", "parquet")
TEXT_FORMATS = ("parquet", "obo", "tsv", "lines")
_SUFFIXES = {
    ".fasta": "fasta", ".fa": "fasta", ".faa": "fasta", ".fas": "fasta",
    ".dat": "uniprot", ".txl": "uniprot", ".sp": "uniprot",
    ".parquet": "parquet", ".pq": "parquet",
    ".obo": "obo", ".tsv": "tsv", ".txt": "lines",
}  # fmt: skip


@dataclass
class ReadResult:
    """One input file's usable rows (a table with ``id``, ``description`` and the content column) and the
    malformed records skipped (one line each: file, record, field, reason)."""

    table: pa.Table
    errors: list[str] = field(default_factory=list)


def content_column(kind: Kind) -> str:
    """The column holding what gets embedded: ``sequence`` for proteins, ``text`` for texts."""
    return "sequence" if kind == "protein" else "text"


def detect_format(uri: str, fmt: str, kind: Kind) -> str:
    """``auto`` -> by extension (``.gz`` looked through); checks that the format fits the kind."""
    allowed = PROTEIN_FORMATS if kind == "protein" else TEXT_FORMATS
    if fmt == "auto":
        name = posixpath.basename(uri.rstrip("/")).lower().removesuffix(".gz")
        fmt = _SUFFIXES.get(posixpath.splitext(name)[1], "")
        if not fmt:
            raise ValueError(f"input {st.redact(uri)}: cannot tell the format from its name; set input.format")
    if fmt not in allowed:
        raise ValueError(f"input {st.redact(uri)}: format {fmt!r} cannot be read as {kind}s (one of {allowed})")
    return fmt


def list_inputs(uri: str, storage: st.StorageConfig | None = None) -> list[str]:
    """The input files of ``uri``: the file itself, every non-hidden file of a folder (sorted), or a glob's
    matches. Returned as URIs of the same scheme. A versioned ProtAnno build folder lists its published version."""
    from protclip.data.parquet_files import resolve_protanno

    uri = resolve_protanno(uri, storage)
    _, prefix, found = st.expand_files(uri, storage)
    if found is None:
        raise FileNotFoundError(f"input {st.redact(uri)} does not exist")
    if not found:
        raise FileNotFoundError(f"input {st.redact(uri)}: no files")
    return [prefix + p for p in found]


def _read_bytes(uri: str, storage: st.StorageConfig | None) -> bytes:
    fs, path = st.filesystem(uri, storage)
    with fs.open(path, "rb", compression="infer") as f:
        return f.read()


def _table(kind: Kind, ids: list[str], descriptions: list[str | None], content: list[str]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "description": pa.array(descriptions, pa.string()),
            content_column(kind): pa.array(content, pa.string()),
        }
    )


def _check_unique(uri: str, ids: list[str], where: list[str]) -> None:
    seen: dict[str, str] = {}
    for i, w in zip(ids, where, strict=True):
        if i in seen:
            raise FormatError(st.redact(uri), w, "id", f"duplicate id {i!r} (first at {seen[i]})")
        seen[i] = w


def parse_fasta_text(text: str, name: str) -> ReadResult:
    """FASTA records (wrapped lines, blank lines allowed); records with an empty header, no residues or
    non-letter residues are reported and skipped; data before the first header or a repeated id is an error."""
    ids: list[str] = []
    descs: list[str | None] = []
    seqs: list[str] = []
    where: list[str] = []
    errors: list[str] = []
    header: str | None = None
    line0 = 0
    chunks: list[str] = []

    def flush() -> None:
        rec = f"record at line {line0}"
        try:
            if not header:
                raise FormatError(name, rec, "header", "empty FASTA header")
            seq = clean_sequence("".join(chunks), name, f"record {header.split()[0]!r} (line {line0})")
        except FormatError as e:
            errors.append(str(e))
            return
        ids.append(header.split()[0])
        descs.append(header.partition(" ")[2].strip() or None)
        seqs.append(seq)
        where.append(f"line {line0}")

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(">"):
            if header is not None:
                flush()
            header, line0, chunks = line[1:].strip(), lineno, []
        elif header is None:
            raise FormatError(name, f"line {lineno}", "header", "sequence data before the first '>' header")
        else:
            chunks.append(line)
    if header is not None:
        flush()
    if not ids and not errors:
        raise FormatError(name, "file", "header", "no FASTA records found")
    _check_unique(name, ids, where)
    return ReadResult(_table("protein", ids, descs, seqs), errors)


def _read_uniprot(uri: str, data: bytes) -> ReadResult:
    from protclip.data.uniprot import UniProtRecord, iter_records

    ids: list[str] = []
    descs: list[str | None] = []
    seqs: list[str] = []
    where: list[str] = []
    errors: list[str] = []
    name = st.redact(uri)
    for res in iter_records(io.BytesIO(data), name):
        if isinstance(res, UniProtRecord):
            ids.append(res.accession)
            descs.append(res.protein_name or None)
            seqs.append(res.sequence)
            where.append(f"line {res.source_line}")
        else:
            errors.append(str(res))
    if not ids and not errors:
        raise FormatError(name, "file", "ID", "no UniProt entries found")
    _check_unique(name, ids, where)
    return ReadResult(_table("protein", ids, descs, seqs), errors)


def _read_parquet(uri: str, data: bytes, kind: Kind, columns: dict[str, str]) -> ReadResult:
    """ProtAnno (or any) Parquet: ``columns`` maps id/description/content to the file's column names; a
    description column the file lacks is left empty."""
    import pyarrow.parquet as pq

    name = st.redact(uri)
    present = set(pq.read_schema(io.BytesIO(data)).names)
    need = [columns["id"], columns["content"]]
    missing = [c for c in need if c not in present]
    if missing:
        raise FormatError(name, "header", ",".join(missing), f"missing column(s); the file has {sorted(present)}")
    want = need + ([columns["description"]] if columns["description"] in present else [])
    t = pq.read_table(io.BytesIO(data), columns=want)
    ids = [None if v is None else str(v) for v in t.column(columns["id"]).to_pylist()]
    raw = t.column(columns["content"]).to_pylist()
    descs = t.column(columns["description"]).to_pylist() if columns["description"] in present else [None] * len(ids)
    out_ids: list[str] = []
    out_desc: list[str | None] = []
    out_content: list[str] = []
    where: list[str] = []
    errors: list[str] = []
    for i, (rid, value, desc) in enumerate(zip(ids, raw, descs, strict=True)):
        rec = f"row {i + 1}" + (f" ({rid})" if rid else "")
        try:
            if not rid:
                raise FormatError(name, rec, columns["id"], "empty id")
            if kind == "protein":
                value = clean_sequence(value, name, rec, columns["content"])
            elif not isinstance(value, str) or not value.strip():
                raise FormatError(name, rec, columns["content"], "empty text")
        except FormatError as e:
            errors.append(str(e))
            continue
        out_ids.append(rid)
        out_desc.append(desc if isinstance(desc, str) and desc else None)
        out_content.append(value.strip())
        where.append(f"row {i + 1}")
    _check_unique(name, out_ids, where)
    return ReadResult(_table(kind, out_ids, out_desc, out_content), errors)


_DEF = re.compile(r'^"((?:[^"\\]|\\.)*)"')


def parse_obo_texts(text: str, name: str) -> ReadResult:
    """GO terms of an OBO file as function statements: ``"<name>: <definition>"`` (the definition's quoted part;
    the name alone when it has none); obsolete terms are left out, a term without a name is reported."""
    ids: list[str] = []
    descs: list[str | None] = []
    texts: list[str] = []
    where: list[str] = []
    errors: list[str] = []
    term: dict[str, str] = {}
    in_term = False

    def flush() -> None:
        if not in_term or not term:
            return
        if "id" not in term:
            errors.append(str(FormatError(name, f"stanza at line {term.get('line', '?')}", "id", "term without an id")))
            return
        if term.get("is_obsolete") == "true":
            return
        if not term.get("name"):
            errors.append(str(FormatError(name, f"term {term['id']} (line {term['line']})", "name", "no name")))
            return
        ids.append(term["id"])
        descs.append(term["name"])
        texts.append(f"{term['name']}: {term['def']}" if term.get("def") else term["name"])
        where.append(f"line {term['line']}")

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            flush()
            term, in_term = {"line": str(lineno)}, line == "[Term]"
            continue
        if not in_term or not line or line.startswith("!"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key == "def":
            m = _DEF.match(value)
            value = m.group(1).replace('\\"', '"') if m else value
        if key in ("id", "name", "def", "is_obsolete") and key not in term:
            term[key] = value
    flush()
    if not ids and not errors:
        raise FormatError(name, "file", "[Term]", "no GO terms found")
    _check_unique(name, ids, where)
    return ReadResult(_table("text", ids, descs, texts), errors)


def _read_tsv_texts(text: str, name: str) -> ReadResult:
    """``id<TAB>text`` lines (no header); a line without a tab or with an empty text is reported."""
    ids: list[str] = []
    texts: list[str] = []
    where: list[str] = []
    errors: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        rid, sep, value = raw.partition("\t")
        if not sep or not rid.strip() or not value.strip():
            errors.append(str(FormatError(name, f"line {lineno}", "text", "expected 'id<TAB>text'")))
            continue
        ids.append(rid.strip())
        texts.append(value.strip())
        where.append(f"line {lineno}")
    _check_unique(name, ids, where)
    return ReadResult(_table("text", ids, list(texts), texts), errors)


def _read_lines(text: str, name: str) -> ReadResult:
    """One function statement per non-empty line; its id is ``<file stem>:<line number>``."""
    stem = posixpath.splitext(posixpath.basename(name))[0]
    rows = [(f"{stem}:{n}", line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise FormatError(name, "file", "text", "no statements (every line is empty)")
    return ReadResult(_table("text", [r[0] for r in rows], [r[1] for r in rows], [r[1] for r in rows]))


def read_input(
    uri: str,
    kind: Kind,
    fmt: str = "auto",
    storage: st.StorageConfig | None = None,
    columns: dict[str, str] | None = None,
) -> ReadResult:
    """Read one input file (local path or URI; ``.gz`` is decompressed) into a :class:`ReadResult`.

    ``columns`` (Parquet only) names the id / description / content columns; default ProtAnno's
    ``accession`` / ``protein_name`` / ``sequence`` (proteins) or ``text`` (texts).
    """
    fmt = detect_format(uri, fmt, kind)
    data = _read_bytes(uri, storage)
    name = st.redact(uri)
    if fmt == "parquet":
        cols = {"id": "accession", "description": "protein_name", "content": content_column(kind)}
        cols |= columns or {}
        return _read_parquet(uri, data, kind, cols)
    if fmt == "uniprot":
        return _read_uniprot(uri, data)
    text = data.decode("utf-8")
    if fmt == "fasta":
        return parse_fasta_text(text, name)
    if fmt == "obo":
        return parse_obo_texts(text, name)
    if fmt == "tsv":
        return _read_tsv_texts(text, name)
    return _read_lines(text, name)
