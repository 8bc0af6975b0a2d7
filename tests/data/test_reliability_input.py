"""Reliability: bad input (docs/reliability.md §2).

A fuzzed UniProt flat file is assembled from the real samples plus damaged units at known byte offsets
(truncated records, garbage lines, binary junk, wrong SQ/ID lengths, bad CRC, unknown line codes, lowercase or
invalid residues, an empty record, a 100k-residue entry, non-standard residues, CRLF line ends, a record cut at
EOF). The guarantee checked, unit by unit: every good entry is kept (same accession, same byte offset, same
sequence), every bad unit is reported exactly once at its byte offset, nothing else appears, and the counts add
up. The same file goes through the distributed build job (Ray Data, small chunks), whose Parquet rows and
``malformed.jsonl`` must equal the pure parser's result (an empty input file fails the build:
``tests/data/test_atomic_build.py``).

Also: truncated ``.gz`` downloads, empty/whitespace/binary-only files, the documented residue policy (parser and
tokenizer) and corrupt or schema-mismatched Parquet shards (one error naming each bad file).
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protclip.data.uniprot import MalformedRecord, UniProtRecord, iter_records, parse_file
from tests.helpers.fuzz import (
    Fuzz,
    accession_of,
    make_fuzz,
    split_records,
)


@pytest.fixture(scope="module")
def fuzz(uniprot_dat) -> Fuzz:
    return make_fuzz(uniprot_dat.read_bytes())


def check_against_units(fz: Fuzz, records: list[UniProtRecord], errors: list[MalformedRecord]) -> None:
    """The guarantee, unit by unit (shared by the pure parser and the build job checks)."""
    got_good = {r.source_offset: r for r in records}
    got_bad = {e.byte_offset: e for e in errors}
    lost = [(o, u.accession) for o, u in fz.good if o not in got_good or got_good[o].accession != u.accession]
    assert not lost, f"good records lost: {lost}"
    for o, u in fz.good:
        if u.sequence is not None:
            assert got_good[o].sequence == u.sequence
    unreported = [(o, u.kind) for o, u in fz.bad if o not in got_bad]
    assert not unreported, f"bad units not reported: {unreported}"
    for o, u in fz.bad:
        assert re.search(u.reason or ".", got_bad[o].reason, re.I), (u.kind, got_bad[o].reason)
    assert len(records) == len(fz.good) and len(errors) == len(fz.bad), "extra results besides the units"
    assert len(records) + len(errors) == len(fz.units)


# ------------------------------------------------------------------------------------------------ parser


def test_fuzzed_uniprot_keeps_every_good_record_and_reports_every_bad_one(fuzz, tmp_path):
    path = tmp_path / "fuzz.dat"
    path.write_bytes(fuzz.data)
    rep = parse_file(path)
    check_against_units(fuzz, rep.records, rep.errors)
    for e in rep.errors:  # a report names file, line and byte offset
        assert e.source == str(path) and e.line is not None and str(e).startswith(f"{path}:{e.line} (byte ")
    assert len(fuzz.bad) == 18 and len(fuzz.good) == 97  # 3 synthetic good entries, 94 real ones
    # streaming in tiny blocks (boundaries everywhere) and from a .gz give exactly the same results
    streamed = list(iter_records(_Trickle(fuzz.data, 4093), str(path)))
    assert [(type(r), getattr(r, "source_offset", getattr(r, "byte_offset", None))) for r in streamed] == [
        (type(r), getattr(r, "source_offset", getattr(r, "byte_offset", None))) for r in _in_order(rep)]
    gz = tmp_path / "fuzz.dat.gz"
    gz.write_bytes(gzip.compress(fuzz.data))
    rep_gz = parse_file(gz, source_name=str(path))
    assert [r.accession for r in rep_gz.records] == [r.accession for r in rep.records]
    assert [(e.byte_offset, e.reason) for e in rep_gz.errors] == [(e.byte_offset, e.reason) for e in rep.errors]


class _Trickle(io.RawIOBase):
    """A stream that returns at most ``n`` bytes per read (record boundaries straddle reads)."""

    def __init__(self, data: bytes, n: int) -> None:
        self._b, self._n, self._pos = data, n, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        k = self._n if size < 0 else min(size, self._n)
        out = self._b[self._pos : self._pos + k]
        self._pos += len(out)
        return out


def _in_order(rep) -> list:
    return sorted(rep.records + rep.errors,
                  key=lambda r: r.source_offset if isinstance(r, UniProtRecord) else r.byte_offset)


@pytest.mark.parametrize("content", [b"", b"\n\n   \n\t\n", b"\r\n\r\n"], ids=["empty", "whitespace", "crlf-blank"])
def test_empty_files_parse_to_nothing(tmp_path, content):
    p = tmp_path / "e.dat"
    p.write_bytes(content)
    rep = parse_file(p)
    assert rep.records == [] and rep.errors == []


def test_binary_only_file_is_one_report(tmp_path):
    p = tmp_path / "b.dat"
    p.write_bytes(bytes(range(256)) * 40)
    rep = parse_file(p)
    assert rep.records == [] and len(rep.errors) == 1 and rep.errors[0].byte_offset == 0


def test_truncated_gzip_keeps_complete_records_and_reports_the_damage(uniprot_dat, tmp_path):
    """A download that died: every complete entry before the cut is kept, the cut is reported (not an EOFError
    that loses everything and names no file)."""
    data = uniprot_dat.read_bytes()
    gz = gzip.compress(data)
    p = tmp_path / "cut.dat.gz"
    p.write_bytes(gz[: len(gz) // 2])
    rep = parse_file(p)
    recs = split_records(data)
    assert len(rep.records) >= 30
    assert [r.accession for r in rep.records] == [accession_of(r) for r in recs[: len(rep.records)]]
    assert rep.errors, "the truncation must be reported"
    assert all(e.source == str(p) for e in rep.errors)
    assert re.search(r"truncat|compress|gzip|end of", rep.errors[-1].reason, re.I), rep.errors[-1].reason


# ------------------------------------------------------------------------------------------------ residues


def test_non_standard_residues_policy(fuzz):
    """Documented policy (protclip/data/uniprot/reader.py, tokenizers.py): U, O, B, Z, X are valid and kept as is;
    lowercase or other characters make the record malformed; the ESM tokenizer maps U/O/B/Z/X to their own ids,
    lowercase to the upper-case residue and anything else to <unk>."""
    from protclip.data.tokenizers import ESM_UNK, ESM_VOCAB, ProteinTokenizer

    rep = list(iter_records(io.BytesIO(fuzz.data), "fuzz"))
    nonstd = next(r for r in rep if isinstance(r, UniProtRecord) and r.accession == "Q9REL2")
    assert "UOBZX" in nonstd.sequence
    low = next(r for r in rep if isinstance(r, MalformedRecord) and r.accession == "Q9RLB4")
    assert "invalid residue" in low.reason
    tok = ProteinTokenizer()
    ids = tok.encode_residues("UOBZX")
    assert [ESM_VOCAB[i] for i in ids] == list("UOBZX")
    assert tok.encode_residues("acdk").tolist() == tok.encode_residues("ACDK").tolist()
    assert tok.encode_residues("J*1").tolist() == [ESM_UNK] * 3


# ------------------------------------------------------------------------------------------------ parquet


def _protanno_table(uniprot_dat: Path, n: int = 40) -> pa.Table:
    from protclip.data.schema import record_to_row, rows_to_table

    return rows_to_table([record_to_row(r) for r in parse_file(uniprot_dat).records[:n]])


def test_corrupt_parquet_shards_named_in_one_error(uniprot_dat, tmp_path):
    """Every kind of broken shard fails up front (before Ray) with ONE error that names each bad file."""
    from protclip.data.parquet_files import ProtAnnoFileError, inspect_parquet

    table = _protanno_table(uniprot_dat)
    good = tmp_path / "part-00000.parquet"
    pq.write_table(table, good, row_group_size=10)
    raw = good.read_bytes()
    (tmp_path / "part-00001-truncated.parquet").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "part-00002-empty.parquet").write_bytes(b"")
    (tmp_path / "part-00003-junk.parquet").write_bytes(bytes(random.Random(3).randrange(256) for _ in range(5000)))
    pq.write_table(table.drop_columns(["sequence"]), tmp_path / "part-00004-nocol.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("length"), "length",
                                    table["length"].cast(pa.string())), tmp_path / "part-00005-type.parquet")
    meta = {b"protclip.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "part-00006-version.parquet")
    with pytest.raises(ProtAnnoFileError) as ei:
        inspect_parquet(str(tmp_path))
    msg = str(ei.value)
    assert msg.startswith("6 of 7 Parquet file(s)")
    for i, name in enumerate(("truncated", "empty", "junk", "nocol", "type", "version"), start=1):
        assert f"part-0000{i}-{name}.parquet" in msg, name
    assert "part-00000.parquet" not in msg and "Traceback" not in msg


def test_corrupt_data_page_behind_a_valid_footer_is_named(uniprot_dat, tmp_path):
    """Damage the footer check cannot see (a flipped data page) surfaces when the row group is read, as one error
    naming the file and row group, not a decoder stack trace."""
    from protclip.data.parquet_files import ProtAnnoFileError, inspect_parquet, read_fragment

    table = _protanno_table(uniprot_dat)
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=20, compression="zstd")
    inv = inspect_parquet(str(tmp_path))
    md = pq.ParquetFile(path).metadata
    col = md.row_group(1).column(md.schema.to_arrow_schema().names.index("sequence"))
    start = col.data_page_offset
    raw = bytearray(path.read_bytes())
    for k in range(start + 40, start + col.total_compressed_size - 8):
        raw[k] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(ProtAnnoFileError, match=r"part-00000\.parquet: row group 1, column 'sequence' is corrupt"):
        read_fragment(inv.fs, inv.fragments[1], ["accession", "sequence"], str(tmp_path))
    assert read_fragment(inv.fs, inv.fragments[0], ["accession", "sequence"], str(tmp_path)).num_rows == 20


# ------------------------------------------------------------------------------------------------ build job


@pytest.mark.ray
def test_build_job_on_fuzzed_input_loses_nothing(ray_local, fuzz, tmp_path):
    """The distributed build (Ray Data, ~30 record-aligned chunks) on the fuzzed file: Parquet rows and
    malformed.jsonl equal the pure parser's results; manifest counts add up."""
    from protclip.data.build import BuildConfig, run_build

    src = tmp_path / "in"
    src.mkdir()
    (src / "fuzz.dat").write_bytes(fuzz.data)
    res = run_build(BuildConfig(inputs=[str(src)], output=str(tmp_path / "protanno"), chunk_bytes=64 << 10,
                                rows_per_shard=40))
    out = Path(res.version_uri)  # the published version folder
    m = res.manifest
    assert m["seen"] == m["parsed"] + m["malformed"] and m["rows"] == m["parsed"]
    rows = [r for f in sorted(out.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    errors = [json.loads(x) for x in (out / "malformed.jsonl").read_text().splitlines()]
    assert len(errors) == m["malformed"] and len(rows) == m["rows"]
    as_records = [UniProtRecord(accession=r["accession"], secondary_accessions=[], entry_name="", reviewed=False,
                                organism=None, taxon_id=None, protein_existence=1, protein_name="", function=None,
                                subcellular_location=None, similarity=None, sequence=r["sequence"],
                                source_offset=r["source_offset"]) for r in rows]  # fmt: skip
    as_errors = [MalformedRecord(e["source"], e["byte_offset"], e["line"], e["accession"], e["reason"])
                 for e in errors]
    check_against_units(fuzz, as_records, as_errors)
    pure = parse_file(src / "fuzz.dat")

    def norm(reason: str) -> str:  # chunks after the first do not know their line numbers
        return re.sub(r" (at line \d+|\(line \d+ of the record\))", "", reason)

    assert sorted((e["byte_offset"], norm(e["reason"])) for e in errors) == sorted(
        (e.byte_offset, norm(e.reason)) for e in pure.errors)
