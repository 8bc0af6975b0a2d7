"""MLflow tracking: params flattened/redacted/truncated, metrics filtered and read back, artifacts scrubbed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protclip.storage import StorageConfig
from protclip.tracking import (
    MAX_VALUE_LEN,
    NullLogger,
    RunLogger,
    TrackingConfig,
    config_params,
    logger_for_rank,
    open_run,
    secrets_of,
)

PLANTED = "planted-cfg-secret-8731"
ENV_SECRET = "planted-env-secret-5529"


@dataclass
class _Train:
    lr: float = 1e-4
    note: str = ""


@dataclass
class _Root:
    storage: StorageConfig = field(default_factory=StorageConfig)
    train: _Train = field(default_factory=_Train)
    suites: list[str] = field(default_factory=lambda: ["retrieval", "zero_shot"])


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return TrackingConfig(experiment="unit")


def _cfg() -> _Root:
    return _Root(storage=StorageConfig(secret_access_key=PLANTED, endpoint_url="http://127.0.0.1:9"),
                 train=_Train(note=f"uses {ENV_SECRET} and " + "x" * 2000))


def _all_artifact_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_config_params_flatten_redact_truncate(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    p = config_params(_cfg())
    assert p["train.lr"] == "0.0001"
    assert p["storage.secret_access_key"] == "***"
    assert p["suites"] == '["retrieval", "zero_shot"]'
    assert len(p["train.note"]) == MAX_VALUE_LEN and p["train.note"].endswith("...")
    assert not any(PLANTED in v or ENV_SECRET in v for v in p.values())


def test_open_run_params_tags_artifacts_metrics(tracking, tmp_path):
    from mlflow.tracking import MlflowClient

    run_id = open_run(tracking, "r1", _cfg(), tags={"origin": f"token={ENV_SECRET}"})
    assert (tmp_path / "mlflow.db").is_file()  # default store: sqlite in the cwd
    log = RunLogger(run_id, tracking.uri, secrets_of(_cfg()))
    log.log_metrics({"train/loss": 2.5, "train/lr": 1e-3, "nan": float("nan"), "inf": float("inf"), "none": None},
                    step=0)
    log.log_metrics({"train/loss": 2.0}, step=1)
    assert log.dropped_metrics == 3
    note = tmp_path / "notes.txt"
    note.write_text(f"secret is {ENV_SECRET} / {PLANTED}")
    log.log_artifact(note, "extra")
    folder = tmp_path / "tower"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"token": ENV_SECRET}))
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x01")
    log.log_artifact(folder, "export")
    log.log_dict({"storage": {"secret_access_key": PLANTED}, "k": 1}, "extra/d.json")
    log.set_tags({"stage": "done"})
    log.finish("FINISHED")

    client = MlflowClient(log.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.0001"
    assert set(run.data.metrics) == {"train/loss", "train/lr"}
    assert [m.value for m in client.get_metric_history(run_id, "train/loss")] == [2.5, 2.0]
    assert run.data.tags["stage"] == "done"
    for text in list(run.data.params.values()) + list(run.data.tags.values()):
        assert PLANTED not in text and ENV_SECRET not in text
    art_root = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (art_root / "config" / "config.yaml").is_file()
    assert (art_root / "export" / "tower" / "config.json").is_file()
    assert (art_root / "export" / "tower" / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    text = _all_artifact_text(art_root)
    assert "secret_access_key" in text and PLANTED not in text and ENV_SECRET not in text
    assert ENV_SECRET in note.read_text()  # the local file itself is left untouched


def test_parent_run_and_reuse(tracking):
    from mlflow.tracking import MlflowClient

    parent = open_run(tracking, "pre", _cfg())
    child = open_run(tracking, "lora", None, tags={"kind": "lora"}, parent_run_id=parent)
    client = MlflowClient(RunLogger(child, tracking.uri).tracking_uri)
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    a = open_run(tracking, "resumable", _cfg(), reuse_key="s3://b/runs/x")
    RunLogger(a, tracking.uri).finish("FAILED")
    changed = _cfg()
    changed.train.lr = 5e-4
    b = open_run(tracking, "resumable", changed, reuse_key="s3://b/runs/x")
    assert a == b
    run = client.get_run(b)
    assert run.info.status == "RUNNING"
    assert run.data.params["train.lr"] == "0.0001"  # params are immutable: the change is recorded as a tag
    assert "train.lr" in run.data.tags["protclip.changed_on_resume"]


def test_non_strict_logger_survives_a_dead_server(tracking, monkeypatch):
    import os

    for k, v in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():
        monkeypatch.setenv(k, v)
    log = logger_for_rank(0, "0123456789abcdef", "http://127.0.0.1:9")  # nothing listens on port 9
    log.log_metrics({"train/loss": 1.0}, step=1)
    assert log.failed_calls == 1
    with pytest.raises(Exception):  # noqa: B017 - strict loggers (drivers, tools) still raise
        RunLogger("0123456789abcdef", "sqlite:///" + os.path.join(os.getcwd(), "m.db")).log_metrics({"a": 1.0}, 1)


def test_disabled_and_null_logger(tracking):
    assert open_run(TrackingConfig(enabled=False), "x", _cfg()) is None
    assert isinstance(logger_for_rank(1, "abc", None), NullLogger)
    assert isinstance(logger_for_rank(0, None, None), NullLogger)
    NullLogger().log_metrics({"a": 1.0}, step=0)
    with pytest.raises(ValueError):
        TrackingConfig(experiment=" ")


def test_resume_run_id_continues_that_run_and_changed_derived_params_do_not_crash(tracking):
    from mlflow.tracking import MlflowClient

    a = open_run(tracking, "r", _cfg(), extra_params={"derived.total_steps": 200})
    RunLogger(a, tracking.uri).finish("FAILED")
    fresh = open_run(tracking, "r", _cfg(), extra_params={"derived.total_steps": 200})
    assert fresh != a  # no resume id: a new run, even with the same name and config
    b = open_run(tracking, "r", _cfg(), resume_run_id=a, extra_params={"derived.total_steps": 30})
    assert b == a
    run = MlflowClient(RunLogger(a, tracking.uri).tracking_uri).get_run(a)
    assert run.info.status == "RUNNING" and run.data.params["derived.total_steps"] == "200"
    assert "derived.total_steps: 200 -> 30" in run.data.tags["protclip.changed_on_resume"]
    RunLogger(a, tracking.uri).log_params({"derived.total_steps": 31})  # a later log_params neither
    assert open_run(tracking, "r", _cfg(), resume_run_id="f" * 32) not in (a, fresh, None)  # unknown id: new


def test_source_tags_and_short_params(tracking):
    from mlflow.tracking import MlflowClient

    cfg = _cfg()
    cfg.suites = [{"name": "retrieval", "suite": "retrieval", "config": {"path": "x" * 600}},
                  {"name": "probe", "suite": "linear_probe", "config": {}}]
    run_id = open_run(tracking, "r", cfg)
    run = MlflowClient(RunLogger(run_id, tracking.uri).tracking_uri).get_run(run_id)
    assert run.data.params["suites"] == "retrieval, probe"
    assert all(len(v) <= MAX_VALUE_LEN for v in run.data.params.values())
    tags = run.data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    assert len(tags["mlflow.source.git.commit"]) == 40  # this checkout's commit


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_run_guard_closes_the_run(tracking, error, status):
    from mlflow.tracking import MlflowClient

    from protclip.tracking import run_guard

    run_id = open_run(tracking, "r", None)
    log = RunLogger(run_id, tracking.uri)
    with pytest.raises(type(error)), run_guard(log):
        raise error
    run = MlflowClient(log.tracking_uri).get_run(run_id)
    assert run.info.status == status and run.data.tags["protclip.failure"].startswith(type(error).__name__)


def test_run_guard_turns_sigterm_into_killed(tracking):
    import os
    import signal

    from mlflow.tracking import MlflowClient

    from protclip.tracking import JobTerminated, run_guard

    run_id = open_run(tracking, "r", None)
    log = RunLogger(run_id, tracking.uri)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(JobTerminated), run_guard(log):
        os.kill(os.getpid(), signal.SIGTERM)
    assert MlflowClient(log.tracking_uri).get_run(run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_experiments_are_filed_as_model_training(tracking, tmp_path):
    """MLflow 3 files an experiment without ``mlflow.experimentKind`` as a GenAI (traces) experiment: the
    trainer's experiments carry the training kind, an existing one gets it, and a kind set by someone is kept."""
    import dataclasses

    from mlflow.tracking import MlflowClient

    from protclip.tracking import EXPERIMENT_KIND

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    open_run(dataclasses.replace(tracking, uri=uri), "new", None)
    assert client.get_experiment_by_name("unit").tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    client.create_experiment("older")  # made before this version, no kind
    client.create_experiment("chosen", tags={EXPERIMENT_KIND[0]: "genai_development"})
    for name in ("older", "chosen"):
        open_run(dataclasses.replace(tracking, uri=uri, experiment=name), "r", None)
    assert client.get_experiment_by_name("older").tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    assert client.get_experiment_by_name("chosen").tags[EXPERIMENT_KIND[0]] == "genai_development"
