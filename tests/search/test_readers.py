"""Input readers of the embedding job: malformed records are reported by file, record and field; FASTA and the
equivalent Parquet give the same rows; GO terms become name + definition statements."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protclip.data.formats.core import FormatError
from protclip.search.readers import detect_format, list_inputs, parse_fasta_text, read_input

FASTA = """>sp|P1|A first protein
MKTAYIAKQR
QISFVKSHFS
>P2 empty one
>P3 bad residues
MKT1AY
>P4
mktayiakqr*

>
MKT
"""


def test_fasta_reports_each_malformed_record_and_keeps_the_rest():
    res = parse_fasta_text(FASTA, "q.fasta")
    assert res.table.column("id").to_pylist() == ["sp|P1|A", "P4"]
    assert res.table.column("sequence").to_pylist() == ["MKTAYIAKQRQISFVKSHFS", "MKTAYIAKQR"]
    assert res.table.column("description").to_pylist() == ["first protein", None]
    assert len(res.errors) == 3
    assert "q.fasta: record 'P2' (line 4): field 'sequence': empty sequence" in res.errors[0]
    assert "'P3'" in res.errors[1] and "non-letter" in res.errors[1]
    assert "line 10" in res.errors[2] and "empty FASTA header" in res.errors[2]


def test_fasta_rejects_repeated_ids_and_leading_sequence_data():
    with pytest.raises(FormatError, match="duplicate id 'A'"):
        parse_fasta_text(">A\nMK\n>A\nMK\n", "d.fasta")
    with pytest.raises(FormatError, match="before the first"):
        parse_fasta_text("MK\n>A\nMK\n", "d.fasta")


def test_fasta_and_equivalent_parquet_read_the_same_rows(tmp_path, uniprot_dat):
    from protclip.data.uniprot import parse_file

    recs = parse_file(uniprot_dat).records[:12]
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">{r.accession} {r.protein_name}\n{r.sequence}\n" for r in recs))
    table = pa.table({"accession": [r.accession for r in recs], "sequence": [r.sequence for r in recs],
                      "protein_name": [r.protein_name for r in recs]})  # fmt: skip
    pq.write_table(table, tmp_path / "p.parquet")
    a = read_input(str(fasta), "protein")
    b = read_input(str(tmp_path / "p.parquet"), "protein")
    dat = read_input(str(uniprot_dat), "protein")
    assert not a.errors and not b.errors and not dat.errors
    assert a.table.equals(b.table)
    assert dat.table.slice(0, 12).equals(a.table)


def test_parquet_reports_bad_rows_and_missing_columns(tmp_path):
    pq.write_table(pa.table({"accession": ["A", "B", ""], "sequence": ["MK", "M K 9", "MK"]}), tmp_path / "x.parquet")
    res = read_input(str(tmp_path / "x.parquet"), "protein")
    assert res.table.column("id").to_pylist() == ["A"]
    assert len(res.errors) == 2 and "row 2 (B)" in res.errors[0] and "field 'accession'" in res.errors[1]
    with pytest.raises(FormatError, match="missing column"):
        read_input(str(tmp_path / "x.parquet"), "text")


def test_go_obo_terms_become_name_and_definition_statements(shared_data):
    res = read_input(str(shared_data / "go" / "goslim_generic.obo"), "text")
    ids = res.table.column("id").to_pylist()
    texts = dict(zip(ids, res.table.column("text").to_pylist(), strict=True))
    assert len(ids) == len(set(ids)) > 100 and not res.errors
    assert texts["GO:0000003"].startswith("reproduction: The production of new individuals")


def test_formats_by_extension_and_inputs_of_a_folder(tmp_path):
    assert detect_format("s3://b/x.dat.gz", "auto", "protein") == "uniprot"
    assert detect_format("a/terms.obo", "auto", "text") == "obo"
    with pytest.raises(ValueError, match="cannot be read as proteins"):
        detect_format("a/terms.obo", "auto", "protein")
    (tmp_path / "d").mkdir()
    for name in ("b.fasta", "a.fasta", ".hidden", "_SUCCESS"):
        (tmp_path / "d" / name).write_text(">A\nMK\n")
    assert [p.rsplit("/", 1)[1] for p in list_inputs(str(tmp_path / "d"))] == ["a.fasta", "b.fasta"]
    res = read_input(str(tmp_path / "d" / "a.fasta"), "protein")
    assert res.table.num_rows == 1


def test_embedding_batches_give_every_actor_work():
    """Small inputs are cut so every actor gets at least 4 batches; large ones keep the batch cap."""
    from protclip.recipes.embed import batch_plan

    assert batch_plan(500, 512, 2) == (8, 63)  # not one 512-row batch for one of the 2 actors
    assert batch_plan(100_000, 512, 2) == (196, 511)
    assert batch_plan(3, 512, 2) == (3, 1)
    for n, cap, workers in ((500, 512, 2), (1, 512, 4), (10_001, 64, 8), (7, 2, 3)):
        batches, rows = batch_plan(n, cap, workers)
        assert rows <= cap and batches * rows >= n and (batches - 1) * rows < n
        assert batches >= min(n, 4 * workers)
