"""Adapter-only DCP checkpoints: LoRA + head parameters, their optimizer state, scheduler, RNG, data position.

Same layout, ``COMMITTED`` manifest and :class:`~protclip.train.checkpoint.TrainState` as pre-training
(``protclip.train.checkpoint``), so ``verify_checkpoint`` / ``latest_valid_checkpoint`` work on both. The one
difference is what is saved: state dicts are taken with ``ignore_frozen_params=True``, so a checkpoint of a LoRA
run on ESM-2 650M holds a few MB of adapter instead of the 2.6 GB frozen base (which the base source still has).
A ``best`` entry keeps the trainable tensors of the best validation step, so ``train.select: best`` survives a
resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from protclip.dist import rng_state, set_rng_state, world
from protclip.train.checkpoint import (
    STATE_FILE,
    CheckpointError,
    TrainState,
    commit_checkpoint,
    verify_checkpoint,
    write_failure_message,
)
from protclip.train.safe_dcp import safe_reader

__all__ = ["save_adapter_checkpoint", "load_adapter_checkpoint", "trainable_state", "restore_trainable",
           "TRAINABLE_ONLY"]

TRAINABLE_ONLY = StateDictOptions(ignore_frozen_params=True)
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of this rank's trainable tensors (shards under FSDP2): the in-memory "best" snapshot."""
    return {k: v.detach().clone() for k, v in get_model_state_dict(model, options=TRAINABLE_ONLY).items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()}


def restore_trainable(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` snapshot back into the model (same sharding, no communication)."""
    current = get_model_state_dict(model, options=TRAINABLE_ONLY)
    missing = [k for k in snapshot if k not in current]
    if missing:
        raise CheckpointError(f"best-state snapshot has keys the model lacks: {missing[:5]}")
    with torch.no_grad():
        for k, v in snapshot.items():
            current[k].copy_(v)


def save_adapter_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                            scheduler, state: TrainState, best: dict[str, torch.Tensor] | None = None) -> None:
    """Collective: every rank calls it with its own local ``directory`` (Ray merges them on report)."""
    rank, n_ranks = world()
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    msd, osd = get_state_dict(model, optimizer, options=TRAINABLE_ONLY)
    payload = {"model": msd, "optim": osd}
    if best is not None:
        payload["best"] = best
    try:
        dcp.save(payload, checkpoint_id=str(root))
        (root / "rng").mkdir(exist_ok=True)
        torch.save(rng_state(), root / "rng" / f"rank{rank}.pt")
        if scheduler is not None:
            state.scheduler = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        state.world_size = n_ranks
        state.extra["has_best"] = best is not None
        if rank == 0:
            (root / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException carrying every rank's traceback
        raise CheckpointError(write_failure_message(root, state.step, e)) from None
    commit_checkpoint(root, state.step, rank, n_ranks, kind="lora_adapter")


def load_adapter_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                            scheduler) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Collective: verify, load adapter/head + optimizer shards (DCP reshards across world sizes), scheduler,
    RNG; returns the train state and the best-state snapshot (None if the run had none yet)."""
    rank, n_ranks = world()
    root = Path(directory)
    verify_checkpoint(root)
    state = TrainState.from_json(json.loads((root / STATE_FILE).read_text()))
    msd, osd = get_state_dict(model, optimizer, options=TRAINABLE_ONLY)
    payload = {"model": msd, "optim": osd}
    best = None
    if state.extra.get("has_best"):
        best = trainable_state(model)
        payload["best"] = best
    try:
        dcp.load(payload, storage_reader=safe_reader(root))  # metadata unpickled with an allow-list
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # RuntimeErrors on missing/mismatched keys, or a per-rank CheckpointException
        raise CheckpointError(f"checkpoint {root} does not fit this adapter/optimizer (different lora.r, "
                              f"target_modules or task head?): {e}") from e
    set_state_dict(model, optimizer, model_state_dict=payload["model"], optim_state_dict=payload["optim"],
                   options=_LOAD_OPTIONS)
    if scheduler is not None and state.scheduler:
        sched = dict(state.scheduler)
        sched["lr_lambdas"] = [None] * len(optimizer.param_groups)
        scheduler.load_state_dict(sched)
    rng = root / "rng" / f"rank{rank}.pt"
    if state.world_size == n_ranks and rng.is_file():
        set_rng_state(torch.load(rng, weights_only=True))
    return state, best
