"""PDA: property-grouped dynamic segment alignment (method.md §4.4).

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
) -> dict[str, torch.Tensor]:
    """Per-protein K-way InfoNCE, averaged over the batch.

    ``symmetric=True``: (CE(e->q) + CE(q->e)) / 2. ``False`` reproduces the released code, whose "symmetric"
    term evaluates the e->q direction twice.
    """
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        segments, _ = pda_segments(tokens, token_mask, queries, threshold)
        logits = pda_logits(segments, queries, scale)
    b, k, _ = logits.shape
    labels = torch.arange(k, device=logits.device).repeat(b)
    e2q = F.cross_entropy(logits.reshape(b * k, k), labels)
    q2e = F.cross_entropy(logits.transpose(1, 2).reshape(b * k, k), labels) if symmetric else e2q
    with torch.no_grad():
        acc = (logits.argmax(-1).reshape(-1) == labels).float().mean()
    return {"loss_pda": (e2q + q2e) / 2, "pda_accuracy": acc, "pda_logit_scale": scale.detach().reshape(())}
