"""ProtAnno row schema, text builder (checked against the released ProtAnno jsonl) and table validation."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protclip.data.schema import (
    PROTANNO_SCHEMA,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    SchemaMismatchError,
    build_text,
    n_properties,
    record_to_row,
    rows_to_table,
    split_text,
    validate_table,
)
from protclip.data.uniprot import parse_file
from protclip.paths import shared_data_dir

SAMPLES = shared_data_dir() / "uniprot_samples"
CONVENTION_COLUMNS = [
    "accession",
    "secondary_accessions",
    "entry_name",
    "reviewed",
    "organism",
    "taxon_id",
    "sequence",
    "length",
    "protein_name",
    "function",
    "subcellular_location",
    "similarity",
    "text",
    "property_offsets",
    "protein_existence",
    "n_properties",
    "go_terms",
    "ec_numbers",
    "keywords",
    "features",
    "source_file",
    "source_offset",
]


@pytest.fixture(scope="module")
def records():
    rep = parse_file(SAMPLES / "uniprot_samples.dat", source_name="uniprot_samples.dat")
    assert rep.errors == []
    return rep.records


@pytest.fixture(scope="module")
def released():
    with open(SAMPLES / "protclip_aligned_data_sample.jsonl") as f:
        return [json.loads(line) for line in f]


def test_schema_columns_and_version():
    assert SCHEMA_VERSION == "1"
    assert PROTANNO_SCHEMA.names == CONVENTION_COLUMNS
    assert PROTANNO_SCHEMA.metadata[SCHEMA_VERSION_KEY] == b"1"
    nullable = {f.name for f in PROTANNO_SCHEMA if f.nullable}
    assert nullable == {"organism", "taxon_id", "function", "subcellular_location", "similarity"}
    assert PROTANNO_SCHEMA.field("features").type.value_type.names == ["type", "start", "end", "note"]
    assert PROTANNO_SCHEMA.field("property_offsets").type.value_type.names == ["property", "start", "end"]


def test_released_texts_rebuild_byte_identical(released):
    assert len(released) == 10
    for item in released:
        text = item["text"]
        name, function, location, similarity = split_text(text)
        rebuilt, offsets = build_text(name, function, location, similarity)
        assert rebuilt == text
        assert rebuilt.encode() == text.encode()
        assert offsets[0] == {
            "property": "protein_name",
            "start": 0,
            "end": len("PROTEIN NAME: " + name + "."),
        }
        for o in offsets:
            span = text[o["start"] : o["end"]]
            header = {
                "protein_name": "PROTEIN NAME: ",
                "function": "FUNCTION: ",
                "subcellular_location": "SUBCELLULAR LOCATION: ",
                "similarity": "SIMILARITY: ",
            }
            assert span.startswith(header[o["property"]])
        assert [o["end"] + 1 for o in offsets[:-1]] == [o["start"] for o in offsets[1:]]
        assert offsets[-1]["end"] == len(text)
        assert len(offsets) == n_properties(function, location, similarity)


def test_released_sample_details(released):
    first = split_text(released[0]["text"])
    assert first[0] == (
        "2' cyclic ADP-D-ribose synthase AbTIR (2'cADPR synthase AbTIR) (EC 3.2.2.-) "
        "(NAD(+) hydrolase AbTIR) (EC 3.2.2.6) (TIR domain-containing protein in A.baumannii) "
        "(AbTIR)"
    )
    assert first[2] is None and first[3] is None and first[1].startswith("FUNCTION: NAD(+) hydrolase")
    poly = split_text(released[2]["text"])  # repeated FUNCTION blocks joined by "; " stay in one field
    assert poly[1].count("FUNCTION: ") == 14 and poly[2].count("SUBCELLULAR LOCATION: ") == 10
    assert poly[3].startswith("SIMILARITY: In the N-terminal section")


def test_build_text_format_and_offsets():
    text, offs = build_text("Foo", None, "SUBCELLULAR LOCATION: Nucleus.", "SIMILARITY: Belongs to X.")
    assert text == "PROTEIN NAME: Foo. SUBCELLULAR LOCATION: Nucleus. SIMILARITY: Belongs to X."
    assert offs == [
        {"property": "protein_name", "start": 0, "end": 18},
        {"property": "subcellular_location", "start": 19, "end": 49},
        {"property": "similarity", "start": 50, "end": 75},
    ]
    assert build_text("Foo", None, None, None) == (
        "PROTEIN NAME: Foo.",
        [{"property": "protein_name", "start": 0, "end": 18}],
    )
    with pytest.raises(ValueError, match="must start with 'FUNCTION: '"):
        build_text("Foo", "Binds DNA.", None, None)
    with pytest.raises(ValueError, match="empty"):
        build_text("", None, None, None)


def test_record_to_row_on_real_records(records):
    rows = [record_to_row(r) for r in records]
    for rec, row in zip(records, rows, strict=True):
        assert list(row) == CONVENTION_COLUMNS
        assert row["length"] == len(row["sequence"]) == rec.length
        assert row["n_properties"] == rec.n_properties == len(row["property_offsets"])
        assert 1 <= row["n_properties"] <= 4 and 1 <= row["protein_existence"] <= 5
        for o in row["property_offsets"]:
            value = row[o["property"]]
            span = row["text"][o["start"] : o["end"]]
            assert span == ("PROTEIN NAME: " + value + "." if o["property"] == "protein_name" else value)
        assert split_text(row["text"]) == (
            rec.protein_name,
            rec.function,
            rec.subcellular_location,
            rec.similarity,
        )
        assert [f["type"] for f in row["features"]] == [f.type for f in rec.features]
    chs3 = next(r for r in rows if r["accession"] == "O23729")
    assert chs3["text"] == (
        "PROTEIN NAME: Chalcone synthase 3 (EC 2.3.1.74) (Naringenin-chalcone synthase 3). FUNCTION: The primary "
        "product of this enzyme is 4,2',4',6'-tetrahydroxychalcone (also termed naringenin-chalcone or chalcone) "
        "which can under specific conditions spontaneously isomerize into naringenin. SIMILARITY: Belongs to the "
        "thiolase-like superfamily. Chalcone/stilbene synthases family. {ECO:0000305}."
    )
    assert chs3["features"] == [
        {"type": "CHAIN", "start": 1, "end": 394, "note": "Chalcone synthase 3"},
        {"type": "ACT_SITE", "start": 165, "end": 165, "note": None},
    ]
    assert chs3["source_file"] == "uniprot_samples.dat"
    assert {r["n_properties"] for r in rows} == {1, 2, 3, 4}


def test_table_and_parquet_round_trip(tmp_path, records):
    rows = [record_to_row(r) for r in records]
    table = rows_to_table(rows)
    assert table.num_rows == 103 and table.schema.equals(PROTANNO_SCHEMA, check_metadata=True)
    path = tmp_path / "part-0.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    validate_table(back, str(path))
    assert back.to_pylist() == rows


def test_validate_table_errors_name_the_file(records):
    table = rows_to_table([record_to_row(r) for r in records[:3]])
    with pytest.raises(
        SchemaMismatchError, match=r"^s3://bucket/x.parquet: .*missing columns \['keywords'\]"
    ):
        validate_table(table.drop_columns(["keywords"]), "s3://bucket/x.parquet")
    with pytest.raises(SchemaMismatchError, match=r"f.parquet: .*unexpected columns \['extra'\]"):
        validate_table(table.append_column("extra", pa.array([1, 2, 3])), "f.parquet")
    bad_type = table.set_column(table.schema.get_field_index("length"), "length", pa.array(["1", "2", "3"]))
    with pytest.raises(SchemaMismatchError, match="column 'length' has type string, expected int64"):
        validate_table(bad_type, "f.parquet")
    with pytest.raises(SchemaMismatchError, match="schema version '2'"):
        validate_table(table.replace_schema_metadata({SCHEMA_VERSION_KEY: b"2"}), "f.parquet")
    nulls = table.set_column(0, pa.field("accession", pa.string()), pa.array([None, "A", "B"]))
    with pytest.raises(SchemaMismatchError, match="column 'accession' has 1 nulls but is required"):
        validate_table(nulls, "f.parquet")
    with pytest.raises(SchemaMismatchError, match="columns out of order"):
        validate_table(table.select(list(reversed(table.schema.names))), "f.parquet")
