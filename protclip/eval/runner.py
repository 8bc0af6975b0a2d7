"""Run eval suites on a model source and log what they produce into an MLflow run (pure: no Ray; the Ray tasks
in :mod:`protclip.eval.tasks` call :func:`run_in_process`, and so does ``jobs/evaluate.py --mode local``).

Logging layout (one consistent choice, used by periodic and on-demand evaluation alike): results go INTO the
pre-training run, never a child run, so they plot against training curves. Every launch is one eval *round*
with its own id (:func:`new_round_id`: UTC time + random suffix, sortable), so evaluating the same step again
never overwrites or doubles anything:

- metrics ``eval/<name>/<metric>`` at ``step`` = the training step the checkpoint measured, logged by the FIRST
  round that scores that step; a later round at the same step keeps its values in its own summary (below) and
  says so in the status tag, so a chart has one value per step and both rounds stay readable;
- figures ``eval/step_<N>/round_<id>/<name>_<figure>.png`` and a JSON summary
  ``eval/step_<N>/round_<id>/<name>.json`` (metrics, round, whether the metrics were charted, examples, seconds,
  suite info, config, model source);
- bookkeeping is not a metric: examples and seconds are in the summary, the outcome in the tag
  ``eval/<name>/status`` ("ok at step N, round R, ..." or "failed at step N ..."); a failure also leaves the
  redacted traceback as ``eval/step_<N>/round_<id>/<name>_error.txt``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets as _random
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from protclip.eval.config import EvalSuiteConfig
from protclip.pretrained import ModelSource, load_model
from protclip.storage import redact

_log = logging.getLogger(__name__)

__all__ = ["run_in_process", "run_one", "log_success", "log_failure", "artifact_dir", "new_round_id", "LOG_RETRIES"]

LOG_RETRIES = 4  # MLflow calls (a shared sqlite file can be briefly locked by the trainer's own logging)
T = TypeVar("T")
_round_lock = threading.Lock()
_last_ms = 0  # the last millisecond handed out by new_round_id in this process


def new_round_id() -> str:
    """One id per eval launch: ``20250101T120000.123Z-1a2b`` (UTC to the millisecond, so ids sort by launch
    time; the random suffix separates launches on two machines in the same millisecond).

    Within one process the millisecond strictly increases from launch to launch, so two rounds launched in the
    same millisecond still sort in launch order (a random suffix alone would order them by chance)."""
    global _last_ms
    with _round_lock:
        ms = max(int(time.time() * 1000), _last_ms + 1)
        _last_ms = ms
    secs, frac = divmod(ms, 1000)
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(secs))}.{frac:03d}Z-{_random.token_hex(2)}"


def artifact_dir(step: int, round_id: str) -> str:
    return f"eval/step_{int(step)}/round_{round_id}"


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


def _step_is_charted(logger, key: str, step: int) -> bool:
    """Does ``key`` already have a value at ``step`` (an earlier round scored this checkpoint)?"""
    steps = getattr(logger, "metric_steps", None)
    return steps is not None and step in _retry(steps, key)


def log_success(logger, name: str, step: int, result, seconds: float, summary: dict[str, Any],
                round_id: str) -> None:
    """Metrics (first round at a step only), figures and the JSON summary of one suite result (see the module
    docstring for the layout)."""
    prefix = f"eval/{name}"
    metrics = {f"{prefix}/{k}": v for k, v in result.metrics.items()}
    charted = not metrics or not _step_is_charted(logger, next(iter(sorted(metrics))), step)
    if charted:
        _retry(logger.log_metrics, metrics, step)
    folder = artifact_dir(step, round_id)
    for fig_name, fig in result.figures.items():
        _retry(logger.log_figure, fig, f"{folder}/{name}_{fig_name}.png")
    _retry(logger.log_dict, summary | {"round": round_id, "charted": charted}, f"{folder}/{name}.json")
    where = "" if charted else f"; step {step} was scored before: these values are in {folder}/{name}.json only"
    _retry(logger.set_tags, {f"{prefix}/status": f"ok at step {step}, round {round_id}: {result.n_examples} "
                                                 f"examples in {seconds:.1f} s{where}"})


def log_failure(
    logger, name: str, step: int, error: str, where: str = "task", secrets: Iterable[str] = (),
    round_id: str | None = None,
) -> None:
    """Report a failed suite: the status tag ``eval/<name>/status`` and the error text artifact of its round.

    ``logger`` (a :class:`~protclip.tracking.RunLogger`) redacts the text; it is redacted here as well so the local
    log line is clean too.
    """
    secrets = list(secrets)
    round_id = round_id or new_round_id()
    first = redact(error.strip().splitlines()[-1] if error.strip() else "unknown error", secrets)[:300]
    _log.warning("eval %s at step %d failed (%s): %s", name, step, where, first)
    _retry(logger.set_tags, {f"eval/{name}/status": f"failed at step {step}, round {round_id} ({where}): {first}"})
    _retry(logger.log_text, redact(error, secrets), f"{artifact_dir(step, round_id)}/{name}_error.txt")


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
    round_id: str | None = None,
) -> dict[str, Any]:
    """Run one suite and log it as part of eval round ``round_id`` (default: a new one); an exception in the suite
    is logged as a failure, not raised."""
    from protclip.eval.suites import run_suite

    round_id = round_id or new_round_id()
    t0 = time.perf_counter()
    try:
        with _suite_config(entry) as config:
            result = run_suite(entry.suite, config, embedder.with_space(entry.space))
    except Exception:
        secrets = list(secrets)
        log_failure(logger, entry.name, step, traceback.format_exc(), secrets=secrets, round_id=round_id)
        return {
            "name": entry.name,
            "step": step,
            "round": round_id,
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
    log_success(logger, entry.name, step, result, seconds, summary, round_id)
    return {"name": entry.name, "step": step, "round": round_id, "status": "ok", "metrics": dict(result.metrics)}


def run_in_process(
    source: ModelSource,
    entries: Iterable[EvalSuiteConfig],
    run_id: str,
    tracking_uri: str | None,
    secrets: Iterable[str] = (),
    device: str = "auto",
    round_id: str | None = None,
) -> list[dict[str, Any]]:
    """Load the model once, run ``entries`` one after another, log each into ``run_id`` at ``source.step`` as
    eval round ``round_id`` (default: a new round for this call).

    Never raises for a failing suite or model load (each is reported in MLflow and in the returned list); only a
    failure to reach MLflow itself propagates.
    """
    from protclip.eval.protclip_embedder import ProtCLIPEmbedder
    from protclip.tracking import RunLogger

    entries, secrets = list(entries), list(secrets)
    round_id = round_id or new_round_id()
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
                logger, entry.name, step, f"loading {source.describe()} failed:\n{err}", secrets=secrets,
                round_id=round_id,
            )
        return [
            {
                "name": e.name,
                "step": step,
                "round": round_id,
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
        out.append(run_one(entry, embedder, step, logger, context, load_seconds if i == 0 else 0.0, secrets,
                           round_id))
    return out
