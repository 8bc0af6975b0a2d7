"""Downstream evaluation as Ray tasks logged to MLflow.

1. A real pre-training job (Ray Train, 2 workers, checkpoints on moto S3) with the EvalScheduler watching it: the
   evals launched during training log into the job's own MLflow run at the step of the checkpoint they measured,
   a failing suite is reported there (redacted) and training still completes.
2. ``jobs/evaluate.py`` on that run's MLflow id finds its export and reproduces the checkpoint's metrics.
3. ``jobs/evaluate.py`` (Ray tasks) on an exported tiny model dir logs metrics and plots into a given run.
One ``TorchTrainer.fit`` in all.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.helpers.tolerance import approx_rounding

pytestmark = pytest.mark.ray

PLANTED = "planted-eval-secret-9931"
STEPS, CKPT = 6, 2


def _evaluate_main():
    """What `python jobs/evaluate.py ...` runs (the shim hands argv to this recipe's main under run_job)."""
    from protclip.recipes.evaluate import main

    return main


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _steps(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _artifacts(client, run_id: str, path: str) -> set[str]:
    """Files of ``eval/step_<N>`` as ``eval/step_<N>/<file>``, whichever eval round folder holds them."""
    out = set()
    for a in client.list_artifacts(run_id, path):
        assert a.is_dir and a.path.startswith(f"{path}/round_"), a.path  # everything sits in a round folder
        out |= {f"{path}/{f.path.rsplit('/', 1)[-1]}" for f in client.list_artifacts(run_id, a.path)}
    return out


def _round_path(client, run_id: str, path: str) -> str:
    """``eval/step_<N>/<file>`` -> the artifact path inside the (only) round folder holding it."""
    folder, name = path.rsplit("/", 1)
    found = [f.path for a in client.list_artifacts(run_id, folder)
             for f in client.list_artifacts(run_id, a.path) if f.path.endswith("/" + name)]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory, uniprot_dat, s3_server, ray_local):
    import os

    import boto3

    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file

    tmp = tmp_path_factory.mktemp("eval_tasks")
    rows = sorted((record_to_row(r) for r in parse_file(uniprot_dat).records), key=lambda r: r["accession"])
    (tmp / "protanno").mkdir()
    pq.write_table(rows_to_table(rows), tmp / "protanno" / "part-00000.parquet", row_group_size=16)
    pd.DataFrame(rows)[["accession", "sequence", "text"]].to_parquet(tmp / "pairs.parquet")
    bucket = "eval-tasks"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    yield {
        "tmp": tmp,
        "endpoint": s3_server,
        "data": str(tmp / "protanno"),
        "pairs": str(tmp / "pairs.parquet"),
        "storage": f"s3://{bucket}/runs",
        "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
    }
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def trained(env):
    """Pre-train 6 steps (checkpoint every 2) with periodic evals every 2 steps, one of them broken."""
    from protclip import storage
    from protclip.config import load_config
    from protclip.eval.config import EvalScheduleConfig, EvalSuiteConfig
    from protclip.eval.tasks import EvalScheduler
    from protclip.recipes.pretrain import PretrainConfig, run_pretrain
    from protclip.tracking import open_run

    cfg = load_config(PretrainConfig, None, {
        "data.uri": env["data"], "data.sampling.mode": "none", "data.micro_batch_size": "4",
        "data.max_protein_length": "130", "data.max_text_length": "128", "data.max_subtext_length": "64",
        "data.bucket_window": "16", "data.shuffle_buffer": "32", "data.val_fraction": "0.15",
        "data.num_epochs": "3", "data.split": "deterministic", "data.map_num_cpus": "0.5",
        "model.protein_model": "random", "model.text_model": "random", "model.attention": "sdpa",
        "model.projection_dim": "32", "model.proto_num": "16",
        "train.num_workers": "2", "train.lr": "1e-3", "train.warmup_steps": "1", "train.max_steps": str(STEPS),
        "train.ckpt_every": str(CKPT), "train.val_every": "0", "train.keep_checkpoints": "3",
        "storage.storage_path": env["storage"], "storage.name": "evalrun", "storage.endpoint_url": env["endpoint"],
        "storage.access_key_id": "testing", "storage.secret_access_key": PLANTED,
        "tracking.experiment": "eval-tasks-test",
    })  # fmt: skip
    schedule = EvalScheduleConfig(
        every_steps=2,
        num_cpus=0.5,
        max_in_flight=1,
        poll_interval_s=0.2,
        drain_timeout_s=300,
        suites=[
            EvalSuiteConfig(
                suite="retrieval", config={"path": env["pairs"], "max_examples": 24, "heatmap_size": 8}
            ),
            # fails inside its task: the data file does not exist (and its path carries a secret to redact)
            EvalSuiteConfig(
                suite="linear_probe",
                name="broken",
                config={"path": f"{env['tmp']}/missing-{PLANTED}/x.fasta", "format": "deeploc"},
            ),
        ],
    )
    run_uri = storage.join(cfg.storage.storage_path, cfg.storage.name)
    # the driver's run, opened first so the scheduler knows its id; run_pretrain trains into it (run_id=)
    run_id = open_run(cfg.tracking, "evalrun", None)
    scheduler = EvalScheduler.for_pretrain(
        dataclasses.replace(cfg, eval=schedule), run_id, env["tracking_uri"]
    )
    assert scheduler is not None and scheduler.watch_uri == run_uri
    scheduler.start()
    try:
        result = run_pretrain(cfg, run_id=run_id)
        fit_returned = time.time()
    finally:
        summary = scheduler.close(timeout_s=300)
    return {
        "cfg": cfg,
        "result": result,
        "run_id": run_id,
        "summary": summary,
        "scheduler": scheduler,
        "fit_returned": fit_returned,
    }


def test_evals_during_training_log_into_the_training_run(env, trained):
    client = _client(env["tracking_uri"])
    run_id, summary, result = trained["run_id"], trained["summary"], trained["result"]
    # training ran to the end, into the run the evals log into
    assert result.run_id == run_id
    assert result.checkpoint_path is not None and "checkpoint_000000006" in result.checkpoint_path
    run = client.get_run(run_id)
    assert run.data.tags["protclip.completed"] == "true"
    assert max(_steps(client, run_id, "train/loss")) == STEPS
    # every checkpoint was either evaluated or explicitly skipped (max_in_flight 1, one waiting slot)
    launched = summary["steps"]
    assert sorted(launched + summary["skipped_steps"]) == [2, 4, 6]
    assert launched[0] == 2 and launched[-1] == 6
    # the first round started while the trainer was still running (the trainer did not wait for it)
    assert trained["scheduler"].launched[0][1] < trained["fit_returned"]
    # metrics exactly at the steps of the evaluated checkpoints, and each round read its own checkpoint
    r1 = _steps(client, run_id, "eval/retrieval/p2t_r1")
    assert sorted(r1) == launched and all(0.0 <= v <= 1.0 for v in r1.values())
    # bookkeeping is no metric: the example count and outcome are in the summary and the status tag
    assert not {k for k in run.data.metrics if k.endswith(("/failed", "/n_examples", "/seconds"))}
    assert run.data.tags["eval/retrieval/status"].startswith(f"ok at step {launched[-1]}, round ")
    for s in launched:
        arts = _artifacts(client, run_id, f"eval/step_{s}")
        assert {
            f"eval/step_{s}/retrieval.json",
            f"eval/step_{s}/retrieval_similarity.png",
            f"eval/step_{s}/broken_error.txt",
        } <= arts
        got = client.download_artifacts(run_id, _round_path(client, run_id, f"eval/step_{s}/retrieval.json"),
                                        str(env["tmp"] / f"d{s}"))
        info = json.loads(Path(got).read_text())
        assert info["checkpoint_step"] == s and info["step"] == s and info["protein_space"] == "joint"
        assert info["n_examples"] == 24 and info["charted"] is True and info["round"]
        assert f"checkpoint_{s:09d}" in info["source"]
    # the broken suite failed in every round, was reported, and its secret-bearing message is redacted
    assert run.data.tags["eval/broken/status"].startswith(f"failed at step {launched[-1]}")
    err = Path(client.download_artifacts(
        run_id, _round_path(client, run_id, f"eval/step_{launched[0]}/broken_error.txt"), str(env["tmp"] / "e")))
    text = err.read_text()
    assert "FileNotFoundError" in text and "missing-***" in text and PLANTED not in text
    assert PLANTED not in run.data.tags["eval/broken/status"] and PLANTED not in str(
        trained["scheduler"].results
    )
    assert {(r["name"], r["status"]) for r in trained["scheduler"].results} == {
        ("retrieval", "ok"),
        ("broken", "failed"),
    }


def test_evaluate_job_on_the_mlflow_run_reproduces_checkpoint_metrics(env, trained, tmp_path, capsys):
    """--source.mlflow_run_id finds the run's export on S3; the export equals the step-6 checkpoint. A
    multi-label probe on tower embeddings adds its PR curve."""
    import numpy as np

    rng = np.random.default_rng(0)
    seqs = [
        "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(rng.integers(20, 50)))) for _ in range(60)
    ]
    labels = [";".join(f"L{j}" for j in range(3) if rng.random() < 0.4) or "L0" for _ in seqs]
    pd.DataFrame({"id": [f"G{i}" for i in range(60)], "sequence": seqs, "label": labels}).to_csv(
        tmp_path / "go.csv", index=False
    )
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(
        json.dumps(
            {
                "mode": "local",
                "suites": [
                    {
                        "suite": "retrieval",
                        "name": "retrieval_export",
                        "config": {"path": env["pairs"], "max_examples": 24, "heatmap_size": 8},
                    },
                    {
                        "suite": "linear_probe",
                        "name": "go_probe",
                        "config": {
                            "path": str(tmp_path / "go.csv"),
                            "task_type": "multi_label",
                            "id_column": "id",
                        },
                    },
                ],
                "storage": {
                    "endpoint_url": env["endpoint"],
                    "access_key_id": "testing",
                    "secret_access_key": PLANTED,
                },
            }
        )
    )
    rc = _evaluate_main()(["--config", str(cfg_file), "--source.mlflow_run_id", trained["run_id"]])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["run_id"] == trained["run_id"] and out["step"] == STEPS
    assert out["source"].startswith("export:s3://")
    client = _client(env["tracking_uri"])
    from_export = {
        k: _steps(client, trained["run_id"], f"eval/retrieval_export/{k}") for k in ("p2t_r1", "t2p_mrr")
    }
    from_ckpt = {k: _steps(client, trained["run_id"], f"eval/retrieval/{k}") for k in ("p2t_r1", "t2p_mrr")}
    for k in from_export:
        assert list(from_export[k]) == [STEPS]
        # rank-based metrics: the same ranks give the same float64 means
        assert from_export[k][STEPS] == approx_rounding(from_ckpt[k][STEPS])
    assert list(_steps(client, trained["run_id"], "eval/go_probe/fmax")) == [STEPS]
    probe = json.loads(
        Path(
            client.download_artifacts(trained["run_id"],
                                      _round_path(client, trained["run_id"], f"eval/step_{STEPS}/go_probe.json"),
                                      str(tmp_path))
        ).read_text()
    )
    assert probe["protein_space"] == "tower" and probe["source"].startswith("export:")
    assert f"eval/step_{STEPS}/go_probe_pr_curve.png" in _artifacts(
        client, trained["run_id"], f"eval/step_{STEPS}"
    )


def test_evaluate_job_on_an_export_dir_logs_into_a_given_run(env, tmp_path, capsys):
    import torch

    from protclip.model.config import tiny_model_config
    from protclip.model.protclip import build_model, export_towers
    from protclip.tracking import TrackingConfig, open_run

    torch.manual_seed(0)
    export_towers(build_model(tiny_model_config()), tmp_path / "export")
    run_id = open_run(TrackingConfig(experiment="eval-job-test"), "target")
    wt = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
    muts = [f"{wt[p]}{p + 1}{a}" for p in (3, 7, 12, 20) for a in "AGLW" if a != wt[p]]
    pd.DataFrame({"mutant": muts, "score": [float(i % 5) for i in range(len(muts))]}).to_csv(
        tmp_path / "dms.csv", index=False
    )
    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(
        json.dumps(
            {
                "mode": "ray",
                "num_cpus": 0.5,
                "suites": [
                    {"suite": "retrieval", "config": {"path": env["pairs"], "max_examples": 16}},
                    {
                        "suite": "zero_shot",
                        "name": "deeploc_zero_shot",
                        "config": {
                            "path": "shared:benchmarks/deeploc1_la/deeploc_test_set.fasta",
                            "format": "deeploc",
                            "max_examples": 40,
                        },
                    },
                    {"suite": "mutation", "config": {"path": str(tmp_path / "dms.csv"), "wt_sequence": wt}},
                ],
            }
        )
    )
    rc = _evaluate_main()(
        [
            "--config",
            str(cfg_file),
            "--source.export",
            str(tmp_path / "export"),
            "--run_id",
            run_id,
            "--source.step",
            "11",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    assert out["run_id"] == run_id and {r["status"] for r in out["results"]} == {"ok"}
    client = _client(env["tracking_uri"])
    for key in ("eval/retrieval/p2t_r1", "eval/deeploc_zero_shot/acc", "eval/mutation/spearman"):
        steps = _steps(client, run_id, key)
        assert list(steps) == [11], key
    assert {
        "eval/step_11/retrieval_similarity.png",
        "eval/step_11/mutation_scatter.png",
        "eval/step_11/deeploc_zero_shot_confusion.png",
    } <= _artifacts(client, run_id, "eval/step_11")


def test_an_eval_task_that_dies_is_reported_by_the_driver(env, tmp_path):
    """A task whose worker process dies (OOM kill, segfault) cannot report itself; the driver does."""
    import os

    import ray

    from protclip.eval.config import EvalSuiteConfig
    from protclip.eval.tasks import SuiteTask, wait_suites
    from protclip.tracking import RunLogger, TrackingConfig, open_run

    @ray.remote(max_retries=0)
    def dies() -> None:
        os._exit(3)

    run_id = open_run(TrackingConfig(experiment="eval-job-test"), "crash")
    entry = EvalSuiteConfig(suite="retrieval", name="crashy", config={"path": env["pairs"]})
    task = SuiteTask(ref=dies.remote(), entries=[entry], step=5)  # what launch_suites returns per suite
    out = wait_suites([task], RunLogger(run_id, env["tracking_uri"], [PLANTED]))
    assert out[0]["status"] == "failed" and out[0]["step"] == 5
    client = _client(env["tracking_uri"])
    status = client.get_run(run_id).data.tags["eval/crashy/status"]
    assert status.startswith("failed at step 5, round ") and "(driver)" in status
    assert "eval/step_5/crashy_error.txt" in _artifacts(client, run_id, "eval/step_5")
