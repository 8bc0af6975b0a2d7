"""The quiet console: everything written to fds 1/2 (print, C-level writes, child processes) lands in the log
file, progress lines reach the terminal, and an unexpected error still reaches the terminal in full."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from protclip.console import progress_line

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, warnings
    from protclip.console import quiet_console
    from protclip.config import ConfigError
    mode, log = sys.argv[1], sys.argv[2]
    with quiet_console(log, expected=(ConfigError,)) as con:
        print("chatter from print")
        os.write(2, b"chatter on fd 2\\n")
        subprocess.run([sys.executable, "-c", "print('chatter from a child')"], check=True)
        warnings.warn("a library warning")
        con.line("progress: step 5/10")
        if mode == "crash":
            raise RuntimeError("boom in the job")
        if mode == "config":
            raise ConfigError("bad key x.y")
    print("after the block")
""")


def _run(tmp_path, mode: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "run" / "logs" / "job.log"
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(log)], capture_output=True, text=True, timeout=120)
    return r, log.read_text()


def test_chatter_goes_to_the_log_and_progress_to_the_terminal(tmp_path):
    r, log = _run(tmp_path, "ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["progress: step 5/10", "after the block"]
    assert r.stderr == ""
    for chatter in ("chatter from print", "chatter on fd 2", "chatter from a child", "a library warning"):
        assert chatter in log and chatter not in r.stdout


def test_an_unexpected_error_reaches_the_terminal_in_full(tmp_path):
    r, log = _run(tmp_path, "crash")
    assert r.returncode != 0
    assert "Traceback" in r.stdout and "RuntimeError: boom in the job" in r.stdout
    assert "full log:" in r.stdout and "RuntimeError: boom in the job" in log


def test_an_expected_error_is_left_to_the_one_line_handler(tmp_path):
    r, log = _run(tmp_path, "config")
    assert "Traceback" not in r.stdout and "ConfigError" in r.stderr  # raised past the block, terminal restored
    assert "bad key x.y" in log


def test_progress_line_has_step_losses_val_rate_and_eta():
    line = progress_line(40, 200, {"train/loss": 6.1234, "train/loss_gc": 2.31, "val/loss_gc": 2.2,
                                   "perf/pairs_per_s": 3.14}, elapsed_s=100.0, steps_done=40)
    assert line == "step 40/200 | loss 6.123 gc 2.310 | val gc 2.200 | 3.1 pairs/s | ETA 6m40s"
    assert progress_line(1, 200, {}, elapsed_s=0.0, steps_done=0).endswith("ETA ?")
