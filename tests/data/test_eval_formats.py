"""Benchmark file readers: the real DeepLoc test set and GO slim, synthetic tables, error messages, splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from protclip.data.alphabet import AMINO_ACIDS
from protclip.data.formats import (
    FormatError,
    Mutation,
    parse_mutant,
    read_deeploc_fasta,
    read_labeled,
    read_labeled_fasta,
    read_mutations,
    read_ppi_pairs,
    read_sequence_map,
    read_table,
)
from protclip.data.splits import split_by_hash, subsample_by_hash
from protclip.eval.go import propagate, read_obo
from protclip.paths import shared_data_dir

DEEPLOC = shared_data_dir() / "benchmarks" / "deeploc1_la" / "deeploc_test_set.fasta"

# counts from benchmarks/deeploc1_la/README.md
README_LOCATIONS = {
    "Nucleus": 806,
    "Cytoplasm": 505,
    "Extracellular": 393,
    "Mitochondrion": 302,
    "Cell.membrane": 273,
    "Endoplasmic.reticulum": 173,
    "Plastid": 152,
    "Golgi.apparatus": 70,
    "Lysosome/Vacuole": 64,
    "Peroxisome": 30,
}


# ---------------------------------------------------------------- DeepLoc (real file)


def test_deeploc_real_file_location_counts_match_readme():
    data = read_deeploc_fasta(DEEPLOC)
    assert len(data) == 2768 and data.errors == []
    assert dict(Counter(data.labels)) == README_LOCATIONS
    assert set(data.splits) == {"test"}  # every header carries the test flag
    assert len(set(data.ids)) == 2768
    lengths = [len(s) for s in data.sequences]
    assert min(lengths) == 40 and max(lengths) == 5654
    assert (
        sum(bool(set(s) - set(AMINO_ACIDS)) for s in data.sequences) == 4
    )  # "four ... non-standard letters"
    assert data.ids[0] == "Q9H400" and data.labels[0] == "Cell.membrane"


def test_deeploc_real_file_membrane_task_drops_unknown():
    data = read_deeploc_fasta(DEEPLOC, label="membrane")
    assert dict(Counter(data.labels)) == {"M": 743, "S": 1003}
    assert data.dropped == {"membrane_unknown": 1022}


def test_deeploc_dispatch_and_malformed_headers(tmp_path):
    good = ">P1 Nucleus-S test\nMKT\nAYI\n>P2 Cytoplasm-M\nMKV\n"
    f = tmp_path / "d.fasta"
    f.write_text(good)
    data = read_labeled(f, fmt="deeploc")
    assert data.sequences == ["MKTAYI", "MKV"] and data.splits == ["test", "train"]

    f.write_text(good + ">P3 Nucleus-X test\nMKV\n>P4 Nucleus-S test\nMK1V\n")
    with pytest.raises(FormatError) as err:
        read_deeploc_fasta(f)
    msg = str(err.value)
    assert "d.fasta" in msg and "line 6 (P3)" in msg and "'label'" in msg
    skipped = read_deeploc_fasta(f, on_error="skip")
    assert len(skipped) == 2 and len(skipped.errors) == 2
    assert "line 8 (P4)" in skipped.errors[1] and "non-letter" in skipped.errors[1]


# ---------------------------------------------------------------- plain FASTA and tables


def test_plain_labeled_fasta(tmp_path):
    f = tmp_path / "x.fasta"
    f.write_text(">a GO:1;GO:2\nMKV\n>b GO:3\nmkt\n")
    data = read_labeled_fasta(f, "multi_label")
    assert data.labels == [["GO:1", "GO:2"], ["GO:3"]] and data.sequences == ["MKV", "MKT"]
    f.write_text(">a 1.5\nMKV\n>b high\nMKT\n")
    with pytest.raises(FormatError, match=r"x.fasta: line 3 \(b\): field 'label': expected a number"):
        read_labeled_fasta(f, "regression")
    f.write_text("MKV\n>a x\nMKV\n")
    with pytest.raises(FormatError, match="line 1.*before the first"):
        read_labeled_fasta(f, "single_label")


def test_tables_csv_tsv_parquet(tmp_path):
    df = pd.DataFrame(
        {
            "acc": ["a", "b", "c"],
            "seq": ["MKV", "MKTA", "GGG"],
            "loc": ["N", "C", "N"],
            "go": ["x;y", "y", ""],
            "stab": ["0.5", "-1", "2e-1"],
        }
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    single = read_table(
        tmp_path / "t.csv",
        task_type="single_label",
        sequence_column="seq",
        label_column="loc",
        id_column="acc",
    )
    assert single.ids == ["a", "b", "c"] and single.labels == ["N", "C", "N"]
    multi = read_table(tmp_path / "t.tsv", task_type="multi_label", sequence_column="seq", label_column="go")
    assert multi.labels == [["x", "y"], ["y"], []]
    reg = read_table(tmp_path / "t.csv", task_type="regression", sequence_column="seq", label_column="stab")
    assert reg.labels == [0.5, -1.0, 0.2]
    pq = df.assign(go=[["x", "y"], ["y"], []])
    pq.to_parquet(tmp_path / "t.parquet")
    multi_pq = read_table(
        tmp_path / "t.parquet", task_type="multi_label", sequence_column="seq", label_column="go"
    )
    assert multi_pq.labels == multi.labels


def test_table_errors_name_file_row_and_field(tmp_path):
    f = tmp_path / "bad.csv"
    pd.DataFrame({"sequence": ["MKV", "MK V2", "MKT"], "label": ["a", "b", ""]}).to_csv(f, index=False)
    with pytest.raises(FormatError, match=r"bad.csv: row 2 \(line 3\): field 'sequence': non-letter"):
        read_table(f, task_type="single_label")
    skipped = read_table(f, task_type="single_label", on_error="skip")
    assert (
        len(skipped) == 1
        and len(skipped.errors) == 2
        and "row 3 (line 4): field 'label'" in skipped.errors[1]
    )
    with pytest.raises(FormatError, match="bad.csv: header: field 'target'.*missing"):
        read_table(f, task_type="single_label", label_column="target")
    with pytest.raises(ValueError, match="table format"):
        read_table(tmp_path / "x.json", task_type="single_label")


# ---------------------------------------------------------------- mutations


def test_parse_mutant():
    assert parse_mutant("A3G") == [Mutation("A", 2, "G")]
    assert parse_mutant("A3G:K5R") == [Mutation("A", 2, "G"), Mutation("K", 4, "R")]
    assert parse_mutant("A103G", first_position=101) == [Mutation("A", 2, "G")]
    for bad in ("A3", "3G", "A3G:", "A3G:A3C", "A3*", "B3G"):
        with pytest.raises(ValueError):
            parse_mutant(bad)


def test_read_mutations_validates_wild_type(tmp_path):
    wt = "MKAYK"
    f = tmp_path / "dms.csv"
    pd.DataFrame({"mutant": ["A3G", "A3G:K5R", "M1L"], "score": ["0.1", "-2", "1"]}).to_csv(f, index=False)
    data = read_mutations(f, wt_sequence=wt)
    assert data.ids == ["A3G", "A3G:K5R", "M1L"] and data.scores == [0.1, -2.0, 1.0]
    assert data.mutations[1] == [Mutation("A", 2, "G"), Mutation("K", 4, "R")]

    pd.DataFrame({"mutant": ["A3G", "K3R"], "score": ["0.1", "0.2"]}).to_csv(f, index=False)
    with pytest.raises(
        FormatError, match=r"dms.csv: row 2 \(line 3\): field 'mutant': K3R: wild type has 'A' at position 3"
    ):
        read_mutations(f, wt_sequence=wt)
    pd.DataFrame({"mutant": ["A9G"], "score": ["0.1"]}).to_csv(f, index=False)
    with pytest.raises(FormatError, match="outside the wild type"):
        read_mutations(f, wt_sequence=wt)

    per_row = tmp_path / "multi.tsv"
    pd.DataFrame({"mutant": ["A3G", "C1D"], "score": ["1", "2"], "wt": [wt, "CCC"]}).to_csv(
        per_row, sep="\t", index=False
    )
    data = read_mutations(per_row, wt_column="wt")
    assert data.wt_sequences == [wt, "CCC"]
    with pytest.raises(ValueError, match="exactly one"):
        read_mutations(per_row)


# ---------------------------------------------------------------- PPI


def test_ppi_pairs_inline_and_by_id(tmp_path):
    inline = tmp_path / "pairs.tsv"
    pd.DataFrame({"seq_a": ["MKV", "MKT"], "seq_b": ["GGG", "MKV"], "label": ["1", "0"]}).to_csv(
        inline, sep="\t", index=False
    )
    p = read_ppi_pairs(inline)
    assert p.seqs_a == ["MKV", "MKT"] and p.labels == [1, 0] and p.pair_ids()[0] == "GGG|MKV"

    fasta = tmp_path / "seqs.fasta"
    fasta.write_text(">P1\nMKV\n>P2\nGGG\n")
    tsv_map = tmp_path / "dict.tsv"
    tsv_map.write_text("P1\tMKV\nP2\tGGG\n")
    assert read_sequence_map(fasta) == read_sequence_map(tsv_map) == {"P1": "MKV", "P2": "GGG"}
    by_id = tmp_path / "ids.csv"
    pd.DataFrame({"id_a": ["P1", "P2"], "id_b": ["P2", "P3"], "label": ["true", "0"]}).to_csv(
        by_id, index=False
    )
    with pytest.raises(
        FormatError, match=r"ids.csv: row 2 \(line 3\): field 'id_b': id 'P3' has no sequence"
    ):
        read_ppi_pairs(by_id, sequences=fasta)
    p = read_ppi_pairs(by_id, sequences=tsv_map, on_error="skip")
    assert p.ids_a == ["P1"] and p.seqs_b == ["GGG"] and p.labels == [1] and len(p.errors) == 1
    with pytest.raises(ValueError, match="pass `sequences`"):
        read_ppi_pairs(by_id)
    pd.DataFrame({"seq_a": ["MKV"], "seq_b": ["GGG"], "label": ["maybe"]}).to_csv(
        inline, sep="\t", index=False
    )
    with pytest.raises(FormatError, match="field 'label': expected a 0/1 label"):
        read_ppi_pairs(inline)


# ---------------------------------------------------------------- splits


def test_split_by_hash_is_deterministic_and_order_independent():
    ids = [f"P{i:05d}" for i in range(5000)]
    tr, va, te = split_by_hash(ids, [0.8, 0.1, 0.1], seed=3)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(5000))
    assert abs(len(te) / 5000 - 0.1) < 0.02 and abs(len(tr) / 5000 - 0.8) < 0.03
    test_ids = {ids[i] for i in te}
    shuffled = list(reversed(ids))[:3000]
    te2 = split_by_hash(shuffled, [0.8, 0.1, 0.1], seed=3)[2]
    assert {shuffled[i] for i in te2} == test_ids & set(shuffled)
    assert {ids[i] for i in split_by_hash(ids, [0.8, 0.1, 0.1], seed=4)[2]} != test_ids
    dup = split_by_hash(["a", "b", "a"], [0.5, 0.5], seed=0)
    assert any(set(d) >= {0, 2} for d in dup)  # duplicates land together
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_hash(ids, [0.5, 0.4])


def test_subsample_by_hash_is_not_tied_to_the_split_buckets():
    ids = [f"P{i}" for i in range(4000)]
    sample = subsample_by_hash(ids, 400, seed=0)
    assert len(sample) == 400 and np.all(np.diff(sample) > 0)
    te = set(split_by_hash(ids, [0.8, 0.2], seed=0)[1].tolist())
    share = np.mean([i in te for i in sample])
    assert 0.12 < share < 0.28  # ~0.2, not 1.0


# ---------------------------------------------------------------- GO slim (real file)


def test_go_slim_real_file_counts_and_propagation():
    terms = read_obo(shared_data_dir() / "go" / "goslim_generic.obo")
    assert len(terms) == 149
    assert Counter(t.namespace for t in terms.values()) == {
        "biological_process": 71,
        "molecular_function": 43,
        "cellular_component": 35,
    }
    assert sum(len(t.is_a) for t in terms.values()) == 148
    assert sum(len(t.part_of) for t in terms.values()) == 68
    assert terms["GO:0005739"].name == "mitochondrion"
    up = propagate(["GO:0005739"], terms)
    assert {"GO:0005739", "GO:0005737", "GO:0043226", "GO:0005575"} <= set(up)  # cytoplasm, organelle, root
    assert "GO:0008150" not in up  # no leak into biological_process
