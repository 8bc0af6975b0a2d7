"""Run eval suites on a model source and log what they produce into an MLflow run (pure: no Ray; the Ray tasks
in :mod:`protclip.eval.tasks` call :func:`run_in_process`, and so does ``jobs/evaluate.py --mode local``).

Logging layout (one consistent choice, used by periodic and on-demand evaluation alike): results go INTO the
pre-training run, never a child run, so they plot against training curves.

- metrics ``eval/<name>/<metric>`` at ``step`` = the training step the checkpoint measured, plus
  ``eval/<name>/failed`` (0 or 1), ``eval/<name>/n_examples`` and ``eval/<name>/seconds``;
- figures ``eval/step_<N>/<name>_<figure>.png`` and a JSON summary ``eval/step_<N>/<name>.json`` (metrics,
  suite info, config, model source);
- a failure: ``eval/<name>/failed = 1`` at the step, tag ``eval/<name>/status`` and the traceback as
  ``eval/step_<N>/<name>_error.txt``, all redacted (environment credentials and the job's config secrets).
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from protclip.eval.config import EvalSuiteConfig
from protclip.pretrained import ModelSource, load_model
from protclip.storage import redact

_log = logging.getLogger(__name__)

__all__ = ["run_in_process", "run_one", "log_success", "log_failure", "artifact_dir", "LOG_RETRIES"]

LOG_RETRIES = 4  # MLflow calls (a shared sqlite file can be briefly locked by the trainer's own logging)
T = TypeVar("T")


def artifact_dir(step: int) -> str:
    return f"eval/step_{int(step)}"


def _retry(fn: Callable[..., T], *args: Any) -> T:
    for attempt in range(LOG_RETRIES):
        try:
            return fn(*args)
        except (
            Exception
        ) as e:  # MlflowException / sqlalchemy OperationalError ("database is locked"), network
            if attempt == LOG_RETRIES - 1:
                raise
            _log.warning(
                "MLflow call %s failed (%s); retrying", getattr(fn, "__name__", fn), redact(str(e))[:200]
            )
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def log_success(logger, name: str, step: int, result, seconds: float, summary: dict[str, Any]) -> None:
    """Metrics, figures and the JSON summary of one suite result (see the module docstring for the layout)."""
    prefix = f"eval/{name}"
    metrics = {f"{prefix}/{k}": v for k, v in result.metrics.items()}
    metrics |= {
        f"{prefix}/failed": 0.0,
        f"{prefix}/n_examples": float(result.n_examples),
        f"{prefix}/seconds": seconds,
    }
    _retry(logger.log_metrics, metrics, step)
    for fig_name, fig in result.figures.items():
        _retry(logger.log_figure, fig, f"{artifact_dir(step)}/{name}_{fig_name}.png")
    _retry(logger.log_dict, summary, f"{artifact_dir(step)}/{name}.json")
    _retry(logger.set_tags, {f"{prefix}/status": f"ok at step {step}"})


def log_failure(
    logger, name: str, step: int, error: str, where: str = "task", secrets: Iterable[str] = ()
) -> None:
    """Report a failed suite: ``eval/<name>/failed`` = 1 at ``step``, a status tag and the error text artifact.

    ``logger`` (a :class:`~protclip.tracking.RunLogger`) redacts the text; it is redacted here as well so the local
    log line is clean too.
    """
    secrets = list(secrets)
    first = redact(error.strip().splitlines()[-1] if error.strip() else "unknown error", secrets)[:300]
    _log.warning("eval %s at step %d failed (%s): %s", name, step, where, first)
    _retry(logger.log_metrics, {f"eval/{name}/failed": 1.0}, step)
    _retry(logger.set_tags, {f"eval/{name}/status": f"failed at step {step} ({where}): {first}"})
    _retry(logger.log_text, redact(error, secrets), f"{artifact_dir(step)}/{name}_error.txt")


@contextlib.contextmanager
def _suite_config(entry: EvalSuiteConfig) -> Iterator[dict[str, Any]]:
    """The suite config as the suite reads it. Suites read ProtAnno folders themselves (retrieval takes
    ``{path: <ProtAnno folder>, split: test}``: only the build's held-out test rows), so it passes unchanged."""
    yield dict(entry.config)


def run_one(
    entry: EvalSuiteConfig,
    embedder,
    step: int,
    logger,
    context: dict[str, Any],
    load_seconds: float = 0.0,
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """Run one suite and log it; an exception in the suite is logged as a failure, not raised."""
    from protclip.eval.suites import run_suite

    t0 = time.perf_counter()
    try:
        with _suite_config(entry) as config:
            result = run_suite(entry.suite, config, embedder.with_space(entry.space))
    except Exception:
        secrets = list(secrets)
        log_failure(logger, entry.name, step, traceback.format_exc(), secrets=secrets)
        return {
            "name": entry.name,
            "step": step,
            "status": "failed",
            "error": redact(traceback.format_exc(limit=0), secrets),
        }
    seconds = time.perf_counter() - t0 + load_seconds
    summary = {
        "name": entry.name,
        "suite": entry.suite,
        "step": step,
        "metrics": result.metrics,
        "n_examples": result.n_examples,
        "info": result.info,
        "config": entry.config,
        "protein_space": entry.space,
        "figures": sorted(result.figures),
        "seconds": seconds,
        **context,
    }
    log_success(logger, entry.name, step, result, seconds, summary)
    return {"name": entry.name, "step": step, "status": "ok", "metrics": dict(result.metrics)}


def run_in_process(
    source: ModelSource,
    entries: Iterable[EvalSuiteConfig],
    run_id: str,
    tracking_uri: str | None,
    secrets: Iterable[str] = (),
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Load the model once, run ``entries`` one after another, log each into ``run_id`` at ``source.step``.

    Never raises for a failing suite or model load (each is reported in MLflow and in the returned list); only a
    failure to reach MLflow itself propagates.
    """
    from protclip.eval.protclip_embedder import ProtCLIPEmbedder
    from protclip.tracking import RunLogger

    entries, secrets = list(entries), list(secrets)
    logger = RunLogger(run_id, tracking_uri, secrets)
    step = source.step
    t0 = time.perf_counter()
    try:
        model, info = load_model(source)
        embedder = ProtCLIPEmbedder(model, device=device, text_tokenizer=info.pop("text_tokenizer", None),
                                    data_cfg=info.pop("data_cfg", None))
    except Exception:
        err = traceback.format_exc()
        for entry in entries:
            log_failure(
                logger, entry.name, step, f"loading {source.describe()} failed:\n{err}", secrets=secrets
            )
        return [
            {
                "name": e.name,
                "step": step,
                "status": "failed",
                "error": redact(err.strip().splitlines()[-1], secrets),
            }
            for e in entries
        ]
    load_seconds = time.perf_counter() - t0
    if info.get("checkpoint_step") not in (None, step):
        _log.warning(
            "%s holds step %s but is logged at step %d (source.step)",
            source.describe(),
            info["checkpoint_step"],
            step,
        )
    context = {
        "source": source.describe(),
        "checkpoint_step": info.get("checkpoint_step"),
        "device": str(embedder.device),
    }
    out = []
    for i, entry in enumerate(entries):
        out.append(run_one(entry, embedder, step, logger, context, load_seconds if i == 0 else 0.0, secrets))
    return out
