"""AdamW over the model's two parameter groups, gradient clipping and the NaN/inf step guard.

The guard: when the loss on any rank or the global gradient norm is not finite, the update is
skipped on every rank (the decision is all-reduced, so ranks never diverge), gradients are dropped, and the
step is counted and logged. The LR schedule still advances, so the schedule stays a function of the step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from protclip.dist import any_rank
from protclip.model.protclip import param_groups

__all__ = ["build_optimizer", "init_optimizer_state", "grad_norm_and_clip", "guarded_step", "StepOutcome"]


def build_optimizer(model: nn.Module, lr: float, protein_lr_ratio: float, weight_decay: float,
                    betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """AdamW with the protein tower at ``lr * protein_lr_ratio`` and all other trainable parameters at ``lr``."""
    groups = param_groups(model, lr, protein_lr_ratio, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    init_optimizer_state(opt)
    return opt


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam state for *every* trainable parameter now, exactly as Adam's lazy init would (step 0, zero
    moments).

    Why: a parameter that never receives a gradient (an objective switched off, a decoder the released mode
    cuts off) would otherwise have no state in the checkpoint while a fresh optimizer on resume expects one,
    and DCP refuses the load. ``torch.distributed.checkpoint``'s own initialisation does a zero-LR
    fake step, which leaves ``step == 1`` and shifts Adam's bias correction; resetting it keeps a run identical
    to one that never initialised early.
    """
    if optimizer.state:
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    saved_lrs = [g["lr"] for g in optimizer.param_groups]
    saved_wd = [g.get("weight_decay", 0.0) for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"], g["weight_decay"] = 0.0, 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for g, lr, wd in zip(optimizer.param_groups, saved_lrs, saved_wd, strict=True):
        g["lr"], g["weight_decay"] = lr, wd
    optimizer.zero_grad(set_to_none=True)
    for st in optimizer.state.values():
        step = st.get("step")
        if isinstance(step, torch.Tensor):
            step.zero_()
        elif step is not None:
            st["step"] = 0


def grad_norm_and_clip(model: nn.Module, max_norm: float) -> float:
    """Global L2 norm of all gradients (across FSDP shards and ranks); clips to ``max_norm`` when > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf, foreach=True)
    if hasattr(norm, "full_tensor"):  # FSDP2: a replicated DTensor
        norm = norm.full_tensor()
    return float(norm)


@dataclass
class StepOutcome:
    grad_norm: float
    skipped: bool


def guarded_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_value: float,
    max_norm: float,
    device: torch.device,
    nan_guard: bool = True,
) -> StepOutcome:
    """Clip, then step the optimizer unless (with ``nan_guard``) the loss or grad norm is NaN/inf anywhere."""
    norm = grad_norm_and_clip(model, max_norm)
    bad = nan_guard and any_rank(not (math.isfinite(loss_value) and math.isfinite(norm)), device)
    if not bad:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        with warnings.catch_warnings():  # a skipped update is intended; the schedule still follows the step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            scheduler.step()
    return StepOutcome(grad_norm=norm, skipped=bad)
