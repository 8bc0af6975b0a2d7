"""Scale-out: pre-training on two Ray nodes on 127.0.0.1, one of which dies mid-run (docs/reliability.md §1).

A head and a worker node (``ray.cluster_utils.Cluster``, each its own raylet and object store, 2 logical CPUs);
a training worker reserves 1.5 CPUs, so the two training workers land one per node and each node keeps 0.5 CPU
for a Ray Data task (``data.map_num_cpus 0.5``). Checkpoints go to the moto S3 server. ``jobs/pretrain.py`` runs
as a real driver process joined to the cluster.

A 6-step run (checkpoint every 2) hangs at step 3 (``PROTCLIP_FAULT_*``); the test kills the worker node (its
raylet and every process on it). The run cannot fit on the head alone (2 workers x 1.5 CPUs), so a replacement
node joins, as an autoscaler would provide one; Ray Train restarts the worker group (``max_failures``) from the
step-2 checkpoint and finishes. Step 3 ran before the loss of the node (the uninterrupted run) and again after
it, on other processes of another node: both log the same loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from protclip.paths import REPO_ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS, CKPT = 6, 2
NODE = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 150 * 2**20}


def _overrides(data: str, storage_path: str, name: str, endpoint: str) -> list[str]:
    ov = {
        "data.uri": data, "data.sampling.mode": "none", "data.micro_batch_size": "4",
        "data.max_protein_length": "64", "data.max_text_length": "64", "data.max_subtext_length": "32",
        "data.bucket_window": "16", "data.shuffle_buffer": "32", "data.val_fraction": "0.1",
        "data.num_epochs": "1", "data.split": "deterministic", "data.map_num_cpus": "0.5", "data.holdout": "hash",
        "model.protein_model": "random", "model.text_model": "random", "model.attention": "sdpa",
        "model.projection_dim": "32", "model.proto_num": "16",
        "train.num_workers": "2", "train.cpus_per_worker": "1.5", "train.accum_steps": "1", "train.lr": "1e-3",
        "train.warmup_steps": "2", "train.max_steps": str(STEPS), "train.ckpt_every": str(CKPT),
        "train.val_every": "0", "train.log_every": "1", "train.keep_checkpoints": "2", "train.max_failures": "2",
        "train.export": "false",
        "storage.storage_path": storage_path, "storage.name": name, "storage.endpoint_url": endpoint,
        "tracking.experiment": "two-nodes",
    }  # fmt: skip
    return [a for k, v in ov.items() for a in (f"--{k}", v)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, uniprot_dat, s3_server):
    """Two nodes on loopback, a ProtAnno folder of the real samples, a bucket and an MLflow database."""
    import boto3
    from ray.cluster_utils import Cluster

    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file

    tmp = tmp_path_factory.mktemp("two_nodes")
    rows = sorted((record_to_row(r) for r in parse_file(uniprot_dat).records), key=lambda r: r["accession"])
    (tmp / "protanno").mkdir()
    for i, part in enumerate((rows[:52], rows[52:])):
        pq.write_table(rows_to_table(part), tmp / "protanno" / f"part-{i:05d}.parquet", row_group_size=13)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="two-nodes")
    c = _retry(lambda: Cluster(initialize_head=True, connect=False, head_node_args=dict(NODE, include_dashboard=False)))
    worker = _retry(lambda: c.add_node(**NODE))
    yield {"c": c, "worker": worker, "tmp": tmp, "endpoint": s3_server,
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
    args = _overrides(str(env["tmp"] / "protanno"), "s3://two-nodes/runs", name, env["endpoint"])
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


def test_losing_a_node_mid_run_resumes_from_the_last_checkpoint(cluster):
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
    hist = _history(cluster, summary["mlflow_run_id"])
    assert sorted({s for s, _ in hist}) == list(range(1, STEPS + 1))
    step3 = [v for s, v in hist if s == 3]
    assert len(step3) == 2 and len(hist) == STEPS + 1, hist  # step 3 before the loss of the node, and again after
    assert step3[0] == step3[1], step3  # same data, RNG and order on any node: no rounding budget applies
    assert summary["final"]["step"] == STEPS
    assert "rank=0 step=3 action=hang" in Path(marker).read_text()  # the fault did fire
