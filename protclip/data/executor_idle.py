"""Keep Ray Data's streaming executor from busy-spinning inside a training worker while it waits for the trainer.

Why: in Ray Data 2.60 the executor's scheduling thread blocks (``ray.wait``, 0.1 s) only while some task is
running. When every task has finished or is held back by backpressure and the output queue waits for the
consumer, which is the normal state of a training input pipeline (the trainer is slower than the reads), the
loop runs back to back: one core and most of the GIL go to bookkeeping in the training process. Measured on the
demo (2 CPU workers): the executor thread of one rank took more CPU than its training thread, and steps ran
~2x slower until its epoch's output was consumed. Upstream: ray-project/ray#65060 ("the scheduling loop keeps
spinning").

:func:`throttle_idle_scheduling` wraps the loop step: after a step with no running task while the consumer
still has output queued, the thread sleeps ``sleep_s``. Nothing else changes: when the consumer is waiting
(empty output queue) or a task runs, the loop is as fast as before; the consumer reads the queued output without
the loop, so a sleep of a few milliseconds costs at most that much delay before the next task is dispatched.
Ray is imported here, so this lives beside the Ray Data pipeline, not in pure code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)

__all__ = ["throttle_idle_scheduling", "throttled", "IDLE_SLEEP_S"]

#: pause after an idle loop step (no task running, output waiting for the consumer)
IDLE_SLEEP_S = 0.02
_PATCHED_ATTR = "_protclip_idle_throttle"


def _idle(executor: Any, topology: Any) -> bool:
    """No operator has a running task and the consumer has output to take (so nothing can change until it does,
    or until a running task finishes, which ``ray.wait`` already waits for)."""
    if any(op.num_active_tasks() for op in topology):
        return False
    return not executor._consumer_idling()


def throttle_idle_scheduling(sleep_s: float = IDLE_SLEEP_S) -> bool:
    """Install the idle pause on Ray Data's ``StreamingExecutor`` in this process (idempotent).

    Returns True when installed (or already there); False, with a warning, when this Ray version does not have
    the methods it wraps, in which case Ray Data runs unchanged.
    """
    try:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor
    except ImportError as e:
        _log.warning("Ray Data idle throttle not installed (streaming executor not importable: %s)", e)
        return False
    step = getattr(StreamingExecutor, "_scheduling_loop_step", None)
    if step is None or not hasattr(StreamingExecutor, "_consumer_idling"):
        _log.warning("Ray Data idle throttle not installed: this Ray version's StreamingExecutor has no "
                     "_scheduling_loop_step/_consumer_idling (the executor may spin while the trainer computes)")
        return False
    if getattr(step, _PATCHED_ATTR, False):
        return True
    StreamingExecutor._scheduling_loop_step = throttled(step, sleep_s)  # type: ignore[method-assign]
    return True


def throttled(step: Callable[[Any, Any], bool], sleep_s: float,
              sleep: Callable[[float], None] = time.sleep) -> Callable[[Any, Any], bool]:
    """``step`` (the executor's loop step) followed by a ``sleep_s`` pause when it left the executor idle."""

    def throttled_step(self: Any, topology: Any) -> bool:
        more = step(self, topology)
        if more and _idle(self, topology):
            sleep(sleep_s)
        return more

    setattr(throttled_step, _PATCHED_ATTR, True)
    throttled_step.__wrapped__ = step  # type: ignore[attr-defined]
    return throttled_step
