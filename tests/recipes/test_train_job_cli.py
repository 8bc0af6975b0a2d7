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


def test_the_shipped_demo_config_makes_the_workers_wait_for_the_step_zero_round():
    """real_small.yaml (the demo) checkpoints step 0 and waits for its round in the run folder; without tracking
    there is no round and nothing to wait for; tiny.yaml evaluates nothing at step 0."""
    from protclip.config import load_config
    from protclip.paths import REPO_ROOT
    from protclip.recipes.pretrain import PretrainConfig, start_round_settings

    demo = load_config(PretrainConfig, REPO_ROOT / "jobs/configs/real_small.yaml")
    assert start_round_settings(demo, "runs/real_small") == {
        "checkpoint_at_start": True, "wait_start_round_in": "runs/real_small",
        "wait_start_round_s": demo.eval.start_wait_timeout_s}
    untracked = load_config(PretrainConfig, REPO_ROOT / "jobs/configs/real_small.yaml", {"tracking.enabled": "false"})
    assert start_round_settings(untracked, "r")["checkpoint_at_start"] is False
    assert start_round_settings(untracked, "r")["wait_start_round_in"] is None
    tiny = load_config(PretrainConfig, REPO_ROOT / "jobs/configs/tiny.yaml")
    assert start_round_settings(tiny, "r")["wait_start_round_in"] is None
