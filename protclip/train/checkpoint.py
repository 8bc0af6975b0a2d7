"""Sharded training checkpoints with ``torch.distributed.checkpoint`` (DCP), verified before they are loaded.

Layout of one checkpoint directory (every rank writes into its own local directory; Ray's ``report`` merges them
into one checkpoint folder under the run's ``storage_path``; without Ray all ranks share one directory)::

    .metadata, __<rank>_0.distcp     DCP: sharded model + optimizer state (FSDP2 DTensors, no gather on rank 0)
    rng/rank<r>.pt                   per-rank RNG states (torch CPU/CUDA, python, numpy)
    trainer_state.json               step, epoch, data position, skipped steps, scheduler state, best score
    COMMITTED                        written LAST by rank 0: JSON manifest {file: size} of every rank's files

A directory without ``COMMITTED``, or whose files do not match the manifest (a crash mid-upload, a partial copy),
is never loaded: :func:`verify_checkpoint` raises and :func:`latest_valid_checkpoint` skips it. Ray itself only
registers a checkpoint after every rank reported it; the marker is defence in depth for copies made by hand and
for object stores without atomic directory writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from protclip.dist import rng_state, set_rng_state, world
from protclip.train.safe_dcp import UnsafeCheckpointError, load_metadata, safe_reader

_log = logging.getLogger(__name__)

__all__ = ["TrainState", "CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint",
           "latest_valid_checkpoint", "committed_manifest", "commit_checkpoint", "write_failure_message", "COMMITTED",
           "STATE_FILE", "RUN_IDENTITY", "FORMAT_VERSION"]

COMMITTED = "COMMITTED"
STATE_FILE = "trainer_state.json"
RUN_IDENTITY = "run"  # TrainState.extra key: which run (and MLflow run) a checkpoint belongs to
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, corrupt or incompatible; the message names the directory and the problem."""


@dataclass
class TrainState:
    """Everything besides model/optimizer tensors needed to continue a run exactly where it stopped."""

    step: int = 0  # optimizer steps taken (including skipped NaN/inf steps)
    epoch: int = 0  # current pass over the training data
    micro_batches_in_epoch: int = 0  # data position: micro-batches of this epoch already consumed (per rank)
    micro_batches_total: int = 0  # over the whole run (per rank)
    skipped_steps: int = 0  # NaN/inf guard
    pairs_seen: int = 0  # global
    best_score: float | None = None  # best validation score so far (checkpoint_score_attribute)
    world_size: int = 1
    scheduler: dict[str, Any] = field(default_factory=dict)
    # e.g. data position per epoch, schedule length, and under RUN_IDENTITY the run this checkpoint belongs to
    # (run key, MLflow run id, config fingerprint: protclip.train.run_folder.run_identity)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainState:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# ------------------------------------------------------------------------------------------------ save


def _list_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _cause(e: BaseException) -> str:
    """One line naming the underlying error(s) (DCP wraps them per rank), errno text first when there is one."""
    errs: list[BaseException] = []
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict):
        for v in failures.values():
            errs.append(v[0] if isinstance(v, tuple) else v)
    errs = errs or [e]
    parts = []
    for err in errs:
        seen: BaseException | None = err
        while seen is not None and not isinstance(seen, OSError):
            seen = seen.__cause__ or seen.__context__
        last = (str(err).strip().splitlines() or [""])[-1]
        parts.append(str(seen) if seen is not None else f"{type(err).__name__}: {last}")
    return "; ".join(dict.fromkeys(parts))


def write_failure_message(root: Path, step: int, e: BaseException) -> str:
    """Why a checkpoint write failed (root cause, free space) and that the last committed one is still safe."""
    try:
        free = f"{shutil.disk_usage(root).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return (f"could not write the checkpoint of step {step} to {root} ({free}): {_cause(e)}. The previous committed "
            f"checkpoint is untouched; this partial one has no {COMMITTED} marker and will never be loaded")


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: TrainState,
) -> None:
    """Collective: every rank calls it with its own (local) ``directory``; returns once ``COMMITTED`` exists.

    ``directory`` may be shared by all ranks (plain torch) or one per rank (Ray Train merges them on report).
    """
    rank, n_ranks = world()
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    msd, osd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(root))
        (root / "rng").mkdir(exist_ok=True)
        torch.save(rng_state(), root / "rng" / f"rank{rank}.pt")
        if scheduler is not None:
            state.scheduler = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        state.world_size = n_ranks
        if rank == 0:
            (root / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException with every rank's traceback
        raise CheckpointError(write_failure_message(root, state.step, e)) from None
    commit_checkpoint(root, state.step, rank, n_ranks)


def commit_checkpoint(root: Path, step: int, rank: int, n_ranks: int, **extra: Any) -> None:
    """Collective: after every rank wrote its files, rank 0 writes ``COMMITTED`` (atomically, last) listing every
    rank's files and sizes; ``verify_checkpoint`` refuses any folder whose marker is missing or does not match.
    Shared by the pre-training and LoRA savers so both have the same atomic-commit guarantee."""
    if n_ranks > 1:  # a shared directory: list only after every rank finished writing (else sizes are stale)
        dist.barrier()
    files = _list_files(root)
    gathered: list[dict[str, int]] = [files]
    if n_ranks > 1:
        gathered = [None] * n_ranks  # type: ignore[list-item]
        dist.all_gather_object(gathered, files)
    if rank == 0:
        manifest: dict[str, int] = {}
        for f in gathered:
            manifest.update(f)
        marker = {"format": FORMAT_VERSION, "step": step, "world_size": n_ranks, "files": manifest,
                  "time": time.time(), **extra}
        tmp = root / (COMMITTED + ".tmp")
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, root / COMMITTED)  # atomic on a local file system
    if n_ranks > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------------ verify / load


