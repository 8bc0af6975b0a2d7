"""MLflow tracking for every job: one run opened by the driver, logged into from rank 0, eval tasks and LoRA jobs.

Why a module of its own (and no Ray here): Ray Train V2 has no MLflow callback, and Ray's old one opened a second
run and split params from metrics (ray #64253, mlflow #7206). The pattern here is the one users asked for: the
driver calls :func:`open_run` once and hands the run id to whoever logs (a Train worker of rank 0, an eval
``@ray.remote`` task, a LoRA job); each of those builds a :class:`RunLogger` from ``(run_id, tracking_uri)``.

Everything that leaves the process is scrubbed: params are the flattened config passed through
``protclip.storage.redact_mapping`` and kept short (a list of named entries such as ``eval.suites`` becomes its names;
any other value over 500 chars is cut, the full config is the ``config/config.yaml`` artifact), tags and text
artifacts are passed through ``redact``. Every run gets MLflow's standard source tags (``mlflow.user``,
``mlflow.source.name``, ``mlflow.source.git.commit``), so the UI shows who ran what from which commit.

A run ends FAILED when its job raised, KILLED on Ctrl-C or SIGTERM (``ray job stop``): :func:`run_guard`. Metric values that are None, NaN or inf are dropped (MLflow rejects or
mis-plots them); :attr:`RunLogger.dropped_metrics` counts them.

Default store: ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts`` (the file store is
deprecated in mlflow 3.17). On a cluster point ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` at an MLflow server:
a sqlite file on the driver's disk is not reachable from workers on other nodes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protclip.config import flatten, to_dict
from protclip.storage import REDACTED, SECRET_FIELDS, redact, redact_mapping

_log = logging.getLogger(__name__)

__all__ = [
    "TrackingConfig",
    "resolve_tracking_uri",
    "config_params",
    "redacted_config_dict",
    "secrets_of",
    "open_run",
    "RunLogger",
    "NullLogger",
    "run_guard",
    "JobTerminated",
    "source_tags",
    "log_dataset_input",
    "start_system_metrics",
    "logger_for_rank",
    "MAX_KEY_LEN",
    "MAX_VALUE_LEN",
]

MAX_KEY_LEN = 250  # MLflow entity key limit
MAX_VALUE_LEN = 500  # param values: conservative (works with older servers and keeps the UI readable)
MAX_TAG_LEN = 5000
_PARAMS_PER_BATCH = 100  # MLflow log_batch limits
_METRICS_PER_BATCH = 1000
_TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".txt", ".md", ".csv", ".tsv", ".log", ".cfg", ".ini")
_STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")


@dataclass(kw_only=True)
class TrackingConfig:
    """Where and under which names runs are recorded."""

    uri: str | None = None  # MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "protclip"  # experiment name; created on first use
    run_name: str | None = None  # MLflow run name; default: the job's own name (e.g. storage.name)
    artifact_location: str | None = None  # for a NEW experiment; default <dir of sqlite db>/mlartifacts
    enabled: bool = True  # false: nothing is logged (open_run returns None, loggers are no-ops)
    system_metrics: bool = True  # CPU/GPU/memory/disk/network per node (MLflow's system metrics, system/<node>/...)
    system_metrics_interval_s: float = 10.0  # seconds between two system metric samples

    def __post_init__(self) -> None:
        if not self.experiment or not self.experiment.strip():
            raise ValueError("tracking.experiment must be a non-empty name")
        if self.system_metrics_interval_s <= 0:
            raise ValueError("tracking.system_metrics_interval_s must be > 0")


# ---------------------------------------------------------------------------------------------------- helpers


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else a sqlite file in the working directory (absolute, so
    worker processes with another cwd write to the same file)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            rel = uri[len("sqlite:///"):]
            if rel and not os.path.isabs(rel):
                uri = "sqlite:///" + os.path.abspath(rel)
        return uri
    return "sqlite:///" + os.path.join(os.getcwd(), "mlflow.db")


def _default_artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None  # servers decide their own artifact root


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_client(uri: str | None = None):
    """An ``MlflowClient`` on ``uri`` as :func:`resolve_tracking_uri` resolves it (read back a run's metrics)."""
    return _client(resolve_tracking_uri(uri))


def _truncate(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _param_value(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, str) and v.startswith("[{"):  # flatten() JSON-encodes lists: look at the entries again
        try:
            v = json.loads(v)
        except ValueError:
            return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) and x.get("name") for x in v):
        return ", ".join(str(x["name"]) for x in v)  # eval.suites & co: the names; the rest is in config.yaml
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def config_params(config_obj: Any) -> dict[str, str]:
    """The flattened, redacted, truncated params of a config tree (dataclass or plain mapping)."""
    flat = flatten(config_obj) if not isinstance(config_obj, Mapping) else _flatten_mapping(config_obj)
    safe = redact_mapping(flat)
    out: dict[str, str] = {}
    for k, v in safe.items():
        out[_truncate(str(k), MAX_KEY_LEN)] = _truncate(redact(_param_value(v)), MAX_VALUE_LEN)
    return out


