"""EvalScheduler's decisions without a Ray runtime: which checkpoints are due, the single waiting slot that
drops older waiting rounds (counted in MLflow), duplicates, the forced final round, and config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protclip.config import ConfigError, from_dict
from protclip.eval.config import EvalScheduleConfig, EvalSuiteConfig, EvaluateConfig


@pytest.fixture
def scheduler(tmp_path, monkeypatch):
    import protclip.eval.tasks as tasks
    from protclip.model.config import tiny_model_config
    from protclip.tracking import TrackingConfig, open_run

    launched: list[int] = []
    monkeypatch.setattr(tasks, "launch_suites", lambda source, *a, **k: launched.append(source.step) or [])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = open_run(TrackingConfig(uri=uri, experiment="sched"), "s")
    cfg = EvalScheduleConfig(
        every_steps=3, max_in_flight=1,
        suites=[EvalSuiteConfig(suite="retrieval", config={"path": str(tmp_path / "x.parquet")})],
    )  # fmt: skip
    sched = tasks.EvalScheduler(cfg, model_cfg=tiny_model_config(), run_id=run_id, tracking_uri=uri)
    return sched, launched, uri, run_id


def test_due_queue_skip_and_final(scheduler):
    from mlflow.tracking import MlflowClient

    sched, launched, uri, run_id = scheduler
    assert sched.on_checkpoint("c1", 1) == "not_due"  # before the first multiple of every_steps
    assert sched.on_checkpoint("c3", 3) == "launched"
    assert sched.on_checkpoint("c4", 4) == "not_due"  # same bucket as 3
    assert sched.on_checkpoint("c6", 6) == "queued"  # one round already running (max_in_flight 1)
    assert sched.on_checkpoint("c10", 10) == "queued"  # replaces 6, which is skipped
    assert sched.on_checkpoint("c10", 10) == "duplicate"
    assert sched.on_checkpoint("c11", 11) == "not_due"
    assert sched.on_checkpoint("c11", 11, force=True) == "queued"  # the final round; 10 is dropped
    assert launched == [3] and sched.skipped == [6, 10]
    hist = {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "eval/skipped_rounds")}
    assert hist == {6: 1.0, 10: 2.0}
    sched._rounds.clear()  # the running round finished: the waiting one starts on the next poll
    sched.poll(scan=False)
    assert launched == [3, 11] and sched.summary()["steps"] == [3, 11]


def test_config_validation(tmp_path):
    suite = {"suite": "retrieval", "config": {"path": "p.parquet"}}
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(EvalScheduleConfig, {"every_steps": 2, "suites": [{"suite": "nope"}]})
    with pytest.raises(ConfigError, match="suite names must be unique"):
        from_dict(EvalScheduleConfig, {"every_steps": 2, "suites": [suite, suite]})
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        from_dict(EvalScheduleConfig, {"every_steps": 2})
    with pytest.raises(ConfigError, match="wait_at_start needs eval.at_start"):
        from_dict(EvalScheduleConfig, {"every_steps": 2, "suites": [suite], "wait_at_start": True})
    with pytest.raises(ConfigError, match="start_wait_timeout_s must be >= 0"):
        from_dict(EvalScheduleConfig, {"every_steps": 2, "suites": [suite], "at_start": True, "wait_at_start": True,
                                       "start_wait_timeout_s": -1})
    with pytest.raises(ConfigError, match=r"\[a-z0-9_\]"):
        from_dict(EvalScheduleConfig, {"suites": [suite | {"name": "Bad-Name"}]})
    assert not from_dict(EvalScheduleConfig, {"suites": [suite]}).enabled  # every_steps 0: off
    ev = from_dict(
        EvaluateConfig,
        {
            "source": {"export": "e"},
            "suites": [
                suite,
                suite | {"name": "zs", "suite": "zero_shot", "config": {"path": "shared:benchmarks/x.fasta"}},
            ],
        },
    )
    assert [s.space for s in ev.chosen()] == ["joint", "joint"]
    resolved = ev.chosen()[1].resolved().config["path"]
    assert resolved.endswith("benchmarks/x.fasta") and "shared:" not in resolved
    assert ev.chosen()[0].resolved().config["path"] == str(Path("p.parquet").resolve())  # relative: from cwd
    with pytest.raises(ConfigError, match="exactly one"):
        from_dict(EvaluateConfig, {"source": {"export": "e", "checkpoint": "c"}, "suites": [suite]})


def test_step_zero_checkpoint_is_evaluated_only_with_at_start(scheduler):
    """eval.at_start: the untrained model's checkpoint (step 0) gets a round, the "before" of a comparison."""
    sched, launched, _, _ = scheduler
    assert sched.on_checkpoint("c0", 0) == "not_due"  # default: step 0 is below the first multiple
    sched._handled_steps.clear()
    sched.cfg.at_start = True
    assert sched.on_checkpoint("c0b", 0) == "launched"
    assert launched == [0]
    assert sched.on_checkpoint("c3", 3) == "queued"  # later rounds are scheduled as before


