"""Model FLOPs per step and MFU, with the formula written down (MFU is logged as ``perf/mfu``
next to the throughput metrics).

Convention (torchtitan ``num_flops_per_token`` / PaLM appendix B), counted on *real* (non-padding) tokens, so
padding shows up as lost MFU rather than inflating it:

* a transformer pass **with gradient** over a batch costs ``6 * N * T + 12 * L * d * sum_i(len_i^2)``
  (2 forward + 4 backward FLOPs per weight per token, plus the attention score/value matmuls whose cost grows
  with sequence length: ``2 * 2 * L * d * len`` per token forward, x3 with backward);
* a pass **without gradient** (frozen text tower, sub-texts, or a frozen protein tower) costs a third of that:
  ``2 * N * T + 4 * L * d * sum_i(len_i^2)``;
* ``N`` excludes embedding tables (look-ups, no matmul); ``T`` = real tokens of that pass; ``L``, ``d`` = layers
  and hidden width of the tower.

The feature-cache (GradCache) recompute pass of gradient accumulation is *not* counted: MFU measures useful
model FLOPs, so recompute lowers it, as activation checkpointing does. Heads (projections, MLM/BSR heads,
decoder) are small next to the towers and ignored (they make MFU a slight under-estimate).

Peak numbers: dense bf16 tensor-core peak per device (H100/H200 SXM 989 TFLOP/s, A100 312); unknown devices and
CPUs return ``None`` so MFU is simply not logged there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["PEAK_BF16_FLOPS", "peak_flops", "TowerShape", "tower_shape", "pass_flops", "mfu"]

#: dense bf16 peak FLOP/s by a device-name fragment (torchtitan tools/utils.py); first match wins
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def peak_flops(device: torch.device | str | None = None, name: str | None = None) -> float | None:
    """Peak bf16 FLOP/s of ``device`` (CUDA) or of a device ``name``; None when unknown or on CPU."""
    if name is None:
        dev = torch.device(device) if device is not None else None
        if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(dev)
    for frag, peak in PEAK_BF16_FLOPS:
        if frag.lower() in name.lower():
            return peak
    return None


@dataclass(frozen=True)
class TowerShape:
    """What the FLOPs formula needs from one tower."""

    n_params: int  # non-embedding parameters
    n_layers: int
    hidden: int


def tower_shape(module: nn.Module) -> TowerShape:
    """Non-embedding parameter count, layers and width of an HF encoder (EsmModel / BertModel or similar)."""
    emb = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    n = sum(_numel(p) for p in module.parameters() if id(p) not in emb)
    cfg = getattr(module, "config", None)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    return TowerShape(n_params=n, n_layers=layers, hidden=hidden)


def _numel(p: torch.Tensor) -> int:
    # DTensor (FSDP2) parameters report the full (global) size through .numel() as well
    return int(p.numel())


def pass_flops(shape: TowerShape, lengths: Iterable[int], with_grad: bool) -> float:
    """FLOPs of one pass of a tower over sequences of the given real lengths (see module docstring)."""
    lens = [int(x) for x in lengths]
    tokens = sum(lens)
    sq = sum(x * x for x in lens)
    per = 6.0 if with_grad else 2.0
    attn = 12.0 if with_grad else 4.0
    return per * shape.n_params * tokens + attn * shape.n_layers * shape.hidden * sq


def mfu(flops_per_step: float, step_seconds: float, n_devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None when the peak is unknown or timing is degenerate)."""
    if peak is None or step_seconds <= 0 or n_devices < 1:
        return None
    return flops_per_step / (step_seconds * n_devices * peak)
