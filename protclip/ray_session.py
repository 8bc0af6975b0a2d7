"""The one Ray Train implementation of the worker loops' :class:`~protclip.train.loop.Session`.

Pre-training (:func:`protclip.train.loop.train_worker`) and LoRA fine-tuning
(:func:`protclip.finetune.loop.run_worker`) are Ray-free; everything they need from Ray Train (rank and world
size, the worker's device, the dataset shards, the checkpoint to resume from, reporting metrics and checkpoints
to Ray's storage) comes through this class, so both behave the same on restart and when reporting.

Restart semantics: Ray Train V2 keeps a run's state under ``<storage_path>/<name>/`` and
``ray.train.get_checkpoint()`` hands every worker the latest checkpoint its controller registered;
:meth:`RaySession.latest_checkpoint` takes the newest checkpoint folder of the run instead when Ray's is older
(a report lost with a dying worker), verifies it, and falls back to older ones when it is incomplete.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
from collections.abc import Iterator
from typing import Any

import torch

from protclip import storage
from protclip.dist import gather_objects
from protclip.train.checkpoint import CheckpointError, verify_checkpoint

_log = logging.getLogger(__name__)

__all__ = ["RaySession"]


class RaySession:
    """A loop's runtime on a Ray Train worker (call inside ``train_loop_per_worker``).

    ``use_gpu``: the worker's device is Ray's GPU for this rank (else the CPU, with ``cpu_threads`` torch
    threads when given). ``has_val``: a ``val`` dataset shard was passed to the trainer. ``resume_from``: a
    checkpoint directory or URI to start from when this run has none of its own yet (another run's).
    """

    def __init__(self, use_gpu: bool, *, has_val: bool = False, resume_from: str | None = None,
                 cpu_threads: int | None = None) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif cpu_threads is not None:
            torch.set_num_threads(max(1, cpu_threads))
        self.has_val, self.resume_from = has_val, resume_from

    def train_batches(self, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's micro-batches of the ``train`` dataset shard, the first ``skip`` dropped (resume)."""
        import ray.train

        from protclip.data.pipeline import iter_micro_batches

        return iter_micro_batches(ray.train.get_dataset_shard("train"), skip=skip, device=self.device)

    def val_batches(self) -> Iterator[dict[str, torch.Tensor]] | None:
        """This rank's micro-batches of the ``val`` shard, or None when the trainer got no validation set."""
        import ray.train

        from protclip.data.pipeline import iter_micro_batches

        if not self.has_val:
            return None
        return iter_micro_batches(ray.train.get_dataset_shard("val"), device=self.device)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        """The newest *verified* checkpoint of this run as a local directory (all ranks agree on which); else
        ``resume_from`` as given (the loader verifies it and names it when incomplete); else None."""
        import ray.train

        latest = _newest_in_run_folder(self.rank, ray.train.get_checkpoint())
        if latest is None:
            if self.resume_from is None:
                yield None
            else:
                with ray.train.Checkpoint(self.resume_from).as_directory() as d:
                    yield d
            return
        for ckpt in _candidates(latest, self.rank):
            with ckpt.as_directory() as d:
                try:
                    verify_checkpoint(d)
                except CheckpointError as e:
                    _log.warning("rank %d: %s; trying an older checkpoint", self.rank, e)
                    continue
                _same_on_all_ranks(ckpt.path)
                yield d
                return
        raise CheckpointError(f"no complete checkpoint found next to {latest.path}")

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str | None) -> None:
        """Report ``metrics`` and this rank's part of a checkpoint (every rank, at the same points); ``name`` is
        the checkpoint's folder name in storage (Ray picks one when None)."""
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt else None)


def _newest_in_run_folder(rank: int, reported: Any) -> Any:
    """The newest checkpoint folder of this run in storage, or ``reported`` (Ray's latest) when it is newer or
    the folder cannot be listed; None when there is neither.

    A worker's report reaches the controller only when the controller next polls the worker group; a worker that
    dies before that poll takes its report with it, so after the restart ``ray.train.get_checkpoint()`` can be
    older than what is committed in storage, or None early in a run (a worker killed shortly after the first
    checkpoint restarted the run from step 0). The caller verifies the folder it gets and falls back to older
    ones (:func:`_candidates`); a restarted driver reads the same folder
    (:func:`protclip.train.run_folder.peek_latest_state`).
    """
    import ray.train
    from ray.train import Checkpoint

    ctx = ray.train.get_context().get_storage()
    fs, root = ctx.storage_filesystem, ctx.experiment_fs_path
    dirs = _checkpoint_dirs(fs, root, rank)
    newest = dirs[0] if dirs else None
    if newest is None or (reported is not None
                          and posixpath.basename(reported.path) >= posixpath.basename(newest)):
        return reported
    _log.warning("rank %d: Ray Train handed %s, but the run folder has the newer %s: resuming from that one",
                 rank, posixpath.basename(reported.path) if reported is not None else "no checkpoint",
                 posixpath.basename(newest))
    return Checkpoint(path=newest, filesystem=fs)


def _checkpoint_dirs(fs: Any, root: str, rank: int) -> list[str] | None:
    """The ``checkpoint_*`` folders of a run folder, newest (highest step) first; None when it cannot be listed."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError as e:
        _log.warning("rank %d: cannot list the run folder %s: %s", rank, root, storage.redact(str(e)))
        return None
    return sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                   and posixpath.basename(i.path).startswith("checkpoint_")), reverse=True)


def _candidates(latest: Any, rank: int = 0) -> list[Any]:
    """``latest`` first, then the run's other checkpoint folders, newest (highest step) first."""
    from ray.train import Checkpoint

    dirs = _checkpoint_dirs(latest.filesystem, posixpath.dirname(latest.path), rank) or []
    return [latest] + [Checkpoint(path=p, filesystem=latest.filesystem) for p in dirs if p != latest.path]


def _same_on_all_ranks(path: str) -> None:
    paths = set(gather_objects(path))
    if len(paths) != 1:
        raise CheckpointError(f"ranks picked different checkpoints to resume from: {sorted(paths)}")
