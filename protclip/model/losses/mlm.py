"""Protein masked-LM loss on the masked residues only (logits are computed for those positions only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE over ``[N, V]`` logits; an empty selection gives a zero that still carries the graph."""
    if labels.numel() == 0:
        return logits.float().sum() * 0.0, logits.new_zeros(())
    loss = F.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        acc = (logits.argmax(-1) == labels).float().mean()
    return loss, acc


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    loss, acc = token_ce(logits, labels)
    return {"loss_mlm": loss, "mlm_accuracy": acc}
