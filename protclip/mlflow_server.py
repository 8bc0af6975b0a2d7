"""Start and stop an MLflow tracking server: the one-machine recipe (sqlite + local artifacts) and what tests use.

Why a helper: ``mlflow server`` binds 127.0.0.1 by default, takes seconds to answer (schema migrations, worker
start-up) and spawns worker processes; callers need "started and healthy" and "stopped with nothing left
behind". The server runs in its own process group, :meth:`MlflowServer.stop` signals the whole group, and
:func:`start_server` returns only once ``/health`` answers.

Artifacts are *proxied* (``--artifacts-destination``, MLflow's default ``--serve-artifacts``): clients upload
and download through the server over HTTP and never need the artifact store's credentials. The team
deployment (Postgres + S3) is the same command with other URIs: see cluster/mlflow/ and docs/cluster.md §6.
Needs full ``mlflow`` (the ``ui``/``dev`` extras); ``mlflow-skinny`` can log to a server but not serve.

    python -m protclip.mlflow_server --root ./mlflow-server          # 127.0.0.1:5000, sqlite, ./mlflow-server/artifacts
    cluster/mlflow/serve_local.sh --port 5001                         # same, from the repo's venv
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_HOST", "MlflowServer", "MlflowServerError", "free_port", "server_command", "start_server",
           "ui_command", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


_log = logging.getLogger(__name__)


class MlflowServerError(RuntimeError):
    """The server did not come up (the message carries the tail of its log)."""


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that is free on ``host`` right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _probe_host(host: str) -> str:
    # a server bound to every interface is still probed through loopback
    return DEFAULT_HOST if host in ("0.0.0.0", "::", "") else host


@dataclass
class MlflowServer:
    """A running ``mlflow server``; use as a context manager or call :meth:`stop`."""

    url: str
    host: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.process.pid  # started with start_new_session=True: the leader's pid is the group id

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; return the server's exit code."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        # workers of a stopped leader may still be exiting: give the group the same treatment
        deadline = time.monotonic() + timeout_s
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._group_alive():
            self._signal(signal.SIGKILL)
        return self.process.returncode

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_command(backend_store_uri: str, artifacts_destination: str, host: str, port: int, workers: int = 1,
                   allowed_hosts: str | None = None, extra_args: list[str] | None = None) -> list[str]:
    """The ``mlflow server`` command line (run with this interpreter, so the venv's mlflow is used)."""
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", artifacts_destination,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd + list(extra_args or [])


def ui_command(tracking_uri: str, port: int = DEFAULT_PORT) -> str:
    """The lean command to browse ``tracking_uri`` (what jobs print): this module through
    ``cluster/mlflow/serve_local.sh``: one worker, 127.0.0.1, no GenAI job runner. Plain ``mlflow ui`` starts 4
    uvicorn workers and 7 job consumers (~3.4 GB)."""
    import shlex

    from protclip.paths import REPO_ROOT

    script = REPO_ROOT / "cluster" / "mlflow" / "serve_local.sh"
    root = "mlflow-ui"
    if tracking_uri.startswith("sqlite:///"):
        root = str(Path(tracking_uri[len("sqlite:///"):]).parent / "mlflow-ui")
    return (f"{shlex.quote(str(script))} --backend-store-uri {shlex.quote(tracking_uri)} --root {shlex.quote(root)} "
            f"--port {port}   (then http://{DEFAULT_HOST}:{port})")


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait_healthy(server: MlflowServer, timeout_s: float) -> None:
    url = f"http://{_probe_host(server.host)}:{server.port}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            hint = ""
            log = _tail(server.log_path)
            if "No module named" in log:
                hint = "\nhint: serving needs full mlflow (pip install 'protclip[ui]'), not only mlflow-skinny"
            raise MlflowServerError(f"mlflow server exited with code {server.process.returncode} before "
                                    f"answering {url}; log {server.log_path}:\n{log}{hint}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            _log.debug("mlflow server not up yet at %s: %s", url, e)  # still starting; polled until timeout
        time.sleep(0.5)
    server.stop()
    raise MlflowServerError(f"mlflow server did not answer {url} within {timeout_s:.0f} s; "
                            f"log {server.log_path}:\n{_tail(server.log_path)}")


def start_server(root: str | Path, *, host: str = DEFAULT_HOST, port: int | None = None,
                 backend_store_uri: str | None = None, artifacts_destination: str | None = None,
                 workers: int = 1, allowed_hosts: str | None = None, timeout_s: float = 120.0,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> MlflowServer:
    """Start ``mlflow server`` and wait until ``/health`` answers.

    Args:
        root (str | Path): folder for the default sqlite file (``mlflow.db``), artifacts and the server log.
        host (str): interface to bind. Default: 127.0.0.1 (this machine only).
        port (int | None): port; None picks a free one.
        backend_store_uri (str | None): default ``sqlite:///<root>/mlflow.db``; a team server uses Postgres.
        artifacts_destination (str | None): default ``<root>/artifacts``; a team server uses ``s3://...``.
        workers (int): server worker processes. Default: 1.
        allowed_hosts (str | None): ``--allowed-hosts`` (Host headers accepted besides MLflow's defaults of
            localhost and private IPs); needed when clients use a DNS name such as a Kubernetes Service.
        timeout_s (float): how long to wait for ``/health``.

    Raises:
        MlflowServerError: the server exited or did not answer in time (with the tail of its log).
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port(_probe_host(host))
    backend = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    artifacts = artifacts_destination or str(root / "artifacts")
    log_path = root / f"mlflow-server-{port}.log"
    cmd = server_command(backend, artifacts, host, port, workers, allowed_hosts, extra_args)
    env = dict(os.environ if env is None else env)
    # MLflow 3.x also starts a job runner with ~7 huey consumer processes for GenAI scorer jobs; the trainer
    # never submits such jobs, so it stays off unless the caller's environment turns it on.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=root)
    server = MlflowServer(url=f"http://{_probe_host(host)}:{port}", host=host, port=port, process=proc,
                          log_path=log_path)
    _wait_healthy(server, timeout_s)
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protclip.mlflow_server",
                                 description="Serve MLflow (sqlite + local artifacts by default) until Ctrl-C.")
    ap.add_argument("--root", default="mlflow-server", help="folder for mlflow.db, artifacts/ and the log")
    ap.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (0.0.0.0 exposes it: see docs)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--backend-store-uri", default=None, help="default sqlite:///<root>/mlflow.db")
    ap.add_argument("--artifacts-destination", default=None, help="default <root>/artifacts")
    ap.add_argument("--allowed-hosts", default=None, help="extra Host headers to accept (DNS names)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /health")
    args = ap.parse_args(argv)
    try:
        server = start_server(args.root, host=args.host, port=args.port, workers=args.workers,
                              backend_store_uri=args.backend_store_uri,
                              artifacts_destination=args.artifacts_destination,
                              allowed_hosts=args.allowed_hosts, timeout_s=args.timeout)
    except MlflowServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"MLflow server at {server.url} (log {server.log_path}); Ctrl-C stops it.\n"
          f"  export MLFLOW_TRACKING_URI={server.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and server.process.poll() is None:
        stop.wait(1.0)
    rc = server.stop()
    return 0 if stop.is_set() else int(rc or 1)


if __name__ == "__main__":
    sys.exit(main())