def verify_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Return the ``COMMITTED`` manifest, or raise :class:`CheckpointError` naming what is missing or wrong."""
    root = Path(directory)
    marker = root / COMMITTED
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {root} is incomplete: no {COMMITTED} marker (interrupted save?)")
    try:
        meta = json.loads(marker.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {root}: {COMMITTED} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {root}: format {meta.get('format')} != supported {FORMAT_VERSION}")
    for name, size in meta.get("files", {}).items():
        p = root / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint {root} is incomplete: {name} listed in {COMMITTED} is missing")
        if p.stat().st_size != size:
            raise CheckpointError(f"checkpoint {root}: {name} has {p.stat().st_size} bytes, manifest says {size}")
    return meta


def load_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> TrainState:
    """Collective: verify, then load model/optimizer shards (any world size: DCP reshards), scheduler and RNG."""
    rank, n_ranks = world()
    root = Path(directory)
    verify_checkpoint(root)
    state = TrainState.from_json(json.loads((root / STATE_FILE).read_text()))
    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optim": osd}
    try:  # DCP unpickles .metadata with plain pickle: check it with an allow-list first (see safe_dcp)
        with open(root / ".metadata", "rb") as f:
            load_metadata(f, str(root / ".metadata"))
    except UnsafeCheckpointError as e:
        raise CheckpointError(f"checkpoint {root} was refused: {e}") from None
    try:
        dcp.load(sd, storage_reader=safe_reader(root))  # metadata allow-listed again, tensors weights_only
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP raises RuntimeErrors, or a CheckpointException (a BaseException) per rank
        raise CheckpointError(f"checkpoint {root} does not fit this model/optimizer: {e}") from e
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    if scheduler is not None and state.scheduler:
        sched = dict(state.scheduler)
        sched["lr_lambdas"] = [None] * len(optimizer.param_groups)
        scheduler.load_state_dict(sched)
    rng = root / "rng" / f"rank{rank}.pt"
    if state.world_size == n_ranks and rng.is_file():
        set_rng_state(torch.load(rng, weights_only=True))
    else:
        _log.warning("checkpoint %s was written by %d ranks, now %d: RNG streams are re-seeded, not restored",
                     root, state.world_size, n_ranks)
    return state


def committed_manifest(fs: Any, path: str) -> dict[str, Any] | None:
    """The ``COMMITTED`` manifest of a checkpoint folder on any fsspec file system when every file it lists is
    there with its size (all ranks uploaded), else None. The driver-side twin of :func:`verify_checkpoint`."""
    path = path.rstrip("/")
    marker = f"{path}/{COMMITTED}"
    try:
        if not fs.exists(marker):
            return None
        with fs.open(marker, "r") as f:
            meta = json.load(f)
        found = fs.find(path, detail=True)
    except (OSError, ValueError):
        return None
    sizes = {p.rstrip("/")[len(path) + 1:]: info.get("size") for p, info in found.items()}
    if meta.get("format") != FORMAT_VERSION:
        return None
    if any(sizes.get(f) != size for f, size in meta.get("files", {}).items()):
        return None
    return meta


def latest_valid_checkpoint(run_dir: str | os.PathLike, prefix: str = "checkpoint_") -> Path | None:
    """Newest verified checkpoint directory under ``run_dir`` (skipping incomplete ones), or None."""
    root = Path(run_dir)
    if not root.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith(prefix):
            try:
                meta = verify_checkpoint(d)
            except CheckpointError as e:
                _log.warning("skipping %s", e)
                continue
            found.append((int(meta.get("step", -1)), d))
    return max(found)[1] if found else None
