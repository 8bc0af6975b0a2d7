"""ProtCLIPEmbedder and the eval-side loaders (no Ray): a model restored from a DCP checkpoint or an export embeds
exactly like the model that wrote it; the spaces, text embeddings and MLM scores behave as the protocol says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from protclip.eval.protclip_embedder import ProtCLIPEmbedder
from protclip.eval.suites import run_suite
from protclip.model.config import tiny_model_config
from protclip.model.protclip import build_model, export_towers
from protclip.pretrained import (
    find_run_config,
    model_config_from_file,
    model_from_checkpoint,
    model_from_export,
)
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding, eps_atol

SEQS = [
    "MKTAYIAKQRQISFVKSHFSRQ",
    "MALWMRLLPLLALLALWGPDPAAA",
    "GSHMKKLLPTAAAGLLLLAAQPAMA",
    "MDEKTTGWRGGHVVEGLAGELEQLRARLEHHPQGQREP",
]
TEXTS = [
    "PROTEIN NAME: Kinase. FUNCTION: Binds ATP.",
    "PROTEIN NAME: Insulin. SUBCELLULAR LOCATION: Secreted.",
    "PROTEIN NAME: Uncharacterized protein.",
    "SUBCELLULAR LOCATION: Nucleus.",
]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    cfg = tiny_model_config()
    model = build_model(cfg).eval()
    with torch.no_grad():  # move the heads away from their init so a wrong load would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return cfg, model


def _reference(model) -> tuple[np.ndarray, np.ndarray]:
    emb = ProtCLIPEmbedder(model, device="cpu")
    return emb.embed_proteins(SEQS, 2), emb.embed_texts(TEXTS, 2)


def test_checkpoint_round_trip_single_process(tmp_path, tiny):
    from protclip.train.checkpoint import TrainState, save_checkpoint

    cfg, model = tiny
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    save_checkpoint(tmp_path / "checkpoint_000000007_x", model, opt, None, TrainState(step=7))
    loaded, state = model_from_checkpoint(tmp_path / "checkpoint_000000007_x", cfg)
    assert state["step"] == 7
    p_ref, t_ref = _reference(model)
    p, t = _reference(loaded)
    assert_close_rounding(p, p_ref, ULPS_NETWORK, msg="proteins")
    assert_close_rounding(t, t_ref, ULPS_NETWORK, msg="texts")


def test_checkpoint_with_wrong_model_config_is_a_clear_error(tmp_path, tiny):
    from protclip.train.checkpoint import TrainState, save_checkpoint

    cfg, model = tiny
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    save_checkpoint(tmp_path / "ck", model, opt, None, TrainState(step=1))
    with pytest.raises(ValueError, match="could not be loaded into the configured model"):
        model_from_checkpoint(tmp_path / "ck", tiny_model_config(projection_dim=16))
    (tmp_path / "ck" / "COMMITTED").unlink()
    with pytest.raises(RuntimeError, match="incomplete"):
        model_from_checkpoint(tmp_path / "ck", cfg)


def test_export_round_trip_with_and_without_run_config(tmp_path, tiny):
    cfg, model = tiny
    export_towers(model, tmp_path / "run" / "export")
    p_ref, t_ref = _reference(model)
    # no run config anywhere: architecture inferred from the towers' config.json and the head shapes
    p, t = _reference(model_from_export(tmp_path / "run" / "export"))
    assert_close_rounding(p, p_ref, ULPS_NETWORK, msg="proteins")
    assert_close_rounding(t, t_ref, ULPS_NETWORK, msg="texts")
    # a run config above the export is found and used (an HF config.json without a model section is skipped)
    (tmp_path / "run" / "export" / "config.json").write_text(json.dumps({"model_type": "esm"}))
    (tmp_path / "run" / "config.yaml").write_text(
        "model:\n  mode: released\n  projection_dim: 32\n  proto_num: 16\n"
    )
    assert find_run_config(tmp_path / "run" / "export") == tmp_path / "run" / "config.yaml"
    released = model_from_export(tmp_path / "run" / "export")
    assert (
        released.cfg.mode == "released"
        and model_config_from_file(tmp_path / "run" / "config.yaml").mode == "released"
    )
    (tmp_path / "run" / "export" / "heads.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="heads.safetensors"):
        model_from_export(tmp_path / "run" / "export")


def test_spaces_text_and_mlm(tiny):
    cfg, model = tiny
    joint = ProtCLIPEmbedder(model, device="cpu")
    tower = joint.with_space("tower")
    pj, pt = joint.embed_proteins(SEQS, 3), tower.embed_proteins(SEQS, 3)
    assert pj.shape == (4, cfg.projection_dim) and pt.shape == (4, cfg.protein_random.hidden_size)
    norms = torch.linalg.vector_norm(torch.from_numpy(pj), dim=1)  # joint space is normalised (fp32 rounding)
    assert_close_rounding(norms, torch.ones_like(norms), msg="norms")
    # batching and order do not change a sequence's embedding
    assert_close_rounding(joint.embed_proteins(SEQS[::-1], 1)[::-1], pj, ULPS_NETWORK, msg="batch size 1")
    t = joint.embed_texts(TEXTS, 2)
    assert t.shape == (4, cfg.projection_dim)
    lp = joint.mlm_log_probs(SEQS[0], [2, 5])
    # 20 of the vocabulary's probabilities sum to at most 1, up to fp32 rounding of the softmax
    assert lp.shape == (2, 20) and np.all(lp <= 0) and np.all(np.exp(lp).sum(1) <= 1.0 + eps_atol(1.0))
    # the MLM head is the model's: the same numbers by hand
    from protclip.data.alphabet import AMINO_ACIDS
    from protclip.data.tokenizers import ESM_MASK, ESM_VOCAB, ProteinTokenizer

    ids = torch.tensor(ProteinTokenizer().encode(SEQS[0]))[None]
    ids[0, 3] = ids[0, 6] = ESM_MASK
    with torch.no_grad():
        h = model.protein_tower(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        ref = torch.log_softmax(model.mlm_head(h[0, [3, 6]]), -1)[
            :, [ESM_VOCAB.index(a) for a in AMINO_ACIDS]
        ]
    assert_close_rounding(lp, ref.numpy(), ULPS_NETWORK, msg="MLM log-probs")


def test_suites_run_on_the_embedder(tmp_path, tiny):
    import pandas as pd

    _, model = tiny
    pd.DataFrame({"accession": [f"P{i}" for i in range(4)], "sequence": SEQS, "text": TEXTS}).to_parquet(
        tmp_path / "pairs.parquet"
    )
    res = run_suite(
        "retrieval", {"path": str(tmp_path / "pairs.parquet")}, ProtCLIPEmbedder(model, device="cpu")
    )
    assert 0.0 <= res.metrics["p2t_r1"] <= 1.0 and "similarity" in res.figures
