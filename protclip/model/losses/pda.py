"""PDA: property-grouped dynamic segment alignment (the ProtCLIP paper's fine-grained objective).

For each protein and property k, the quantised property embedding q_k scores every residue token E_l (raw dot
product); the scores are min-max normalised over the protein's tokens, cut below theta, renormalised into
weights, and pool a "dynamic segment" e_k. A 4-way InfoNCE within the protein then aligns e_k with q_k against
the protein's other properties.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pda_segments(
    tokens: torch.Tensor, token_mask: torch.Tensor, queries: torch.Tensor, threshold: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic segments ``[B, K, D]`` and their residue weights ``[B, K, L]``.

    ``tokens`` ``[B, L, D]`` projected residue tokens; ``token_mask`` ``[B, L]`` True where a token may be
    pooled (real residues in paper mode; every position in released mode); ``queries`` ``[B, K, D]``.
    """
    tokens, queries = tokens.float(), queries.float()
    mask = token_mask.bool()[:, None, :]
    s = torch.einsum("bkd,bld->bkl", queries, tokens)
    big = torch.finfo(s.dtype).max
    s_min = s.masked_fill(~mask, big).amin(dim=-1, keepdim=True)
    s_max = s.masked_fill(~mask, -big).amax(dim=-1, keepdim=True)
    s_hat = (s - s_min) / (s_max - s_min).clamp_min(1e-12)
    s_hat = torch.where((s_hat >= threshold) & mask, s_hat, torch.zeros_like(s_hat))
    weights = s_hat / s_hat.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("bkl,bld->bkd", weights, tokens), weights


def pda_segments_packed(
    tokens: torch.Tensor, token_mask: torch.Tensor, queries: torch.Tensor, lengths: torch.Tensor,
    threshold: float = 0.3,
) -> torch.Tensor:
    """:func:`pda_segments` on a packed row: ``tokens`` ``[T, D]`` of ``len(lengths)`` proteins laid end to end,
    ``token_mask`` ``[T]``, ``queries`` ``[B, K, D]``, ``lengths`` ``[B]`` (int64). The score softmax-free
    min-max, the cut and the renormalisation run within each protein's own tokens. Returns ``[B, K, D]``."""
    tokens, queries = tokens.float(), queries.float()
    n_tok = tokens.shape[0]
    mask = token_mask.bool()[:, None]  # [T, 1]
    q_tok = torch.repeat_interleave(queries, lengths, dim=0, output_size=n_tok)  # [T, K, D]
    s = (q_tok @ tokens.unsqueeze(-1)).squeeze(-1)  # [T, K]
    big = torch.finfo(s.dtype).max
    s_min = torch.segment_reduce(s.masked_fill(~mask, big), "min", lengths=lengths, axis=0)  # [B, K]
    s_max = torch.segment_reduce(s.masked_fill(~mask, -big), "max", lengths=lengths, axis=0)
    s_min_t = torch.repeat_interleave(s_min, lengths, dim=0, output_size=n_tok)
    span_t = torch.repeat_interleave((s_max - s_min).clamp_min(1e-12), lengths, dim=0, output_size=n_tok)
    s_hat = (s - s_min_t) / span_t
    s_hat = torch.where((s_hat >= threshold) & mask, s_hat, torch.zeros_like(s_hat))
    total = torch.segment_reduce(s_hat, "sum", lengths=lengths, axis=0).clamp_min(1e-12)
    weights = s_hat / torch.repeat_interleave(total, lengths, dim=0, output_size=n_tok)  # [T, K]
    return torch.segment_reduce(weights.unsqueeze(-1) * tokens.unsqueeze(1), "sum", lengths=lengths, axis=0)


def pda_logits(segments: torch.Tensor, queries: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``[B, K, K]``: entry (k, k') = scale * cos(e_k, q_k'); the diagonal holds the matching pairs."""
    e, q = F.normalize(segments.float(), dim=-1), F.normalize(queries.float(), dim=-1)
    return scale.float().reshape(()) * torch.einsum("bkd,bjd->bkj", e, q)


def pda_loss(
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    queries: torch.Tensor,
    scale: torch.Tensor,
    threshold: float = 0.3,
    symmetric: bool = True,
    cu_seqlens: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-protein K-way InfoNCE, averaged over the batch.

    ``symmetric=True``: (CE(e->q) + CE(q->e)) / 2. ``False`` reproduces the released code, whose "symmetric"
    term evaluates the e->q direction twice. With ``cu_seqlens`` the tokens are a packed row ``[T, D]``
    (:func:`pda_segments_packed`).
    """
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        if cu_seqlens is None:
            segments, _ = pda_segments(tokens, token_mask, queries, threshold)
        else:
            lengths = torch.diff(cu_seqlens.to(tokens.device, torch.int64))
            segments = pda_segments_packed(tokens, token_mask, queries, lengths, threshold)
        logits = pda_logits(segments, queries, scale)
    b, k, _ = logits.shape
    labels = torch.arange(k, device=logits.device).repeat(b)
    e2q = F.cross_entropy(logits.reshape(b * k, k), labels)
    q2e = F.cross_entropy(logits.transpose(1, 2).reshape(b * k, k), labels) if symmetric else e2q
    with torch.no_grad():
        acc = (logits.argmax(-1).reshape(-1) == labels).float().mean()
    return {"loss_pda": (e2q + q2e) / 2, "pda_accuracy": acc, "pda_logit_scale": scale.detach().reshape(())}
