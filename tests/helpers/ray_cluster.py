"""A throw-away single-node Ray *cluster* (``ray start --head``) on 127.0.0.1 for ``ray job submit`` tests.

Unlike the session fixture ``ray_local`` (an in-process ``ray.init``), this runs the real head processes with
the dashboard and job server, so tests drive the same CLI users do:
``ray job submit --address http://127.0.0.1:<dashboard port> --runtime-env cluster/runtime_env.yaml -- ...``.

Isolation from other Ray instances on the machine (other developers' tests share it):
- every port is picked free on 127.0.0.1 (GCS, dashboard, dashboard agent, runtime-env agent, client server,
  metrics, node/object managers), and ``--temp-dir`` is a private folder, so ``ray_current_cluster`` (which a
  plain ``ray.init()`` would join) is written there, not in /tmp/ray;
- token authentication uses a private token file (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``) for both
  the head and the CLI. Ray 2.60 turns token auth on for ``ray start`` whenever ``~/.ray/auth_token`` exists
  but the job CLI only sends a token when ``RAY_AUTH_MODE=token``: without this, submit fails with
  "Unauthorized: Missing authentication token";
- teardown kills only this cluster's processes, by pid: the ``ray start --block`` leader, its process group,
  every descendant seen, and any process carrying this cluster's marker variable (job drivers start their own
  process groups). ``ray stop --force`` is *not* used: it kills every Ray process of the user on the machine.

Needs ``ray[default]`` (dashboard + job server): see :func:`job_server_missing_modules`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RayHead", "job_server_missing_modules", "ray_cli", "ray_head", "JOB_SERVER_MODULES"]

# what `ray.dashboard.optional_deps` imports: without these `ray start --include-dashboard=true` refuses to start
JOB_SERVER_MODULES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry.exporter.prometheus",
                      "prometheus_client", "pydantic")
_MARKER = "PROTCLIP_TEST_RAY_CLUSTER"


def job_server_missing_modules() -> list[str]:
    """Modules of ``ray[default]`` that are not importable (empty list: the job server can start)."""
    missing = []
    for mod in JOB_SERVER_MODULES:
        try:
            if importlib.util.find_spec(mod) is None:
                missing.append(mod)
        except ModuleNotFoundError:
            missing.append(mod)
    return missing


def ray_cli() -> list[str]:
    """The ``ray`` CLI of this interpreter's environment (the console script, else its module)."""
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class RayHead:
    """A running head node; ``env`` is what CLI calls against it need (auth token, loopback switch)."""

    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    _seen: dict[int, float] = field(default_factory=dict)  # pid -> create_time of processes seen

    def run_cli(self, *args: str, timeout: float = 300, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run ``ray <args>`` against this cluster; stdout and stderr captured as text."""
        return subprocess.run([*ray_cli(), *args], env=self.env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _remember_processes(self) -> None:
        import psutil

        marker = self.env[_MARKER]
        procs = []
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(self.process.pid)
            procs = [leader, *leader.children(recursive=True)]
        for p in psutil.process_iter(["pid", "uids"]):
            if p.pid in self._seen or p.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                if p.uids().real == os.getuid() and p.environ().get(_MARKER) == marker:
                    procs.append(p)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                self._seen[p.pid] = p.create_time()

    def alive_processes(self) -> list[int]:
        """Pids of this cluster's processes (as remembered) that still run."""
        import psutil

        self._remember_processes()
        alive = []
        for pid, created in self._seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive

    def stop(self, timeout_s: float = 20.0) -> None:
        """Kill this cluster's processes (SIGKILL, like ``ray stop --force``, but only ours) and wait."""
        import psutil

        self._remember_processes()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid, created in list(self._seen.items()):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.alive_processes() and time.monotonic() < deadline:
            time.sleep(0.2)


def _get(url: str, token: str, timeout: float = 3.0) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@contextlib.contextmanager
def ray_head(num_cpus: int = 4, timeout_s: float = 240.0, keep_temp: bool = False,
             node_env: dict[str, str] | None = None) -> Iterator[RayHead]:
    """Start ``ray start --head --block`` on 127.0.0.1 with the dashboard; yield once the job API answers.

    ``node_env`` is the node's own environment (what a cluster sets on its pods); jobs inherit it. The test
    process's ``PROTCLIP_SHARED_DATA`` is not passed on unless named there, as a cluster node would not have it.

    Raises:
        RuntimeError: the head exited or the job API did not answer within ``timeout_s`` (log tail included).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="rh_", dir="/tmp"))  # short: Ray's unix socket paths are limited
    token_path = temp_dir / "auth_token"
    token = secrets.token_hex(32)
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("PROTCLIP_SHARED_DATA", None)
    env.update(node_env or {})
    env.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # bind 127.0.0.1, not the machine's outward address
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        _MARKER: temp_dir.name,
    })
    (gcs, dash, agent_listen, agent_grpc, rt_agent, client, metrics, node_mgr, obj_mgr) = _free_ports(9)
    cmd = [*ray_cli(), "start", "--head", "--block", "--disable-usage-stats",
           "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={rt_agent}", f"--ray-client-server-port={client}",
           f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}"]
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=temp_dir)
    head = RayHead(dashboard_url=f"http://127.0.0.1:{dash}", gcs_address=f"127.0.0.1:{gcs}", temp_dir=temp_dir,
                   env=env, process=proc, log_path=log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {proc.returncode}:\n{head.log_tail()}")
            head._remember_processes()
            with contextlib.suppress(OSError):
                # /api/version: dashboard up; /api/jobs/: the job module answers (both need the token)
                if (_get(head.dashboard_url + "/api/version", token) == 200
                        and _get(head.dashboard_url + "/api/jobs/", token) == 200):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray dashboard/job API at {head.dashboard_url} not up after {timeout_s:.0f} s:"
                                   f"\n{head.log_tail()}")
            time.sleep(1.0)
        yield head
    finally:
        head.stop()
        if not keep_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)
