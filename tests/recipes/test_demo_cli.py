"""The README's main command (jobs/demo.py): overrides are routed and bad ones fail fast with one clear line.

The demo's two steps themselves (build + pre-training with jobs/configs/demo.yaml) run end to end in
tests/recipes/test_ray_job_submit.py::test_ray_job_submit_runs_the_main_job.
"""

from __future__ import annotations

import subprocess
import sys

from protclip.paths import REPO_ROOT


def _demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/demo.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def test_bad_pretrain_override_is_one_line_exit_2():
    r = _demo("--pretrain.train.max_stepz", "5")
    assert r.returncode == 2
    assert "max_stepz" in r.stderr and "max_steps" in r.stderr and "Traceback" not in r.stderr


def test_override_without_section_prefix_is_rejected():
    r = _demo("--train.max_steps", "5")
    assert r.returncode == 2 and "--build. or --pretrain." in r.stderr and "Traceback" not in r.stderr


def test_bad_build_override_is_rejected():
    r = _demo("--build.build.chunk_bytes", "12")
    assert r.returncode == 2 and "chunk_bytes must be >= 4096" in r.stderr
