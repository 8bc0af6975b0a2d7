"""A pre-training run's folder in storage, read from the driver: where it is and the state it can resume from.

Ray Train keeps a run under ``<storage_path>/<name>/``; a job started again with the same ``storage.name`` and
``storage.storage_path`` finds it. Before building its datasets the driver needs the epoch and step it resumes
at, which :func:`peek_latest_state` reads from the newest *complete* checkpoint (half-uploaded ones skipped).
No Ray here: the workers' side of resuming is :class:`protclip.ray_session.RaySession`.

Run identity: every checkpoint records which MLflow run it belongs to (``TrainState.extra["run"]``: the run key
= absolute run folder URI + run name, the MLflow run id and a fingerprint of what must not change within a run).
The driver continues an MLflow run only when it resumes a checkpoint of that run under the same key
(:func:`resume_plan`); with no checkpoint it starts a new run, so two jobs never merge into one history. A
checkpoint whose fingerprint differs from the new config (model, objective, data, schedule length, global batch)
is refused with one line saying what differs (:class:`ResumeConflict`): such a job is a new run and needs a new
``storage.name``.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from protclip import storage
from protclip.config import ConfigError, flatten
from protclip.train.checkpoint import RUN_IDENTITY, STATE_FILE, committed_manifest
from protclip.train.config import TrainRunConfig

__all__ = ["run_uri", "checkpoint_name", "round_done_marker", "mark_round_ended", "wait_for_round_end",
           "peek_latest_state", "run_key", "run_fingerprint", "run_identity", "resume_plan",
           "ResumePlan", "ResumeConflict", "INCOMPATIBLE"]

#: config keys (dotted prefixes) a resumed run must keep: change one and it is another run
INCOMPATIBLE = ("model.", "loss.", "data.uri", "data.sampling.", "data.split", "derived.total_steps",
                "derived.global_batch_size")


class ResumeConflict(ConfigError):
    """The run folder holds a checkpoint of a run whose config differs in an incompatible way (one line, exit 2)."""


#: sub-folder of a run folder where the driver marks eval rounds that have ended (``eval.wait_at_start``)
ROUNDS_DONE_DIR = "eval_rounds_done"


def checkpoint_name(step: int, attempt: str) -> str:
    """The folder name of a checkpoint: step first, so names sort by step; the attempt keeps relaunches apart."""
    return f"checkpoint_{step:09d}_{attempt}"


def round_done_marker(run_folder_uri: str, checkpoint: str) -> str:
    """URI of the file the driver writes when the eval round on checkpoint folder ``checkpoint`` has ended
    (whatever its result); workers waiting for the step-0 round poll for it."""
    return storage.join(run_folder_uri, ROUNDS_DONE_DIR, f"{posixpath.basename(checkpoint.rstrip('/'))}.json")


def mark_round_ended(run_folder_uri: str, checkpoint: str, body: dict[str, Any],
                     access: storage.StorageConfig | None = None) -> str:
    """Write :func:`round_done_marker` (``body`` as JSON: what the round gave); returns its URI."""
    marker = round_done_marker(run_folder_uri, checkpoint)
    fs, path = storage.filesystem(marker, access)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe(path, json.dumps(body, sort_keys=True).encode())
    return marker


def wait_for_round_end(marker: str, access: storage.StorageConfig | None, timeout_s: float,
                       poll_s: float = 1.0) -> bool:
    """Block until ``marker`` exists (True) or ``timeout_s`` has passed (False)."""
    fs, path = storage.filesystem(marker, access)
    deadline = time.monotonic() + timeout_s
    while True:
        fs.invalidate_cache(posixpath.dirname(path))
        if fs.exists(path):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def run_uri(cfg: TrainRunConfig) -> str:
    """``<storage_path>/<name>``: where Ray Train keeps this run's checkpoints."""
    return storage.join(cfg.storage.storage_path, cfg.storage.name)


def run_key(cfg: TrainRunConfig) -> str:
    """Identity of a run: its folder as an absolute URI plus the MLflow run name. A relative local path is made
    absolute against the working directory, so the same config launched from two directories is two runs."""
    uri = run_uri(cfg)
    if not storage.is_remote(uri):
        uri = os.path.abspath(uri.removeprefix("file://"))
    return f"{storage.redact(uri)}#{cfg.tracking.run_name or cfg.storage.name}"


