"""Learning-rate schedule: linear warmup, then linear / cosine decay or constant (ProtCLIP: warmup 3%,
then linear decay, the HF Trainer defaults of the released code).

A picklable callable (not a lambda) so ``LambdaLR.state_dict()`` round-trips through DCP checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["WarmupDecay", "build_scheduler", "warmup_steps_for"]


def warmup_steps_for(total_steps: int, warmup_steps: int | None, warmup_ratio: float) -> int:
    """Explicit warmup steps win; otherwise ``ceil(ratio * total)`` (HF Trainer convention)."""
    if warmup_steps is not None:
        return min(warmup_steps, total_steps)
    return min(math.ceil(warmup_ratio * total_steps), total_steps)


@dataclass(frozen=True)
class WarmupDecay:
    """LR multiplier at optimizer step ``step`` (0-based: the multiplier used by the ``step``-th update).

    Warmup ramps ``(step + 1) / (warmup + 1)`` so the first update is never a wasted zero-LR step; decay goes
    from 1 at the end of warmup to ``min_ratio`` at ``total_steps`` (and stays there afterwards).
    """

    total_steps: int
    warmup_steps: int
    kind: str = "linear"  # linear | cosine | constant
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"schedule kind must be linear|cosine|constant, got {self.kind!r}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 <= warmup ({self.warmup_steps}) <= total ({self.total_steps}), total >= 1")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: WarmupDecay) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` applying ``schedule`` to every param group's own base LR (so the 0.1x protein group keeps
    its ratio)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)
