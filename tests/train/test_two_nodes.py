"""Scale-out: pre-training on two Ray nodes on 127.0.0.1, one of which dies mid-run (docs/reliability.md §1).

A head and a worker node (``ray.cluster_utils.Cluster``, each its own raylet and object store, 2 logical CPUs);
a training worker reserves 1.5 CPUs, so the two training workers land one per node and each node keeps 0.5 CPU
for a Ray Data task (``data.map_num_cpus 0.5``). Checkpoints go to the moto S3 server. ``jobs/pretrain.py`` runs
as a real driver process joined to the cluster.

It trains the shared fault-test run (tests/helpers/fault_runs.py: 6 steps, checkpoint every 2) and compares
with the session's uninterrupted reference run of it (tests/train/conftest.py).

1. Node lost: the run hangs at step 3 (``PROTCLIP_FAULT_*``); the test kills the worker node (its raylet and
   every process on it). The run cannot fit on the head alone (2 workers x 1.5 CPUs), so a replacement node
   joins, as an autoscaler would provide one; Ray Train restarts the worker group (``max_failures``) from the
   step-2 checkpoint and finishes. Step 3 is logged twice and every logged loss equals the reference's at its
   step.
2. Eval node lost: ``jobs/evaluate.py`` on the same cluster; the node running its suite task is killed, and the
   driver reports the suite as failed (MLflow status and error artifact, exit 1) instead of losing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protclip.paths import REPO_ROOT
from tests.helpers.fault_runs import STEPS, as_argv, assert_matches_reference, fault_run_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NODE = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 150 * 2**20}


def _overrides(data: str, storage_path: str, name: str, endpoint: str) -> list[str]:
    return as_argv(fault_run_overrides(data, storage_path, name, endpoint, cpus_per_worker=1.5, max_failures=2)
                   | {"tracking.experiment": "two-nodes"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, fault_data, s3_server):
    """Two nodes on loopback, the fault tests' ProtAnno folder, a bucket and an MLflow database."""
    import boto3
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("two_nodes")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="two-nodes")
    c = _retry(lambda: Cluster(initialize_head=True, connect=False, head_node_args=dict(NODE, include_dashboard=False)))
    worker = _retry(lambda: c.add_node(**NODE))
    yield {"c": c, "worker": worker, "tmp": tmp, "endpoint": s3_server, "data": str(fault_data),
           "tracking": f"sqlite:///{tmp}/mlflow.db"}
    c.shutdown()


def _retry(start, attempts: int = 3):
    """Start a node, again if it did not register in time: Ray waits a fixed 30 s for a raylet, which a loaded
    2-core runner can miss (``The current node timed out during startup``)."""
    for i in range(attempts):
        try:
            return start()
        except Exception as e:
            if "timed out during startup" not in str(e) or i == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _job(env, name: str, extra: dict[str, str]) -> subprocess.Popen:
    args = _overrides(env["data"], "s3://two-nodes/runs", name, env["endpoint"])
    full = {**os.environ, "RAY_ADDRESS": env["c"].address, "MLFLOW_TRACKING_URI": env["tracking"],
            "PYTHONUNBUFFERED": "1", **extra}
    return subprocess.Popen([sys.executable, "jobs/pretrain.py", *args], cwd=REPO_ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out = proc.communicate(timeout=420)[0]
    assert proc.returncode == 0, out[-5000:]
    summary, _ = json.JSONDecoder().raw_decode(out[out.rindex('{\n "mlflow_run_id"'):])
    return summary, out


def _history(env, run_id: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(env["tracking"]).get_metric_history(run_id, "train/loss"))


def test_losing_a_node_mid_run_resumes_from_the_last_checkpoint(cluster, fault_reference):
    marker = cluster["tmp"] / "hang.marker"
    proc = _job(cluster, "node-lost", {"PROTCLIP_FAULT_AT_STEP": "3", "PROTCLIP_FAULT_RANK": "0",
                                       "PROTCLIP_FAULT_ACTION": "hang", "PROTCLIP_FAULT_MARKER": str(marker)})
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, f"job ended before the fault: {proc.communicate()[0][-3000:]}"
        assert time.time() < deadline, "the fault never fired"
        time.sleep(0.5)
    time.sleep(2)  # let the controller record the step-2 checkpoint
    cluster["c"].remove_node(cluster["worker"], allow_graceful=False)  # raylet, object store, workers: all gone
    cluster["worker"] = _retry(lambda: cluster["c"].add_node(**NODE))  # the replacement an autoscaler starts
    summary, _ = _finish(proc)
    # step 3 before the loss of the node, and again after, on other processes of another node
    assert_matches_reference(_history(cluster, summary["mlflow_run_id"]), fault_reference, replayed=[3])
    assert summary["final"]["step"] == STEPS
    assert "rank=0 step=3 action=hang" in Path(marker).read_text()  # the fault did fire


def test_an_eval_task_whose_node_dies_is_reported(cluster):
    """``jobs/evaluate.py`` joined to the cluster; its suite task runs on a node that is then killed (raylet and
    all). The task cannot report itself: the driver reports it (status tag, error artifact, failed result, exit 1)
    instead of losing it or waiting forever. The suite reads a FIFO nobody writes, so the task is surely mid-suite
    when its node goes; it asks for 3 CPUs, which only the added node has."""
    import psutil
    import torch
    from mlflow.tracking import MlflowClient

    from protclip.model.config import tiny_model_config
    from protclip.model.protclip import build_model, export_towers
    from protclip.tracking import TrackingConfig, open_run

    tmp = cluster["tmp"] / "eval_node"
    tmp.mkdir()
    torch.manual_seed(0)
    export_towers(build_model(tiny_model_config()), tmp / "export")
    os.mkfifo(tmp / "never_written.parquet")
    run_id = open_run(TrackingConfig(uri=cluster["tracking"], experiment="two-nodes-eval"), "target")
    (tmp / "eval.yaml").write_text(json.dumps({"mode": "ray", "suites": [
        {"suite": "retrieval", "name": "stuck", "num_cpus": 3,
         "config": {"path": str(tmp / "never_written.parquet"), "max_examples": 8}}]}))
    eval_node = _retry(lambda: cluster["c"].add_node(**dict(NODE, num_cpus=3)))
    env = {**os.environ, "RAY_ADDRESS": cluster["c"].address, "MLFLOW_TRACKING_URI": cluster["tracking"],
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "jobs/evaluate.py", "--config", str(tmp / "eval.yaml"),
                             "--source.export", str(tmp / "export"), "--source.step", "7", "--run_id", run_id],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not any("eval:stuck@" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert proc.poll() is None, f"job ended before its task started: {proc.communicate()[0][-3000:]}"
        assert time.time() < deadline, "the eval task never started"
        time.sleep(0.5)
    cluster["c"].remove_node(eval_node, allow_graceful=False)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out[-4000:]  # README: exit 1 = a suite failed
    summary, _ = json.JSONDecoder().raw_decode(out[out.rindex('{\n "run_id"'):])
    (result,) = summary["results"]
    assert result["name"] == "stuck" and result["status"] == "failed" and result["step"] == 7, result
    client = MlflowClient(cluster["tracking"])
    status = client.get_run(run_id).data.tags["eval/stuck/status"]
    assert status.startswith("failed at step 7") and "(driver)" in status, status
    rounds = [a.path for a in client.list_artifacts(run_id, "eval/step_7")]
    assert len(rounds) == 1 and [a.path for a in client.list_artifacts(run_id, rounds[0])] == [
        f"{rounds[0]}/stuck_error.txt"]
