"""The README's main command (jobs/demo.py): overrides are routed and bad ones fail fast with one clear line.

The demo's machinery (build with a cluster split, pre-training, step-0 and final eval rounds, the before/after
table read back from MLflow) is covered piece by piece: tests/recipes/test_ray_job_submit.py (build + tiny
pre-training through `ray job submit`), tests/eval/test_compare.py, tests/test_console.py and
tests/train/test_learning_real_towers.py (the real towers learn on held-out clusters).
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
    assert r.returncode == 2 and "--build.<section>.<key>" in r.stderr and "Traceback" not in r.stderr


def test_bad_build_override_is_rejected():
    r = _demo("--build.build.chunk_bytes", "12")
    assert r.returncode == 2 and "chunk_bytes must be >= 4096" in r.stderr
