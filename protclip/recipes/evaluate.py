"""The on-demand evaluation job (``jobs/evaluate.py``): resolve the model source, choose the MLflow run to log into,
run the chosen suites as Ray tasks (:mod:`protclip.eval.tasks`) or in this process (:mod:`protclip.eval.runner`).

The run: ``run_id`` when given, else the source's pre-training run (so on-demand results sit next to the periodic
ones, at the checkpoint's step), else a new run of the ``tracking`` experiment. Ray is imported only in Ray mode.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from protclip import runtime  # before anything imports ray: loopback binding for local runs
from protclip.cli import EXIT_FAILED, setup_logging
from protclip.config import ConfigError, cli_config
from protclip.eval.config import EvaluateConfig
from protclip.eval.runner import run_in_process
from protclip.pretrained import EXPORT_FILES, resolve_source
from protclip.storage import redact
from protclip.tracking import RunLogger, open_run, resolve_tracking_uri, run_guard, secrets_of

_log = logging.getLogger(__name__)

__all__ = ["run_evaluate", "main"]


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate and log; returns ``{"run_id", "step", "source", "results": [one dict per suite]}``."""
    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled is false: evaluate logs its results to MLflow and needs tracking")
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    source = resolve_source(cfg.source, cfg.storage, tracking_uri, config_run_id=cfg.run_id)
    run_id = cfg.run_id or source.run_id
    own_run = None  # a run this job opened (closed FAILED/KILLED by run_guard); never the pre-training run's
    if run_id is None:
        tags = {"protclip.job": "evaluate", "protclip.eval_source": source.describe()}
        run_id = open_run(cfg.tracking, cfg.tracking.run_name or "evaluate", cfg, tags=tags)
        own_run = RunLogger(run_id, tracking_uri, secrets_of(cfg)) if run_id else None
    assert run_id is not None
    with run_guard(own_run):
        out = _evaluate(cfg, source, run_id, tracking_uri)
    if own_run is not None:
        failed = any(r.get("status") != "ok" for r in out["results"])
        own_run.finish("FAILED" if failed else "FINISHED")
    return out


def _evaluate(cfg: EvaluateConfig, source: Any, run_id: str, tracking_uri: str) -> dict[str, Any]:
    """Run the chosen suites (one eval round) in this process or as Ray tasks."""
    entries = [e.resolved() for e in cfg.chosen()]
    secrets = secrets_of(cfg)
    names = [e.name for e in entries]
    _log.info(
        "evaluating %s at step %d: %s -> run %s (%s)", source.describe(), source.step, names, run_id, cfg.mode
    )
    if cfg.mode == "local":
        results = run_in_process(source, entries, run_id, tracking_uri, secrets, cfg.device)
    else:
        from protclip.eval.tasks import launch_suites, wait_suites

        runtime.init_ray()
        tasks = launch_suites(source, entries, run_id, tracking_uri, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                              device=cfg.device, secrets=secrets)  # fmt: skip
        results = wait_suites(tasks, RunLogger(run_id, tracking_uri, secrets), secrets=secrets)
    return {"run_id": run_id, "step": source.step, "source": source.describe(), "results": results}


def preflight(cfg: EvaluateConfig) -> None:
    """Before any model loads or Ray starts: the source exists (exit 3 when missing), an export folder is one
    (exit 2 when not), the MLflow store can be written and the runs named exist (exit 5)."""
    from protclip import storage
    from protclip.preflight import check_mlflow_run, check_tracking

    src = cfg.source
    for key, value in (("source.checkpoint", src.checkpoint), ("source.export", src.export),
                       ("source.model_config", src.model_config)):
        if value:
            try:
                storage.check_access(value, cfg.storage)
            except storage.StorageError as e:
                raise storage.StorageError(f"{key}: {e}") from None
    if src.export:
        fs, path = storage.filesystem(src.export, cfg.storage.resolved())
        missing = [f for f in EXPORT_FILES if not fs.exists(f"{path.rstrip('/')}/{f}")]
        if missing:
            raise ConfigError(f"source.export: {redact(src.export)} is not a ProtCLIP export folder (missing "
                              f"{', '.join(missing)}); give the export/ folder of a pre-training run, or use "
                              "--source.checkpoint for a run folder", "source.export")
    uri = check_tracking(cfg.tracking)
    for key, run_id in (("source.mlflow_run_id", src.mlflow_run_id), ("run_id", cfg.run_id)):
        if run_id and uri:
            check_mlflow_run(uri, run_id, key)


def main(argv: list[str]) -> int:
    """Evaluate a ProtCLIP checkpoint, export or MLflow run.

    usage: python jobs/evaluate.py --config FILE --source.{checkpoint|export|mlflow_run_id} X [--section.key value ...]
    (see jobs/configs/evaluate.yaml; exit 1 = a suite failed, 2 = config error or not an export folder,
    3 = a missing source or storage error, 5 = tracking error: an unknown run id, a read-only MLflow store)
    """
    setup_logging()
    cfg = cli_config(EvaluateConfig, argv)
    preflight(cfg)
    summary = run_evaluate(cfg)
    print(redact(json.dumps(summary, indent=1, default=str)))
    return EXIT_FAILED if any(r.get("status") != "ok" for r in summary["results"]) else 0
