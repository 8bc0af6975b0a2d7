"""UniProtKB flat-file parser and TSV reader, checked on the 103 real entries in shared/data/uniprot_samples."""

from __future__ import annotations

import csv
import gzip
import io
import random
import re
from pathlib import Path

import pytest

from protclip.data.schema import record_to_row
from protclip.data.uniprot import (
    MalformedRecord,
    TsvFormatError,
    UniProtRecord,
    chunk_ranges,
    find_record_boundaries,
    iter_chunk,
    iter_raw_records,
    iter_record_batches,
    iter_records,
    iter_tsv_records,
    line_numbers_at,
    open_uniprot,
    parse_file,
    parse_raw_batch,
    read_tsv,
)
from protclip.data.uniprot.crc import crc64, crc64_bytes, crc64_many, crc64_reference
from protclip.data.uniprot.de import DEFormatError, parse_de
from protclip.data.uniprot.ft import parse_features
from protclip.data.uniprot.text import join_wrapped
from protclip.paths import shared_data_dir

SAMPLES = shared_data_dir() / "uniprot_samples"
DAT = SAMPLES / "uniprot_samples.dat"
SRC = "uniprot_samples.dat"


@pytest.fixture(scope="module")
def report():
    return parse_file(DAT, source_name=SRC)


@pytest.fixture(scope="module")
def by_acc(report):
    return {r.accession: r for r in report.records}


