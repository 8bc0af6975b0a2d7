"""Ray Train assembly of pre-training: driver side (datasets, MLflow run, ``TorchTrainer``) and the Ray
implementation of the loop's :class:`~protclip.train.loop.Session`.

Restart semantics: Ray Train V2 keeps a run's state under ``<storage_path>/<name>/``; a job started again with
the same ``storage.name`` and ``storage.storage_path`` finds it, and ``ray.train.get_checkpoint()`` hands every
worker the latest reported checkpoint (stack.md §4). ``FailureConfig(max_failures)`` restarts a lost worker group
from that checkpoint within the same job. The MLflow run is reopened by the same key, so its history continues.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from protclip import storage
from protclip.train.checkpoint import STATE_FILE, CheckpointError, committed_manifest, verify_checkpoint
from protclip.train.config import PretrainConfig
from protclip.train.faults import fault_env
from protclip.train.loop import LoopConfig, total_steps_for, train_worker

_log = logging.getLogger(__name__)

__all__ = ["run_pretrain", "preflight", "PretrainResult", "RaySession", "peek_latest_state"]

SCORE_ATTRIBUTE = "val/loss"


@dataclass
class PretrainResult:
    run_id: str | None
    run_uri: str  # <storage_path>/<name>
    checkpoint_path: str | None
    export_uri: str | None
    metrics: dict[str, Any]


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
    if dist.is_initialized() and dist.get_world_size() > 1:
        paths: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(paths, path)
        if len(set(paths)) != 1:
            raise CheckpointError(f"ranks picked different checkpoints to resume from: {sorted(set(paths))}")


def _worker_entry(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: set up logging/threads, then run the pure loop with a Ray session."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg: PretrainConfig = config["cfg"]
    if not cfg.train.use_gpu:
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    session = RaySession(cfg.train.use_gpu, config["has_val"])
    train_worker(cfg, session, config["loop"])


# ------------------------------------------------------------------------------------------------ driver side


def run_uri(cfg: PretrainConfig) -> str:
    return storage.join(cfg.storage.storage_path, cfg.storage.name)


def peek_latest_state(cfg: PretrainConfig) -> dict[str, Any] | None:
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


def _ray_storage(cfg: PretrainConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig; remote URIs get a filesystem with our endpoint/creds."""
    uri = cfg.storage.storage_path
    if not storage.is_remote(uri):
        _, path = storage.filesystem(uri)
        return path, None
    fs, path = storage.pyarrow_filesystem(uri, cfg.storage.access())
    return path, fs


def _start_epoch(cfg: PretrainConfig, state: dict[str, Any] | None) -> int:
    if not state:
        return 0
    return min(int(state.get("epoch", 0)), cfg.data.num_epochs - 1)


def preflight(cfg: PretrainConfig) -> None:
    """Fail fast (before Ray starts) with a StorageError naming the URI when data or storage is unreachable."""
    access = cfg.storage.access()
    storage.check_access(cfg.data.uri, access)
    storage.check_access(cfg.storage.storage_path, access, write=True)


def run_pretrain(cfg: PretrainConfig, tags: dict[str, str] | None = None) -> PretrainResult:
    """Build the datasets, open the MLflow run, train with Ray Train, close the run. Ray must be initialised."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from protclip.data.collate import ProtCLIPCollator
    from protclip.data.pipeline import build_pretrain_datasets, ray_data_config
    from protclip.tracking import RunLogger, open_run, resolve_tracking_uri, secrets_of

    tc, access = cfg.train, cfg.storage.access()
    preflight(cfg)
    previous = peek_latest_state(cfg)
    start_epoch = _start_epoch(cfg, previous)
    data = build_pretrain_datasets(cfg.data, ProtCLIPCollator(cfg.model, cfg.loss), access,
                                   world_size=tc.num_workers, start_epoch=start_epoch)
    total = total_steps_for(cfg, data.steps_per_epoch)
    if previous and previous.get("extra", {}).get("total_steps") not in (None, total):
        _log.warning("schedule length changed on resume: %s -> %d", previous["extra"]["total_steps"], total)

    uri = run_uri(cfg)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri) if cfg.tracking.enabled else None
    run_tags = {"protclip.job": "pretrain", "protclip.run_uri": uri, **(tags or {})}
    run_id = open_run(cfg.tracking, cfg.tracking.run_name or cfg.storage.name, cfg, tags=run_tags, reuse_key=uri)
    logger = RunLogger(run_id, tracking_uri, secrets_of(cfg)) if run_id else None
    if logger:
        logger.log_params({"derived.global_batch_size": cfg.global_batch_size, "derived.total_steps": total,
                           "derived.steps_per_epoch_estimate": data.steps_per_epoch})
        logger.log_dict(data.manifest, "data/manifest.json")
        logger.log_metrics({k: float(v) for k, v in data.mix_metrics().items()}, step=0)
        if previous:
            logger.set_tags({"protclip.resumed_from_step": previous.get("step", 0)})

    has_val = data.val is not None and tc.val_every > 0
    # validation re-reads its split every time; it is small (data.val_max_rows), so keep it in the object store
    val_ds = data.val.materialize() if has_val else None
    export_uri = storage.join(uri, "export") if tc.export else None
    loop = LoopConfig(total_steps=total, start_epoch=start_epoch, run_id=run_id, tracking_uri=tracking_uri,
                      export_uri=export_uri, score_attribute=SCORE_ATTRIBUTE if has_val else None)
    storage_path, storage_fs = _ray_storage(cfg)
    datasets = {"train": data.train} | ({"val": val_ds} if has_val else {})
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"cfg": cfg, "loop": loop, "has_val": has_val},
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo", timeout_s=tc.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}
                                     | ({"GPU": 1} if tc.use_gpu else {})),
        run_config=RunConfig(
            name=cfg.storage.name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            worker_runtime_env={"env_vars": fault_env()} if fault_env() else None,  # tests: faults.py
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute=SCORE_ATTRIBUTE if has_val else None,
                checkpoint_score_order="min"),
        ),
        datasets=datasets,
        dataset_config=ray_data_config(cfg.data),
    )
    _log.info("training %s: %d workers, global batch %d, %d steps -> %s", cfg.storage.name, tc.num_workers,
              cfg.global_batch_size, total, storage.redact(uri))
    from protclip.eval.tasks import EvalScheduler

    # Periodic evals run as Ray tasks owned by the driver (they outlive worker restarts); training never waits.
    evals = EvalScheduler.for_pretrain(cfg, run_id, tracking_uri)
    if evals:
        evals.start()
    try:
        result = trainer.fit()
    except BaseException:
        if logger:
            logger.finish("FAILED")
        raise
    finally:
        if evals:
            evals.close()
    if logger:
        done = tc.stop_at_step is None or tc.stop_at_step >= total
        logger.set_tags({"protclip.completed": str(done).lower()})
        logger.finish("FINISHED")
    ckpt = result.checkpoint
    return PretrainResult(run_id=run_id, run_uri=uri, checkpoint_path=ckpt.path if ckpt else None,
                          export_uri=export_uri, metrics=dict(result.metrics or {}))


def dump_yaml_redacted(cfg: PretrainConfig) -> str:
    """The resolved config as YAML with secret fields masked (what lands in MLflow)."""
    import yaml

    from protclip.tracking import redacted_config_dict

    return yaml.safe_dump(redacted_config_dict(cfg), sort_keys=False)

