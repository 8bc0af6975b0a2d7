"""The pause protclip.data.executor_idle adds to Ray Data's scheduling loop: only after a step that left the
executor idle (no task running, output waiting for the consumer), never while a task runs, while the consumer
waits, or after the last step; and a dataset read through the patched executor yields every row once.

Why it exists (Ray 2.60's loop running back to back inside the training process) and what it bought on the demo
are in the module docstring and docs/training.md; the speed-up itself is measured, not asserted here.
"""

from __future__ import annotations

import time

import pytest

from protclip.data.executor_idle import throttled


class _Op:
    def __init__(self, active: int) -> None:
        self.active = active

    def num_active_tasks(self) -> int:
        return self.active


class _Executor:
    def __init__(self, consumer_waiting: bool) -> None:
        self.consumer_waiting = consumer_waiting

    def _consumer_idling(self) -> bool:
        return self.consumer_waiting


@pytest.mark.parametrize("active,consumer_waiting,more,pauses", [
    ((0, 0), False, True, True),    # idle: output queued for the consumer, nothing running -> pause
    ((0, 1), False, True, False),   # a task runs: ray.wait already blocks on it
    ((0, 0), True, True, False),    # the consumer waits for output: dispatch at full speed
    ((0, 0), False, False, False),  # the last step: the executor is done
])
def test_pause_only_after_an_idle_step(active, consumer_waiting, more, pauses):
    slept: list[float] = []
    calls: list[tuple] = []

    def step(self, topology):
        calls.append((self, topology))
        return more

    wrapped = throttled(step, 0.02, sleep=slept.append)
    ex, topo = _Executor(consumer_waiting), {_Op(a): None for a in active}
    assert wrapped(ex, topo) is more
    assert calls == [(ex, topo)] and slept == ([0.02] if pauses else [])
    assert wrapped.__wrapped__ is step


def test_patched_executor_yields_every_row_once(ray_local):
    import ray.data
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    from protclip.data.executor_idle import throttle_idle_scheduling

    assert throttle_idle_scheduling() and throttle_idle_scheduling()  # idempotent: wrapped once
    step = StreamingExecutor._scheduling_loop_step
    assert not hasattr(step.__wrapped__, "__wrapped__")
    ds = ray.data.range(20 * 64, override_num_blocks=20).map_batches(lambda b: b, batch_size=None, num_cpus=0.25)
    it = iter(ds.iter_batches(batch_size=1, prefetch_batches=2))
    seen = [int(next(it)["id"][0])]
    time.sleep(1.0)  # a slow consumer: output queues up, the executor goes idle and pauses
    seen += [int(b["id"][0]) for b in it]
    assert sorted(seen) == list(range(20 * 64))