@pytest.fixture(scope="module")
def manifest():
    with open(SAMPLES / "manifest.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def raw_bytes() -> bytes:
    return DAT.read_bytes()


def _entries(data: bytes) -> list[bytes]:
    """The file cut into entries by an independent, obvious method (split after each '//' line)."""
    return [p + b"//\n" for p in data.split(b"//\n") if p.strip()]


def _parse_bytes(data: bytes, **kw) -> tuple[list[UniProtRecord], list[MalformedRecord]]:
    good, bad = [], []
    for res in iter_records(io.BytesIO(data), SRC, **kw):
        (good if isinstance(res, UniProtRecord) else bad).append(res)
    return good, bad


# ---------------------------------------------------------------------------------------------- real entries


def test_every_real_entry_parses_without_error(report):
    assert len(report.records) == 103
    assert report.errors == []
    assert report.n_total == 103
    assert len({r.accession for r in report.records}) == 103


def test_identity_fields_match_manifest(report, manifest):
    assert [r.accession for r in report.records] == [m["accession"] for m in manifest]
    for rec, m in zip(report.records, manifest, strict=True):
        assert rec.entry_name == m["entry_name"], rec.accession
        assert rec.reviewed == (m["status"] == "Reviewed"), rec.accession
        assert rec.length == int(m["length"]), rec.accession
        assert len(rec.go_terms) == int(m["n_go"]), rec.accession
        assert (rec.function is not None) == (m["has_function"] == "1"), rec.accession
        assert rec.organism == m["organism"], rec.accession


def test_sequence_length_equals_sq_line_and_crc(report, raw_bytes):
    entries = _entries(raw_bytes)
    assert len(entries) == 103
    for rec, entry in zip(report.records, entries, strict=True):
        m = re.search(rb"\nSQ   SEQUENCE +(\d+) AA; +\d+ MW; +([0-9A-F]{16}) CRC64;", entry)
        assert m is not None
        assert len(rec.sequence) == int(m.group(1)), rec.accession
        assert rec.crc64 == m.group(2).decode() == crc64(rec.sequence), rec.accession


def test_offsets_and_line_numbers_point_at_the_id_line(report, raw_bytes):
    lines_before = {}
    line = 1
    for i, ln in enumerate(raw_bytes.split(b"\n")):
        if ln.startswith(b"ID   "):
            lines_before[ln.split()[1].decode()] = i + 1
        line += 1
    for rec in report.records:
        assert raw_bytes[rec.source_offset : rec.source_offset + 5] == b"ID   "
        assert raw_bytes[rec.source_offset + 5 :].split(None, 1)[0].decode() == rec.entry_name
        assert rec.source_line == lines_before[rec.entry_name]
        assert rec.source_file == SRC


def test_modern_entry_field_by_field(by_acc):
    """P03395 (ENV_MLVFR, 2022): current FT syntax, <1..>445, wrapped notes, BINDING with /ligand only,
    Contains section, hyphen-wrapped CC text."""
    r = by_acc["P03395"]
    assert r.entry_name == "ENV_MLVFR" and r.reviewed is True
    assert r.secondary_accessions == []
    assert r.organism == "Friend murine leukemia virus (FrMLV)"
    assert r.taxon_id == 11795
    assert r.protein_existence == 1
    assert r.fragment is True
    assert r.protein_name == (
        "Envelope glycoprotein (Env polyprotein) [Cleaved into: Surface protein (SU) (Glycoprotein 70) (gp70)]"
    )
    assert r.function == (
        "FUNCTION: The surface protein (SU) attaches the virus to the host cell by binding to its receptor. "
        "This interaction triggers the refolding of the transmembrane protein (TM) and is thought to activate "
        "its fusogenic potential by unmasking its fusion peptide. Fusion occurs at the host cell plasma membrane "
        "(By similarity). {ECO:0000250}."
    )
    assert r.subcellular_location == (
        "SUBCELLULAR LOCATION: [Surface protein]: Virion membrane; Peripheral membrane protein. Host cell "
        "membrane; Peripheral membrane protein. Note=The surface protein is not anchored to the viral envelope, "
        "but associates with the virion surface through its binding to TM. {ECO:0000250}."
    )
    assert r.similarity is None
    assert r.n_properties == 3
    assert r.go_terms[:2] == ["GO:0020002", "GO:0016020"] and len(r.go_terms) == 8
    assert r.ec_numbers == []
    assert r.keywords[:3] == [
        "Direct protein sequencing",
        "Disulfide bond",
        "Fusion of virus membrane with host cell membrane",
    ]
    assert r.keywords[-1] == "Zinc" and len(r.keywords) == 16
    assert r.length == 445 and r.sequence.startswith("AAPGSSPHQVYNITWEVTNG")
    f = r.features
    assert (f[0].type, f[0].start, f[0].end, f[0].start_fuzzy, f[0].end_fuzzy) == ("CHAIN", 1, 445, "<", ">")
    assert f[0].note == "Envelope glycoprotein" and f[0].ft_id == "PRO_0000239584" and f[0].evidence is None
    assert (f[2].type, f[2].start, f[2].end, f[2].end_fuzzy, f[2].note) == (
        "TOPO_DOM",
        1,
        445,
        ">",
        "Extracellular",
    )
    assert (f[5].type, f[5].start, f[5].end, f[5].note) == ("BINDING", 55, 55, "Zn(2+)")
    assert f[5].qualifier("ligand_id") == "ChEBI:CHEBI:29105" and f[5].evidence == "ECO:0000250"
    carb = [x for x in f if x.type == "CARBOHYD"]
    assert (carb[1].start, carb[1].note) == (168, "N-linked (GlcNAc...) (high mannose) asparagine; by host")
    assert carb[2].note == "N-linked (GlcNAc...) (polylactosaminoglycan) asparagine; by host"
    assert carb[1].evidence == "ECO:0000269|PubMed:2298213" and carb[1].ft_id == "CAR_000084"


def test_modern_small_entry_and_hyphen_unwrapping(by_acc):
    r = by_acc["O23729"]  # CHS3_BROFI: "4,2',4',6'-" / "tetrahydroxychalcone" must rejoin without a space
    assert r.function == (
        "FUNCTION: The primary product of this enzyme is 4,2',4',6'-tetrahydroxychalcone (also termed "
        "naringenin-chalcone or chalcone) which can under specific conditions spontaneously isomerize into "
        "naringenin."
    )
    assert r.similarity == (
        "SIMILARITY: Belongs to the thiolase-like superfamily. Chalcone/stilbene synthases family. {ECO:0000305}."
    )
    assert r.protein_name == "Chalcone synthase 3 (EC 2.3.1.74) (Naringenin-chalcone synthase 3)"
    assert r.ec_numbers == ["2.3.1.74"] and r.protein_existence == 2
    assert [(x.type, x.start, x.end, x.note) for x in r.features] == [
        ("CHAIN", 1, 394, "Chalcone synthase 3"),
        ("ACT_SITE", 165, 165, None),
    ]
    assert r.features[1].evidence == "ECO:0000255|PROSITE-ProRule:PRU10023"


def test_old_column_syntax_entry_field_by_field(by_acc):
    """Q8NE62 (CHDH_HUMAN, 2010): pre-2019 FT columns with '?' positions and /FTId continuation lines."""
    r = by_acc["Q8NE62"]
    assert r.secondary_accessions == ["Q9NY17"]
    assert r.protein_name == "Choline dehydrogenase, mitochondrial (CDH) (CHD) (EC 1.1.99.1)"
    assert r.protein_existence == 2 and r.taxon_id == 9606 and r.organism == "Homo sapiens (Human)"
    assert r.function is None
    assert r.subcellular_location == "SUBCELLULAR LOCATION: Mitochondrion (Potential)."
    assert r.similarity == "SIMILARITY: Belongs to the GMC oxidoreductase family."
    assert r.n_properties == 3
    f = r.features
    assert (f[0].type, f[0].start, f[0].end, f[0].end_fuzzy, f[0].note) == (
        "TRANSIT",
        1,
        None,
        "?",
        "Mitochondrion (Potential)",
    )
    assert (f[1].type, f[1].start, f[1].start_fuzzy, f[1].end, f[1].ft_id) == (
        "CHAIN",
        None,
        "?",
        594,
        "PRO_0000012329",
    )
    assert f[1].note == "Choline dehydrogenase, mitochondrial"
    assert (f[2].type, f[2].start, f[2].end, f[2].note) == ("NP_BIND", 42, 71, "FAD (By similarity)")
    assert (f[5].type, f[5].start, f[5].note, f[5].ft_id) == (
        "VARIANT",
        40,
        "E -> A (in dbSNP:rs9001)",
        "VAR_020421",
    )


def test_old_syntax_uncertain_positions_and_evidence_in_description(by_acc):
    g = by_acc["P28799"].features  # GRN_HUMAN: "PEPTIDE  ?58  ?113  Granulin-1."
    pep = [x for x in g if x.type == "PEPTIDE"]
    assert (pep[1].start, pep[1].end, pep[1].start_fuzzy, pep[1].end_fuzzy, pep[1].note) == (
        58,
        113,
        "?",
        "?",
        "Granulin-1",
    )
    assert pep[1].ft_id == "PRO_0000012695"
    h = by_acc["H2CNN8"].features  # 2014 TrEMBL: "NON_TER  1  1  {ECO:0000313|EMBL:AEX14553.1}."
    assert [(x.type, x.start, x.end, x.note, x.evidence) for x in h] == [
        ("NON_TER", 1, 1, None, "ECO:0000313|EMBL:AEX14553.1"),
        ("NON_TER", 196, 196, None, "ECO:0000313|EMBL:AEX14553.1"),
    ]
    assert by_acc["H2CNN8"].reviewed is False and by_acc["H2CNN8"].protein_existence == 4
    assert by_acc["H2CNN8"].fragment is True and by_acc["H2CNN8"].n_properties == 1


def test_protein_names_render_like_the_tsv(by_acc):
    assert by_acc["F2CXE6"].protein_name == "Plasma membrane intrinsic protein (Predicted protein)"
    assert by_acc["P01100"].protein_name == (  # pre-2008 one-string DE wrapped over two lines
        "Proto-oncogene protein c-fos (Cellular oncogene fos) (G0/G1 switch regulatory protein 7)"
    )
    assert by_acc["P00750"].protein_name == (
        "Tissue-type plasminogen activator (t-PA) (t-plasminogen activator) (tPA) (EC 3.4.21.68) (Alteplase) "
        "(Reteplase) [Cleaved into: Tissue-type plasminogen activator chain A; Tissue-type plasminogen "
        "activator chain B]"
    )
    assert by_acc["P21802"].protein_name.endswith("(Keratinocyte growth factor receptor) (CD antigen CD332)")
    assert by_acc["P04403"].protein_name.startswith(
        "2S sulfur-rich seed storage protein 1 (allergen Ber e 1) ["
    )
    assert by_acc["A8AP56"].protein_name.startswith(
        "Bifunctional protein Aas [Includes: 2-acylglycerophosphoethanolamine acyltransferase (EC 2.3.1.40) "
        "(2-acyl-GPE acyltransferase)"
    )
    assert by_acc["A8AP56"].ec_numbers == ["2.3.1.40", "6.2.1.20"]
    assert by_acc["P0DTC1"].ec_numbers == ["3.4.19.12", "3.4.22.-", "3.4.22.69"]
    assert "{ECO" not in "".join(r.protein_name for r in by_acc.values())


def test_multiple_blocks_of_one_topic_are_joined_like_the_tsv(by_acc):
    assert by_acc["P01100"].similarity == (
        "SIMILARITY: Belongs to the bZIP family. Fos subfamily.; SIMILARITY: Contains 1 bZIP domain."
    )


def test_keywords_with_wrapped_evidence(by_acc):
    kw = by_acc["A0A023GRW4"].keywords  # "Disulfide bond {ECO:...,\nKW   ECO:...}" wraps inside the tag
    assert kw == [
        "Complete proteome",
        "Disulfide bond",
        "EGF-like domain",
        "Immunoglobulin domain",
        "Laminin EGF-like domain",
        "Proteomics identification",
        "Reference proteome",
        "Repeat",
    ]


def test_agrees_with_biopython(report):
    swiss = pytest.importorskip("Bio.SwissProt")
    from Bio.SeqFeature import UnknownPosition

    with open(DAT) as f:
        bio = list(swiss.parse(f))
    assert len(bio) == len(report.records)
    n_feat = 0
    for ours, b in zip(report.records, bio, strict=True):
        acc = ours.accession
        assert ours.sequence == b.sequence, acc
        assert [ours.accession, *ours.secondary_accessions] == b.accessions, acc
        assert ours.protein_existence == b.protein_existence, acc
        assert ours.entry_name == b.entry_name, acc
        assert ours.reviewed == (b.data_class in ("Reviewed", "STANDARD")), acc
        assert ours.organism == b.organism.rstrip("."), acc
        assert [str(ours.taxon_id)] == b.taxonomy_id, acc
        assert (ours.length, ours.crc64) == (b.seqinfo[0], b.seqinfo[2]), acc
        assert ours.go_terms == [x[1] for x in b.cross_references if x[0] == "GO"], acc
        if any("{" in k or k.startswith("ECO:") for k in b.keywords):
            # Biopython splits keywords line by line and breaks evidence tags wrapped over two KW lines
            assert all("{" not in k and "ECO:" not in k for k in ours.keywords), acc
        else:
            assert ours.keywords == b.keywords, acc
        assert len(ours.features) == len(b.features), acc
        for f, g in zip(ours.features, b.features, strict=True):
            n_feat += 1
            assert f.type == g.type, acc
            start = None if isinstance(g.location.start, UnknownPosition) else int(g.location.start) + 1
            end = None if isinstance(g.location.end, UnknownPosition) else int(g.location.end)
            assert (f.start, f.end) == (start, end), (acc, f, g.location)
            assert f.ft_id == g.id, (acc, f)
    assert n_feat == 2533


def test_dat_gz_gives_identical_rows(tmp_path, report):
    gz = tmp_path / "uniprot_samples.dat.gz"
    gz.write_bytes(gzip.compress(DAT.read_bytes()))
    got = parse_file(gz, source_name=SRC)
    assert got.errors == []
    assert [record_to_row(r) for r in got.records] == [record_to_row(r) for r in report.records]
    with open_uniprot(gz) as f:  # the streaming splitter for gzip: batches of raw records
        batches = list(iter_record_batches(f, batch_bytes=200_000))
    assert len(batches) > 5
    parsed = [r for b in batches for r in parse_raw_batch(b, SRC)]
    assert [record_to_row(r) for r in parsed] == [record_to_row(r) for r in report.records]  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk", [1, 997, 20_000, 250_000, 10**9])
def test_chunked_parsing_matches_single_pass(chunk, report, raw_bytes):
    with open(DAT, "rb") as f:
        offsets = find_record_boundaries(f, chunk)
        ranges = chunk_ranges(f, chunk)
        starts = line_numbers_at(f, offsets)
    assert offsets[0] == 0 and offsets == sorted(set(offsets))
    assert all(raw_bytes[o : o + 5] == b"ID   " for o in offsets)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(raw_bytes)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    if chunk == 1:
        assert len(ranges) == 103
    rows = []
    for (s, e), line in zip(ranges, starts, strict=True):
        for res in iter_chunk(DAT, s, e, source_name=SRC, start_line=line):
            assert isinstance(res, UniProtRecord)
            rows.append(record_to_row(res))
            assert res.source_line == next(
                r.source_line for r in report.records if r.accession == res.accession
            )
    assert rows == [record_to_row(r) for r in report.records]


def test_crlf_file_parses_to_the_same_records(report, raw_bytes):
    good, bad = _parse_bytes(raw_bytes.replace(b"\n", b"\r\n"))
    assert bad == []
    strip = lambda r: {k: v for k, v in record_to_row(r).items() if k != "source_offset"}  # noqa: E731
    assert [strip(r) for r in good] == [strip(r) for r in report.records]


def test_small_read_blocks_do_not_change_the_split(raw_bytes):
    a = [(r.offset, r.line, r.data) for r in iter_raw_records(io.BytesIO(raw_bytes))]
    b = [(r.offset, r.line, r.data) for r in iter_raw_records(io.BytesIO(raw_bytes), block_size=777)]
    assert a == b and len(a) == 103


# ----------------------------------------------------------------------------------------- malformed input


def _with_entry(data: bytes, k: int, new_entry: bytes) -> tuple[bytes, int]:
    entries = _entries(data)
    offset = sum(len(e) for e in entries[:k])
    entries[k] = new_entry
    return b"".join(entries), offset


def _acc(entry: bytes) -> str:
    return entry.split(b"\nAC   ", 1)[1].split(b";", 1)[0].decode()


def test_truncated_record_is_reported_and_neighbours_kept(raw_bytes):
    entries = _entries(raw_bytes)
    k = 10
    cut = entries[k][: entries[k].index(b"\nSQ   ") + 40] + b"\n"  # ends inside the sequence, no '//'
    data, offset = _with_entry(raw_bytes, k, cut)
    good, bad = _parse_bytes(data)
    assert len(good) == 102 and len(bad) == 1 and len(good) + len(bad) == 103
    assert bad[0].reason.startswith("truncated record")
    assert bad[0].accession == _acc(entries[k]) and bad[0].byte_offset == offset
    assert bad[0].line == data[:offset].count(b"\n") + 1
    assert _acc(entries[k + 1]) in {r.accession for r in good}


def test_last_record_without_terminator(raw_bytes):
    good, bad = _parse_bytes(raw_bytes[: -len(b"//\n")])
    assert len(good) == 102 and len(bad) == 1
    assert bad[0].reason.startswith("truncated record") and bad[0].accession == "Q8VS35"


def test_wrong_sq_length(raw_bytes):
    entries = _entries(raw_bytes)
    k = 2  # O23729, 394 AA
    bad_entry = entries[k].replace(b"SQ   SEQUENCE   394 AA;", b"SQ   SEQUENCE   395 AA;")
    data, offset = _with_entry(raw_bytes, k, bad_entry)
    good, bad = _parse_bytes(data)
    assert len(good) == 102 and len(bad) == 1
    assert bad[0].reason == "sequence length 394 != SQ line length 395"
    assert (bad[0].accession, bad[0].byte_offset, bad[0].source) == ("O23729", offset, SRC)


def test_unknown_line_code_names_the_line(raw_bytes):
    entries = _entries(raw_bytes)
    k = 5
    pos = entries[k].index(b"\nDR   ") + 1
    data, offset = _with_entry(
        raw_bytes, k, entries[k][:pos] + b"XX   not a UniProt line\n" + entries[k][pos:]
    )
    good, bad = _parse_bytes(data)
    assert len(good) == 102 and len(bad) == 1
    line_of_xx = data[: data.index(b"\nXX   ") + 1].count(b"\n") + 1
    assert bad[0].reason.startswith(f"unknown line code 'XX' at line {line_of_xx}")
    assert bad[0].accession == _acc(entries[k]) and bad[0].byte_offset == offset


@pytest.mark.parametrize("residue, shown", [(b"1", "1"), (b"a", "a"), (b"*", "*"), (b"J", "J")])
def test_invalid_residues(raw_bytes, residue, shown):
    entries = _entries(raw_bytes)
    k = 2
    e = entries[k]
    p = e.index(b"\n     ", e.index(b"\nSQ   ")) + 6  # first residue of the sequence
    data, _ = _with_entry(raw_bytes, k, e[:p] + residue + e[p + 1 :])
    good, bad = _parse_bytes(data)
    assert len(good) == 102 and len(bad) == 1
    assert bad[0].reason == f"invalid residue characters {shown!r} in sequence"


def test_nonstandard_but_valid_residues_are_kept(raw_bytes):
    entries = _entries(raw_bytes)
    e = entries[2]
    p = e.index(b"\n     ", e.index(b"\nSQ   ")) + 6
    data, _ = _with_entry(raw_bytes, 2, e[:p] + b"UOBZX" + e[p + 5 :])
    good, bad = _parse_bytes(data, verify_crc=False)
    assert bad == [] and good[2].sequence.startswith("UOBZX")
    good, bad = _parse_bytes(data)  # with the CRC check the edit is caught
    assert len(bad) == 1 and bad[0].reason.startswith("CRC64 mismatch: SQ line says 2F8D14AF4870BBB2")


def test_missing_lines(raw_bytes):
    entries = _entries(raw_bytes)
    e = entries[3]
    no_ac = re.sub(rb"\nAC   [^\n]*", b"", e)
    no_sq = re.sub(rb"\nSQ   [^\n]*", b"", e)
    no_id = e[e.index(b"\n") + 1 :]
    for broken, reason in (
        (no_ac, "missing AC line"),
        (no_sq, "missing SQ line"),
        (no_id, "missing ID line"),
    ):
        data, offset = _with_entry(raw_bytes, 3, broken)
        good, bad = _parse_bytes(data)
        assert len(good) == 102 and len(bad) == 1, reason
        assert bad[0].reason.startswith(reason) and bad[0].byte_offset == offset
        if reason != "missing AC line":
            assert bad[0].accession == "O95832"


def test_binary_junk_between_and_inside_records(raw_bytes):
    rnd = random.Random(0)
    junk = bytes(rnd.randrange(256) for _ in range(300)).replace(b"\n", b"")
    entries = _entries(raw_bytes)
    # between records 7 and 8
    data = b"".join(entries[:8]) + junk + b"\n" + b"".join(entries[8:])
    good, bad = _parse_bytes(data)
    assert len(good) == 103 and len(bad) == 1
    assert bad[0].byte_offset == sum(len(x) for x in entries[:8])
    # inside record 20
    e = entries[20]
    p = e.index(b"\nCC   ") + 1
    data, offset = _with_entry(raw_bytes, 20, e[:p] + junk + b"\n" + e[p:])
    good, bad = _parse_bytes(data)
    assert len(good) == 102 and len(bad) == 1 and bad[0].byte_offset == offset
    assert bad[0].accession == _acc(e)


def test_empty_and_blank_files():
    assert _parse_bytes(b"") == ([], [])
    assert _parse_bytes(b"\n\n   \n") == ([], [])
    good, bad = _parse_bytes(b"//\n")
    assert good == [] and bad[0].reason.startswith("empty record")


def test_several_damages_at_once_keep_every_good_record(raw_bytes):
    entries = _entries(raw_bytes)
    entries[4] = entries[4][:-3]  # no '//'
    entries[50] = entries[50].replace(b"\nPE   ", b"\nPE   9")  # bad PE
    entries[90] = b"\n\n" + entries[90]  # blank lines before an entry are fine
    good, bad = _parse_bytes(b"".join(entries))
    assert len(good) == 101 and len(bad) == 2
    assert [b.accession for b in bad] == [_acc(entries[4]), _acc(entries[50])]
    assert bad[1].reason.startswith("bad PE line")


# ----------------------------------------------------------------------------------------------- units


def test_crc64_fast_paths_agree_with_the_reference():
    rnd = random.Random(1)
    seqs = [
        bytes(rnd.choice(b"ACDEFGHIKLMNPQRSTVWYUOBZX") for _ in range(rnd.randrange(0, 1500)))
        for _ in range(60)
    ]
    ref = [crc64_reference(s) for s in seqs]
    assert [crc64_bytes(s) for s in seqs] == ref
    assert crc64_many(seqs) == ref


def test_join_wrapped_hyphen_rule():
    assert join_wrapped(["a two-", "chain protein"]) == "a two-chain protein"
    assert join_wrapped(["alpha -", "beta"]) == "alpha - beta"
    assert join_wrapped(["one", "two"]) == "one two"


def test_parse_de_sections_and_old_style():
    name, ecs, frag = parse_de(
        [
            "RecName: Full=Foo protein {ECO:0000256|HAMAP-Rule:MF_1};",
            "         Short=FP;",
            "         EC=1.2.3.4;",
            "AltName: Full=Bar;",
            "         EC=9.9.9.9;",
            "AltName: CD_antigen=CD1;",
            "AltName: INN=Foomab;",
            "Includes:",
            "  RecName: Full=Domain A;",
            "           EC=5.5.5.5;",
            "Contains:",
            "  RecName: Full=Chain 1;",
            "  AltName: Full=C1;",
            "Contains:",
            "  RecName: Full=Chain 2;",
            "Flags: Precursor; Fragment;",
        ]
    )
    assert name == (
        "Foo protein (FP) (EC 1.2.3.4) (Bar) (EC 9.9.9.9) (CD antigen CD1) (Foomab) "
        "[Cleaved into: Chain 1 (C1); Chain 2] [Includes: Domain A (EC 5.5.5.5)]"
    )
    assert ecs == ["1.2.3.4", "5.5.5.5", "9.9.9.9"] and frag is True
    assert parse_de(["SubName: Full=X {ECO:1};", "         EC=1.1.1.1;", "SubName: Full=Y;"]) == (
        "X (EC 1.1.1.1) (Y)",
        ["1.1.1.1"],
        False,
    )
    assert parse_de(["Foo (EC 1.1.1.1) [Contains: Bar] (Fragment)."]) == (
        "Foo (EC 1.1.1.1) [Cleaved into: Bar]",
        ["1.1.1.1"],
        True,
    )
    with pytest.raises(DEFormatError):
        parse_de(["RecName: Full=A;", "         Nonsense=1;"])


def test_parse_features_current_syntax_units():
    block = "\n".join(
        [
            "FT   VAR_SEQ         1..30",
            'FT                   /note="MKVLAAGIVALLLAAGCSSSKEEKKEEKKE',
            'FT                   ASGSKSDAAG -> M (in isoform 2)"',
            'FT                   /id="VSP_000001"',
            "FT   DOMAIN          ?..100",
            'FT                   /note="Some non-',
            'FT                   covalently bound domain"',
            "FT   CONFLICT        Q9XYZ1-2:15",
            'FT                   /note="A -> G"',
        ]
    )
    f = parse_features(block)
    assert f[0].note == "MKVLAAGIVALLLAAGCSSSKEEKKEEKKEASGSKSDAAG -> M (in isoform 2)"
    assert (f[0].start, f[0].end, f[0].ft_id) == (1, 30, "VSP_000001")
    assert (f[1].start, f[1].start_fuzzy, f[1].end, f[1].note) == (
        None,
        "?",
        100,
        "Some non-covalently bound domain",
    )
    assert (f[2].isoform, f[2].start, f[2].end, f[2].note) == ("Q9XYZ1-2", 15, 15, "A -> G")


# ------------------------------------------------------------------------------------------------ TSV


TSV_HEADER = [
    "Entry",
    "Entry Name",
    "Reviewed",
    "Protein names",
    "Organism",
    "Organism (ID)",
    "Length",
    "Protein existence",
    "Sequence",
    "Function [CC]",
    "Subcellular location [CC]",
    "Sequence similarities",
    "Gene Ontology IDs",
    "EC number",
    "Keywords",
]
PE_NAMES = {
    1: "Evidence at protein level",
    2: "Evidence at transcript level",
    3: "Inferred from homology",
    4: "Predicted",
    5: "Uncertain",
}


def _tsv_row(r: UniProtRecord) -> list[str]:
    return [
        r.accession,
        r.entry_name,
        "reviewed" if r.reviewed else "unreviewed",
        r.protein_name,
        r.organism or "",
        str(r.taxon_id or ""),
        str(r.length),
        PE_NAMES[r.protein_existence],
        r.sequence,
        r.function or "",
        r.subcellular_location or "",
        r.similarity or "",
        "; ".join(r.go_terms),
        "; ".join(r.ec_numbers),
        ";".join(r.keywords),
    ]


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\n".join("\t".join(x) for x in [header, *rows]) + "\n")


def _comparable(r: UniProtRecord) -> dict:
    row = record_to_row(r)
    for k in ("features", "source_file", "source_offset", "secondary_accessions"):
        row.pop(k)
    return row


def test_tsv_round_trip_of_real_records(tmp_path, report):
    path = tmp_path / "export.tsv"
    _write_tsv(path, TSV_HEADER, [_tsv_row(r) for r in report.records])
    got = read_tsv(path)
    assert got.errors == [] and len(got.records) == 103
    assert [_comparable(r) for r in got.records] == [_comparable(r) for r in report.records]
    assert got.records[0].source_line == 2 and got.records[1].source_line == 3
    data = path.read_bytes()
    assert all(data[r.source_offset :].startswith(r.accession.encode() + b"\t") for r in got.records)


def test_tsv_columns_by_name_any_order_extra_and_missing_optional(tmp_path, report):
    order = [8, 3, 0, 7, 2, 9]  # Sequence, Protein names, Entry, Protein existence, Reviewed, Function [CC]
    header = [TSV_HEADER[i] for i in order] + ["Gene Names"]
    rows = [[_tsv_row(r)[i] for i in order] + ["GENE"] for r in report.records]
    path = tmp_path / "reordered.tsv"
    _write_tsv(path, header, rows)
    got = read_tsv(path)
    assert got.errors == []
    for a, b in zip(got.records, report.records, strict=True):
        assert (a.accession, a.sequence, a.protein_name, a.function, a.protein_existence, a.reviewed) == (
            b.accession,
            b.sequence,
            b.protein_name,
            b.function,
            b.protein_existence,
            b.reviewed,
        )
        assert (a.organism, a.taxon_id, a.subcellular_location, a.go_terms, a.entry_name) == (
            None,
            None,
            None,
            [],
            "",
        )


def test_tsv_legacy_headers_and_file_level_reviewed(tmp_path, report):
    header = ["Entry", "Entry name", "Status", "Protein names", "Protein existence", "Sequence"]
    rows = [
        [
            r.accession,
            r.entry_name,
            "reviewed" if r.reviewed else "unreviewed",
            r.protein_name,
            f"{r.protein_existence}: {PE_NAMES[r.protein_existence]}",
            r.sequence,
        ]
        for r in report.records
    ]
    path = tmp_path / "legacy.tsv"
    _write_tsv(path, header, rows)
    got = read_tsv(path)
    assert got.errors == [] and [r.reviewed for r in got.records] == [r.reviewed for r in report.records]
    path2 = tmp_path / "trembl.tsv"
    _write_tsv(path2, [h for h in header if h != "Status"], [r[:2] + r[3:] for r in rows])
    assert all(r.reviewed is False for r in read_tsv(path2, reviewed=False).records)
    with pytest.raises(TsvFormatError, match=r"trembl.tsv:1: header lacks required column\(s\) 'Reviewed'"):
        read_tsv(path2)


def test_tsv_bad_values_name_file_line_and_column(tmp_path, report):
    rows = [_tsv_row(r) for r in report.records[:5]]
    rows[2][7] = "Evidence at planet level"
    rows[3][8] = rows[3][8][:10] + "9" + rows[3][8][11:]
    path = tmp_path / "bad.tsv"
    _write_tsv(path, TSV_HEADER, rows)
    got = read_tsv(path)
    assert len(got.records) == 3 and len(got.errors) == 2
    e1, e2 = got.errors
    assert (e1.line, e1.accession, e1.source) == (4, report.records[2].accession, str(path))
    assert e1.reason.startswith("column 'Protein existence': bad value 'Evidence at planet level'")
    assert e2.line == 5 and e2.reason.startswith("column 'Sequence'") and "'9'" in e2.reason
    with pytest.raises(TsvFormatError, match=r"bad.tsv:4: column 'Protein existence'"):
        list(iter_tsv_records(open(path, "rb"), str(path), strict=True))
    with pytest.raises(TsvFormatError, match="lacks required column"):
        _write_tsv(path, ["Entry", "Sequence"], [["P1", "MA"]])
        read_tsv(path)
