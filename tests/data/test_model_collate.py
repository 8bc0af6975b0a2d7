"""Collation of real ProtAnno rows into model inputs; tokenizers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from protclip.data.collate import (
    HEADERS,
    PROPERTIES,
    CollateConfig,
    ProtCLIPCollator,
    split_properties,
    subtexts_of,
)
from protclip.data.config import DataConfig, tiny_data_config
from protclip.data.tokenizers import ESM_PAD, ProteinTokenizer, load_text_tokenizer, text_tokenizer_dir
from protclip.model.config import LossConfig, ModelConfig, collate_config, tiny_model_config
from tests.helpers.model import protanno_rows, row_batch

INT_KEYS = [
    "protein_input_ids", "protein_attention_mask", "mlm_input_ids", "mlm_labels", "span_input_ids",
    "span_labels", "text_input_ids", "text_attention_mask", "subtext_input_ids", "subtext_attention_mask",
    "property_present",
]  # fmt: skip


def test_real_rows_become_model_inputs():
    cfg, data = tiny_model_config(), tiny_data_config()
    rows = row_batch(8)
    b = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=data), seed=0)(rows, seed=1)
    assert sorted(b) == sorted(INT_KEYS)
    assert all(v.dtype == torch.int64 for v in b.values())
    B = len(rows)
    lengths = [min(len(r["sequence"]), data.max_residues) + 2 for r in rows]
    assert b["protein_input_ids"].shape == (B, max(lengths))  # dynamic padding to the longest (cropped) row
    np.testing.assert_array_equal(b["protein_attention_mask"].sum(1).numpy(), lengths)
    assert ((b["protein_input_ids"] == ESM_PAD) == (b["protein_attention_mask"] == 0)).all()
    for k in ("mlm_input_ids", "mlm_labels", "span_input_ids", "span_labels"):
        assert b[k].shape == b["protein_input_ids"].shape
    tok = load_text_tokenizer(text_tokenizer_dir(cfg.text_model))
    assert b["text_input_ids"].shape[1] <= data.max_text_length
    assert (b["text_input_ids"][:, 0] == tok.cls_token_id).all()
    assert (
        b["subtext_input_ids"].shape[:2] == (B, 4)
        and b["subtext_input_ids"].shape[2] <= data.max_subtext_length
    )
    for i, r in enumerate(rows):
        present = {o["property"] for o in r["property_offsets"]}
        assert b["property_present"][i].tolist() == [int(p in present) for p in PROPERTIES]
        for k, prop in enumerate(PROPERTIES):
            ids = b["subtext_input_ids"][i, k][b["subtext_attention_mask"][i, k].bool()].tolist()
            words = tok.decode(ids, skip_special_tokens=True).replace(" ", "")
            header = HEADERS[prop].lower().replace(" ", "")
            assert words.startswith(header)  # each sub-text starts with its own header
            if prop not in present:
                assert words == header  # placeholder "FUNCTION:" for an absent property


def test_subtexts_from_offsets_match_header_split():
    for r in protanno_rows()[:40]:
        subs, present = subtexts_of(r)
        by_header = split_properties(r["text"])
        for prop, s, ok in zip(PROPERTIES, subs, present, strict=True):
            assert s == (by_header[prop] if ok else HEADERS[prop])
        # rows without offsets (the released jsonl format) are split at the headers
        assert subtexts_of({"text": r["text"]}) == (subs, present)


def test_deterministic_seeding_and_epochs():
    cfg = tiny_model_config()
    col = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=tiny_data_config()), seed=7)
    rows = row_batch(6)
    a, b = col(rows), col(rows)
    assert all(torch.equal(a[k], b[k]) for k in a)  # seed derived from (seed, epoch, accessions)
    assert all(torch.equal(col(rows, seed=3)[k], col(rows, seed=3)[k]) for k in a)
    assert not torch.equal(col(rows, seed=3)["mlm_labels"], col(rows, seed=4)["mlm_labels"])
    col.set_epoch(1)
    assert not torch.equal(col(rows)["mlm_labels"], a["mlm_labels"])


def test_picklable_and_batch_formats():
    pd = pytest.importorskip("pandas")
    cfg = tiny_model_config()
    col = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=tiny_data_config()), seed=0, as_numpy=True)
    rows = row_batch(5)
    ref = col(rows, seed=2)
    assert all(isinstance(v, np.ndarray) for v in ref.values())
    clone = pickle.loads(pickle.dumps(col))  # tokenizers are rebuilt lazily on the worker
    assert clone._text_tok is None
    columns = {k: np.array([r.get(k) for r in rows], dtype=object) for k in rows[0]}  # a Ray "numpy" batch
    for batch in (columns, pd.DataFrame(rows)):
        out = clone(batch, seed=2)
        assert all(np.array_equal(out[k], ref[k]) for k in ref)


def test_bad_rows_fail_with_a_clear_message():
    col = ProtCLIPCollator(collate_config(tiny_model_config(), LossConfig(), data_cfg=tiny_data_config()))
    row = dict(row_batch(1)[0])
    with pytest.raises(ValueError, match=row["accession"]):
        col([row | {"property_offsets": [{"property": "function", "start": 0, "end": 10**6}]}])
    with pytest.raises(ValueError, match="empty sequence"):
        col([row | {"sequence": ""}])
    with pytest.raises(KeyError, match="text"):
        col([{"accession": "X", "sequence": "MKT"}])


def test_protein_tokenizer_matches_hf_esm_tokenizer():
    tok = ProteinTokenizer()
    hf = tok.to_hf()
    assert len(hf) == 33 and hf.pad_token_id == ESM_PAD and hf.mask_token_id == 32
    for r in protanno_rows()[:20]:
        seq = r["sequence"][:300]
        assert tok.encode(seq).tolist() == hf(seq)["input_ids"]
    assert tok.encode("MKTAYIAK").tolist() == [0, 20, 15, 11, 5, 19, 12, 5, 15, 2]
    assert tok.encode("MK*J").tolist() == [0, 20, 15, 3, 3, 2]  # outside the alphabet -> <unk>


def test_collate_config_mirrors_the_data_model_and_loss_sections():
    """The data layer's defaults cannot drift from the run config's, and every collation field is carried over."""
    assert collate_config(ModelConfig(), LossConfig(), data_cfg=DataConfig()) == CollateConfig()
    mc = tiny_model_config(mode="released", text_tokenizer="vocab_dir")
    lc = LossConfig(mlm_probability=0.2, mlm_replace="bert", span_min=2, span_max=3, span_fraction=0.3,
                    span_source="features", span_feature_types=["DOMAIN"], released_span_range=7)
    cc = collate_config(mc, lc, data_cfg=tiny_data_config(max_protein_length=40))
    assert (cc.mode, cc.text_model, cc.text_tokenizer) == ("released", "random", "vocab_dir")
    assert (cc.max_protein_length, cc.max_residues, cc.max_text_length, cc.max_subtext_length) == (40, 38, 128, 64)
    assert (cc.mlm_probability, cc.mlm_replace, cc.span_min, cc.span_max, cc.span_fraction) == (0.2, "bert", 2, 3, 0.3)
    assert (cc.span_source, cc.span_feature_types, cc.released_span_range) == ("features", ["DOMAIN"], 7)
    with pytest.raises(ValueError, match="mode"):
        CollateConfig(mode="other")  # type: ignore[arg-type]
