"""Fault injection for the reliability tests (docs/reliability.md): a training worker that dies or hangs at a
chosen step, exactly once.

Why in the product code: the faults must hit the real loop inside a real Ray Train worker at a known step (a
SIGKILL sent from outside cannot be aimed at a step). Inert unless ``PROTCLIP_FAULT_AT_STEP`` is set:

    PROTCLIP_FAULT_AT_STEP=5            fire when 5 optimizer steps are done, before step 6 starts
    PROTCLIP_FAULT_RANK=1               on this rank only (default 0)
    PROTCLIP_FAULT_ACTION=kill|hang     SIGKILL the worker process (default), or sleep (the driver is then
                                        killed from outside while workers are mid-run)
    PROTCLIP_FAULT_MARKER=/path         required: created atomically when the fault fires; an existing marker
                                        disarms the fault, so a restarted worker group does not die again

Env vars set in a driver after ``ray.init`` never reach Ray workers, so the driver forwards every
``PROTCLIP_FAULT_*`` variable through the workers' runtime env (:func:`fault_env`). No Ray import here.
"""

from __future__ import annotations

import logging
import os
import signal
import time

_log = logging.getLogger(__name__)

__all__ = ["ENV_PREFIX", "fault_env", "maybe_inject"]

ENV_PREFIX = "PROTCLIP_FAULT_"


def fault_env() -> dict[str, str]:
    """The ``PROTCLIP_FAULT_*`` variables of this process (empty in normal runs)."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def maybe_inject(step: int, rank: int) -> None:
    """Fire the configured fault if this is its step and rank and its marker does not exist yet."""
    at = os.environ.get(ENV_PREFIX + "AT_STEP")
    if not at or int(at) != step or int(os.environ.get(ENV_PREFIX + "RANK", "0")) != rank:
        return
    marker = os.environ.get(ENV_PREFIX + "MARKER")
    if not marker:
        raise RuntimeError(f"{ENV_PREFIX}AT_STEP is set but {ENV_PREFIX}MARKER is not (the fault would repeat "
                           "on every restart)")
    action = os.environ.get(ENV_PREFIX + "ACTION", "kill")
    if action not in ("kill", "hang"):
        raise ValueError(f"{ENV_PREFIX}ACTION must be 'kill' or 'hang', got {action!r}")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: fires once across restarts
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(f"pid={os.getpid()} rank={rank} step={step} action={action}\n")
    _log.warning("fault injection: %s rank %d (pid %d) after step %d", action, rank, os.getpid(), step)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get(ENV_PREFIX + "HANG_S", "900")))
