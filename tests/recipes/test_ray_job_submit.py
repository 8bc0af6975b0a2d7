"""`ray job submit` end to end with the real CLI and cluster/runtime_env.yaml against a local head on 127.0.0.1.

The working dir is uploaded by Ray's own packager, so this also proves the excludes on the real repository:
the job sees `protclip/data/` (a bare `data` pattern would have dropped it) and no `.git`.
"""

from __future__ import annotations

import re

import pytest

from protclip.paths import REPO_ROOT
from tests.helpers.ray_cluster import job_server_missing_modules, ray_head

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_missing = job_server_missing_modules()
requires_job_server = pytest.mark.skipif(
    bool(_missing),
    reason=f"`ray job submit` needs the dashboard/job server: install ray[default] (missing: {', '.join(_missing)})",
)

PROBE = ("import os, sys; print('ok', os.path.isdir('.git'), os.path.isdir('.venv'), "
         "os.path.isfile('protclip/data/__init__.py'), os.path.isfile('cluster/runtime_env.yaml'))")


@pytest.fixture(scope="module")
def head():
    """One head node for both jobs. The job runs in Ray's copy of the working dir, where the folder beside the
    repository is not: the node environment says where the shared data is, as a cluster's pods would (the shipped
    configs name `shared:` paths)."""
    from protclip.paths import shared_data_dir

    with ray_head(num_cpus=4, node_env={"PROTCLIP_SHARED_DATA": str(shared_data_dir())}) as h:
        yield h
    assert h.alive_processes() == [], "Ray processes left after teardown"


@requires_job_server
def test_ray_job_submit_with_runtime_env(head):
    res = head.run_cli("job", "submit", "--address", head.dashboard_url,
                       "--runtime-env", "cluster/runtime_env.yaml",
                       "--", "python", "-c", PROBE, cwd=REPO_ROOT, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"ray job submit failed ({res.returncode}):\n{out[-4000:]}\n{head.log_tail()}"
    m = re.search(r"Job '(raysubmit_\w+)' succeeded", out)
    assert m, f"no success line in the submit output:\n{out[-4000:]}"
    # the entrypoint ran in the uploaded working dir: code present, .git and .venv excluded
    assert "ok False False True True" in out, out[-4000:]
    status = head.run_cli("job", "status", "--address", head.dashboard_url, m.group(1))
    assert re.search(r"(?i)succeeded", status.stdout + status.stderr), status.stdout + status.stderr
    logs = head.run_cli("job", "logs", "--address", head.dashboard_url, m.group(1))
    assert "ok False False True True" in logs.stdout


@requires_job_server
def test_ray_job_submit_runs_the_main_job(head, tmp_path):
    """The product's own path: `ray job submit` of the ProtAnno build + a short pre-training run of the demo config.

    Everything the job writes goes to absolute temporary paths (the job runs in Ray's copy of the working dir).
    The MLflow run it creates is then read back with the client.
    """
    import sys

    from mlflow.tracking import MlflowClient

    from protclip.paths import uniprot_samples_dat

    protanno = tmp_path / "protanno"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    py = sys.executable
    entry = (
        f"{py} jobs/build_protanno.py --config jobs/configs/build_samples.yaml "
        f"--build.inputs '[{uniprot_samples_dat()}]' --build.output {protanno} && "
        f"{py} jobs/pretrain.py --config jobs/configs/tiny.yaml --data.uri {protanno} "
        f"--storage.storage_path {tmp_path / 'runs'} --storage.name submitted --tracking.uri {db} "
        f"--train.max_steps 4 --train.ckpt_every 2 --train.val_every 4 --train.warmup_steps 1 --eval.every_steps 0"
    )
    res = head.run_cli("job", "submit", "--address", head.dashboard_url,
                       "--runtime-env", "cluster/runtime_env.yaml",
                       "--", "bash", "-c", entry, cwd=REPO_ROOT, timeout=900)
    out = res.stdout + res.stderr
    # the job's own output last: a truncated report keeps its end
    assert res.returncode == 0, f"ray job submit failed ({res.returncode}):\n{head.log_tail()}\n{out[-6000:]}"
    assert re.search(r"Job '(raysubmit_\w+)' succeeded", out), out[-4000:]
    assert '"rows": 103' in out and '"malformed": 0' in out, out[-4000:]
    m = re.search(r'"mlflow_run_id": "(\w+)"', out)
    assert m, out[-4000:]
    run = MlflowClient(db).get_run(m.group(1))
    assert run.info.status == "FINISHED"
    losses = MlflowClient(db).get_metric_history(run.info.run_id, "train/loss")
    assert losses and max(h.step for h in losses) == 4
    assert (tmp_path / "runs" / "submitted" / "export" / "protein" / "config.json").is_file()
