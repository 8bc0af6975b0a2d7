"""Periodic validation on the held-out split: every loss term, plus cross-modal retrieval R@1/R@10/MRR.

Retrieval scores all validation proteins against all validation texts (features gathered from every rank);
rows with identical text (e.g. two "Uncharacterized protein" entries) count as correct answers for each other,
so duplicates do not depress the recall. The GC loss here uses micro-batch-sized global batches (world x
micro_batch_size negatives), so compare ``val/loss_gc`` across runs with the same layout only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from protclip.data.collate import batch_rows, is_packed
from protclip.dist import all_ranks, gather_objects, sum_over_ranks
from protclip.metrics import retrieval_metrics
from protclip.model.losses import ProtCLIPLoss

__all__ = ["validate", "retrieval_from_features"]


def _text_keys(mb: dict[str, torch.Tensor]) -> list[str]:
    if is_packed(mb):  # one row of concatenated texts: cut at the boundaries (same keys as the padded layout)
        ids, cu = mb["text_input_ids"].cpu().reshape(-1), mb["text_cu_seqlens"].cpu().tolist()
        return [hashlib.blake2b(ids[a:b].numpy().tobytes(), digest_size=8).hexdigest()
                for a, b in zip(cu[:-1], cu[1:], strict=True)]
    ids, am = mb["text_input_ids"].cpu(), mb["text_attention_mask"].cpu().bool()
    return [hashlib.blake2b(ids[i][am[i]].numpy().tobytes(), digest_size=8).hexdigest() for i in range(ids.shape[0])]


def retrieval_from_features(protein: np.ndarray, text: np.ndarray, keys: list[str]) -> dict[str, float]:
    """R@1, R@10 and MRR in both directions; rows with equal ``keys`` (same text) are all positives."""
    k = np.asarray(keys)
    positives = k[:, None] == k[None, :]
    sim = protein @ text.T
    out = {}
    for name, s in (("p2t", sim), ("t2p", sim.T)):
        for m, v in retrieval_metrics(s, positives, ks=(1, 10)).items():
            out[f"val/{name}_{m}"] = v
    return out


def validate(model: torch.nn.Module, loss_fn: ProtCLIPLoss, batches: Iterator[dict[str, torch.Tensor]],
             device: torch.device, max_batches: int | None = None) -> dict[str, float]:
    """Collective: every rank calls it with its own validation shard; returns the same metrics on all ranks."""
    model.eval()
    sums: dict[str, float] = {}
    rows = 0
    feats_p, feats_t, keys = [], [], []
    n = 0
    with torch.no_grad():
        while True:
            mb = None
            if max_batches is None or n < max_batches:
                mb = next(batches, None)
            if not all_ranks(mb is not None, device):  # stop when any rank runs out: collectives stay matched
                break
            out = model(mb)
            terms = loss_fn(out)
            b = batch_rows(mb)  # pairs, padded or packed
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach().float().reshape(-1)[0]) * b
            rows += b
            if "protein_features" in out and "text_features" in out:
                feats_p.append(out["protein_features"].float().cpu().numpy())
                feats_t.append(out["text_features"].float().cpu().numpy())
                keys.extend(_text_keys(mb))
            n += 1
    totals = sum_over_ranks({**{f"val/{k}": v for k, v in sums.items()}, "val/rows": float(rows)}, device)
    total_rows = totals.pop("val/rows")
    metrics = {k: v / total_rows for k, v in totals.items()} if total_rows else {}
    metrics["val/rows"] = total_rows
    local = (np.concatenate(feats_p) if feats_p else None, np.concatenate(feats_t) if feats_t else None, keys)
    gathered = gather_objects(local)
    parts = [g for g in gathered if g[0] is not None]
    if parts:
        metrics.update(retrieval_from_features(np.concatenate([g[0] for g in parts]),
                                               np.concatenate([g[1] for g in parts]),
                                               [k for g in parts for k in g[2]]))
    return metrics
