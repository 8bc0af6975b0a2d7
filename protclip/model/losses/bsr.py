"""BSR: cross-entropy of the residues inside the masked spans, predicted from the text-fused protein tokens."""

from __future__ import annotations

import torch

from protclip.model.losses.mlm import token_ce


def bsr_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    loss, acc = token_ce(logits, labels)
    return {"loss_bsr": loss, "bsr_accuracy": acc}
