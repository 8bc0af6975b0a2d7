"""The Ray Train side of the pre-training worker: the Ray implementation of the loop's
:class:`~protclip.train.loop.Session`, the ``train_loop_per_worker`` entry point, and reading the run folder.

The driver that builds the datasets and the ``TorchTrainer`` is :mod:`protclip.recipes.pretrain`. Restart
semantics: Ray Train V2 keeps a run's state under ``<storage_path>/<name>/``; a job started again with the same
``storage.name`` and ``storage.storage_path`` finds it, and ``ray.train.get_checkpoint()`` hands every worker the
latest reported checkpoint (stack.md §4); :meth:`RaySession.latest_checkpoint` falls back to older ones when the
latest is incomplete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
from collections.abc import Iterator
from typing import Any

import torch

from protclip import storage
from protclip.dist import gather_objects
from protclip.train.checkpoint import STATE_FILE, CheckpointError, committed_manifest, verify_checkpoint
from protclip.train.config import TrainRunConfig
from protclip.train.loop import train_worker

_log = logging.getLogger(__name__)

__all__ = ["RaySession", "worker_entry", "run_uri", "peek_latest_state"]


# ------------------------------------------------------------------------------------------------ worker side


class RaySession:
    """The loop's runtime on a Ray Train worker."""

    def __init__(self, use_gpu: bool, has_val: bool) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._has_val = has_val

    def train_batches(self, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        import ray.train

        from protclip.data.pipeline import iter_micro_batches

        return iter_micro_batches(ray.train.get_dataset_shard("train"), skip=skip, device=self.device)

    def val_batches(self) -> Iterator[dict[str, torch.Tensor]] | None:
        import ray.train

        from protclip.data.pipeline import iter_micro_batches

        if not self._has_val:
            return None
        return iter_micro_batches(ray.train.get_dataset_shard("val"), device=self.device)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        """The newest *verified* checkpoint of this run as a local directory (all ranks agree on which)."""
        import ray.train

        latest = ray.train.get_checkpoint()
        if latest is None:
            yield None
            return
        for ckpt in _candidates(latest):
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
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt else None)


def _candidates(latest) -> list:
    """``latest`` first, then the run's other checkpoint folders, newest (highest step) first."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    out = [latest]
    try:
        infos = latest.filesystem.get_file_info(pafs.FileSelector(posixpath.dirname(latest.path)))
    except OSError as e:
        _log.warning("cannot list older checkpoints next to %s: %s", latest.path, storage.redact(str(e)))
        return out
    dirs = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                   and posixpath.basename(i.path).startswith("checkpoint_") and i.path != latest.path), reverse=True)
    return out + [Checkpoint(path=p, filesystem=latest.filesystem) for p in dirs]


def _same_on_all_ranks(path: str) -> None:
    paths = set(gather_objects(path))
    if len(paths) != 1:
        raise CheckpointError(f"ranks picked different checkpoints to resume from: {sorted(paths)}")


def worker_entry(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: set up logging/threads, then run the pure loop with a Ray session."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg: TrainRunConfig = config["cfg"]
    if not cfg.train.use_gpu:
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    session = RaySession(cfg.train.use_gpu, config["has_val"])
    train_worker(cfg, session, config["loop"])


# ------------------------------------------------------------------------------------------------ run folder


def run_uri(cfg: TrainRunConfig) -> str:
    """``<storage_path>/<name>``: where Ray Train keeps this run's checkpoints."""
    return storage.join(cfg.storage.storage_path, cfg.storage.name)


def peek_latest_state(cfg: TrainRunConfig) -> dict[str, Any] | None:
    """The trainer state of the newest committed checkpoint of this run in storage (driver-side, cheap)."""
    fs, root = storage.filesystem(run_uri(cfg), cfg.storage.access())
    try:
        entries = fs.ls(root, detail=False) if fs.exists(root) else []
    except FileNotFoundError:
        return None
    names = sorted((posixpath.basename(e.rstrip("/")) for e in entries), reverse=True)
    for name in names:
        if not name.startswith("checkpoint_"):
            continue
        d = posixpath.join(root, name) if storage.is_remote(run_uri(cfg)) else os.path.join(root, name)
        # complete = every file of every rank there (as the workers check); a half-uploaded one is skipped
        if committed_manifest(fs, d) is not None and fs.exists(f"{d}/{STATE_FILE}"):
            with fs.open(f"{d}/{STATE_FILE}", "r") as f:
                return json.load(f)
    return None

