"""The embedding job (Ray Data, 1 or 2 workers, FASTA or Parquet, local or s3://), the index job and the search
CLI end to end on a tiny model, through a local S3 endpoint."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers.tolerance import ULPS_NETWORK, eps_atol

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, uniprot_dat):
    """40 real proteins as FASTA (plus two malformed records) and as the equivalent ProtAnno-style Parquet, and
    two tiny exports (the model, and another one for the mismatch check)."""
    from protclip.data.uniprot import parse_file
    from protclip.model.config import tiny_model_config
    from protclip.model.protclip import build_model, export_towers

    d = tmp_path_factory.mktemp("search")
    recs = parse_file(uniprot_dat).records[:40]
    fasta = [f">{r.accession} {r.protein_name}\n{r.sequence}\n" for r in recs]
    (d / "in.fasta").write_text("".join(fasta[:20]) + ">BROKEN1 no residues\n>BROKEN2\nMK7Q\n" + "".join(fasta[20:]))
    pq.write_table(pa.table({"accession": [r.accession for r in recs], "sequence": [r.sequence for r in recs],
                             "protein_name": [r.protein_name for r in recs]}), d / "in.parquet")  # fmt: skip
    for name, seed in (("export", 0), ("other", 1)):
        torch.manual_seed(seed)
        export_towers(build_model(tiny_model_config()), d / name)
    return d, recs


def _embed(argv):
    from protclip.recipes.embed import main

    return main(argv)


def test_embed_index_search_local_and_s3(inputs, ray_local, s3_bucket, capsys, tmp_path, monkeypatch):
    from protclip.eval.protclip_embedder import ProtCLIPEmbedder
    from protclip.pretrained import model_from_export
    from protclip.search.cli import main as cli
    from protclip.search.shards import read_embeddings

    d, recs = inputs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    common = ["--source.export", str(d / "export"), "--rows_per_batch", "8", "--batch_size", "4"]
    assert _embed([*common, "--input.uri", str(d / "in.fasta"), "--output", str(tmp_path / "a"), "--workers", "1"]) == 0
    a_summary = json.loads(capsys.readouterr().out)
    s3_emb = f"s3://{s3_bucket}/emb"
    assert _embed([*common, "--input.uri", str(d / "in.parquet"), "--output", s3_emb, "--workers", "2"]) == 0
    capsys.readouterr()

    ids = [r.accession for r in recs]
    reference = ProtCLIPEmbedder(model_from_export(d / "export"), device="cpu").embed_proteins(
        [r.sequence for r in recs], 4)
    atol = eps_atol(1.0, ULPS_NETWORK)  # unit vectors; batches of other composition round differently
    a, b = read_embeddings(str(tmp_path / "a")), read_embeddings(s3_emb)
    for got in (a, b):
        assert got.ids == ids  # every input exactly once, in input order
        np.testing.assert_allclose(got.vectors, reference, rtol=0, atol=atol)
    assert a.manifest.n_malformed == 2 and a_summary["n_malformed"] == 2
    assert "BROKEN1" in a.manifest.malformed_examples[0] and "empty sequence" in a.manifest.malformed_examples[0]
    assert "BROKEN2" in a.manifest.malformed_examples[1] and "non-letter" in a.manifest.malformed_examples[1]
    assert b.manifest.n_malformed == 0 and a.manifest.model.checksum == b.manifest.model.checksum

    from protclip.recipes.index import main as index_main

    s3_idx = f"s3://{s3_bucket}/idx"
    assert index_main(["--embeddings", s3_emb, "--output", s3_idx]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["index_type"] == "flat" and meta["count"] == 40 and meta["manifest_sha256"] == b.manifest_sha256

    text = "PROTEIN NAME: " + recs[3].protein_name + "."
    assert cli(["search", "--index", s3_idx, "--text", text, "-k", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    q = ProtCLIPEmbedder(model_from_export(d / "export"), device="cpu").embed_texts([text], 4)[0]
    expected = [ids[i] for i in np.argsort(-(reference @ q), kind="stable")[:5]]
    assert out[0]["query"] == text and [h["id"] for h in out[0]["hits"]] == expected
    assert out[0]["hits"][0]["description"] == dict(zip(ids, [r.protein_name for r in recs], strict=True))[expected[0]]

    assert cli(["search", "--index", s3_idx, "--text", text, "--export", str(d / "other")]) == 4
    assert "model checksum" in capsys.readouterr().err
    assert cli(["search", "--index", s3_idx, "--fasta", str(d / "in.fasta")]) == 1  # a protein index, not texts
    assert "needs an index of text embeddings" in capsys.readouterr().err

    from mlflow.tracking import MlflowClient

    runs = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()])
    jobs = sorted(r.data.tags.get("protclip.job") for r in runs)
    assert jobs == ["embed", "embed", "index"]
    embed_run = next(r for r in runs if r.data.tags.get("protclip.job") == "embed")
    assert embed_run.data.metrics["embed/count"] == 40