def _flatten_mapping(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten_mapping(v, key))
        else:
            out[key] = v
    return out


def _is_secret_key(key: str) -> bool:
    leaf = key.lower()
    # "token" only as the end of a name (hf_token, auth_token), not counts such as data.max_tokens
    return (leaf in SECRET_FIELDS or any(s in leaf for s in ("secret", "password", "api_key"))
            or leaf.endswith("token"))


def redacted_config_dict(config_obj: Any) -> Any:
    """Nested plain form of a config with secret-named fields masked and secret values scrubbed from strings."""

    def rec(obj: Any, key: str = "") -> Any:
        if isinstance(obj, dict):
            return {k: rec(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [rec(v, key) for v in obj]
        if key and _is_secret_key(key) and obj not in (None, ""):
            return REDACTED
        if isinstance(obj, str):
            return redact(obj)
        return obj

    return rec(to_dict(config_obj) if not isinstance(config_obj, Mapping) else dict(config_obj))


def secrets_of(config_obj: Any) -> list[str]:
    """Values of secret-named fields anywhere in a config (so loggers can scrub them from free text)."""
    out: list[str] = []

    def rec(obj: Any, key: str = "") -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                rec(v, str(k))
        elif isinstance(obj, list):
            for v in obj:
                rec(v, key)
        elif key and _is_secret_key(key) and isinstance(obj, str) and len(obj) >= 4:
            out.append(obj)

    rec(to_dict(config_obj) if not isinstance(config_obj, Mapping) else dict(config_obj))
    return out


def _finite_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, float], int]:
    out: dict[str, float] = {}
    dropped = 0
    for k, v in metrics.items():
        if v is None:
            dropped += 1
            continue
        if hasattr(v, "item"):  # torch / numpy scalars
            v = v.item()
        try:
            f = float(v)
        except (TypeError, ValueError):
            dropped += 1
            continue
        if not math.isfinite(f):
            dropped += 1
            continue
        out[_truncate(str(k), MAX_KEY_LEN)] = f
    return out, dropped


#: MLflow 3 files an experiment without a kind as a GenAI (traces) experiment; this marks it as model training.
#: (The UI's "GenAI / Model training" switch at the top left is a browser setting and still opens on GenAI.)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND[0] not in exp.tags:  # a kind someone chose is kept
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=dict([EXPERIMENT_KIND]))
    except MlflowException:  # created concurrently by another process: use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ---------------------------------------------------------------------------------------------------- run


