"""FAISS indexes: approximate indexes keep recall@10 >= 0.95 against the exact one at the default parameters,
and an index folder round-trips with its metadata."""

from __future__ import annotations

import numpy as np
import pytest

from protclip.search.identity import IndexModelMismatch, check_model_matches
from protclip.search.index import IndexMeta, IndexParams, SearchIndex, build_index, read_index, write_index
from protclip.search.shards import ModelInfo


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 100 shared centres with noise 1.5x the centres' scale: neighbourhoods like those of
    embeddings (families), hard enough that weakened parameters (IVF nprobe 2, HNSW M 4) fall below 0.8."""
    centres = np.random.default_rng(1234).standard_normal((100, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 100, n)] + 1.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_at_10_against_exact_at_defaults(kind):
    x, q = clustered(6000, 64, 0), clustered(300, 64, 1)
    exact, _, _ = build_index(x, IndexParams(type="flat"))
    _, truth = exact.search(q, 10)
    approx, chosen, params = build_index(x, IndexParams(type=kind))
    assert chosen == kind and params
    _, found = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(found, truth, strict=True)])
    assert recall >= 0.95, f"{kind} recall@10 {recall:.3f} at {params}"


def test_exact_index_is_brute_force_cosine():
    x, q = clustered(500, 16, 2), clustered(20, 16, 3)
    index, kind, _ = build_index(x, IndexParams())  # auto at this size: exact
    assert kind == "flat"
    scores, pos = index.search(q, 7)
    brute = q @ x.T
    order = np.argsort(-brute, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(pos, order)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, 1), rtol=0, atol=64 * np.finfo(np.float32).eps)


def test_auto_switches_to_the_approximate_type_above_the_threshold():
    p = IndexParams(approx_above=100, approx_type="ivf")
    assert p.chosen_type(100) == "flat" and p.chosen_type(101) == "ivf"
    with pytest.raises(ValueError, match="index.type"):
        IndexParams(type="pq")


def test_index_folder_round_trip_keeps_rows_metadata_and_search_parameters(tmp_path):
    x = clustered(2000, 32, 4)
    index, kind, params = build_index(x, IndexParams(type="ivf", nprobe=5))
    info = ModelInfo(source_kind="export", source_uri="/m", checksum="c" * 64, dim=32)
    meta = IndexMeta(kind="protein", model=info, dim=32, count=2000, index_type=kind, params=params,
                     embeddings_uri="/e", manifest_sha256="m" * 64)  # fmt: skip
    ids = [f"P{i:05d}" for i in range(2000)]
    write_index(str(tmp_path / "idx"), SearchIndex(index, ids, [None] * 2000, meta), np.arange(2000), None)
    loaded = read_index(str(tmp_path / "idx"))
    assert loaded.meta == meta and loaded.ids == ids
    import faiss

    assert faiss.extract_index_ivf(loaded.index).nprobe == 5
    hits = loaded.hits(x[:3], 4)
    assert [h[0]["id"] for h in hits] == ids[:3] and [h["rank"] for h in hits[0]] == [1, 2, 3, 4]


def test_model_mismatch_names_what_differs():
    check_model_matches("idx", 32, "a" * 64, 32, "a" * 64)
    with pytest.raises(IndexModelMismatch, match="32-dimensional.*gives 16"):
        check_model_matches("idx", 32, "a" * 64, 16, "a" * 64)
    with pytest.raises(IndexModelMismatch, match="checksum aaaaaaaaaaaa"):
        check_model_matches("idx", 32, "a" * 64, 32, "b" * 64)
