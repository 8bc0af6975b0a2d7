"""A readable console for long jobs: progress lines on the terminal, everything else in the run's log file.

Why fd-level redirection: Ray forwards every worker's output (per-task chatter, Ray Data progress bars, torch
and MLflow warnings) through the driver's file descriptors 1 and 2, and C++ parts write there directly, so
only ``dup2`` catches all of it. The terminal stays reachable through a saved copy of the original stdout;
an exception that ends the job is printed there in full (and also kept in the log file).

:class:`ProgressMonitor` reads the run's metrics back from MLflow (where rank 0 logs them anyway), so training
workers need no extra channel to the driver and a resumed or remote run is followed the same way.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["Console", "quiet_console", "ProgressMonitor", "progress_line"]


class Console:
    """Writes lines to the terminal (the original stdout), whatever fds 1 and 2 point to now."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, text: str = "") -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


@contextlib.contextmanager
def quiet_console(log_path: str | None, expected: tuple[type[BaseException], ...] = ()) -> Iterator[Console]:
    """Send fds 1/2 (and ``sys.stdout``/``sys.stderr``) to ``log_path`` for the block; yield the terminal.

    ``log_path=None`` changes nothing (verbose mode): the console is plain stdout. On an exception the full
    traceback is written to the log and, unless it is one of the ``expected`` errors (which the caller reports
    in one line once the terminal is back), printed to the terminal before it propagates."""
    if log_path is None:
        yield Console(sys.stdout)
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = io.TextIOWrapper(os.fdopen(os.dup(saved_out), "wb", buffering=0), write_through=True)
    old_streams = sys.stdout, sys.stderr
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb", buffering=0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0), write_through=True)
    console = Console(terminal)
    try:
        yield console
    except BaseException as e:
        tb = "".join(traceback.format_exception(e))
        sys.stderr.write(tb)
        if not isinstance(e, (SystemExit, KeyboardInterrupt, *expected)):
            console.line(tb.rstrip())
        console.line(f"(full log: {log_path})")
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        terminal.close()


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(step: int, total: int, metrics: dict[str, float], elapsed_s: float, steps_done: int) -> str:
    """``step 40/200 | loss 6.12 gc 2.31 mlm 2.80 bsr 2.95 pda 1.10 | val gc 2.20 | 3.1 pairs/s | ETA 4m10s``.

    ``steps_done``: steps finished since the first one this job printed, over ``elapsed_s`` since then (a resumed
    job starts later than step 0; the first step, with start-up in it, is not a rate)."""
    parts = [f"step {step}/{total}"]
    terms = [("loss", "train/loss")] + [(k, f"train/loss_{k}") for k in ("gc", "mlm", "bsr", "pda")]
    losses = " ".join(f"{name} {metrics[key]:.3f}" for name, key in terms if key in metrics)
    if losses:
        parts.append(losses)
    vals = " ".join(f"{name} {metrics[key]:.3f}" for name, key in (("loss", "val/loss"), ("gc", "val/loss_gc"))
                    if key in metrics)
    if vals:
        parts.append("val " + vals)
    if "perf/pairs_per_s" in metrics:
        parts.append(f"{metrics['perf/pairs_per_s']:.1f} pairs/s")
    rate = steps_done / elapsed_s if elapsed_s > 0 and steps_done > 0 else 0.0
    parts.append(f"ETA {_fmt_duration((total - step) / rate) if rate else '?'}")
    return " | ".join(parts)


class ProgressMonitor:
    """Polls an MLflow run in a daemon thread and prints one :func:`progress_line` per new logged step, plus
    one line per finished evaluation round (``eval/...`` metrics)."""

    KEYS = ("train/loss", "train/loss_gc", "train/loss_mlm", "train/loss_bsr", "train/loss_pda", "val/loss",
            "val/loss_gc", "perf/pairs_per_s")

    def __init__(self, client: Any, run_id: str, total_steps: int, console: Console,
                 poll_s: float = 3.0) -> None:
        self.client, self.run_id, self.total = client, run_id, total_steps
        self.console, self.poll_s = console, poll_s
        self._printed_step = -1
        self._first_step: int | None = None
        self._t0 = time.monotonic()
        self._eval_seen: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="protclip-progress", daemon=True)

    def __enter__(self) -> ProgressMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._safe_poll()  # the last lines

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._safe_poll()

    def _safe_poll(self) -> None:
        try:
            self.poll()
        except Exception as e:  # a progress line is never worth failing a job over; say why it is missing
            print(f"progress monitor: {type(e).__name__}: {e}", file=sys.stderr)

    def poll(self) -> None:
        hist: dict[str, dict[int, float]] = {}
        for key in self.KEYS:
            for m in self.client.get_metric_history(self.run_id, key):
                hist.setdefault(key, {})[int(m.step)] = float(m.value)
        steps = sorted(s for s in hist.get("train/loss", {}) if s > self._printed_step)
        for step in steps:
            if self._first_step is None:
                self._first_step = step
                self._t0 = time.monotonic()
            at = {k: v[step] for k, v in hist.items() if step in v}
            done = step - self._first_step
            self.console.line(progress_line(step, self.total, at, time.monotonic() - self._t0, done))
            self._printed_step = step
        val0 = hist.get("val/loss_gc", {}).get(0)
        if val0 is not None and self._printed_step < 0 and ("val", 0) not in self._eval_seen:
            self._eval_seen.add(("val", 0))
            self.console.line(f"step 0 (untrained) | val loss {hist['val/loss'].get(0, math.nan):.3f} "
                              f"gc {val0:.3f}")
        self._eval_rounds()

    def _eval_rounds(self) -> None:
        run = self.client.get_run(self.run_id)
        by_step: dict[int, list[str]] = {}
        for key in run.data.metrics:
            if not key.startswith("eval/") or key.count("/") != 2:
                continue
            suite, metric = key.split("/")[1:]
            if metric not in ("p2t_r1", "p2t_r10", "acc", "gc_loss"):
                continue
            for m in self.client.get_metric_history(self.run_id, key):
                if (key, int(m.step)) in self._eval_seen:
                    continue
                self._eval_seen.add((key, int(m.step)))
                by_step.setdefault(int(m.step), []).append(f"{suite}/{metric} {m.value:.3f}")
        for step in sorted(by_step):
            self.console.line(f"eval @ step {step}: " + ", ".join(sorted(by_step[step])))
