"""One optimizer step's forward/backward over ``A`` micro-batches, keeping the contrastive negatives of the whole
accumulated batch (feature cache, GradCache / open_clip ``--accum-freq``: plain accumulation
would shrink each contrastive batch to one micro-batch).

With ``A > 1`` and GC on:

1. **cache pass** (no grad): the GC features (``encode_protein`` / ``encode_text``) of every micro-batch, run
   under that micro-batch's seed (see RNG below) so they equal the grad pass's live features;
2. **grad pass** per micro-batch ``a``: the full forward with grad; the GC loss scores this rank's rows of the
   *whole* accumulated batch (cache, with micro-batch ``a``'s rows replaced by the live, grad-carrying features)
   against the columns of the whole accumulated *global* batch (all ranks, gathered with grad). Its gradient is
   therefore exactly the gradient of the full-batch GC loss with respect to micro-batch ``a``'s features; summed
   over ``a`` it is the full gradient, so the GC term is **not** divided by ``A``;
3. per-sample terms (MLM, BSR, PDA) are plain means inside a micro-batch; they are re-weighted so the sum over
   micro-batches is the mean over the accumulated batch: MLM/BSR by their share of this rank's target tokens
   (they are token means), PDA by its share of the rows (each objective's ``share`` in the objective registry,
   :mod:`protclip.model.losses.registry`);
4. the learnable GC ``logit_scale`` enters the full-batch loss of every pass, so only the first pass lets its
   gradient through (otherwise it would be counted ``A`` times, as in open_clip's ``--accum-freq``).

The result equals the un-accumulated step on the same rows (tested: 2 x 4 == 1 x 8, loss and parameters).
Packed (token-budget) micro-batches hold varying numbers of pairs: the cache is laid out by each micro-batch's
row offsets, and ranks with different accumulated row counts are gathered padded and weighted by their share of
the pairs (:func:`protclip.model.losses.contrastive.gathered_from_ranks`).

RNG: a step takes one draw from the global CPU generator (:func:`draw_step_seed`), and micro-batch ``a`` runs
both its passes under ``seeded_passes(micro_batch_seed(step_seed, a))``, where each model pass (clean protein,
text, MLM, span, PDA) gets a generator state of its own. So a micro-batch's dropout masks and Gumbel noise
depend only on the step's RNG state and its index (not on the other micro-batches, nor on how many there are),
different micro-batches and passes get different noise, the cache pass matches the grad pass, and the global
RNG after a step is a fixed function of the one before it (bit-identical resume).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from protclip.data.collate import batch_rows, is_packed
from protclip.data.masking import IGNORE_INDEX
from protclip.dist import world
from protclip.model.losses.contrastive import GatheredFeatures, gather_counts, gathered_from_ranks
from protclip.model.losses.registry import Objective, enabled_objectives
from protclip.model.losses.total import ProtCLIPLoss, loss_weights
from protclip.model.protclip import seeded_passes
from protclip.seeds import derive_seed

__all__ = ["forward_backward", "StepTerms", "draw_step_seed", "micro_batch_seed"]

@dataclass
class StepTerms:
    """Detached, rank-local values of the step (means over this rank's accumulated batch)."""

    values: dict[str, float]  # loss, loss_gc, loss_mlm, ..., accuracies, logit scales
    rows: int  # pairs on this rank in this step


def draw_step_seed() -> int:
    """The step's only draw from the global RNG (CPU generator: checkpointed, seeded per rank by the loop)."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def micro_batch_seed(step_seed: int, index: int) -> int:
    """Seed of micro-batch ``index``'s passes: independent of the step's other micro-batches."""
    return derive_seed(step_seed, "micro_batch", index)


def _shares(micro_batches: Sequence[dict[str, torch.Tensor]], objective: Objective) -> list[float]:
    """Weight of each micro-batch's mean of ``objective``'s term in the mean over the accumulated batch,
    counted as the objective's record says (target tokens or rows)."""
    if objective.share == "tokens":
        counts = [float((mb[objective.share_labels] != IGNORE_INDEX).sum()) for mb in micro_batches]
    else:
        counts = [float(batch_rows(mb)) for mb in micro_batches]
    total = sum(counts)
    if total == 0:
        return [1.0 / len(micro_batches)] * len(micro_batches)
    return [c / total for c in counts]


def _cache_gather(cache_p: torch.Tensor, cache_t: torch.Tensor, lo: int, hi: int, rank: int,
                  counts: list[int]) -> Callable[[torch.Tensor, torch.Tensor], GatheredFeatures]:
    """Gather for the micro-batch owning cache rows ``lo:hi``: local accumulated rows with the live ones in
    place, global columns (``counts``: every rank's accumulated rows)."""

    def gather(protein: torch.Tensor, text: torch.Tensor) -> GatheredFeatures:
        if protein.shape[0] != hi - lo:
            raise ValueError(f"micro-batch at cache rows {lo}:{hi} returned {protein.shape[0]} rows")
        p_rows = torch.cat([cache_p[:lo], protein.to(cache_p.dtype), cache_p[hi:]])
        t_rows = torch.cat([cache_t[:lo], text.to(cache_t.dtype), cache_t[hi:]])
        if len(counts) == 1:
            return GatheredFeatures(p_rows, t_rows, p_rows, t_rows, 0)
        return gathered_from_ranks(p_rows, t_rows, counts, rank)

    return gather


def _encode(model: torch.nn.Module, mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The GC features of a micro-batch, padded or packed (the cache pass)."""
    if is_packed(mb):
        p = model.encode_protein(mb["protein_input_ids"], mb["protein_attention_mask"],
                                 cu_seqlens=mb["protein_cu_seqlens"], position_ids=mb["protein_position_ids"])
        t = model.encode_text(mb["text_input_ids"], mb["text_attention_mask"],
                              cu_seqlens=mb["text_cu_seqlens"], position_ids=mb["text_position_ids"])
        return p, t
    return (model.encode_protein(mb["protein_input_ids"], mb["protein_attention_mask"]),
            model.encode_text(mb["text_input_ids"], mb["text_attention_mask"]))


def forward_backward(
    model: torch.nn.Module,
    loss_fn: ProtCLIPLoss,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    autocast: contextlib.AbstractContextManager | None = None,
) -> StepTerms:
    """Run forward and backward over the step's micro-batches (gradients accumulate in ``.grad``)."""
    n = len(micro_batches)
    if n == 0:
        raise ValueError("forward_backward needs at least one micro-batch")
    rank, n_ranks = world()
    objectives = enabled_objectives(loss_fn.cfg)
    weights = loss_weights(loss_fn.cfg)
    per_sample = [o.loss_key for o in objectives if o.per_sample]
    shares = {o.loss_key: _shares(micro_batches, o) for o in objectives if o.per_sample}
    batch_level = {o.name for o in objectives if not o.per_sample}
    if n > 1 and batch_level - {"gc"}:  # the feature cache below is GC's; another batch-level term has none
        raise ValueError(f"objectives {sorted(batch_level - {'gc'})} are batch-level and cannot be accumulated")
    use_cache = n > 1 and "loss_gc" in weights
    ctx = autocast or contextlib.nullcontext()

    step_seed = draw_step_seed()
    seeds = [micro_batch_seed(step_seed, a) for a in range(n)]
    cache_p = cache_t = None
    sizes = [batch_rows(mb) for mb in micro_batches]
    offsets = [sum(sizes[:a]) for a in range(n + 1)]
    counts = [offsets[-1]]
    if use_cache:
        feats_p, feats_t = [], []
        with torch.no_grad(), ctx:
            for mb, seed in zip(micro_batches, seeds, strict=True):
                with seeded_passes(seed):
                    p, t = _encode(model, mb)
                feats_p.append(p.float())
                feats_t.append(t.float())
        if [f.shape[0] for f in feats_p] != sizes:
            raise ValueError(f"GC cache: feature rows {[f.shape[0] for f in feats_p]} != micro-batch rows {sizes}")
        cache_p, cache_t = torch.cat(feats_p), torch.cat(feats_t)
        if n_ranks > 1:
            counts = gather_counts(offsets[-1], cache_p.device)

    acc: dict[str, float] = {}
    for a, mb in enumerate(micro_batches):
        gather = _cache_gather(cache_p, cache_t, offsets[a], offsets[a + 1], rank, counts) if use_cache else None
        with ctx, seeded_passes(seeds[a]):
            out = model(mb)
            if use_cache and a > 0:
                # the GC scale enters the full-batch loss in every pass: let only the first pass carry its grad
                out["logit_scale"] = out["logit_scale"].detach()
            terms = loss_fn(out, gather_fn=gather)
        if n == 1:
            backward_loss = terms["loss"]
        else:  # GC: full-batch loss, its gradient reaches only this micro-batch -> weight 1, not 1/n
            backward_loss = weights["loss_gc"] * terms["loss_gc"] if use_cache else terms["loss"].new_zeros(())
            for k in per_sample:
                backward_loss = backward_loss + weights[k] * shares[k][a] * terms[k]
        backward_loss.backward()
        _accumulate(acc, terms, shares, objectives, a)

    values = dict(acc)
    values["loss"] = sum(weights[k] * values[k] for k in weights)
    return StepTerms(values=values, rows=offsets[-1])


def _accumulate(acc: dict[str, float], terms: dict[str, torch.Tensor], shares: dict[str, list[float]],
                objectives: Sequence[Objective], a: int) -> None:
    """Combine the micro-batch's detached values into the accumulated-batch values: a per-sample objective's
    loss and metrics by its shares, everything else (GC terms, scales) kept from the last micro-batch."""
    term_of = {key: o.loss_key for o in objectives if o.loss_key in shares for key in (o.loss_key, *o.metrics)}
    for k, v in terms.items():
        if k == "loss":
            continue
        val = float(v.detach().float().reshape(-1)[0]) if v.numel() else 0.0
        share = shares[term_of[k]][a] if k in term_of else None
        if share is None:  # GC terms (same full-batch value in every pass) and scales: keep the last
            acc[k] = val
        else:
            acc[k] = acc.get(k, 0.0) + share * val
