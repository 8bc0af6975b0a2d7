"""Ray Train assembly of a LoRA fine-tuning job: driver preparation, MLflow run, ``TorchTrainer.fit``.

The driver resolves the base tower and the data once (:func:`protclip.finetune.prepare.prepare`), opens one
MLflow run linked to the pre-training run it starts from (``mlflow.parentRunId``), and ships the prepared data to
the workers through the object store. Checkpoints go to ``<storage_path>/<name>`` through ``ray.train.report``;
a restarted job with the same name and storage path resumes from the latest one (Ray Train V2 restores the run
snapshot; ``run.resume: never`` refuses to reuse a folder instead).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any

from protclip.config import from_dict, to_dict
from protclip.finetune.config import FinetuneConfig
from protclip.finetune.loop import WorkerEnv, run_worker
from protclip.finetune.prepare import prepare, run_dir
from protclip.storage import filesystem, is_remote, pyarrow_filesystem
from protclip.tracking import RunLogger, open_run, resolve_tracking_uri, secrets_of

_log = logging.getLogger(__name__)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train

    cfg = from_dict(FinetuneConfig, config["cfg"])
    data = ray.get(config["data"]) if isinstance(config["data"], ray.ObjectRef) else config["data"]
    ctx = ray.train.get_context()

    def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, checkpoint=ckpt)

    @contextmanager
    def resume_dir():
        ckpt = ray.train.get_checkpoint()
        if ckpt is None and cfg.run.resume_from:
            ckpt = ray.train.Checkpoint(cfg.run.resume_from)
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d

    import ray.train.torch

    device = str(ray.train.torch.get_device()) if cfg.train.use_gpu else "cpu"
    env = WorkerEnv(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), local_rank=ctx.get_local_rank(),
                    device=device, report=report, resume_dir=resume_dir)
    run_worker(cfg, config["job"], data, env)


def _ray_storage(cfg: FinetuneConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: absolute local paths, or a pyarrow fs for s3://."""
    if is_remote(cfg.run.storage_path):
        fs, path = pyarrow_filesystem(cfg.run.storage_path, cfg.storage)
        return path, fs
    return os.path.abspath(os.path.expanduser(cfg.run.storage_path)), None


def _has_previous_run(cfg: FinetuneConfig) -> bool:
    fs, path = filesystem(run_dir(cfg), cfg.storage)
    return fs.exists(path) and any("checkpoint" in os.path.basename(p) for p in fs.ls(path))


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the whole job on the current Ray cluster; returns the final metrics (test split, untrained, ...)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if cfg.run.resume == "never" and _has_previous_run(cfg):
        raise RuntimeError(f"{run_dir(cfg)} already holds checkpoints and run.resume is 'never': pick another "
                           "run.name or set run.resume auto to continue it")
    prepared = prepare(cfg)
    job, base = prepared.job, prepared.base
    tags = {"protclip.job": "finetune_lora", "protclip.task": cfg.task.type, "protclip.base_source": base.source,
            "protclip.base_kind": base.kind, "protclip.base_tower": base.tower, "protclip.data": cfg.data.path}
    if base.parent_run_id:
        tags["protclip.pretrain_run_id"] = base.parent_run_id
    run_id = open_run(cfg.tracking, cfg.tracking.run_name or cfg.run.name, cfg, tags,
                      parent_run_id=base.parent_run_id, reuse_key=run_dir(cfg))
    job.run_id, job.tracking_uri, job.secrets = run_id, resolve_tracking_uri(cfg.tracking.uri), secrets_of(cfg)
    logger = RunLogger(run_id, job.tracking_uri, job.secrets) if run_id else None
    if logger is not None:
        logger.log_params({f"data.size.{k}": v for k, v in prepared.data.sizes().items()})
        if prepared.data.dropped or prepared.data.errors:
            logger.log_dict({"dropped": prepared.data.dropped, "malformed": prepared.data.errors[:1000]},
                            "data/data_report.json")

    storage_path, storage_fs = _ray_storage(cfg)
    resources = {"CPU": cfg.train.cpus_per_worker} | ({"GPU": 1} if cfg.train.use_gpu else {})
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "job": job, "data": ray.put(prepared.data)},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep),
                             failure_config=FailureConfig(max_failures=0)),
    )
    try:
        result = trainer.fit()
    except Exception:
        if logger is not None:
            logger.finish("FAILED")
        raise
    metrics = dict(result.metrics or {})
    if logger is not None:
        logger.finish("FINISHED" if "test/loss" in metrics else "KILLED")  # KILLED: stopped early, resumable
    metrics["run_id"] = run_id
    metrics["checkpoint"] = result.checkpoint.path if result.checkpoint is not None else None
    return metrics
