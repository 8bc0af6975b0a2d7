"""The pre-training job (``jobs/pretrain.py``): its root config, and the driver that builds the Ray Data datasets,
opens the MLflow run, runs the FSDP2 workers with Ray Train and launches the periodic evals beside them.

Restart semantics: Ray Train V2 keeps a run's state under ``<storage_path>/<name>/``; a job started again with
the same ``storage.name`` and ``storage.storage_path`` finds it and hands every worker the latest reported
checkpoint (stack.md §4). ``FailureConfig(max_failures)`` restarts a lost worker group from that checkpoint within
the same job. The MLflow run is reopened by the same key, so its history continues.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protclip import runtime, storage  # runtime first: loopback binding before ray loads
from protclip.cli import setup_logging
from protclip.config import cli_config
from protclip.eval.config import EvalScheduleConfig
from protclip.recipes.ray_storage import ray_storage
from protclip.train.config import TrainRunConfig

if TYPE_CHECKING:
    from protclip.console import Console

_log = logging.getLogger(__name__)

__all__ = ["PretrainConfig", "PretrainResult", "preflight", "run_pretrain", "pretrain_worker", "main"]

SCORE_ATTRIBUTE = "val/loss"


@dataclass(kw_only=True)
class PretrainConfig(TrainRunConfig):
    """Root of ``jobs/pretrain.py``'s config: the training run plus its periodic downstream evals.

    One YAML file describes a run (``jobs/configs/tiny.yaml``, ``jobs/configs/paper.yaml``); any field is
    overridable from the command line (``--train.lr 2e-5``).
    """

    eval: EvalScheduleConfig = field(default_factory=EvalScheduleConfig)


@dataclass
class PretrainResult:
    run_id: str | None
    run_uri: str  # <storage_path>/<name>
    checkpoint_path: str | None
    export_uri: str | None
    metrics: dict[str, Any]


def preflight(cfg: PretrainConfig) -> None:
    """Fail fast (before Ray starts) with a StorageError naming the URI when data or storage is unreachable."""
    access = cfg.storage.access()
    storage.check_access(cfg.data.uri, access)
    storage.check_access(cfg.storage.storage_path, access, write=True)


def evals_at_start(cfg: PretrainConfig) -> bool:
    """The run checkpoints step 0 for a "before" evaluation round (``eval.at_start`` with evals enabled)."""
    return cfg.eval.enabled and cfg.eval.at_start and cfg.tracking.enabled


def _start_epoch(cfg: PretrainConfig, state: dict[str, Any] | None) -> int:
    if not state:
        return 0
    return min(int(state.get("epoch", 0)), cfg.data.num_epochs - 1)


def run_pretrain(cfg: PretrainConfig, tags: dict[str, str] | None = None, console: Console | None = None
                 ) -> PretrainResult:
    """Check storage, then build the datasets, open the MLflow run, train with Ray Train, close the run.

    Joins or starts Ray (``runtime.init_ray``, a no-op when the caller already did) only after the storage
    preflight, so a wrong bucket or credentials is one line and exit 3, not minutes later. With a ``console``,
    a progress line per logged step (read back from the MLflow run) and one per finished eval round go to it.
    """
    preflight(cfg)
    runtime.init_ray()
    # torch, Ray Train and the eval tasks load here, not at import: config and storage errors stay fast
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from protclip.data.pipeline import build_pretrain_datasets, ray_data_config
    from protclip.eval.tasks import EvalScheduler
    from protclip.model.config import collate_config
    from protclip.tracking import RunLogger, open_run, resolve_tracking_uri, secrets_of
    from protclip.train.faults import fault_env
    from protclip.train.loop import LoopConfig, total_steps_for
    from protclip.train.run_folder import peek_latest_state, run_uri

    tc, access = cfg.train, cfg.storage.access()
    previous = peek_latest_state(cfg)
    start_epoch = _start_epoch(cfg, previous)
    data = build_pretrain_datasets(cfg.data, collate_config(cfg.model, cfg.loss, data_cfg=cfg.data), access,
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
                      export_uri=export_uri, score_attribute=SCORE_ATTRIBUTE if has_val else None,
                      checkpoint_at_start=bool(evals_at_start(cfg)))
    storage_path, storage_fs = ray_storage(cfg.storage.storage_path, access)
    datasets = {"train": data.train} | ({"val": val_ds} if has_val else {})
    trainer = TorchTrainer(
        pretrain_worker,
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
    # Periodic evals run as Ray tasks owned by the driver (they outlive worker restarts); training never waits.
    evals = EvalScheduler.for_pretrain(cfg, run_id, tracking_uri)
    if evals:
        evals.start()
    progress = contextlib.nullcontext()
    if console is not None and run_id:
        from protclip.console import ProgressMonitor
        from protclip.tracking import mlflow_client

        progress = ProgressMonitor(mlflow_client(tracking_uri), run_id, total, console)
    try:
        with progress:
            result = trainer.fit()
            if evals:
                evals.close()
                evals = None
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


def pretrain_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: the Ray-free loop (:func:`protclip.train.loop.train_worker`) on this worker's
    :class:`~protclip.ray_session.RaySession`."""
    from protclip.ray_session import RaySession
    from protclip.train.loop import train_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg: PretrainConfig = config["cfg"]
    session = RaySession(cfg.train.use_gpu, has_val=config["has_val"], cpu_threads=int(cfg.train.cpus_per_worker))
    train_worker(cfg, session, config["loop"])


def main(argv: list[str]) -> int:
    """Pre-train ProtCLIP.

    usage: python jobs/pretrain.py --config FILE [--section.key value ...]
    (see jobs/configs/tiny.yaml for every section; exit 2 = config error, 3 = storage error)
    """
    setup_logging()
    cfg = cli_config(PretrainConfig, argv)
    result = run_pretrain(cfg)
    summary = {"mlflow_run_id": result.run_id, "run": storage.redact(result.run_uri),
               "checkpoint": result.checkpoint_path, "export": result.export_uri,
               "final": {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}}
    print(json.dumps(summary, indent=1, default=str))
    return 0
