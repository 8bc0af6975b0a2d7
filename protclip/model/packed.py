"""Towers and pooling on packed rows: several sequences concatenated into one ``[1, T]`` row, no padding.

A packed row carries its boundaries (``cu_seqlens``) and position ids that restart at 0 for every sequence, so a
tower's output for each sequence equals that sequence's own unpadded forward: attention stays inside the
sequence (:class:`protclip.model.attention.PackedSeqs`, passed to every attention call), ESM's rotary and BERT's
absolute positions see per-sequence positions, and ESM's token-dropout rescaling counts masked tokens per
sequence (transformers computes it per *row*, which on a packed row would mix the sequences, so the ESM input
embeddings are computed here and handed to the tower as ``inputs_embeds``).

Per-sequence reductions use ``torch.segment_reduce`` over the contiguous segments: deterministic on CUDA (unlike
``index_add_``) and with autograd for sum/min/max.
"""

from __future__ import annotations

import torch
from torch import nn

from protclip.model.attention import PackedSeqs, packed_capable

__all__ = ["packed_hidden", "segment_sum", "segment_mean", "segment_lengths", "expand_segments"]

#: ESM-2's training-time mask ratio (15% x 80%), hard-coded in ESM and in transformers' EsmEmbeddings
_ESM_MASK_RATIO_TRAIN = 0.15 * 0.8


def segment_lengths(packed: PackedSeqs, device: torch.device) -> torch.Tensor:
    """Lengths ``[n]`` as an int64 tensor on ``device`` (cached per device for the whole forward)."""
    key = f"lengths:{device}"
    if key not in packed._cache:
        packed._cache[key] = torch.tensor(packed.seqlens, dtype=torch.int64, device=device)
    return packed._cache[key]


def expand_segments(values: torch.Tensor, packed: PackedSeqs) -> torch.Tensor:
    """Per-sequence ``[n, ...]`` -> per-token ``[T, ...]`` (each sequence's value repeated over its tokens)."""
    return torch.repeat_interleave(values, segment_lengths(packed, values.device), dim=0,
                                   output_size=packed.total)


def segment_sum(x: torch.Tensor, packed: PackedSeqs) -> torch.Tensor:
    """``[T, ...]`` -> ``[n, ...]``: the sum over each sequence's tokens."""
    return torch.segment_reduce(x, "sum", lengths=segment_lengths(packed, x.device), axis=0)


def segment_mean(x: torch.Tensor, packed: PackedSeqs, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x`` ``[T, H]`` over each sequence's tokens where ``mask`` ``[T]`` is set (all when None).

    Summed in fp32 and returned in the input dtype, as ``protclip.model.protclip.masked_mean`` does for padded
    rows, so a packed row pools to the same vectors up to summation order.
    """
    if mask is None:
        m = torch.ones(x.shape[0], 1, dtype=torch.float32, device=x.device)
    else:
        m = mask.to(torch.float32).unsqueeze(-1)
    num = segment_sum(x.float() * m, packed)
    return (num / segment_sum(m, packed).clamp_min(1.0)).to(x.dtype)


def _esm_embeddings(tower: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                    packed: PackedSeqs) -> torch.Tensor:
    """transformers' ``EsmEmbeddings`` on a packed row, with the token-dropout ratio counted per sequence."""
    emb = tower.embeddings
    x = emb.word_embeddings(input_ids)  # [1, T, H]
    if emb.token_dropout:
        is_mask = input_ids == emb.mask_token_id
        x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
        counts = segment_sum(is_mask[0].to(torch.float32), packed)  # exact: integers well below 2**24
        observed = counts / segment_lengths(packed, input_ids.device)
        scale = expand_segments(1 - observed, packed)  # same operation order as EsmEmbeddings, per token
        x = (x * (1 - _ESM_MASK_RATIO_TRAIN) / scale[None, :, None]).to(x.dtype)
    if emb.position_embedding_type == "absolute":
        x = x + emb.position_embeddings(position_ids)
    if emb.layer_norm is not None:
        x = emb.layer_norm(x)
    return x


def packed_hidden(tower: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                  packed: PackedSeqs) -> torch.Tensor:
    """Last hidden states ``[1, T, H]`` of an ESM or BERT tower on a packed row."""
    impl = getattr(tower.config, "_attn_implementation", None)
    if not packed_capable(str(impl)):
        raise ValueError(f"packed batch on a tower with attention {impl!r}: it would attend across sequences; "
                         "build the tower with protclip.model.towers (packed-aware attention)")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] != packed.total:
        raise ValueError(f"packed batch: ids must be [1, {packed.total}], got {tuple(input_ids.shape)}")
    if hasattr(tower.embeddings, "token_dropout"):  # ESM
        embeds = _esm_embeddings(tower, input_ids, position_ids, packed)
        return tower(inputs_embeds=embeds, position_ids=position_ids, packed=packed).last_hidden_state
    return tower(input_ids=input_ids, position_ids=position_ids, token_type_ids=torch.zeros_like(input_ids),
                 packed=packed).last_hidden_state
