"""Shared entry-point plumbing: one-line errors and documented exit codes instead of stack-trace soup.

Every job's ``main(argv)`` (``protclip/recipes/``) runs under :func:`run_main` (the ``jobs/*.py`` shims call
:func:`run_job`, which also answers ``--help`` without importing the job). Expected failures are recognised by the
names of their exception classes (and of the errors they wrap: Ray re-raises a task's error as a subclass of it),
so this base module imports no job, no data module and neither torch nor Ray.

Exit codes (README, "Errors and exit codes"): 0 ok; 1 the job failed (bad input data, a failed suite or
checkpoint); 2 config error; 3 storage error; 4 index and model do not match (search); 5 tracking (MLflow)
error; 6 Ray could not be started or joined; 130 interrupted. Config errors are one line; for the others the
line ends with the file that holds the full traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping

from protclip.storage import redact

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_STORAGE = 3
EXIT_MISMATCH = 4
EXIT_TRACKING = 5
EXIT_RAY = 6
EXIT_INTERRUPTED = 130

#: expected failures by exception class name (module.qualname, anywhere in the MRO): (label, exit code)
EXPECTED_ERRORS: dict[str, tuple[str, int]] = {
    "protclip.config.ConfigError": ("config error", EXIT_CONFIG),
    "protclip.storage.StorageError": ("storage error", EXIT_STORAGE),
    "protclip.runtime.RayStartError": ("ray error", EXIT_RAY),
    "protclip.preflight.TrackingError": ("tracking error", EXIT_TRACKING),
    "mlflow.exceptions.MlflowException": ("tracking error", EXIT_TRACKING),
    "sqlite3.Error": ("tracking error", EXIT_TRACKING),
    "sqlalchemy.exc.SQLAlchemyError": ("tracking error", EXIT_TRACKING),
    "protclip.data.parquet_files.ProtAnnoFileError": ("data error", EXIT_FAILED),
    "protclip.data.formats.core.FormatError": ("data error", EXIT_FAILED),
    "protclip.data.holdout.HoldoutError": ("data error", EXIT_FAILED),
    "protclip.data.schema.SchemaMismatchError": ("data error", EXIT_FAILED),
    "protclip.data.mmseqs.MMseqsError": ("data error", EXIT_FAILED),
    "protclip.train.checkpoint.CheckpointError": ("checkpoint error", EXIT_FAILED),
    "protclip.train.safe_dcp.UnsafeCheckpointError": ("checkpoint error", EXIT_FAILED),
    "builtins.FileNotFoundError": ("error", EXIT_FAILED),
}


#: modules whose errors are written as one complete line: no traceback file for them
_OWN_MESSAGES = ("protclip.config", "protclip.storage", "protclip.preflight", "protclip.local_paths")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "s3fs", "urllib3", "werkzeug", "filelock", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _class_names(exc: BaseException) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (``__cause__``/``__context__``) and the first error a Ray Train worker
    group failure carries, outermost first."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is o for o in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        failures = getattr(e, "worker_failures", None)  # ray.train.WorkerGroupError
        if isinstance(failures, Mapping):
            todo += [v for v in failures.values() if isinstance(v, BaseException)]
    return out


def classify(exc: BaseException) -> tuple[str, int, BaseException] | None:
    """``(label, exit code, the matching error)`` of an expected failure, or None for a bug (traceback)."""
    for e in _chain(exc):
        for name in _class_names(e):
            if name in EXPECTED_ERRORS:
                label, code = EXPECTED_ERRORS[name]
                return label, code, e
    return None


def _message(e: BaseException) -> str:
    """The error's first line (a Ray task error's own text is a whole remote traceback: use what it wraps)."""
    cause = getattr(e, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def traceback_file(job: str, exc: BaseException) -> str | None:
    """Write the full traceback to ``$PROTCLIP_LOG_DIR`` (default ``<tmp>/protclip-logs``); return the path."""
    folder = os.environ.get("PROTCLIP_LOG_DIR") or os.path.join(tempfile.gettempdir(), "protclip-logs")
    path = os.path.join(folder, f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            f.write(redact("".join(traceback.format_exception(exc))))
    except OSError as e:
        logging.getLogger(__name__).warning("could not write the traceback to %s: %s", path, e)
        return None
    return path


def run_main(main: Callable[[list[str]], int | None], argv: list[str] | None = None,
             help_passthrough: bool = False) -> int:
    """Run ``main(argv)``; map known errors to one line on stderr and the documented exit code.

    ``--help`` prints ``main``'s docstring unless ``help_passthrough`` (a ``main`` with its own argparse)."""
    argv = sys.argv[1:] if argv is None else argv
    if not help_passthrough and any(a in ("-h", "--help") for a in argv):
        print((main.__doc__ or "").strip())
        return 0
    try:
        rc = main(argv)
        return int(rc or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        known = classify(exc)
        if known is None:
            raise
        label, code, err = known
        line = f"{label}: {redact(_message(err))}"
        if not type(err).__module__.startswith(_OWN_MESSAGES):  # others' errors: keep their traceback
            job = getattr(main, "__module__", "job").rsplit(".", 1)[-1]
            if job == "__main__":
                job = os.path.splitext(os.path.basename(sys.argv[0] or "job"))[0]
            path = traceback_file(job, exc)
            if path:
                line += f" (traceback: {path})"
        print(line, file=sys.stderr)
        return code


def run_job(module: str, argv: list[str] | None = None, configs: Mapping[str, str] | None = None,
            doc: str | None = None) -> int:
    """What a ``jobs/<job>.py`` shim runs: ``--help`` from the config sources (no Ray, no torch), else the
    recipe ``module``'s ``main`` under :func:`run_main`.

    ``configs`` maps an override prefix to the root config (``module:Class``); default: the config class the
    recipe's ``main`` passes to ``cli_config``."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        from protclip.help import job_help

        print(job_help(module, configs, doc))
        return 0
    import protclip.runtime  # noqa: F401  (before the recipe imports ray: loopback binding for local runs)

    main = importlib.import_module(module).main
    return run_main(main, argv)
