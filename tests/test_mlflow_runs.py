"""MLflow runs as a user meets them: which run a relaunch continues, and what the run page shows.

Run identity (no Ray): a relaunch continues an MLflow run only when it resumes a checkpoint of that run under the
same key (absolute run folder + run name); the same config launched from another directory, or with no checkpoint,
is a new run; an incompatible change (schedule length, model) is refused in one line.

The run page (the session's short Ray pre-training with the shipped ``jobs/configs/tiny.yaml``, run from another
working directory: ``shipped_tiny_run`` in tests/conftest.py): read back over MLflow's
REST API what the UI renders: source/commit/user tags, the ProtAnno dataset input, the logged model (which loads
back and embeds into the joint space), metric names without per-epoch mix counts or bookkeeping values, the mix
as one table artifact, system metrics, and the checkpoint recording its run.
"""

from __future__ import annotations

import json
import os
import types
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from protclip.paths import REPO_ROOT


def _cfg(storage_path: str, data_uri: str, tracking_uri: str, *extra: str):
    from protclip.config import cli_config
    from protclip.recipes.pretrain import PretrainConfig

    return cli_config(PretrainConfig, [
        "--config", str(REPO_ROOT / "jobs" / "configs" / "tiny.yaml"),
        "--data.uri", data_uri, "--data.num_epochs", "1", "--storage.storage_path", storage_path,
        "--tracking.uri", tracking_uri, "--tracking.system_metrics_interval_s", "1",
        "--train.max_steps", "4", "--train.ckpt_every", "2", "--train.val_every", "2", "--train.log_every", "1",
        "--eval.every_steps", "0", *extra])


def _state(run_id: str | None, cfg, total: int, step: int = 4) -> dict:
    from protclip.train.run_folder import run_identity

    return {"step": step, "extra": {"total_steps": total, "run": run_identity(cfg, total, run_id)}}


# ------------------------------------------------------------------------------------------------ identity


def test_resume_plan_continues_only_the_checkpoints_own_run(tmp_path, monkeypatch):
    from protclip.config import ConfigError
    from protclip.train.run_folder import ResumeConflict, resume_plan, run_key

    monkeypatch.chdir(tmp_path)
    data = str(tmp_path / "protanno")
    cfg = _cfg("./runs", data, "sqlite:///m.db")
    assert resume_plan(cfg, None).mlflow_run_id is None  # no checkpoint: a new run, whatever ran before
    plan = resume_plan(cfg, _state("run-a", cfg, 4), 4)
    assert plan.mlflow_run_id == "run-a" and plan.step == 4 and "resuming" in plan.message
    # the same config from another directory is another run folder, hence another run
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    there = _cfg("./runs", data, "sqlite:///m.db")
    assert run_key(there).startswith(str(tmp_path / "elsewhere")) and run_key(there) != run_key(cfg)
    assert resume_plan(there, _state("run-a", cfg, 4), 4).mlflow_run_id is None  # not this folder's run
    monkeypatch.chdir(tmp_path)
    # a checkpoint copied from another key resumes its weights into a new MLflow run
    moved = _state("run-a", cfg, 4)
    moved["extra"]["run"]["key"] = "/old/place/runs/tiny#tiny"
    assert resume_plan(cfg, moved, 4).mlflow_run_id is None
    # compatible change (learning rate): same run; schedule length or model: one line, exit-2 error type
    lr = _cfg("./runs", data, "sqlite:///m.db", "--train.lr", "5e-4")
    assert resume_plan(lr, _state("run-a", cfg, 4), 4).mlflow_run_id == "run-a"
    longer = _cfg("./runs", data, "sqlite:///m.db", "--train.max_steps", "30")
    with pytest.raises(ResumeConflict) as e:
        resume_plan(longer, _state("run-a", cfg, 4), 30)
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg
    assert "derived.total_steps: 4 -> 30" in msg and "--storage.name" in msg
    assert resume_plan(longer, _state("run-a", cfg, 4)).mlflow_run_id == "run-a"  # schedule unknown yet: no check
    wider = _cfg("./runs", data, "sqlite:///m.db", "--model.projection_dim", "64")
    with pytest.raises(ResumeConflict, match=r"model.projection_dim: 32 -> 64"):
        resume_plan(wider, _state("run-a", cfg, 4))


# ------------------------------------------------------------------------------------------------ run page


@pytest.fixture(scope="module")
def trained(shipped_tiny_run):
    """The session's run of the shipped tiny.yaml (tests/conftest.py) and its config as the job loaded it."""
    from protclip.config import cli_config
    from protclip.recipes.pretrain import PretrainConfig

    old = os.getcwd()
    os.chdir(shipped_tiny_run["tmp"])  # the job's relative paths resolve against the folder it ran in
    try:
        cfg = cli_config(PretrainConfig, shipped_tiny_run["argv"])
    finally:
        os.chdir(old)

    summary = shipped_tiny_run["summary"]
    result = types.SimpleNamespace(run_id=summary["mlflow_run_id"], export_uri=summary["export"])
    return {"tmp": shipped_tiny_run["tmp"], "cfg": cfg, "result": result,
            "tracking_uri": shipped_tiny_run["tracking_uri"]}


def _rest(server_url: str, endpoint: str, **query) -> dict:
    url = f"{server_url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.ray
