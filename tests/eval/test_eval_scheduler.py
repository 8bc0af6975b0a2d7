"""EvalScheduler's decisions without a Ray runtime: which checkpoints are due, the single waiting slot that
drops older waiting rounds (counted in MLflow), duplicates, the forced final round, and config validation."""

from __future__ import annotations

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