def run_fingerprint(cfg: TrainRunConfig, total_steps: int) -> dict[str, str]:
    """The values of :data:`INCOMPATIBLE` keys for this config (redacted strings, as compared on resume)."""
    flat = flatten(cfg) | {"derived.total_steps": total_steps, "derived.global_batch_size": cfg.global_batch_size}
    return {k: storage.redact(str(v)) for k, v in sorted(flat.items()) if k.startswith(INCOMPATIBLE)}


def run_identity(cfg: TrainRunConfig, total_steps: int, mlflow_run_id: str | None) -> dict[str, object]:
    """What every checkpoint of this run records under ``TrainState.extra["run"]``."""
    return {"key": run_key(cfg), "mlflow_run_id": mlflow_run_id, "fingerprint": run_fingerprint(cfg, total_steps)}


@dataclass
class ResumePlan:
    """How a launch relates to the run folder: resume step, the MLflow run to continue (None: a new run)."""

    step: int | None  # step of the checkpoint resumed, None for a fresh start
    mlflow_run_id: str | None
    message: str  # one line for the log / console


def resume_plan(cfg: TrainRunConfig, state: dict[str, Any] | None, total_steps: int | None = None) -> ResumePlan:
    """Decide from the newest committed checkpoint's state (:func:`peek_latest_state`): no checkpoint -> a new
    MLflow run; a checkpoint of this run (same key) with a compatible config -> continue its MLflow run; a
    checkpoint copied from elsewhere (other key) -> resume the weights into a new MLflow run. Raises
    :class:`ResumeConflict` when an incompatible key changed; ``total_steps`` None skips the schedule check (the
    driver calls it once before and once after it knows the data)."""
    if not state:
        return ResumePlan(None, None, f"new run {cfg.storage.name}: no checkpoint in {storage.redact(run_uri(cfg))}")
    step = int(state.get("step", 0))
    ident = (state.get("extra") or {}).get(RUN_IDENTITY) or {}
    recorded: dict[str, str] = dict(ident.get("fingerprint") or {})
    if not recorded and (state.get("extra") or {}).get("total_steps") is not None:
        recorded = {"derived.total_steps": str(state["extra"]["total_steps"])}  # checkpoints of older versions
    current = run_fingerprint(cfg, total_steps if total_steps is not None else -1)
    diffs = [k for k in sorted(set(recorded) | set(current))
             if (total_steps is not None or k != "derived.total_steps") and recorded.get(k) != current.get(k)]
    if diffs:
        shown = "; ".join(f"{k}: {_short(recorded.get(k))} -> {_short(current.get(k))}" for k in diffs[:4])
        more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise ResumeConflict(
            f"{storage.redact(run_uri(cfg))} holds a checkpoint (step {step}) of a run with another config: "
            f"{shown}{more}. Resume it with its own config, or start a new run with another --storage.name")
    if ident.get("key") == run_key(cfg) and ident.get("mlflow_run_id"):
        return ResumePlan(step, str(ident["mlflow_run_id"]),
                          f"resuming {cfg.storage.name} from step {step} into MLflow run {ident['mlflow_run_id']}")
    return ResumePlan(step, None, f"resuming the checkpoint of step {step} in {storage.redact(run_uri(cfg))} "
                                  "(recorded elsewhere or by an older version) into a new MLflow run")


def _short(v: str | None) -> str:
    return "unset" if v is None else (v if len(v) <= 60 else "..." + v[-57:])  # a path differs at its end


def peek_latest_state(cfg: TrainRunConfig) -> dict[str, Any] | None:
    """The trainer state of the newest committed checkpoint of this run in storage (driver-side, cheap)."""
    fs, root = storage.filesystem(run_uri(cfg), cfg.storage.access())
    try:
        entries = fs.ls(root, detail=False) if fs.exists(root) else []
    except FileNotFoundError:
        return None
    names = sorted((posixpath.basename(e.rstrip("/")) for e in entries), reverse=True)
    for name in names:
        if not name.startswith("checkpoint_"):
            continue
        d = posixpath.join(root, name) if storage.is_remote(run_uri(cfg)) else os.path.join(root, name)
        # complete = every file of every rank there (as the workers check); a half-uploaded one is skipped
        if committed_manifest(fs, d) is not None and fs.exists(f"{d}/{STATE_FILE}"):
            with fs.open(f"{d}/{STATE_FILE}", "r") as f:
                return json.load(f)
    return None