@pytest.mark.slow
def test_run_page_shows_tags_dataset_model_and_readable_metrics(trained, tmp_path):
    import mlflow
    import pandas as pd
    import torch
    from mlflow.tracking import MlflowClient

    from protclip.mlflow_server import start_server
    from protclip.train.run_folder import peek_latest_state, resume_plan
    from tests.helpers.tolerance import approx_rounding

    run_id = trained["result"].run_id
    with start_server(tmp_path / "ui", backend_store_uri=trained["tracking_uri"], timeout_s=300) as server:
        run = _rest(server.url, "runs/get", run_id=run_id)["run"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        metrics = {m["key"] for m in run["data"]["metrics"]}
        inputs = run["inputs"]["dataset_inputs"]
        models = _rest(server.url, "runs/get", run_id=run_id)["run"].get("outputs", {}).get("model_outputs", [])
        arts = {f["path"] for f in _rest(server.url, "artifacts/list", run_id=run_id, path="data")["files"]}
        exp = _rest(server.url, "experiments/get", experiment_id=run["info"]["experiment_id"])["experiment"]
    # filed as a model-training experiment, not a GenAI (traces) one
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    assert run["info"]["status"] == "FINISHED"
    assert tags["mlflow.user"] and tags["mlflow.source.name"] and len(tags["mlflow.source.git.commit"]) == 40
    assert tags["protclip.run_key"].endswith("/runs/tiny#tiny")
    # the ProtAnno folder as a dataset input: digest of its manifest, the columns read as schema
    (ds,) = inputs
    assert ds["dataset"]["name"] == "protanno:protanno_samples" and len(ds["dataset"]["digest"]) == 32
    assert "sequence" in ds["dataset"]["schema"] and {"key": "mlflow.data.context", "value": "training"} in ds["tags"]
    # readable metrics: training curves, a few data summaries, system metrics; no mix cells, no bookkeeping
    assert {"train/loss", "val/loss", "data/swissprot_fraction", "data/train_rows_per_epoch_mean"} <= metrics
    assert any(m.startswith("system/") and m.endswith("cpu_utilization_percentage") for m in metrics)
    assert not [m for m in metrics if m.startswith("mix/") or m == "train/skipped"
                or m.endswith(("/failed", "/n_examples", "/seconds"))]
    assert {"data/mix.json", "data/mix.png", "data/manifest.json"} <= arts
    assert all(len(p["value"]) <= 500 for p in run["data"]["params"])
    # the logged model loads back in plain Python and embeds into the joint space (unit vectors)
    (out,) = models
    # resolved through a client, not mlflow.set_tracking_uri: that one pins the store for the whole process
    # (and exports MLFLOW_TRACKING_URI), so every later test would log into this test's database
    logged = MlflowClient(trained["tracking_uri"]).get_logged_model(out["model_id"])
    model = mlflow.pyfunc.load_model(logged.artifact_location)
    emb = model.predict(pd.DataFrame({"protein": ["MKTAYIAKQRQISFVKSHFSRQ", "MSTNPKPQRKTKRNTNRRPQD"]}))
    assert emb.shape == (2, trained["cfg"].model.projection_dim)
    norms = (emb.astype("float64") ** 2).sum(axis=1)
    assert norms == approx_rounding([1.0, 1.0], dtype=torch.float32)  # L2-normalised float32 vectors
    # the checkpoint names its run: a relaunch of this config continues this MLflow run
    state = peek_latest_state(trained["cfg"])
    assert state["extra"]["run"]["mlflow_run_id"] == run_id
    assert resume_plan(trained["cfg"], state, 4).mlflow_run_id == run_id
    assert os.path.isdir(Path(trained["result"].export_uri))


# ------------------------------------------------------------------------------------------------ eval rounds


def test_round_ids_sort_in_launch_order_even_within_one_millisecond():
    from protclip.eval.runner import new_round_id

    ids = [new_round_id() for _ in range(500)]  # far more launches than milliseconds elapse
    assert len(set(ids)) == len(ids) and ids == sorted(ids)


def test_a_second_eval_round_at_the_same_step_neither_overwrites_nor_doubles(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from protclip.eval.runner import log_success, new_round_id
    from protclip.eval.suites.base import SuiteResult
    from protclip.tracking import RunLogger, TrackingConfig, open_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = open_run(TrackingConfig(uri=uri, experiment="rounds"), "r", None)
    log = RunLogger(run_id, uri)
    first, second = new_round_id(), new_round_id()
    assert first != second
    for rnd, value in ((first, 0.25), (second, 0.5)):
        log_success(log, "retrieval", 10, SuiteResult(metrics={"p2t_r1": value}, n_examples=8), 1.5,
                    {"name": "retrieval", "metrics": {"p2t_r1": value}}, rnd)
    client = MlflowClient(uri)
    hist = client.get_metric_history(run_id, "eval/retrieval/p2t_r1")
    assert [(m.step, m.value) for m in hist] == [(10, 0.25)]  # one value per step: the first round's
    assert set(client.get_run(run_id).data.metrics) == {"eval/retrieval/p2t_r1"}  # no bookkeeping metrics
    rounds = sorted(a.path for a in client.list_artifacts(run_id, "eval/step_10"))
    assert rounds == [f"eval/step_10/round_{first}", f"eval/step_10/round_{second}"]
    summaries = [json.loads(Path(client.download_artifacts(run_id, f"{r}/retrieval.json", str(tmp_path / r[-8:])))
                            .read_text()) for r in rounds]
    assert [(s["round"], s["charted"], s["metrics"]["p2t_r1"]) for s in summaries] == [
        (first, True, 0.25), (second, False, 0.5)]
    status = client.get_run(run_id).data.tags["eval/retrieval/status"]
    assert f"round {second}" in status and "8 examples" in status and "only" in status