def open_run(
    tracking_cfg: TrackingConfig | None,
    run_name: str | None = None,
    config_obj: Any = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    *,
    reuse_key: str | None = None,
    resume_run_id: str | None = None,
    extra_params: Mapping[str, Any] | None = None,
) -> str | None:
    """Create (or reopen) the job's one MLflow run; return its id (None when disabled).

    Logs the config as params (flattened, redacted, short, batched) and as a redacted ``config.yaml`` artifact,
    plus MLflow's source tags (:func:`source_tags`). ``parent_run_id`` links a child run (e.g. LoRA fine-tuning ->
    the pre-training run) through the standard ``mlflow.parentRunId`` tag.

    Reopening: ``resume_run_id`` (the run recorded in the checkpoint being resumed) continues exactly that run;
    ``reuse_key`` continues the newest run tagged with the same key. Callers pass either only when they resume
    a checkpoint of that run, never merely because a folder name matches. Params are immutable in MLflow: on a
    reopened run a changed value is not re-logged but listed in the ``protclip.changed_on_resume`` tag.
    ``extra_params`` (derived values such as the schedule length) follow the same rule.
    """
    cfg = tracking_cfg or TrackingConfig()
    if not cfg.enabled:
        return None
    from mlflow.entities import RunTag

    uri = resolve_tracking_uri(cfg.uri)
    client = _client(uri)
    art = cfg.artifact_location or _default_artifact_location(uri)
    exp_id = _get_or_create_experiment(client, cfg.experiment, art)
    cfg_secrets = secrets_of(config_obj) if config_obj is not None else []  # also scrub the config's own secrets
    all_tags = {**source_tags(), **{str(k): redact(str(v), cfg_secrets) for k, v in (tags or {}).items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if reuse_key:
        reuse_key = redact(reuse_key, cfg_secrets)
        all_tags["protclip.reuse_key"] = reuse_key
    name = run_name or cfg.run_name

    run_id = _reopen(client, exp_id, resume_run_id, reuse_key)
    if run_id is None:
        run = client.create_run(exp_id, run_name=name, tags={k: _truncate(v, MAX_TAG_LEN) for k, v in all_tags.items()})
        run_id = run.info.run_id
    else:
        client.log_batch(run_id, tags=[RunTag(k, _truncate(v, MAX_TAG_LEN)) for k, v in all_tags.items()])

    logger = RunLogger(run_id, uri, cfg_secrets)
    params = config_params(config_obj) if config_obj is not None else {}
    params |= config_params(dict(extra_params or {}))
    logger.log_params(params, prepared=True)
    if config_obj is not None:
        logger.log_text(_yaml(redacted_config_dict(config_obj)), "config/config.yaml")
    return run_id


def _reopen(client, exp_id: str, resume_run_id: str | None, reuse_key: str | None) -> str | None:
    """The run to continue (set RUNNING again), or None for a new one."""
    from mlflow.exceptions import MlflowException

    run_id = None
    if resume_run_id:
        try:
            run = client.get_run(resume_run_id)
        except MlflowException:
            _log.warning("the checkpoint names MLflow run %s, which this tracking store does not have: a new run "
                         "is started", resume_run_id)
            return None
        if run.info.lifecycle_stage == "deleted":
            _log.warning("MLflow run %s of the checkpoint was deleted: a new run is started", resume_run_id)
            return None
        run_id = run.info.run_id
    elif reuse_key:
        found = client.search_runs(
            [exp_id], filter_string=f"tags.`protclip.reuse_key` = '{_quote(redact(reuse_key))}'",
            max_results=1, order_by=["attributes.start_time DESC"])
        run_id = found[0].info.run_id if found else None
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        _log.info("continuing MLflow run %s", run_id)
    return run_id


def source_tags() -> dict[str, str]:
    """MLflow's standard context tags (user, source name and type, git commit/branch/repo of the entry script),
    with the commit of the installed ``protclip`` source tree when the entry script is not in a git checkout."""
    from mlflow.tracking.context.registry import resolve_tags

    try:
        out = {k: str(v) for k, v in resolve_tags({}).items()}
    except Exception as e:  # noqa: BLE001 - a broken context provider must not stop a job; say so
        _log.warning("MLflow context tags unavailable: %s", redact(str(e))[:200])
        out = {}
    if "mlflow.source.git.commit" not in out:
        commit = _git_commit(Path(__file__).resolve().parent)
        if commit:
            out["mlflow.source.git.commit"] = commit
    return out


def _git_commit(folder: Path) -> str | None:
    import subprocess

    try:
        r = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                           timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        _log.debug("no git commit for %s: %s", folder, e)
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


class RunLogger:
    """Logs into an existing run by id; safe to build in any process (Train worker, Ray task, another job)."""

    def __init__(self, run_id: str, tracking_uri: str | None = None, extra_secrets: Iterable[str] = (),
                 strict: bool = True):
        """``extra_secrets``: values to scrub besides the environment's credentials (see :func:`secrets_of`).
        ``strict=False`` (training loops): a failed call to the tracking server is logged as a warning and
        counted in :attr:`failed_calls` instead of raising, so a tracking outage never kills a training run."""
        self.run_id = run_id
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self._client = _client(self.tracking_uri) if strict else _TolerantClient(_client(self.tracking_uri), self)
        self._secrets = [s for s in extra_secrets if s]
        self.dropped_metrics = 0
        self.failed_calls = 0

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    @property
    def active(self) -> bool:
        return True

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics at ``step``; None/NaN/inf values are dropped (and counted)."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        vals, dropped = _finite_metrics(metrics)
        self.dropped_metrics += dropped
        if not vals:
            return
        ts = get_current_time_millis()
        ms = [Metric(k, v, ts, int(step or 0)) for k, v in vals.items()]
        for i in range(0, len(ms), _METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=ms[i : i + _METRICS_PER_BATCH])

    def metric_steps(self, key: str) -> set[int]:
        """Steps at which ``key`` has a value in this run (e.g. an eval round checks whether a step is scored)."""
        return {int(m.step) for m in (self._client.get_metric_history(self.run_id, key) or [])}

    def log_params(self, params: Mapping[str, Any], *, prepared: bool = False) -> None:
        """Extra params (redacted, short). A key the run already has is not logged again: an equal value is
        skipped, a different one (a resumed run whose config changed) is listed in the
        ``protclip.changed_on_resume`` tag, since MLflow params are immutable. ``prepared``: already passed
        through :func:`config_params`."""
        from mlflow.entities import Param

        clean = dict(params) if prepared else config_params(dict(params))
        if not clean:
            return
        run = self._client.get_run(self.run_id)  # None when a tolerant client could not reach the server
        existing = dict(run.data.params) if run is not None else {}
        changed = sorted(k for k, v in clean.items() if k in existing and existing[k] != v)
        items = [Param(k, v) for k, v in clean.items() if k not in existing]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _PARAMS_PER_BATCH])
        if changed:
            self.set_tags({"protclip.changed_on_resume": ", ".join(
                f"{k}: {existing[k]} -> {clean[k]}" for k in changed)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(_truncate(str(k), MAX_KEY_LEN), _truncate(self._redact(str(v)), MAX_TAG_LEN))
                 for k, v in tags.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=items[i : i + _PARAMS_PER_BATCH])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or a directory to ``<artifact_path>/<its name>``. Text files are uploaded redacted (a
        copy; the original is untouched)."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"artifact to log does not exist: {p}")
        with tempfile.TemporaryDirectory() as tmp:
            src = _redacted_copy(p, Path(tmp), self._redact)
            if src.is_dir():  # like a file, a folder lands at <artifact_path>/<its name>/...
                dest = f"{artifact_path.rstrip('/')}/{src.name}" if artifact_path else src.name
                self._client.log_artifacts(self.run_id, str(src), dest)
            else:
                self._client.log_artifact(self.run_id, str(src), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, self._redact(text), artifact_file)

    def log_dict(self, d: Mapping[str, Any], artifact_file: str) -> None:
        """JSON or YAML (by suffix) dump of ``d`` with secret fields masked."""
        clean = redacted_config_dict(dict(d))
        if artifact_file.endswith((".yaml", ".yml")):
            self.log_text(_yaml(clean), artifact_file)
        else:
            self.log_text(json.dumps(clean, indent=2, default=str), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure saved as an image artifact (e.g. ``eval/retrieval.png``)."""
        self._client.log_figure(self.run_id, figure, artifact_file)

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        """A column table (``{column: values}``) as an MLflow table artifact (``.json``; shown as a table in the
        UI's artifact view and listed by ``mlflow.load_table``)."""
        self._client.log_table(self.run_id, dict(data), artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {status!r}")
        self._client.set_terminated(self.run_id, status)


class _TolerantClient:
    """MlflowClient proxy whose calls warn and count on failure instead of raising."""

    def __init__(self, client: Any, owner: RunLogger) -> None:
        self._inner, self._owner = client, owner

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._inner, name)
        if not callable(fn):
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any tracking failure must not end the training run
                self._owner.failed_calls += 1
                _log.warning("MLflow %s failed (%d so far), continuing: %s: %s", name, self._owner.failed_calls,
                             type(e).__name__, redact(str(e))[:300])
                return None

        return call


def _redacted_copy(src: Path, tmp: Path, scrub: Callable[[str], str]) -> Path:
    """Copy ``src`` into ``tmp`` scrubbing secrets out of text files; binary files are copied unchanged."""
    if src.is_dir():
        dst = tmp / src.name
        for f in _walk_files(src):
            rel = f.relative_to(src)
            _copy_one(f, dst / rel, scrub)
        dst.mkdir(parents=True, exist_ok=True)
        return dst
    dst = tmp / src.name
    _copy_one(src, dst, scrub)
    return dst


def _walk_files(root: Path) -> Iterable[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _copy_one(src: Path, dst: Path, scrub: Callable[[str], str]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() in _TEXT_SUFFIXES:
        try:
            dst.write_text(scrub(src.read_text()))
            return
        except UnicodeDecodeError:
            pass  # not really text: copy the bytes
    shutil.copyfile(src, dst)


@dataclass
class NullLogger:
    """Stand-in for ranks other than 0 and for disabled tracking: every call is a no-op."""

    run_id: str | None = None
    tracking_uri: str | None = None
    dropped_metrics: int = 0
    failed_calls: int = 0

    @property
    def active(self) -> bool:
        return False

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...
    def metric_steps(self, key: str) -> set[int]:
        return set()

    def log_params(self, params: Mapping[str, Any], *, prepared: bool = False) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, d: Mapping[str, Any], artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


def logger_for_rank(rank: int, run_id: str | None, tracking_uri: str | None,
                    extra_secrets: Iterable[str] = (), strict: bool = False) -> RunLogger | NullLogger:
    """A real logger on rank 0 when a run is open, a no-op elsewhere (so call sites need no rank checks).
    Not strict by default: tracking failures inside a training loop warn instead of raising."""
    if rank == 0 and run_id:
        return RunLogger(run_id, tracking_uri, extra_secrets, strict=strict)
    return NullLogger(run_id, tracking_uri)


# ---------------------------------------------------------------------------------------------------- run status


class JobTerminated(BaseException):
    """SIGTERM arrived (``ray job stop``, a scheduler's kill): raised in the main thread by :func:`run_guard` so
    that the run is closed as KILLED instead of being left RUNNING. A BaseException, like KeyboardInterrupt."""


@contextlib.contextmanager
def run_guard(logger: RunLogger | NullLogger | None) -> Iterator[None]:
    """Close the run FAILED when the block raises, KILLED on Ctrl-C or SIGTERM, then re-raise.

    The failure's last line goes to the ``protclip.failure`` tag (redacted). SIGTERM is turned into
    :class:`JobTerminated` while the block runs (main thread only; the previous handler is restored). A normal
    exit leaves the status to the caller (FINISHED, or KILLED for a run stopped early on purpose).
    """
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum: int, frame: Any) -> None:
            raise JobTerminated(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    except BaseException as e:
        if logger is not None and logger.active:
            status = "KILLED" if isinstance(e, (KeyboardInterrupt, JobTerminated)) else "FAILED"
            text = (str(e).strip().splitlines() or [""])[-1]
            try:
                logger.set_tags({"protclip.failure": f"{type(e).__name__}: {text}"[:1000]})
                logger.finish(status)
            except Exception as log_error:  # noqa: BLE001 - the original error matters more; keep it
                _log.warning("could not mark MLflow run %s %s: %s", logger.run_id, status,
                             redact(str(log_error))[:300])
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------------- inputs


def log_dataset_input(logger: RunLogger | NullLogger | None, *, name: str, source_uri: str, digest: str,
                      schema: Mapping[str, str], context: str = "training", profile: Mapping[str, Any] | None = None
                      ) -> None:
    """Record a dataset as an MLflow dataset input (the run page's "Datasets used"): ``name``, ``digest`` (e.g.
    of the ProtAnno manifest), the source URI (redacted) and the column schema ``{column: mlflow type}``."""
    if logger is None or not logger.active:
        return
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types.schema import ColSpec, Schema

    class _Source(HTTPDatasetSource):  # any URI (s3://, file path); HTTPDatasetSource only stores it
        @staticmethod
        def _get_source_type() -> str:
            return "protanno"

    ds = MetaDataset(source=_Source(redact(source_uri)), name=name, digest=digest[:32],
                     schema=Schema([ColSpec(t, c) for c, t in schema.items()]))
    meta = ds._to_mlflow_entity()
    entity = Dataset(name=meta.name, digest=meta.digest, source_type=meta.source_type, source=meta.source,
                     schema=meta.schema, profile=json.dumps(dict(profile), default=str) if profile else None)
    logger._client.log_inputs(logger.run_id, datasets=[
        DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])


def start_system_metrics(run_id: str | None, tracking_uri: str | None, cfg: TrackingConfig, node_id: str,
                         resume: bool = False) -> Any:
    """MLflow's system metrics monitor (CPU, memory, disk, network; GPU when NVML is there) logging
    ``system/<node_id>/...`` into ``run_id`` every ``cfg.system_metrics_interval_s``; call ``.finish()`` at the
    end. None when tracking or system metrics are off, or the monitor cannot start (a warning says why)."""
    if not run_id or not cfg.enabled or not cfg.system_metrics:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        mon = SystemMetricsMonitor(run_id, sampling_interval=cfg.system_metrics_interval_s, node_id=node_id,
                                   tracking_uri=resolve_tracking_uri(tracking_uri), resume_logging=resume)
        mon.start()
    except Exception as e:  # noqa: BLE001 - monitoring is optional; a run must not fail over it
        _log.warning("system metrics are not logged: %s", redact(str(e))[:300])
        return None
    return mon
