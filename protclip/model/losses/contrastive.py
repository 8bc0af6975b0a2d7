"""Global contrastive loss (GC): symmetric InfoNCE over features gathered from every rank, with gradient.

Local-loss form: each rank scores its own rows against all columns, labels offset by its first global row.
Averaging the per-rank losses (as DDP/FSDP average gradients) gives the loss over the global batch, and the
autograd all-gather sends each column's gradient back to the rank that owns it, so gradients match a single
process holding the whole batch (tested on 2 gloo ranks).

Ranks may hold different numbers of pairs (packed, token-budget micro-batches): the row counts are gathered
first, each rank pads its rows to the largest count for the all-gather, and the padding rows are dropped from
the columns before scoring. Each rank's mean is then weighted by ``world * n_rank / n_total`` (``row_weight``),
so the ranks' average (what DDP/FSDP do to gradients) is the mean over all pairs: 1 process == N ranks still.
With equal counts the weight is exactly 1 and the gather is the plain one (same numbers as before).

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
    row_weight: float = 1.0  # world * local rows / global rows: makes the mean over ranks the mean over pairs


GatherFn = Callable[[torch.Tensor, torch.Tensor], GatheredFeatures]


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; backward reduce-scatters the gradient to the owners.

    Every rank must pass the same number of rows (the data pipeline drops the last partial batch).
    """
    from torch.distributed._functional_collectives import all_gather_single_autograd

    return all_gather_single_autograd(x.contiguous(), gather_dim=0, group=group or dist.group.WORLD)


def gather_counts(n: int, device: torch.device, group: dist.ProcessGroup | None = None) -> list[int]:
    """Every rank's row count (one small all-gather)."""
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [int(c) for c in out]


def all_gather_varying(x: torch.Tensor, counts: list[int], group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """:func:`all_gather_with_grad` for ranks holding ``counts[r]`` rows each: pad to the largest count, gather,
    keep the real rows (in rank order). Equal counts take the plain gather."""
    if len(set(counts)) == 1:
        return all_gather_with_grad(x, group)
    most = max(counts)
    padded = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])]) if x.shape[0] < most else x
    gathered = all_gather_with_grad(padded, group)
    keep = torch.cat([torch.arange(r * most, r * most + c, device=x.device) for r, c in enumerate(counts)])
    return gathered.index_select(0, keep)


def gathered_from_ranks(p_rows: torch.Tensor, t_rows: torch.Tensor, counts: list[int], rank: int,
                        group: dist.ProcessGroup | None = None) -> GatheredFeatures:
    """Local rows against the columns of every rank (``counts``: every rank's row count, this one's included)."""
    p_cols, t_cols = all_gather_varying(p_rows, counts, group), all_gather_varying(t_rows, counts, group)
    weight = len(counts) * counts[rank] / sum(counts) if len(set(counts)) > 1 else 1.0
    return GatheredFeatures(p_rows, t_rows, p_cols, t_cols, sum(counts[:rank]), weight)


def gather_all_ranks(protein: torch.Tensor, text: torch.Tensor, group=None) -> GatheredFeatures:
    """Default gather: local rows, all-rank columns; no gather when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return GatheredFeatures(protein, text, protein, text, 0)
    counts = gather_counts(protein.shape[0], protein.device, group)
    return gathered_from_ranks(protein, text, counts, dist.get_rank(group), group)


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
    if g.row_weight != 1.0:  # ranks of unequal sizes: weight this rank's mean by its share of the pairs
        loss = loss * g.row_weight
    with torch.no_grad():
        acc = (
            (logits_pt.argmax(-1) == labels).float().mean() + (logits_tp.argmax(-1) == labels).float().mean()
        ) / 2
    return {"loss_gc": loss, "gc_accuracy": acc, "logit_scale": scale.detach()}
