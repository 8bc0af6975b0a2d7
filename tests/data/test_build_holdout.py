"""The homology-aware held-out split, end to end: build -> _holdout.parquet + manifest -> leak check -> training
pipeline and retrieval evaluation read the same split.

Data: the 103 real sample entries plus the first 200 entries of the real corpus (written verbatim to a ``.dat``).
"""

from __future__ import annotations

import shutil

import pyarrow.compute as pc
import pytest

from protclip.data import mmseqs
from protclip.data.build import BuildConfig, run_build
from protclip.data.config import DataConfig
from protclip.data.holdout import (
    HOLDOUT_FILE,
    HoldoutConfig,
    HoldoutError,
    load_split_rows,
    read_holdout,
    resolve_training_split,
)
from protclip.data.parquet_files import inspect_parquet, resolve_protanno
from protclip.data.pipeline import sampled_rows
from protclip.data.sampling import SamplingConfig
from protclip.eval.suites.retrieval import RetrievalConfig, load_pairs
from tests.helpers.uniprot_subset import write_corpus_subset

pytestmark = pytest.mark.ray

HOLDOUT = HoldoutConfig(min_seq_id=0.3, coverage=0.8, val_fraction=0.1, test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def inputs(shared_data, uniprot_dat, tmp_path_factory) -> list[str]:
    corpus = write_corpus_subset(shared_data, 200, tmp_path_factory.mktemp("raw") / "corpus_subset.dat")
    return [str(uniprot_dat), str(corpus)]


@pytest.fixture(scope="module")
def built(ray_local, inputs, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("protanno") / "v1"
    res = run_build(BuildConfig(inputs=inputs, output=str(out), chunk_bytes=64 << 10, rows_per_shard=60,
                                holdout=HOLDOUT))
    return str(out), res.manifest


def _sequences(uri: str, split: str) -> dict[str, str]:
    t = load_split_rows(uri, split, ["accession", "sequence"])
    return dict(zip(t["accession"].to_pylist(), t["sequence"].to_pylist(), strict=True))


def test_manifest_records_the_split(built):
    out, m = built
    h = m["holdout"]
    assert m["rows"] == 303 and len(m["shards"]) >= 3
    assert (h["mode"], h["min_seq_id"], h["coverage"], h["cov_mode"], h["seed"]) == ("clusters", 0.3, 0.8, 0, 0)
    assert h["mmseqs_version"] == mmseqs.mmseqs_version()
    assert sum(h["rows"].values()) == h["accessions"] == 303
    assert sum(h["clusters"].values()) == h["n_clusters"] < 303
    assert all(h["rows"][s] > 0 for s in ("train", "val", "test"))
    table = read_holdout(out)
    for s in ("train", "val", "test"):
        assert int(pc.sum(pc.equal(table["split"], s)).as_py()) == h["rows"][s]
    # whole clusters: no cluster id appears under two splits
    pairs = set(zip(table["cluster"].to_pylist(), table["split"].to_pylist(), strict=True))
    assert len(pairs) == len({c for c, _ in pairs}) == h["n_clusters"]
    # the holdout file is not a shard: readers of the folder see only the ProtAnno shards
    assert inspect_parquet(out).num_rows == 303


def test_no_test_sequence_has_a_training_homologue(built):
    out, _ = built
    test, train = _sequences(out, "test"), _sequences(out, "train")
    assert len(test) + len(train) + len(_sequences(out, "val")) == 303
    hits = mmseqs.easy_search(test, train, min_seq_id=0.3, coverage=0.8, cov_mode=0)
    assert hits == []


def test_split_is_the_same_for_other_chunking_and_reruns(built, inputs, tmp_path):
    out, m = built
    other = tmp_path / "again"
    res = run_build(BuildConfig(inputs=inputs, output=str(other), chunk_bytes=1 << 22, rows_per_shard=1000,
                                holdout=HOLDOUT))
    assert len(res.manifest["shards"]) != len(m["shards"])  # other parse tasks, other shards
    assert read_holdout(str(other)).equals(read_holdout(out))
    assert res.manifest["holdout"]["sha256"] == m["holdout"]["sha256"]


def test_training_pipeline_uses_the_build_split(built):
    out, m = built
    table = read_holdout(out)
    by_split = {s: set(table.filter(pc.equal(table["split"], s))["accession"].to_pylist()) for s in ("train", "val",
                                                                                                     "test")}
    cfg = DataConfig(uri=out, sampling=SamplingConfig(mode="none"), val_max_rows=None, num_epochs=1)
    train = {r["accession"] for r in sampled_rows(cfg, split="train").take_all()}
    val = [r["accession"] for r in sampled_rows(cfg, split="val").take_all()]
    assert train == by_split["train"]
    assert sorted(val) == sorted(by_split["val"])
    split, info = resolve_training_split(cfg, inspect_parquet(out).files)
    assert split is not None and info["source"] == "build" and info["rows"] == m["holdout"]["rows"]
    hashed, info = resolve_training_split(DataConfig(uri=out, holdout="hash"), [])
    assert hashed is None and info["source"] == "hash"


def test_retrieval_reads_one_split_of_the_folder(built):
    out, _ = built
    ids, seqs, texts, _ = load_pairs(RetrievalConfig(path=out, split="test", max_examples=None))
    assert ids == sorted(_sequences(out, "test"))
    assert len(seqs) == len(texts) == len(ids)


def test_stale_or_missing_split_is_a_clear_error(built, tmp_path):
    out, m = built
    copy = tmp_path / "copy"
    shutil.copytree(resolve_protanno(out), copy)  # the published version folder (its own manifest.json)
    (copy / m["shards"][0]["name"]).unlink()  # a shard gone since the build
    cfg = DataConfig(uri=str(copy))
    with pytest.raises(HoldoutError, match="stale"):
        resolve_training_split(cfg, inspect_parquet(str(copy)).files)
    with pytest.raises(HoldoutError, match="stale"):
        load_split_rows(str(copy), "test")
    (copy / HOLDOUT_FILE).write_bytes(b"not the file")
    with pytest.raises(HoldoutError, match="sha256 differs"):
        read_holdout(str(copy))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(copy / m["shards"][1]["name"], lone)
    with pytest.raises(HoldoutError, match="has no held-out split"):
        resolve_training_split(DataConfig(uri=str(lone), holdout="build"), inspect_parquet(str(lone)).files)
