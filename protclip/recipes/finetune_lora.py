"""The LoRA fine-tuning job (``jobs/finetune_lora.py``): driver preparation, MLflow run, ``TorchTrainer.fit``.

The driver resolves the base tower and the data once (:func:`protclip.finetune.prepare.prepare`), opens one
MLflow run linked to the pre-training run it starts from (``mlflow.parentRunId``), and ships the prepared data to
the workers through the object store. Checkpoints go to ``<storage_path>/<name>`` through ``ray.train.report``;
a restarted job with the same name and storage path resumes from the latest one (Ray Train V2 restores the run
snapshot; ``run.resume: never`` refuses to reuse a folder instead). The root config is
:class:`protclip.finetune.config.FinetuneConfig`: the fine-tuning library reads all of it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from protclip import runtime, storage  # runtime first: loopback binding for local runs
from protclip.cli import setup_logging
from protclip.config import ConfigError, cli_config, to_dict
from protclip.finetune.config import FinetuneConfig
from protclip.preflight import check_mlflow_run, check_tracking
from protclip.recipes.ray_storage import ray_storage
from protclip.storage import filesystem
from protclip.tracking import RunLogger, open_run, resolve_tracking_uri, run_guard, secrets_of

_log = logging.getLogger("finetune_lora")

__all__ = ["preflight", "run_finetune", "finetune_worker", "main"]


def _has_previous_run(run_uri: str, cfg: FinetuneConfig) -> bool:
    fs, path = filesystem(run_uri, cfg.storage)
    return fs.exists(path) and any("checkpoint" in os.path.basename(p) for p in fs.ls(path))


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the whole job on the current Ray cluster; returns the final metrics (test split, untrained, ...)."""
    # torch, peft and Ray load here, not at import: a config typo fails in a second, not after the imports
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from protclip.finetune.prepare import prepare, run_dir

    if cfg.run.resume == "never" and _has_previous_run(run_dir(cfg), cfg):
        raise RuntimeError(f"{run_dir(cfg)} already holds checkpoints and run.resume is 'never': pick another "
                           "run.name or set run.resume auto to continue it")
    prepared = prepare(cfg)
    job, base = prepared.job, prepared.base
    tags = {"protclip.job": "finetune_lora", "protclip.task": cfg.task.type, "protclip.base_source": base.source,
            "protclip.base_kind": base.kind, "protclip.base_tower": base.tower, "protclip.data": cfg.data.path}
    if base.parent_run_id:
        tags["protclip.pretrain_run_id"] = base.parent_run_id
    run_id = open_run(cfg.tracking, cfg.tracking.run_name or cfg.run.name, cfg, tags,
                      parent_run_id=base.parent_run_id,  # continue a run only when resuming its checkpoints
                      reuse_key=run_dir(cfg) if _has_previous_run(run_dir(cfg), cfg) else None)
    job.run_id, job.tracking_uri, job.secrets = run_id, resolve_tracking_uri(cfg.tracking.uri), secrets_of(cfg)
    logger = RunLogger(run_id, job.tracking_uri, job.secrets) if run_id else None
    if logger is not None:
        logger.log_params({f"data.size.{k}": v for k, v in prepared.data.sizes().items()})
        if prepared.data.dropped or prepared.data.errors:
            logger.log_dict({"dropped": prepared.data.dropped, "malformed": prepared.data.errors[:1000]},
                            "data/data_report.json")

    storage_path, storage_fs = ray_storage(cfg.run.storage_path, cfg.storage)
    resources = {"CPU": cfg.train.cpus_per_worker} | ({"GPU": 1} if cfg.train.use_gpu else {})
    trainer = TorchTrainer(
        finetune_worker,
        train_loop_config={"cfg": to_dict(cfg), "job": job, "data": ray.put(prepared.data)},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep),
                             failure_config=FailureConfig(max_failures=0)),
    )
    with run_guard(logger):  # an exception ends the MLflow run FAILED, Ctrl-C / SIGTERM KILLED
        result = trainer.fit()
    metrics = dict(result.metrics or {})
    if logger is not None:
        logger.finish("FINISHED" if "test/loss" in metrics else "KILLED")  # KILLED: stopped early, resumable
    metrics["run_id"] = run_id
    metrics["checkpoint"] = result.checkpoint.path if result.checkpoint is not None else None
    return metrics


def finetune_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: rebuild the config, fetch the prepared data, run the Ray-free loop
    (:func:`protclip.finetune.loop.run_worker`) on this worker's :class:`~protclip.ray_session.RaySession`."""
    import ray

    from protclip.config import from_dict
    from protclip.finetune.loop import run_worker
    from protclip.ray_session import RaySession

    cfg = from_dict(FinetuneConfig, config["cfg"])
    data = ray.get(config["data"]) if isinstance(config["data"], ray.ObjectRef) else config["data"]
    session = RaySession(cfg.train.use_gpu, resume_from=cfg.run.resume_from,
                         cpu_threads=cfg.train.threads_per_worker)
    run_worker(cfg, config["job"], data, session)


def preflight(cfg: FinetuneConfig) -> None:
    """Everything that can be checked before Ray starts: data given and readable, run folder writable, MLflow
    store writable, an ``mlflow:`` base run present. Each failure is one line (ConfigError, StorageError,
    TrackingError)."""
    if not cfg.data.path:
        raise ConfigError("data.path is empty: give the labelled data, e.g. --config jobs/configs/deeploc_lora.yaml "
                          "(python jobs/finetune_lora.py --help lists every key)", "data.path")
    storage.check_access(cfg.data.path, cfg.storage)
    tracking_uri = check_tracking(cfg.tracking)
    if cfg.base.source.startswith("mlflow:"):  # before the write checks below, which create the run folder
        check_mlflow_run(tracking_uri or resolve_tracking_uri(cfg.tracking.uri), cfg.base.source[len("mlflow:"):],
                         "base.source")
    storage.check_access(cfg.run.storage_path, cfg.storage, write=True)
    if cfg.run.output_dir:
        storage.check_access(cfg.run.output_dir, cfg.storage, write=True)
    for value in (cfg.base.pretrain_config, cfg.run.resume_from):
        if value:
            storage.check_access(value, cfg.storage)


def main(argv: list[str]) -> int:
    """LoRA fine-tuning job: --config FILE [--section.key value ...] (see jobs/configs/*_lora.yaml)."""
    setup_logging()
    cfg = cli_config(FinetuneConfig, argv)
    preflight(cfg)
    runtime.init_ray()
    metrics = run_finetune(cfg)
    keys = sorted(k for k in metrics if k.startswith(("test/", "untrained/test/", "valid/")))
    for k in keys:
        _log.info("%-28s %s", k, metrics[k])
    extra = [k for k in ("selected_step", "run_id", "checkpoint") if k in metrics]
    print(json.dumps({k: metrics[k] for k in keys + extra}))
    return 0
