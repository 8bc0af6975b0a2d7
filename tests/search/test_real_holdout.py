"""On the held-out test clusters of the real UniProt corpus: the exact index's top-k is brute-force cosine top-k,
and text -> protein R@k through the index equals the retrieval eval suite's number on the same rows (the embedding
job's vectors are the suite's vectors)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from protclip.data.schema import record_to_row, rows_to_table
from protclip.paths import REPO_ROOT


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, shared_data):
    """The test split of the corpus as ProtAnno Parquet, and a tiny model.

    The split is the shipped corpus build's (jobs/configs/build_corpus.yaml): whole MMseqs2 clusters at 30%
    identity, computed by the same function the build runs, so no test protein has a close homologue elsewhere.
    """
    from protclip.config import load_config
    from protclip.data.holdout import make_holdout
    from protclip.data.uniprot import parse_file
    from protclip.eval.protclip_embedder import ProtCLIPEmbedder
    from protclip.model.config import tiny_model_config
    from protclip.model.protclip import build_model
    from protclip.recipes.build_protanno import BuildJobConfig

    records = parse_file(shared_data / "uniprot_corpus" / "uniprot_corpus.dat.gz").records
    holdout_cfg = load_config(BuildJobConfig, REPO_ROOT / "jobs" / "configs" / "build_corpus.yaml").build.holdout
    assert holdout_cfg.mode == "clusters"
    split, _ = make_holdout({r.accession: r.sequence for r in records}, holdout_cfg)
    test = set(split.filter(pc.equal(split["split"], "test"))["accession"].to_pylist())
    rows = [record_to_row(r) for r in records if r.accession in test]
    path = tmp_path_factory.mktemp("holdout") / "test.parquet"
    pq.write_table(rows_to_table(rows), path)
    torch.manual_seed(0)
    embedder = ProtCLIPEmbedder(build_model(tiny_model_config()), device="cpu")
    return path, rows, embedder


def test_exact_index_top_k_equals_brute_force_and_r_at_k_equals_the_retrieval_suite(held_out):
    from protclip.eval.suites.retrieval import RetrievalConfig, positives_matrix, run
    from protclip.search.embedding import embed_table
    from protclip.search.index import IndexParams, index_from_embeddings
    from protclip.search.readers import read_input
    from protclip.search.shards import Embeddings, Manifest, ModelInfo

    path, rows, embedder = held_out
    assert len(rows) >= 100
    suite_cfg = RetrievalConfig(path=str(path), max_examples=None, make_figures=False)
    # the embedding job's path: reader -> embed_table (as each Ray actor runs it) -> an index over the shard rows
    inputs = read_input(str(path), "protein")
    assert not inputs.errors and inputs.table.num_rows == len(rows)
    shard = embed_table(embedder, inputs.table, "protein", suite_cfg.batch_size)
    vectors = shard.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(rows), -1)
    info = ModelInfo(source_kind="export", source_uri="-", checksum="-", dim=vectors.shape[1])
    emb = Embeddings(shard.column("id").to_pylist(), shard.column("description").to_pylist(),
                     shard.column("length").to_numpy(), vectors,
                     Manifest(kind="protein", model=info, count=len(rows), shards=[], inputs=[]), "-")  # fmt: skip
    idx = index_from_embeddings(emb, IndexParams(), str(path))
    assert idx.meta.index_type == "flat"

    texts = [r["text"] for r in rows]
    queries = embedder.embed_texts(texts, suite_cfg.batch_size)
    k = 10
    scores, pos = idx.search(queries, k)
    brute = queries.astype(np.float64) @ vectors.astype(np.float64).T
    top = np.sort(brute, axis=1)[:, ::-1][:, :k]
    np.testing.assert_allclose(scores, top, rtol=0, atol=64 * np.finfo(np.float32).eps)
    # the ids found are the brute-force ones wherever scores are not tied
    np.testing.assert_allclose(np.take_along_axis(brute, pos, 1), top, rtol=0, atol=64 * np.finfo(np.float32).eps)

    suite = run(suite_cfg, embedder).metrics
    positives = positives_matrix([r["sequence"] for r in rows], texts)  # rows are in the suite's order
    for kk in (1, 5, 10):
        through_index = float(np.mean([positives[i, pos[i, :kk]].any() for i in range(len(rows))]))
        assert through_index == pytest.approx(suite[f"t2p_r{kk}"], abs=1e-12), kk
