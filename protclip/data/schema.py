"""The ProtAnno row schema (version "1"), the text builder and record -> row conversion.

The text format is the released ProtAnno one (ProtCLIP ``sampling.py``): ``"PROTEIN NAME: " + name + "."``,
then each non-empty CC field (already carrying its own ``FUNCTION: `` / ``SUBCELLULAR LOCATION: `` /
``SIMILARITY: `` header) appended after one space, in that order. ``property_offsets`` give the character span
of each present property inside ``text`` (end exclusive, header included; the name's span includes its
trailing full stop).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from protclip.data.uniprot import UniProtRecord

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"protclip.schema_version"

PROPERTIES = ("protein_name", "function", "subcellular_location", "similarity")
NAME_HEADER = "PROTEIN NAME: "
CC_HEADERS = {
    "function": "FUNCTION: ",
    "subcellular_location": "SUBCELLULAR LOCATION: ",
    "similarity": "SIMILARITY: ",
}

PROPERTY_OFFSET_TYPE = pa.struct(
    [
        pa.field("property", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
    ]
)
FEATURE_TYPE = pa.struct(
    [
        pa.field("type", pa.string(), nullable=False),
        pa.field("start", pa.int64()),
        pa.field("end", pa.int64()),
        pa.field("note", pa.string()),
    ]
)

PROTANNO_SCHEMA = pa.schema(
    [
        pa.field("accession", pa.string(), nullable=False),
        pa.field("secondary_accessions", pa.list_(pa.string()), nullable=False),
        pa.field("entry_name", pa.string(), nullable=False),
        pa.field("reviewed", pa.bool_(), nullable=False),
        pa.field("organism", pa.string()),
        pa.field("taxon_id", pa.int64()),
        pa.field("sequence", pa.string(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("protein_name", pa.string(), nullable=False),
        pa.field("function", pa.string()),
        pa.field("subcellular_location", pa.string()),
        pa.field("similarity", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("property_offsets", pa.list_(PROPERTY_OFFSET_TYPE), nullable=False),
        pa.field("protein_existence", pa.int64(), nullable=False),
        pa.field("n_properties", pa.int64(), nullable=False),
        pa.field("go_terms", pa.list_(pa.string()), nullable=False),
        pa.field("ec_numbers", pa.list_(pa.string()), nullable=False),
        pa.field("keywords", pa.list_(pa.string()), nullable=False),
        pa.field("features", pa.list_(FEATURE_TYPE), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
)


class SchemaMismatchError(ValueError):
    """A table (usually read from a Parquet file) does not match PROTANNO_SCHEMA."""


def n_properties(function: str | None, location: str | None, similarity: str | None) -> int:
    """Property coverage k in 1..4: the protein name always counts."""
    return 1 + (function is not None) + (location is not None) + (similarity is not None)


def build_text(
    name: str, function: str | None, location: str | None, similarity: str | None
) -> tuple[str, list[dict[str, Any]]]:
    """The ProtAnno text and the span of each present property inside it."""
    if not name:
        raise ValueError("protein name is empty; every ProtAnno row needs one")
    text = NAME_HEADER + name + "."
    offsets: list[dict[str, Any]] = [{"property": "protein_name", "start": 0, "end": len(text)}]
    for prop, value in (
        ("function", function),
        ("subcellular_location", location),
        ("similarity", similarity),
    ):
        if not value:
            continue
        if not value.startswith(CC_HEADERS[prop]):
            raise ValueError(f"{prop} text must start with {CC_HEADERS[prop]!r}, got {value[:40]!r}")
        start = len(text) + 1
        text = text + " " + value
        offsets.append({"property": prop, "start": start, "end": len(text)})
    return text, offsets


def split_text(text: str) -> tuple[str, str | None, str | None, str | None]:
    """Inverse of :func:`build_text` for texts in the released format.

    A property starts at ``". <HEADER>"`` (full stop, space, header); repeated blocks of one topic inside a field
    are joined by ``"; "`` and so are not mistaken for a new field.
    """
    if not text.startswith(NAME_HEADER):
        raise ValueError(f"text does not start with {NAME_HEADER!r}: {text[:40]!r}")
    cuts: list[tuple[int, str]] = []
    pos = 0
    for prop in ("function", "subcellular_location", "similarity"):
        k = text.find(". " + CC_HEADERS[prop], pos)
        if k >= 0:
            cuts.append((k + 2, prop))
            pos = k + 2
    bounds = [c[0] for c in cuts] + [len(text) + 1]
    name = text[len(NAME_HEADER) : bounds[0] - 2]  # drop the ". " closing the name
    out: dict[str, str | None] = dict.fromkeys(("function", "subcellular_location", "similarity"))
    for (start, prop), end in zip(cuts, bounds[1:], strict=True):
        out[prop] = text[start : end - 1]
    return name, out["function"], out["subcellular_location"], out["similarity"]


def record_to_row(record: UniProtRecord) -> dict[str, Any]:
    """One parsed record -> one ProtAnno row (a dict keyed by PROTANNO_SCHEMA's column names)."""
    text, offsets = build_text(
        record.protein_name, record.function, record.subcellular_location, record.similarity
    )
    return {
        "accession": record.accession,
        "secondary_accessions": list(record.secondary_accessions),
        "entry_name": record.entry_name,
        "reviewed": record.reviewed,
        "organism": record.organism,
        "taxon_id": record.taxon_id,
        "sequence": record.sequence,
        "length": len(record.sequence),
        "protein_name": record.protein_name,
        "function": record.function,
        "subcellular_location": record.subcellular_location,
        "similarity": record.similarity,
        "text": text,
        "property_offsets": offsets,
        "protein_existence": record.protein_existence,
        "n_properties": len(offsets),
        "go_terms": list(record.go_terms),
        "ec_numbers": list(record.ec_numbers),
        "keywords": list(record.keywords),
        "features": [
            {"type": f.type, "start": f.start, "end": f.end, "note": f.note} for f in record.features
        ],
        "source_file": record.source_file,
        "source_offset": record.source_offset,
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> an Arrow table with exactly PROTANNO_SCHEMA (metadata included)."""
    table = pa.Table.from_pylist(rows, schema=PROTANNO_SCHEMA)
    validate_table(table, "<rows_to_table>")
    return table


def _norm(t: pa.DataType) -> pa.DataType:
    """Type with list item names normalised (Parquet writes lists as 'element', Arrow as 'item')."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        f = t.value_field
        return pa.list_(pa.field("item", _norm(f.type), f.nullable))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _norm(f.type), f.nullable) for f in t])
    return t


def validate_table(table: pa.Table, source: str) -> None:
    """Raise :class:`SchemaMismatchError` naming ``source`` if ``table`` is not a ProtAnno v1 table."""
    problems: list[str] = []
    meta = table.schema.metadata or {}
    version = meta.get(SCHEMA_VERSION_KEY)
    if version is not None and version.decode() != SCHEMA_VERSION:
        problems.append(f"schema version {version.decode()!r}, expected {SCHEMA_VERSION!r}")
    names, want = table.schema.names, PROTANNO_SCHEMA.names
    missing = [n for n in want if n not in names]
    extra = [n for n in names if n not in want]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if not missing and not extra and names != want:
        problems.append(f"columns out of order: {names}")
    for f in PROTANNO_SCHEMA:
        if f.name not in names:
            continue
        got = table.schema.field(f.name)
        if _norm(got.type) != _norm(f.type):
            problems.append(f"column {f.name!r} has type {got.type}, expected {f.type}")
        elif not f.nullable and table.column(f.name).null_count:
            problems.append(f"column {f.name!r} has {table.column(f.name).null_count} nulls but is required")
    if problems:
        raise SchemaMismatchError(f"{source}: not a ProtAnno v{SCHEMA_VERSION} table: " + "; ".join(problems))
