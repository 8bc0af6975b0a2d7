"""Reliability: faults injected into real Ray Train runs (docs/reliability.md §1, §4).

The shared fault-test run (tests/helpers/fault_runs.py: 6 steps, 2 FSDP2 workers, checkpoint every 2,
deterministic split, the fuzzed UniProt samples with a 100k-residue protein and U/O/B/Z/X residues); its
uninterrupted losses come from the session's reference run (tests/train/conftest.py).

1. Worker killed: rank 1 SIGKILLs itself after step 3 (``PROTCLIP_FAULT_*``, see protclip/train/faults.py). Ray
   Train restarts the worker group (``max_failures=1``) from the step-2 checkpoint; step 3 is logged twice and
   every logged loss, before and after the restart, equals the reference at its step.
2. Driver killed: ``jobs/pretrain.py`` (a real subprocess joined to the test's Ray instance, checkpoints on moto
   S3) is SIGKILLed while its workers are mid-run after step 5; the newest checkpoint (step 4) is then made
   half-uploaded (one rank's shard deleted). The job started again with the same ``storage.name`` /
   ``storage.storage_path`` resumes from the last *complete* checkpoint (step 2), continues the same MLflow run and
   reproduces the reference losses.
Both also check that the planted credentials reach no output, log, MLflow entry, artifact or stored file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protclip.paths import REPO_ROOT
from tests.helpers.fault_runs import STEPS, as_argv, assert_matches_reference, fault_run_overrides

pytestmark = pytest.mark.ray

PLANTED = "planted-fault-secret-7312"
ENV_SECRET = "testing-secret-value"  # the s3_server fixture's AWS_SECRET_ACCESS_KEY


def _overrides(data_uri: str, storage_path: str, name: str, endpoint: str) -> dict[str, str]:
    return fault_run_overrides(data_uri, storage_path, name, endpoint) | {
        "storage.access_key_id": "testing", "storage.secret_access_key": PLANTED,
        "tracking.experiment": "reliability-faults"}


def _cfg(env, name: str, storage_path: str | None = None):
    from protclip.config import load_config
    from protclip.recipes.pretrain import PretrainConfig

    return load_config(PretrainConfig, None, _overrides(env["data"], storage_path or str(env["tmp"] / "runs"), name,
                                                        env["endpoint"]))


@pytest.fixture(scope="module")
def env(tmp_path_factory, fault_data, s3_server, ray_local):
    import boto3

    tmp = tmp_path_factory.mktemp("faults")
    bucket = "reliability-faults"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    tracking = f"sqlite:///{tmp}/mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    yield {"tmp": tmp, "data": str(fault_data), "endpoint": s3_server, "bucket": bucket,
           "tracking": tracking, "ray_address": ray_local.get_runtime_context().gcs_address}
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def _history(env, run_id: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(env["tracking"]).get_metric_history(run_id, "train/loss"))


def _scan_for_secrets(env, extra_texts: list[str] = (), storage_root: Path | None = None) -> None:
    """The planted credentials appear nowhere: given outputs, the MLflow database and artifacts, the run folders,
    and the logs of this Ray session (driver, controller, workers, Ray Data tasks)."""
    import ray

    secrets = [PLANTED.encode(), ENV_SECRET.encode()]
    places: list[Path] = [env["tmp"] / "mlflow.db", env["tmp"] / "mlartifacts", env["tmp"] / "runs"]
    places.append(Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs")
    if storage_root:
        places.append(storage_root)
    leaks = [t[:200] for t in extra_texts if any(s.decode() in t for s in secrets)]
    scanned = 0
    for place in places:
        files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()] if place.exists() else []
        for f in files:
            try:
                data = f.read_bytes()
            except OSError:
                continue
            scanned += 1
            leaks += [f"{f}: {s.decode()}" for s in secrets if s in data]
    assert scanned > 10
    assert not leaks, leaks


def test_worker_killed_mid_run_restarts_from_checkpoint_with_identical_losses(env, fault_reference, monkeypatch):
    from mlflow.tracking import MlflowClient

    from protclip.recipes.pretrain import run_pretrain

    marker = env["tmp"] / "kill.marker"
    monkeypatch.setenv("PROTCLIP_FAULT_AT_STEP", "3")
    monkeypatch.setenv("PROTCLIP_FAULT_RANK", "1")
    monkeypatch.setenv("PROTCLIP_FAULT_ACTION", "kill")
    monkeypatch.setenv("PROTCLIP_FAULT_MARKER", str(marker))
    res = run_pretrain(_cfg(env, "worker-killed"))
    assert marker.is_file() and "rank=1 step=3 action=kill" in marker.read_text()  # the fault did fire
    assert res.metrics["step"] == STEPS
    run = MlflowClient(env["tracking"]).get_run(res.run_id)
    assert run.info.status == "FINISHED"
    # step 3 ran before the kill and again from checkpoint 2
    assert_matches_reference(_history(env, res.run_id), fault_reference, replayed=[3])
    _scan_for_secrets(env)


def _job(env, name: str, extra_env: dict[str, str]) -> subprocess.Popen:
    args = as_argv(_overrides(env["data"], f"s3://{env['bucket']}/runs", name, env["endpoint"]))
    full_env = {**os.environ, "RAY_ADDRESS": env["ray_address"], "MLFLOW_TRACKING_URI": env["tracking"],
                "PYTHONUNBUFFERED": "1", **extra_env}
    return subprocess.Popen([sys.executable, "jobs/pretrain.py", *args], cwd=REPO_ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_driver_killed_then_restarted_resumes_from_last_complete_checkpoint(env, fault_reference):
    from mlflow.tracking import MlflowClient

    from protclip.storage import StorageConfig, filesystem

    name, marker = "driver-killed", env["tmp"] / "hang.marker"
    first = _job(env, name, {"PROTCLIP_FAULT_AT_STEP": "5", "PROTCLIP_FAULT_RANK": "0",
                             "PROTCLIP_FAULT_ACTION": "hang", "PROTCLIP_FAULT_MARKER": str(marker)})
    try:
        deadline = time.time() + 480
        while not marker.exists():
            assert first.poll() is None, f"job ended before the fault: {first.communicate()[0][-3000:]}"
            assert time.time() < deadline, "the fault never fired"
            time.sleep(0.5)
        time.sleep(3)  # let Ray's controller record the step-4 checkpoint it has already received
    finally:
        first.send_signal(signal.SIGKILL)  # the driver dies with its workers mid-run
        out_first = first.communicate(timeout=60)[0]
    assert first.returncode == -signal.SIGKILL

    fs, base = filesystem(f"s3://{env['bucket']}/runs/{name}", StorageConfig(endpoint_url=env["endpoint"]))
    ckpts = sorted(p for p in fs.ls(base, detail=False) if p.rsplit("/", 1)[-1].startswith("checkpoint_0"))
    assert [c.rsplit("/", 1)[-1][:20] for c in ckpts] == ["checkpoint_000000002", "checkpoint_000000004"]
    fs.rm(f"{ckpts[-1]}/__1_0.distcp")  # step 4 is now a half-uploaded checkpoint

    second = _job(env, name, {})
    out_second = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out_second[-5000:]
    summary, _ = json.JSONDecoder().raw_decode(out_second[out_second.rindex('{\n "mlflow_run_id"') :])
    client = MlflowClient(env["tracking"])
    runs = client.search_runs([client.get_experiment_by_name("reliability-faults").experiment_id],
                              filter_string=f"attributes.run_name = '{name}'")
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]  # one MLflow run across both drivers
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["protclip.resumed_from_step"] == "2"
    # steps 1-5 by the first driver, then 3-6 again from checkpoint 2
    assert_matches_reference(_history(env, summary["mlflow_run_id"]), fault_reference, replayed=[3, 4, 5])
    assert summary["final"]["step"] == STEPS
    local = env["tmp"] / "s3-copy"
    fs.get(base, str(local), recursive=True)
    _scan_for_secrets(env, [out_first, out_second], storage_root=local)
