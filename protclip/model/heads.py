"""Small trainable heads around the towers (ProtCLIP's): projections, token heads, BSR decoder, prototypes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """Linear -> ReLU -> Linear into the joint space; used pooled and per token."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))


class TokenHead(nn.Sequential):
    """Linear -> GELU -> LayerNorm -> Linear to the residue vocabulary (MLM head and BSR head)."""

    def __init__(self, in_dim: int, hidden_dim: int, vocab_size: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, vocab_size),
        )


class FragmentDecoder(nn.Module):
    """Single-head protein->text cross-attention of BSR: Q from protein tokens, K/V from text tokens.

    ``softmax_over_text=True`` (paper) normalises each protein position over the real text tokens.
    ``False`` reproduces the released code: softmax over the *protein* axis and no text padding mask.
    """

    def __init__(self, dim: int, softmax_over_text: bool = True, residual: bool = False) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.softmax_over_text = softmax_over_text
        self.residual = residual
        self.scale = 1.0 / math.sqrt(dim)

    def forward(
        self, protein: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self.query(protein), self.key(text), self.value(text)
        scores = torch.einsum("bpd,btd->bpt", q, k) * self.scale  # [B, Lp, Lt]
        if self.softmax_over_text:
            if text_mask is not None:
                scores = scores.masked_fill(~text_mask.bool()[:, None, :], float("-inf"))
            probs = scores.softmax(dim=-1)
        else:
            probs = scores.softmax(dim=1)
        out = torch.einsum("bpt,btd->bpd", probs, v)
        return out + protein if self.residual else out

    def forward_packed(self, protein: torch.Tensor, text: torch.Tensor, protein_lens: Sequence[int],
                       text_lens: Sequence[int]) -> torch.Tensor:
        """Packed rows: ``protein`` ``[Tp, D]``, ``text`` ``[Tt, D]``; protein sequence i attends only to text
        i (its own pair), one small attention per pair. No padding exists, so the released variant (softmax over
        the protein axis, no text mask) is its padded formula without the padding."""
        if len(protein_lens) != len(text_lens):
            raise ValueError(f"packed BSR: {len(protein_lens)} proteins but {len(text_lens)} texts")
        q, k, v = self.query(protein), self.key(text), self.value(text)
        outs, ps, ts = [], 0, 0
        for lp, lt in zip(protein_lens, text_lens, strict=True):
            scores = (q[ps : ps + lp] @ k[ts : ts + lt].t()) * self.scale  # [lp, lt]
            probs = scores.softmax(dim=-1 if self.softmax_over_text else 0)
            outs.append(probs @ v[ts : ts + lt])
            ps, ts = ps + lp, ts + lt
        out = torch.cat(outs)
        return out + protein if self.residual else out


class PrototypeBank(nn.Module):
    """Learnable prototypes C ``[N, D]``: a property embedding u becomes ``softassign(u C^T) C``.

    Training uses Gumbel-softmax (tau 0.9, soft) as the released code; eval drops the noise (plain softmax at the
    same temperature) so embeddings are deterministic.
    """

    def __init__(self, num: int, dim: int, tau: float = 0.9) -> None:
        super().__init__()
        self.prototypes = nn.Embedding(num, dim)
        self.tau = tau

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        logits = u @ self.prototypes.weight.t()
        if self.training:
            assign = F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=-1)
        else:
            assign = (logits / self.tau).softmax(dim=-1)
        return assign @ self.prototypes.weight
