"""The MLflow server recipe: starts on 127.0.0.1, a client logs a run over HTTP (artifacts proxied by the
server), the Host-header allow-list of the Kubernetes manifest admits the jobs' Service URL, and stopping
leaves no process behind."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from protclip.mlflow_server import free_port, start_server
from protclip.paths import REPO_ROOT
from tests.helpers.cluster_files import jobs_tracking_uri, mlflow_k8s_allowed_hosts

psutil = pytest.importorskip("psutil")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("flask") is None or importlib.util.find_spec("mlflow.server") is None,
                       reason="serving needs full mlflow (the dev/ui extras), not only mlflow-skinny"),
]


def _status(url: str, host_header: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host_header} if host_header else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _group(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def _alive(procs: list[psutil.Process]) -> list[int]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_local_server_logs_a_run_over_http(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    # the allow-list of cluster/mlflow/k8s.yaml: the jobs' Service URL must pass, a foreign Host must not
    server = start_server(tmp_path / "srv", allowed_hosts=mlflow_k8s_allowed_hosts(), timeout_s=300)
    procs = _group(server.process.pid)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        conns = [c for p in procs for c in (p.net_connections if hasattr(p, "net_connections") else p.connections)(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
        assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns), conns

        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        client = MlflowClient(tracking_uri=server.url)
        exp = client.create_experiment("cluster-recipe")
        run = client.create_run(exp, run_name="smoke")
        rid = run.info.run_id
        client.log_param(rid, "global_batch", "2048")
        for step, loss in enumerate([3.0, 2.5, 2.25]):
            client.log_metric(rid, "train/loss", loss, step=step)
        art = tmp_path / "eval.json"
        art.write_text('{"retrieval/r@1": 0.42}')
        client.log_artifact(rid, str(art), artifact_path="eval")
        client.set_terminated(rid, "FINISHED")

        fresh = MlflowClient(tracking_uri=server.url).get_run(rid)
        assert fresh.info.status == "FINISHED"
        assert fresh.data.params == {"global_batch": "2048"}
        hist = MlflowClient(tracking_uri=server.url).get_metric_history(rid, "train/loss")
        assert [(m.step, m.value) for m in hist] == [(0, 3.0), (1, 2.5), (2, 2.25)]
        assert fresh.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied through the server
        stored = list((tmp_path / "srv" / "artifacts").rglob("eval.json"))
        assert len(stored) == 1 and "0.42" in stored[0].read_text()
        listed = [f.path for f in MlflowClient(tracking_uri=server.url).list_artifacts(rid, "eval")]
        assert listed == ["eval/eval.json"]
        assert (tmp_path / "srv" / "mlflow.db").is_file()

        api = server.url + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(api, urlparse(jobs_tracking_uri()).netloc) == 200
        assert _status(api, "attacker.example:5000") == 403
    finally:
        procs = _group(server.process.pid) if server.process.poll() is None else procs
        rc = server.stop()
    assert rc is not None
    assert _alive(procs) == [], "mlflow server processes left behind"
    assert not _port_open(server.port)


def test_serve_local_script_starts_on_loopback_and_stops_cleanly(tmp_path):
    port = free_port()
    script = REPO_ROOT / "cluster" / "mlflow" / "serve_local.sh"
    log = open(tmp_path / "serve.log", "wb")
    env = dict(os.environ, PYTHON=sys.executable)  # the interpreter running the tests (has full mlflow)
    proc = subprocess.Popen([str(script), "--root", str(tmp_path / "srv"), "--port", str(port), "--timeout", "300"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    try:
        deadline = time.monotonic() + 320
        while time.monotonic() < deadline and proc.poll() is None:
            if b"export MLFLOW_TRACKING_URI" in Path(log.name).read_bytes():
                break
            time.sleep(0.5)
        assert proc.poll() is None, Path(log.name).read_text()
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in Path(log.name).read_text()
        assert _status(f"http://127.0.0.1:{port}/health") == 200
        procs = _group(proc.pid)
        proc.send_signal(signal.SIGTERM)  # the script exec'd python: it stops its server and exits 0
        assert proc.wait(60) == 0, Path(log.name).read_text()
        deadline = time.monotonic() + 30
        while _alive(procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(procs) == [], "serve_local.sh left processes behind"
        assert not _port_open(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_printed_ui_command_is_the_lean_server():
    import shlex

    from protclip.mlflow_server import ui_command

    cmd = ui_command("sqlite:////data/team/mlflow.db", port=5001)
    argv = shlex.split(cmd.split("   (then")[0])
    assert argv[0] == str(REPO_ROOT / "cluster" / "mlflow" / "serve_local.sh")
    assert argv[argv.index("--backend-store-uri") + 1] == "sqlite:////data/team/mlflow.db"
    assert argv[argv.index("--root") + 1] == "/data/team/mlflow-ui" and "--port" in argv
    assert "mlflow ui" not in cmd and cmd.endswith("(then http://127.0.0.1:5001)")
