"""Global contrastive loss (GC): symmetric InfoNCE over features gathered from every rank, with gradient.

Local-loss form: each rank scores its own rows against all columns, labels offset by its first global row.
Averaging the per-rank losses (as DDP/FSDP average gradients) gives the loss over the global batch, and the
autograd all-gather sends each column's gradient back to the rank that owns it, so gradients match a single
process holding the whole batch (tested on 2 gloo ranks).

The gather is injectable: gradient-cache accumulation passes a function that returns the rows of all local
micro-batches (cached, no grad, with the live one in place) and the columns of the whole accumulated global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class GatheredFeatures:
    """What the loss scores: ``*_rows`` against ``*_cols``; row i's positive is column ``row_offset + i``."""

    protein_rows: torch.Tensor
    text_rows: torch.Tensor
    protein_cols: torch.Tensor
    text_cols: torch.Tensor
    row_offset: int


GatherFn = Callable[[torch.Tensor, torch.Tensor], GatheredFeatures]


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; backward reduce-scatters the gradient to the owners.

    Every rank must pass the same number of rows (the data pipeline drops the last partial batch).
    """
    from torch.distributed._functional_collectives import all_gather_single_autograd

    return all_gather_single_autograd(x.contiguous(), gather_dim=0, group=group or dist.group.WORLD)


def gather_all_ranks(protein: torch.Tensor, text: torch.Tensor, group=None) -> GatheredFeatures:
    """Default gather: local rows, all-rank columns; no gather when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return GatheredFeatures(protein, text, protein, text, 0)
    p_all, t_all = all_gather_with_grad(protein, group), all_gather_with_grad(text, group)
    return GatheredFeatures(protein, text, p_all, t_all, dist.get_rank(group) * protein.shape[0])


def global_contrastive_loss(
    protein: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    gather_fn: GatherFn | None = None,
) -> dict[str, torch.Tensor]:
    """``protein``/``text``: L2-normalised ``[B, D]``; ``logit_scale``: the multiplier exp(s) (already clamped).

    Logits are computed in fp32 whatever the autocast dtype.
    """
    g = (gather_fn or gather_all_ranks)(protein, text)
    scale = logit_scale.float().reshape(())
    with torch.autocast(device_type=protein.device.type, enabled=False):
        logits_pt = scale * g.protein_rows.float() @ g.text_cols.float().t()
        logits_tp = scale * g.text_rows.float() @ g.protein_cols.float().t()
    labels = torch.arange(logits_pt.shape[0], device=protein.device) + g.row_offset
    loss = (F.cross_entropy(logits_pt, labels) + F.cross_entropy(logits_tp, labels)) / 2
    with torch.no_grad():
        acc = (
            (logits_pt.argmax(-1) == labels).float().mean() + (logits_tp.argmax(-1) == labels).float().mean()
        ) / 2
    return {"loss_gc": loss, "gc_accuracy": acc, "logit_scale": scale.detach()}
