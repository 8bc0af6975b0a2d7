"""Checks a job runs before it starts Ray: the MLflow store can be written, an MLflow run it names exists.

Why before Ray: starting Ray, the data pipeline and the workers takes tens of seconds to minutes; a read-only
tracking folder found after that is a wall of tracebacks from several processes. Found here it is one line
(``protclip.cli``: tracking errors exit 5). Storage and data presence are checked by
:func:`protclip.storage.check_access`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from protclip.tracking import TrackingConfig, resolve_tracking_uri

__all__ = ["TrackingError", "check_tracking", "check_mlflow_run"]


class TrackingError(RuntimeError):
    """The MLflow store cannot be used (read-only, missing folder) or a named run does not exist."""


def _local_store_path(uri: str) -> str | None:
    """The file a sqlite store lives in or the folder of a file store; None for servers (http, databricks...)."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):]  # sqlite:////abs -> /abs; sqlite:///rel -> rel
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return uri
    return None


def _writable(path: str) -> tuple[bool, str]:
    """Can this process create or write ``path``? ``(ok, the nearest existing path it depends on)``."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return os.access(probe, os.W_OK), probe


def check_tracking(cfg: TrackingConfig) -> str | None:
    """The resolved tracking URI after checking a local store can be written; None when tracking is off."""
    if not cfg.enabled:
        return None
    uri = resolve_tracking_uri(cfg.uri)
    path = _local_store_path(uri)
    if path is None:
        return uri
    ok, where = _writable(path)
    if not ok:
        raise TrackingError(f"tracking store {uri} cannot be written: {where} is read-only for this user; set "
                            "tracking.uri (or MLFLOW_TRACKING_URI) to a writable sqlite:/// file or an MLflow server")
    if uri.startswith("sqlite:") and not cfg.artifact_location:
        artifacts = os.path.join(os.path.dirname(os.path.abspath(path)), "mlartifacts")
        ok, where = _writable(artifacts)
        if not ok:
            raise TrackingError(f"MLflow artifact folder {artifacts} cannot be written ({where} is read-only for "
                                "this user); set tracking.artifact_location or use another tracking.uri")
    return uri


#: loggers that report a sqlite store's schema set-up at INFO (alembic's migration steps among them)
_STORE_SETUP_LOGGERS = ("mlflow.store.db.utils", "alembic")


@contextmanager
def _quiet_store_setup() -> Iterator[None]:
    """Lift the store set-up loggers to WARNING while a run is looked up: the lookup's answer is one line."""
    loggers = [logging.getLogger(n) for n in _STORE_SETUP_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_mlflow_run(tracking_uri: str, run_id: str, what: str) -> None:
    """Fail in one line when ``run_id`` (named by config key ``what``) is not in the tracking store.

    A local store that does not exist holds no run, and is not created to find that out (opening a sqlite
    store writes the file and its tables into, by default, the working directory)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    path = _local_store_path(tracking_uri)
    if path is not None and not os.path.exists(path):
        raise TrackingError(f"{what}: MLflow run {run_id!r} does not exist in {tracking_uri} (there is no MLflow "
                            f"store at {os.path.abspath(path)}; set tracking.uri or MLFLOW_TRACKING_URI to the "
                            "store of the run)")
    try:
        with _quiet_store_setup():
            MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
            raise TrackingError(f"{what}: MLflow run {run_id!r} does not exist in {tracking_uri}") from None
        raise
