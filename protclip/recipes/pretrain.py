"""The pre-training job (``jobs/pretrain.py``): its root config, and the driver that builds the Ray Data datasets,
opens the MLflow run, runs the FSDP2 workers with Ray Train and launches the periodic evals beside them.

Restart semantics: Ray Train V2 keeps a run's state under ``<storage_path>/<name>/``; a job started again with
the same ``storage.name`` and ``storage.storage_path`` finds it and hands every worker the latest reported
checkpoint (``ray.train.get_checkpoint()``; :mod:`protclip.ray_session` also looks in the run folder).
``FailureConfig(max_failures)`` restarts a lost worker group from that checkpoint within the same job. The MLflow run is continued only when the job resumes a checkpoint of that run (each checkpoint
records the run key and MLflow run id; see :mod:`protclip.train.run_folder`): no checkpoint -> a new MLflow run; a
checkpoint with a compatible config -> the same run, history continued; an incompatible change (model, data,
objective, schedule length, global batch) -> one line and exit 2 asking for a new ``storage.name``. A job that
raises ends its MLflow run FAILED, one stopped by Ctrl-C or SIGTERM KILLED.
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
    """Fail fast (before Ray starts) with a StorageError naming the URI when data or storage is unreachable, and
    a TrackingError when the MLflow store cannot be written."""
    from protclip.preflight import check_tracking

    access = cfg.storage.access()
    storage.check_access(cfg.data.uri, access)
    storage.check_access(cfg.storage.storage_path, access, write=True)
    check_tracking(cfg.tracking)


def start_round_settings(cfg: PretrainConfig, run_folder_uri: str) -> dict[str, Any]:
    """The workers' part of the "before" round (``LoopConfig`` fields): checkpoint step 0 when a round will
    score it, and wait for that round in ``run_folder_uri`` with ``eval.wait_at_start``."""
    start = evals_at_start(cfg)
    return {"checkpoint_at_start": start,
            "wait_start_round_in": run_folder_uri if start and cfg.eval.wait_at_start else None,
            "wait_start_round_s": cfg.eval.start_wait_timeout_s}


def evals_at_start(cfg: PretrainConfig) -> bool:
    """The run checkpoints step 0 for a "before" evaluation round (``eval.at_start`` with evals enabled)."""
    return cfg.eval.enabled and cfg.eval.at_start and cfg.tracking.enabled


def _start_epoch(cfg: PretrainConfig, state: dict[str, Any] | None) -> int:
    if not state:
        return 0
    return min(int(state.get("epoch", 0)), cfg.data.num_epochs - 1)


def run_pretrain(cfg: PretrainConfig, tags: dict[str, str] | None = None, console: Console | None = None,
                 run_id: str | None = None) -> PretrainResult:
    """Check storage, then build the datasets, open the MLflow run, train with Ray Train, close the run.

    Joins or starts Ray (``runtime.init_ray``, a no-op when the caller already did) only after the storage
    preflight, so a wrong bucket or credentials is one line and exit 3, not minutes later. With a ``console``,
    a progress line per logged step (read back from the MLflow run) and one per finished eval round go to it.
    ``run_id``: an MLflow run the caller opened for this training (else the run is chosen by
    :func:`~protclip.train.run_folder.resume_plan`: the resumed checkpoint's run, or a new one).
    """
    preflight(cfg)
    runtime.init_ray()
    # torch, Ray Train and the eval tasks load here, not at import: config and storage errors stay fast
    from protclip.data.pipeline import build_pretrain_datasets
    from protclip.model.config import collate_config
    from protclip.tracking import RunLogger, open_run, resolve_tracking_uri, run_guard, secrets_of
    from protclip.train.loop import total_steps_for
    from protclip.train.run_folder import peek_latest_state, resume_plan, run_identity, run_key, run_uri

    tc, access = cfg.train, cfg.storage.access()
    previous = peek_latest_state(cfg)
    resume_plan(cfg, previous)  # model/data/objective changed under a checkpoint: one line before any data work
    start_epoch = _start_epoch(cfg, previous)
    data = build_pretrain_datasets(cfg.data, collate_config(cfg.model, cfg.loss, data_cfg=cfg.data), access,
                                   world_size=tc.num_workers, start_epoch=start_epoch)
    total = total_steps_for(cfg, data.steps_per_epoch)
    plan = resume_plan(cfg, previous, total)  # and the schedule length, now that the data is counted
    _log.info("%s", plan.message)
    if console is not None:
        console.line(plan.message)

    uri = run_uri(cfg)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri) if cfg.tracking.enabled else None
    run_tags = {"protclip.job": "pretrain", "protclip.run_uri": uri, "protclip.run_key": run_key(cfg),
                **(tags or {})}
    derived = {"derived.global_batch_size": cfg.global_batch_size, "derived.total_steps": total,
               "derived.steps_per_epoch_estimate": data.steps_per_epoch}
    run_id = open_run(cfg.tracking, cfg.tracking.run_name or cfg.storage.name, cfg, tags=run_tags,
                      resume_run_id=run_id or plan.mlflow_run_id, extra_params=derived)
    logger = RunLogger(run_id, tracking_uri, secrets_of(cfg)) if run_id else None
    with run_guard(logger):
        return _train(cfg, data, total, start_epoch, plan.step, uri, run_id, tracking_uri, logger,
                      run_identity(cfg, total, run_id), console)


def _log_run_inputs(cfg: PretrainConfig, data: Any, logger: Any, resumed_step: int | None) -> None:
    """The data side of the run page: manifest, the realised mix (one table + a plot + a few metrics) and the
    ProtAnno folder as an MLflow dataset input with the manifest's digest and the columns read."""
    import hashlib

    from protclip.data.mix import mix_figure, mix_summary, mix_table
    from protclip.tracking import log_dataset_input

    logger.log_dict(data.manifest, "data/manifest.json")
    logger.log_table(mix_table(data.mix), "data/mix.json")
    fig = mix_figure(data.mix)
    try:
        logger.log_figure(fig, "data/mix.png")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    if resumed_step is None:
        logger.log_metrics(mix_summary(data.mix, data.val_rows), step=0)
    files = [{k: f.get(k) for k in ("path", "sha256", "size", "num_rows", "rows") if k in f}
             for f in data.manifest.get("files", [])]
    digest = hashlib.sha256(json.dumps([data.manifest.get("uri"), files], sort_keys=True, default=str)
                            .encode()).hexdigest()
    log_dataset_input(logger, name=f"protanno:{cfg.data.uri.rstrip('/').rsplit('/', 1)[-1]}",
                      source_uri=str(data.manifest.get("uri", cfg.data.uri)), digest=digest,
                      schema={c: "string" if c in _STRING_COLUMNS else "long"
                              for c in data.manifest.get("columns_read", [])},
                      profile={"pool_rows": data.manifest.get("pool_rows"), "n_files": data.manifest.get("n_files"),
                               "train_rows_per_epoch": data.manifest.get("train_rows_per_epoch"),
                               "val_rows": data.val_rows})


def _log_model(cfg: PretrainConfig, logger: Any, export_uri: str, step: int) -> None:
    """The export as an MLflow logged model (:mod:`protclip.eval.mlflow_model`); a failure is a warning."""
    import tempfile

    import yaml

    from protclip.eval.mlflow_model import log_export_model
    from protclip.tracking import redacted_config_dict

    try:
        with tempfile.TemporaryDirectory(prefix="protclip-export-") as tmp:
            local = export_uri
            if storage.is_remote(export_uri):
                fs, path = storage.filesystem(export_uri, cfg.storage.access())
                fs.get(path.rstrip("/") + "/", tmp + "/export/", recursive=True)
                local = tmp + "/export"
            model_id = log_export_model(logger.run_id, logger.tracking_uri, local,
                                        yaml.safe_dump(redacted_config_dict(cfg), sort_keys=False), step,
                                        cfg.model.projection_dim)
        logger.set_tags({"protclip.model_id": model_id})
    except Exception as e:  # noqa: BLE001 - the towers are exported and logged as artifacts already
        _log.warning("the export was not logged as an MLflow model: %s: %s", type(e).__name__,
                     storage.redact(str(e))[:300])


_STRING_COLUMNS = ("accession", "sequence", "text", "subtexts", "name", "organism", "properties")


def _train(cfg: PretrainConfig, data: Any, total: int, start_epoch: int, resumed_step: int | None, uri: str,
           run_id: str | None, tracking_uri: str | None, logger: Any, identity: dict[str, Any],
           console: Console | None) -> PretrainResult:
    """Everything after the run is open (inside :func:`~protclip.tracking.run_guard`: an exception ends the MLflow
    run FAILED, Ctrl-C or SIGTERM KILLED)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from protclip.data.pipeline import ray_data_config
    from protclip.eval.tasks import EvalScheduler
    from protclip.train.faults import fault_env
    from protclip.train.loop import LoopConfig

    tc, access = cfg.train, cfg.storage.access()
    if logger:
        _log_run_inputs(cfg, data, logger, resumed_step)
        if resumed_step is not None:
            logger.set_tags({"protclip.resumed_from_step": resumed_step})

    has_val = data.val is not None and tc.val_every > 0
    # validation re-reads its split every time; it is small (data.val_max_rows), so keep it in the object store
    val_ds = data.val.materialize() if has_val else None
    export_uri = storage.join(uri, "export") if tc.export else None
    loop = LoopConfig(total_steps=total, start_epoch=start_epoch, run_id=run_id, tracking_uri=tracking_uri,
                      export_uri=export_uri, score_attribute=SCORE_ATTRIBUTE if has_val else None,
                      run_identity=identity, **start_round_settings(cfg, uri))
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
    # Periodic evals run as Ray tasks owned by the driver (they outlive worker restarts); training never waits for
    # them, except for the step-0 round with eval.wait_at_start (small machines: one after the other is faster).
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
    except Exception as e:
        from protclip.data.parquet_files import protanno_error_of

        bad_shard = protanno_error_of(e)  # a corrupt shard: one line naming shard, row group and column
        if bad_shard is not None:
            raise bad_shard from e
        raise
    finally:
        if evals:
            evals.close()
    done = tc.stop_at_step is None or tc.stop_at_step >= total
    if logger:
        if export_uri and done and tc.export:
            _log_model(cfg, logger, export_uri, int((result.metrics or {}).get("step", total)))
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
    monitor = _node_monitor(cfg, config["loop"])
    try:
        train_worker(cfg, session, config["loop"])
    finally:
        if monitor is not None:
            monitor.finish()


def _node_monitor(cfg: PretrainConfig, loop: Any) -> Any:
    """System metrics of this node (``system/<node ip>/...``), logged by its local rank 0 worker only."""
    import ray.train
    import ray.util

    from protclip.tracking import start_system_metrics

    if ray.train.get_context().get_local_rank() != 0:
        return None
    return start_system_metrics(loop.run_id, loop.tracking_uri, cfg.tracking,
                                node_id=ray.util.get_node_ip_address(), resume=True)


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
