"""Downstream evaluation as Ray tasks: one ``@ray.remote`` task per suite (resources from config) that loads a
checkpoint, embeds in batches and logs into the pre-training MLflow run; and :class:`EvalScheduler`, which launches
them during pre-training without ever blocking the training workers.

Where results go (see :mod:`protclip.eval.runner`): INTO the pre-training run, metrics ``eval/<suite>/<metric>``
at ``step`` = the training step of the checkpoint that was evaluated, figures and a JSON summary under
``eval/step_<N>/round_<id>/`` (one round id per launched round: a re-evaluation of a step never overwrites the
earlier one). A failed suite shows in the status tag ``eval/<suite>/status`` and a redacted
``eval/step_<N>/round_<id>/<suite>_error.txt``; it never touches training.

Why driver-side: the scheduler runs in a thread of the job's driver and watches the run folder for committed
checkpoints (``<storage_path>/<name>/checkpoint_*`` with a complete ``COMMITTED`` manifest). The driver owns the
eval tasks, so they survive a restart of the training worker group (Ray kills tasks whose owner dies: tasks
launched from the rank-0 worker would die with it, and with the worker at the end of training), training code
needs no Ray calls or waits, and the final evaluation can be drained before the run is closed.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray

from protclip import storage as st
from protclip.data.config import DataConfig
from protclip.eval.config import EvalScheduleConfig, EvalSuiteConfig
from protclip.eval.runner import log_failure, new_round_id, run_in_process
from protclip.model.config import ModelConfig
from protclip.pretrained import ModelSource, committed_checkpoints
from protclip.train.run_folder import mark_round_ended

_log = logging.getLogger(__name__)

__all__ = ["EvalScheduler", "launch_suites", "wait_suites", "suite_task"]


@ray.remote(max_retries=0)
def suite_task(
    source: ModelSource,
    entries: list[EvalSuiteConfig],
    run_id: str,
    tracking_uri: str | None,
    secrets: list[str],
    device: str,
    num_cpus: float,
    round_id: str | None = None,
) -> list[dict[str, Any]]:
    """One eval task: load ``source``, run ``entries`` (normally one suite), log into ``run_id`` as ``round_id``."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(max(1, int(num_cpus)))
    return run_in_process(source, entries, run_id, tracking_uri, secrets, device, round_id)


@dataclass
class SuiteTask:
    """One launched eval task: its Ray object ref, the suites it runs (one, or a whole round with
    ``eval.one_task_per_round``) and the checkpoint step it scores."""

    ref: Any  # ray.ObjectRef
    entries: list[EvalSuiteConfig]
    step: int
    round_id: str | None = None


def launch_suites(
    source: ModelSource,
    entries: Iterable[EvalSuiteConfig],
    run_id: str,
    tracking_uri: str | None,
    *,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    device: str = "auto",
    secrets: Iterable[str] = (),
    round_id: str | None = None,
    one_task: bool = False,
) -> list[SuiteTask]:
    """Start one task per suite (non-blocking) as one eval round (``round_id``, default a new one); per-suite
    ``num_cpus``/``num_gpus`` override the defaults. ``one_task``: the suites run one after the other in a
    single task (one process start and model load; it asks for the largest of their resources)."""
    round_id = round_id or new_round_id()
    entries = list(entries)
    groups = [entries] if one_task and entries else [[e] for e in entries]
    tasks = []
    for group in groups:
        cpus = max(e.num_cpus if e.num_cpus is not None else num_cpus for e in group)
        gpus = max(e.num_gpus if e.num_gpus is not None else num_gpus for e in group)
        name = group[0].name if len(group) == 1 else "round"
        ref = suite_task.options(
            num_cpus=cpus, num_gpus=gpus, name=f"eval:{name}@{source.step}"
        ).remote(source, group, run_id, tracking_uri, list(secrets), device, cpus, round_id)
        tasks.append(SuiteTask(ref, group, source.step, round_id))
    return tasks


def _names(task: SuiteTask) -> str:
    return ", ".join(e.name for e in task.entries)


def _failed_results(task: SuiteTask, error: str) -> list[dict[str, Any]]:
    """One "failed" result per suite of ``task``."""
    return [{"name": e.name, "step": task.step, "status": "failed", "error": error} for e in task.entries]