def test_wait_at_start_marks_every_step_zero_checkpoint_once_the_round_ended(scheduler, tmp_path, monkeypatch):
    """eval.wait_at_start: the driver marks the step-0 round as ended in the run folder (what the waiting workers
    poll for) only when its tasks are done, also for a step-0 checkpoint a relaunched worker group writes later,
    and never for a later step's round."""
    import protclip.eval.tasks as tasks
    from protclip.train.run_folder import round_done_marker, wait_for_round_end

    sched, launched, _, _ = scheduler
    run = str(tmp_path / "run")
    sched.cfg.at_start, sched.cfg.wait_at_start, sched.watch_uri = True, True, run
    first, relaunch = f"{run}/checkpoint_000000000_a1", f"{run}/checkpoint_000000000_b2"
    monkeypatch.setattr(tasks, "launch_suites", lambda source, *a, **k: [tasks.SuiteTask("ref0", [], 0)])
    monkeypatch.setattr(tasks.ray, "wait", lambda refs, **k: ([], refs))  # the round's task is still running
    assert sched.on_checkpoint(first, 0) == "launched"
    sched.poll(scan=False)
    assert not wait_for_round_end(round_done_marker(run, first), None, timeout_s=0)
    monkeypatch.setattr(tasks.ray, "wait", lambda refs, **k: (refs, []))  # now it has finished
    monkeypatch.setattr(tasks, "_collect", lambda t, *a: [{"name": "retrieval", "step": 0, "status": "ok"}])
    sched.poll(scan=False)
    marker = round_done_marker(run, first)
    assert wait_for_round_end(marker, None, timeout_s=0)
    assert json.loads(Path(marker).read_text()) == {"step": 0, "suites": {"retrieval": "ok"}}
    assert sched.on_checkpoint(relaunch, 0) == "duplicate"  # no second round for step 0 ...
    sched.poll(scan=False)
    assert wait_for_round_end(round_done_marker(run, relaunch), None, timeout_s=0)  # ... but its workers go on
    assert sched.on_checkpoint(f"{run}/checkpoint_000000003_a1", 3) == "launched"
    sched.poll(scan=False)
    assert sorted(p.name for p in Path(round_done_marker(run, first)).parent.iterdir()) == [
        "checkpoint_000000000_a1.json", "checkpoint_000000000_b2.json"]


def test_without_wait_at_start_no_marker_is_written(scheduler, tmp_path, monkeypatch):
    import protclip.eval.tasks as tasks

    sched, _, _, _ = scheduler
    run = tmp_path / "run"
    sched.cfg.at_start, sched.watch_uri = True, str(run)
    monkeypatch.setattr(tasks, "launch_suites", lambda source, *a, **k: [tasks.SuiteTask("ref0", [], 0)])
    monkeypatch.setattr(tasks.ray, "wait", lambda refs, **k: (refs, []))
    monkeypatch.setattr(tasks, "_collect", lambda t, *a: [{"name": "retrieval", "step": 0, "status": "ok"}])
    assert sched.on_checkpoint(f"{run}/checkpoint_000000000_a1", 0) == "launched"
    sched.poll(scan=False)
    assert sched.results and not run.exists()


def test_one_task_per_round_runs_every_suite_in_one_task_and_reports_each_on_failure(monkeypatch, tmp_path):
    """eval.one_task_per_round: one Ray task gets the whole round (with the largest CPU request of its suites);
    when that task dies, every suite it held is reported as failed, not only the first."""
    import protclip.eval.tasks as tasks
    from protclip.model.config import tiny_model_config
    from protclip.pretrained import ModelSource

    calls: list[tuple[dict, list[str]]] = []

    class FakeTask:
        def options(self, **kw):
            return type("Bound", (), {"remote": lambda _s, source, group, *a: calls.append(
                (kw, [e.name for e in group])) or f"ref{len(calls)}"})()

    monkeypatch.setattr(tasks, "suite_task", FakeTask())
    suites = [EvalSuiteConfig(suite="retrieval", name="a", config={"path": "p"}),
              EvalSuiteConfig(suite="retrieval", name="b", config={"path": "p"}, num_cpus=2.0),
              EvalSuiteConfig(suite="retrieval", name="c", config={"path": "p"})]
    source = ModelSource("checkpoint", str(tmp_path / "ck"), tiny_model_config(), 7)
    apart = tasks.launch_suites(source, suites, "run", None, num_cpus=0.5)
    assert [names for _, names in calls] == [["a"], ["b"], ["c"]]
    assert [kw["num_cpus"] for kw, _ in calls] == [0.5, 2.0, 0.5] and len(apart) == 3
    calls.clear()
    together = tasks.launch_suites(source, suites, "run", None, num_cpus=0.5, one_task=True)
    assert [names for _, names in calls] == [["a", "b", "c"]] and calls[0][0]["num_cpus"] == 2.0
    assert len(together) == 1 and together[0].step == 7

    logged: list[str] = []
    monkeypatch.setattr(tasks, "log_failure", lambda logger, name, *a, **k: logged.append(name))
    monkeypatch.setattr(tasks.ray, "get", lambda ref: (_ for _ in ()).throw(RuntimeError("worker died")))
    results = tasks._collect(together[0], logger=None)
    assert logged == ["a", "b", "c"]
    assert [(r["name"], r["status"], r["step"]) for r in results] == [("a", "failed", 7), ("b", "failed", 7),
                                                                      ("c", "failed", 7)]
