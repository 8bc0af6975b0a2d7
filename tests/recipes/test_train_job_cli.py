"""``jobs/pretrain.py`` fails with one clear line and a distinct exit code on config and storage errors
(before Ray starts), and prints its usage on --help."""

from __future__ import annotations

import subprocess
import sys

from protclip.paths import REPO_ROOT

JOB = str(REPO_ROOT / "jobs" / "pretrain.py")


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, JOB, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd or REPO_ROOT)


def test_help():
    r = _run("--help")
    assert r.returncode == 0 and "--config" in r.stdout


def test_config_errors_exit_2_with_one_line(tmp_path):
    r = _run("--config", "jobs/configs/tiny.yaml", "--train.lr_rate", "1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("config error:") and "did you mean" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run("--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = _run("--config", "jobs/configs/tiny.yaml", "--train.accum_steps", "0")
    assert r.returncode == 2 and "accum_steps" in r.stderr


def test_storage_error_exit_3(tmp_path):
    r = _run("--config", "jobs/configs/tiny.yaml", "--data.uri", str(tmp_path / "no_such_protanno"),
             "--storage.storage_path", str(tmp_path / "runs"))
    assert r.returncode == 3, r.stderr[-2000:]
    assert "storage error:" in r.stderr and "no_such_protanno" in r.stderr and "Traceback" not in r.stderr
