"""Process-group and RNG helpers shared by pre-training, validation and fine-tuning (pure ``torch.distributed``).

Every collective here must be called by every rank in the same order (never a collective on only some ranks).
Each helper falls back to the local value when no process group is initialised or the world has one rank, so
single-process runs and unit tests need no special case. The per-rank RNG state lives here because both
checkpoint formats (pre-training and LoRA adapters) save and restore it the same way.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "world",
    "all_ranks",
    "any_rank",
    "sum_over_ranks",
    "mean_over_ranks",
    "gather_objects",
    "rng_state",
    "set_rng_state",
    "resolve_device",
]


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _flag_reduce(flag: bool, device: torch.device, op: str) -> bool:
    if world()[1] == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return bool(t.item())


def all_ranks(flag: bool, device: torch.device) -> bool:
    """Collective: True only if ``flag`` is True on every rank (e.g. "every rank still has a batch")."""
    return _flag_reduce(flag, device, "MIN")


def any_rank(flag: bool, device: torch.device) -> bool:
    """Collective: True if ``flag`` is True on at least one rank (e.g. "a rank saw a NaN")."""
    return _flag_reduce(flag, device, "MAX")


def sum_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Collective: each key summed over ranks (float64; every rank must pass the same keys)."""
    keys = sorted(values)
    if world()[1] == 1 or not keys:
        return {k: float(v) for k, v in values.items()}
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Collective: each key averaged over ranks (every rank must pass the same keys)."""
    n = world()[1]
    return {k: v / n for k, v in sum_over_ranks(values, device).items()}


def gather_objects(obj: Any) -> list[Any]:
    """Collective: every rank's picklable ``obj``, in rank order; ``[obj]`` without a process group."""
    n = world()[1]
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out


def rng_state() -> dict[str, Any]:
    """This process's RNG streams (torch CPU, python, numpy; CUDA once initialised) in a ``weights_only``-safe
    form, so a checkpoint can restore them bit for bit."""
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _py_state_to_list(random.getstate()),
        "numpy": _np_state_to_list(np.random.get_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore streams captured by :func:`rng_state` (CUDA only if it was captured and is available)."""
    torch.set_rng_state(st["torch"])
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    n = st["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _py_state_to_list(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _np_state_to_list(s: tuple) -> list:
    return [s[0], [int(x) for x in s[1]], int(s[2]), int(s[3]), float(s[4])]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


