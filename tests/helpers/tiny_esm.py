"""A tiny randomly initialised ESM tower built in code (no hub, no files), for the eval tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from protclip.eval.embedder import HFProteinEmbedder

# The 33-token ESM-2 alphabet, in id order.
ESM2_VOCAB = (
    "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>".split()
)


def esm_tokenizer():
    """An ``EsmTokenizer`` over the ESM-2 alphabet (written to a temporary vocab file and read back)."""
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as d:
        vocab = Path(d) / "vocab.txt"
        vocab.write_text("\n".join(ESM2_VOCAB) + "\n")
        return EsmTokenizer(vocab_file=str(vocab))


def tiny_esm_embedder(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_length: int = 1024,
    device: str = "cpu",
) -> HFProteinEmbedder:
    """``EsmForMaskedLM`` with random weights (seeded) wrapped in :class:`HFProteinEmbedder`."""
    from transformers import EsmConfig, EsmForMaskedLM

    cfg = EsmConfig(
        vocab_size=len(ESM2_VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=max_length + 2,
        position_embedding_type="rotary",
        pad_token_id=1,
        mask_token_id=32,
        token_dropout=True,
        emb_layer_norm_before=False,
    )
    torch.manual_seed(seed)
    return HFProteinEmbedder(EsmForMaskedLM(cfg), esm_tokenizer(), max_length=max_length, device=device)
