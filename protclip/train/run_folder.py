"""A pre-training run's folder in storage, read from the driver: where it is and the state it can resume from.

Ray Train keeps a run under ``<storage_path>/<name>/``; a job started again with the same ``storage.name`` and
``storage.storage_path`` finds it. Before building its datasets the driver needs the epoch and step it resumes
at, which :func:`peek_latest_state` reads from the newest *complete* checkpoint (half-uploaded ones skipped).
No Ray here: the workers' side of resuming is :class:`protclip.ray_session.RaySession`.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from protclip import storage
from protclip.train.checkpoint import STATE_FILE, committed_manifest
from protclip.train.config import TrainRunConfig

__all__ = ["run_uri", "peek_latest_state"]


def run_uri(cfg: TrainRunConfig) -> str:
    """``<storage_path>/<name>``: where Ray Train keeps this run's checkpoints."""
    return storage.join(cfg.storage.storage_path, cfg.storage.name)


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