def _failed(task: SuiteTask, logger, message: str, error: str, secrets: Iterable[str]) -> list[dict[str, Any]]:
    """Report every suite of ``task`` as failed (MLflow status tag + error artifact) and return their results."""
    secrets = list(secrets)
    for e in task.entries:
        log_failure(logger, e.name, task.step, message, where="driver", secrets=secrets, round_id=task.round_id)
    return _failed_results(task, error)


def _collect(task: SuiteTask, logger, secrets: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The result of a finished task; a task that died (worker crash, OOM kill, cancel) is reported from here."""
    try:
        return ray.get(task.ref)
    except Exception as e:  # RayTaskError, WorkerCrashedError, TaskCancelledError, OutOfMemoryError
        detail = f"the eval task for {_names(task)} at step {task.step} did not finish: {type(e).__name__}\n{e}"
        secrets = list(secrets)
        return _failed(task, logger, detail, st.redact(str(e), secrets)[:500], secrets)


def wait_suites(
    tasks: list[SuiteTask], logger, timeout_s: float | None = None, secrets: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Wait for ``tasks`` (``jobs/evaluate.py``); unfinished ones at the timeout are cancelled and reported."""
    refs = [t.ref for t in tasks]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    out = []
    for t in tasks:
        if t.ref in ready:
            out.extend(_collect(t, logger, secrets))
        else:
            ray.cancel(t.ref, force=True)
            out.extend(_failed(t, logger, f"not finished after {timeout_s} s; cancelled", "timeout", secrets))
    return out


@dataclass
class _Round:
    step: int
    uri: str
    tasks: list[SuiteTask] = field(default_factory=list)


class EvalScheduler:
    """Launches evaluation rounds on new checkpoints of a running pre-training job, never blocking it.

    A round = one :func:`suite_task` per configured suite on one checkpoint. Due: the first checkpoint at or past
    each multiple of ``every_steps`` (checkpoints only exist every ``train.ckpt_every`` steps). At most
    ``max_in_flight`` rounds run; when busy, the newest due checkpoint waits in ONE slot, replacing an older
    waiting one, which is skipped (``eval/skipped_rounds`` counts them), so evals never pile up behind training.
    Checkpoints present when :meth:`start` runs (a resumed job) are not re-evaluated.

    Use: ``start()`` before ``trainer.fit()``, ``close()`` after it (or as a context manager). ``on_checkpoint``
    may also be called directly with a committed checkpoint URI and its step (no watching needed then).
    """

    def __init__(
        self,
        cfg: EvalScheduleConfig,
        *,
        model_cfg: ModelConfig,
        data_cfg: DataConfig | None = None,
        run_id: str,
        tracking_uri: str | None,
        watch_uri: str | None = None,
        storage: st.StorageConfig | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        from protclip.tracking import RunLogger

        if not run_id:
            raise ValueError("EvalScheduler needs the MLflow run id to log into")
        self.cfg = cfg
        self.entries = [e.resolved() for e in cfg.suites]
        self.model_cfg = model_cfg
        self.data_cfg = data_cfg  # the run's sequence lengths, which the eval tasks embed with
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.watch_uri = watch_uri
        self.storage = (storage or st.StorageConfig()).resolved()
        self.secrets = [s for s in secrets if s]
        self.logger = RunLogger(run_id, tracking_uri, self.secrets)  # driver-side reports (crashes, skips)
        self.results: list[dict[str, Any]] = []  # one per finished suite task
        self.launched: list[tuple[int, float]] = []  # (step, time.time()) of each round started
        self.skipped: list[int] = []  # steps of rounds dropped because a newer checkpoint replaced them
        self._rounds: list[_Round] = []
        self._pending: tuple[int, str] | None = None
        self._seen: set[str] = set()
        self._handled_steps: set[int] = set()
        self._last_bucket = 0
        self._latest: tuple[int, str] | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_ckpts: list[str] = []  # step-0 checkpoints (one per launch of the worker group)
        self._start_marked: set[str] = set()
        self._start_round_over = False

    @classmethod
    def for_pretrain(cls, cfg: Any, run_id: str | None, tracking_uri: str | None) -> EvalScheduler | None:
        """From a ``PretrainConfig`` (its ``eval`` section); None when periodic evaluation is off or untracked."""
        from protclip.tracking import secrets_of

        ev = cfg.eval
        if getattr(ev, "every_steps", 0) == 0:
            return None
        if not isinstance(ev, EvalScheduleConfig):
            raise TypeError(
                "PretrainConfig.eval must be protclip.eval.config.EvalScheduleConfig (suite configs, "
                f"resources), got {type(ev).__name__}"
            )
        if not ev.enabled:
            return None
        if not run_id:
            _log.warning(
                "eval.every_steps is set but MLflow tracking is disabled: periodic evals are not run"
            )
            return None
        return cls(
            ev,
            model_cfg=cfg.model,
            data_cfg=cfg.data,
            run_id=run_id,
            tracking_uri=tracking_uri,
            watch_uri=st.join(cfg.storage.storage_path, cfg.storage.name),
            storage=cfg.storage.access(),
            secrets=secrets_of(cfg),
        )

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> EvalScheduler:
        """Note the checkpoints already there (not evaluated again), then watch in a daemon thread."""
        if self.watch_uri:
            try:
                existing = committed_checkpoints(self.watch_uri, self.storage)
            except Exception as e:  # never stop a training job over evals; the watcher retries on each poll
                _log.warning(
                    "eval scheduler: cannot list %s yet: %s", st.redact(self.watch_uri), st.redact(str(e))
                )
                existing = []
            with self._lock:
                self._seen.update(uri for _, uri in existing)
                if existing:  # a resumed job: its step-0 round ran (or will not) in an earlier launch
                    self._start_round_over = True
                    self._latest = existing[-1]
                    self._handled_steps.update(s for s, _ in existing)
                    self._last_bucket = existing[-1][0] // self.cfg.every_steps
            self._thread = threading.Thread(target=self._loop, name="protclip-eval-scheduler", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> EvalScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            try:
                self.poll()
            except Exception as e:  # storage or MLflow hiccup: evals must never take the training job down
                _log.warning("eval scheduler poll failed (will retry): %s", st.redact(str(e))[:500])

    def close(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop watching; launch the final round (``eval_final``) and wait up to ``timeout_s`` (default
        ``drain_timeout_s``) for running rounds. Rounds still running then are cancelled and reported as failed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        timeout_s = self.cfg.drain_timeout_s if timeout_s is None else timeout_s
        try:
            self.poll()
            with self._lock:
                if self.cfg.eval_final and self._latest is not None:
                    step, uri = self._latest
                    if step not in self._handled_steps:
                        self.on_checkpoint(uri, step, force=True)
        except Exception as e:
            _log.warning("eval scheduler: final scan failed: %s", st.redact(str(e))[:500])
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.poll(scan=False)
            except Exception as e:  # close() runs in the trainer's `finally`: it must not raise
                _log.warning("eval scheduler: poll while draining failed: %s", st.redact(str(e))[:500])
            with self._lock:
                busy = bool(self._rounds) or self._pending is not None
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        with self._lock:
            for rnd in self._rounds:
                for t in rnd.tasks:
                    ray.cancel(t.ref, force=True)
                    msg = (
                        f"still running {timeout_s} s after training ended (eval.drain_timeout_s); cancelled"
                    )
                    try:
                        self.results.extend(_failed(t, self.logger, msg, "drain timeout", self.secrets))
                    except Exception as e:
                        _log.warning("eval %s at step %d: %s (not logged: %s)", _names(t), t.step, msg, e)
                        self.results.extend(_failed_results(t, "drain timeout"))
            self._rounds.clear()
            if self._pending is not None:
                self.skipped.append(self._pending[0])
                self._pending = None
            return self.summary()

    def _mark_start_round(self) -> None:
        """``eval.wait_at_start``: once the step-0 round has ended (whatever its result: a failed "before"
        evaluation must not hold training up), mark every step-0 checkpoint seen as done, so the waiting workers
        start. A relaunched worker group writes a new step-0 checkpoint: it is marked at once."""
        if not (self.cfg.wait_at_start and self.watch_uri and self._start_round_over):
            return
        with self._lock:
            todo = [u for u in self._start_ckpts if u not in self._start_marked]
            suites = {str(r.get("name")): str(r.get("status")) for r in self.results if r.get("step") == 0}
        for uri in todo:
            try:
                mark_round_ended(self.watch_uri, uri, {"step": 0, "suites": suites}, self.storage)
                with self._lock:
                    self._start_marked.add(uri)
            except Exception as e:  # retried on the next poll; the workers wait at most eval.start_wait_timeout_s
                _log.warning("could not mark the step-0 eval round on %s as ended: %s", st.redact(uri),
                             st.redact(str(e))[:300])

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rounds_launched": len(self.launched),
                "steps": [s for s, _ in self.launched],
                "skipped_steps": list(self.skipped),
                "failed": [r for r in self.results if r.get("status") != "ok"],
                "ok": sum(r.get("status") == "ok" for r in self.results),
            }

    # ------------------------------------------------------------------------------------------ scheduling
    def on_checkpoint(self, uri: str, step: int, *, force: bool = False) -> str:
        """A committed checkpoint exists at ``uri``: launch a round now, queue it, or ignore it (not due).

        Returns ``"launched"``, ``"queued"``, ``"not_due"`` or ``"duplicate"``. Never blocks.
        """
        with self._lock:
            if self._latest is None or step >= self._latest[0]:
                self._latest = (step, uri)
            if step == 0:
                self._start_ckpts.append(uri)
            if step in self._handled_steps:
                return "duplicate"
            bucket = step // self.cfg.every_steps
            start = step == 0 and self.cfg.at_start
            if not force and not start and bucket <= self._last_bucket:
                return "not_due"
            self._last_bucket = max(self._last_bucket, bucket)
            self._handled_steps.add(step)
            if len(self._rounds) < self.cfg.max_in_flight:
                self._launch(step, uri)
                return "launched"
            if self._pending is not None:
                self._skip(self._pending[0])
            self._pending = (step, uri)
            return "queued"

    def _skip(self, step: int) -> None:
        self.skipped.append(step)
        _log.info(
            "eval round for step %d skipped: a newer checkpoint is due while %d round(s) run",
            step,
            len(self._rounds),
        )
        try:
            self.logger.log_metrics({"eval/skipped_rounds": float(len(self.skipped))}, step=step)
        except Exception as e:
            _log.warning("could not log eval/skipped_rounds: %s", st.redact(str(e))[:300])

    def _launch(self, step: int, uri: str) -> None:
        source = ModelSource(
            "checkpoint", uri, self.model_cfg, step, self.run_id, self.storage, self.tracking_uri, self.data_cfg
        )
        tasks = launch_suites(
            source,
            self.entries,
            self.run_id,
            self.tracking_uri,
            num_cpus=self.cfg.num_cpus,
            num_gpus=self.cfg.num_gpus,
            device=self.cfg.device,
            secrets=self.secrets,
            one_task=self.cfg.one_task_per_round,
        )
        self._rounds.append(_Round(step, uri, tasks))
        self.launched.append((step, time.time()))
        _log.info("eval round launched for step %d (%d suites) on %s", step, len(tasks), st.redact(uri))

    def poll(self, scan: bool = True) -> None:
        """Reap finished tasks, look for new checkpoints (``scan``), start the waiting round if there is room."""
        self._reap()
        if scan and self.watch_uri:
            with self._lock:
                seen = set(self._seen)
            for step, uri in committed_checkpoints(self.watch_uri, self.storage, skip=seen):
                with self._lock:
                    self._seen.add(uri)
                self.on_checkpoint(uri, step)
        self._mark_start_round()  # a step-0 checkpoint that came after the step-0 round ended
        with self._lock:
            if self._pending is not None and len(self._rounds) < self.cfg.max_in_flight:
                step, uri = self._pending
                self._pending = None
                self._launch(step, uri)

    def _reap(self) -> None:
        with self._lock:
            tasks = [t for r in self._rounds for t in r.tasks]
        if not tasks:
            return
        ready, _ = ray.wait([t.ref for t in tasks], num_returns=len(tasks), timeout=0)
        if not ready:
            return
        done = set(ready)
        finished: list[dict[str, Any]] = []
        for t in tasks:
            if t.ref in done:
                try:
                    finished.extend(_collect(t, self.logger, self.secrets))
                except Exception:  # even reporting failed (MLflow down): keep the scheduler alive, say so
                    _log.error("eval %s at step %d: result could not be reported:\n%s", _names(t), t.step,
                               st.redact(traceback.format_exc()))
                    finished.extend(_failed_results(t, "unreported"))
        with self._lock:
            for r in self._rounds:
                r.tasks = [t for t in r.tasks if t.ref not in done]
            ended = [r for r in self._rounds if not r.tasks]
            self._rounds = [r for r in self._rounds if r.tasks]
            self.results.extend(finished)
        for r in ended:
            if r.step == 0:
                self._start_round_over = True
                self._mark_start_round()
