"""Single-process training and held-out scoring on in-memory rows: hyper-parameter sweeps and learning tests.

Why besides the Ray Train loop: a sweep over learning rate, temperature, crop and batch needs dozens of short
runs on one machine, and a CI test needs "does it learn?" answered in about a minute. This module runs the same
model, objectives, step function (:func:`protclip.train.step.forward_backward`, feature-cache accumulation
included) and optimizer groups as the distributed loop, minus Ray, FSDP and checkpoints. No Ray import.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from protclip import metrics as M
from protclip.model.losses import ProtCLIPLoss
from protclip.model.protclip import ProtCLIPModel, param_groups
from protclip.train.step import forward_backward

__all__ = ["QuickRun", "train_rows", "pair_scores"]


@dataclass(kw_only=True)
class QuickRun:
    """Optimisation settings of :func:`train_rows` (the ``train`` section's meaning, single process)."""

    steps: int
    batch_size: int = 16  # pairs per micro-batch
    accum_steps: int = 1  # micro-batches per step (GC negatives = batch_size * accum_steps)
    lr: float = 1e-3
    protein_lr_ratio: float = 0.1
    warmup_steps: int = 5
    grad_clip: float = 1.0
    seed: int = 0  # order of the rows (epochs reshuffle)


def _lr_factor(step: int, run: QuickRun) -> float:
    """Linear warmup then cosine decay to 0, as ``train.schedule: cosine``."""
    if step < run.warmup_steps:
        return (step + 1) / run.warmup_steps
    span = max(1, run.steps - run.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - run.warmup_steps) / span))


def train_rows(model: ProtCLIPModel, loss_fn: ProtCLIPLoss, collate: Callable[[list[dict]], dict],
               rows: Sequence[dict[str, Any]], run: QuickRun,
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place on ``rows`` (reshuffled every epoch); returns each step's loss terms."""
    opt = torch.optim.AdamW(param_groups(model, run.lr, run.protein_lr_ratio), lr=run.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, run))
    rng = np.random.default_rng(run.seed)
    order: list[int] = []
    history = []
    model.train()
    for step in range(run.steps):
        mbs = []
        for _ in range(run.accum_steps):
            while len(order) < run.batch_size:
                order += rng.permutation(len(rows)).tolist()
            idx, order = order[: run.batch_size], order[run.batch_size:]
            mbs.append(collate([rows[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        terms = forward_backward(model, loss_fn, mbs)
        if run.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
        opt.step()
        sched.step()
        values = dict(terms.values) | {"step_time_s": time.perf_counter() - t0}
        history.append(values)
        if on_step is not None:
            on_step(step + 1, values)
    return history


@torch.no_grad()
def pair_scores(model: ProtCLIPModel, collate: Callable[[list[dict]], dict], rows: Sequence[dict[str, Any]],
                batch_size: int = 32) -> dict[str, float]:
    """Retrieval (p2t/t2p R@1/R@10/MRR, chance levels) and the GC loss at the model's temperature on ``rows``
    (held-out pairs), with the retrieval suite's positives (same text or same sequence counts as a hit)."""
    was_training = model.training
    model.eval()
    prot, text = [], []
    for i in range(0, len(rows), batch_size):
        b = collate(list(rows[i:i + batch_size]))
        prot.append(model.encode_protein(b["protein_input_ids"], b["protein_attention_mask"]).float())
        text.append(model.encode_text(b["text_input_ids"], b["text_attention_mask"]).float())
    model.train(was_training)
    p = torch.nn.functional.normalize(torch.cat(prot), dim=-1).double().numpy()
    t = torch.nn.functional.normalize(torch.cat(text), dim=-1).double().numpy()
    sim = p @ t.T
    texts = np.unique([r["text"] for r in rows], return_inverse=True)[1]
    seqs = np.unique([r["sequence"] for r in rows], return_inverse=True)[1]
    pos = (texts[:, None] == texts[None, :]) | (seqs[:, None] == seqs[None, :])
    out = {f"p2t_{k}": v for k, v in M.retrieval_metrics(sim, pos).items()}
    out |= {f"t2p_{k}": v for k, v in M.retrieval_metrics(sim.T, pos.T).items()}
    out |= {f"chance_{k}": v for k, v in M.retrieval_metrics(np.zeros_like(sim), pos).items()}
    out["gc_loss"] = M.symmetric_infonce(sim, float(model.scales()[0]))
    out["n"] = float(len(rows))
    return out
