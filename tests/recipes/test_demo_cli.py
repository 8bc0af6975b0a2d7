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


def test_a_rerun_that_cannot_resume_its_run_folder_fails_before_building(tmp_path):
    """The demo's run folder holds the checkpoint of a 70-step run; a rerun with --pretrain.train.max_steps 30 is
    another run: one line, exit 2, naming the change and the demo's own flag for a new run folder, and nothing is
    built (it used to fail only after the build and the data preparation)."""
    import json

    from protclip.config import load_config
    from protclip.recipes.pretrain import PretrainConfig
    from protclip.train.checkpoint import COMMITTED, FORMAT_VERSION, STATE_FILE
    from protclip.train.run_folder import RUN_IDENTITY, run_fingerprint, run_key

    cfg = load_config(PretrainConfig, REPO_ROOT / "jobs/configs/real_small.yaml",
                      {"storage.storage_path": str(tmp_path / "runs"), "data.uri": str(tmp_path / "outputs")})
    ckpt = tmp_path / "runs" / "real_small" / "checkpoint_000000070_a1"
    ckpt.mkdir(parents=True)
    ident = {"key": run_key(cfg), "mlflow_run_id": "r1", "fingerprint": run_fingerprint(cfg, 70)}
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 70, "extra": {RUN_IDENTITY: ident}}))
    (ckpt / COMMITTED).write_text(json.dumps({"format": FORMAT_VERSION, "step": 70,
                                              "files": {STATE_FILE: (ckpt / STATE_FILE).stat().st_size}}))
    r = subprocess.run([sys.executable, str(REPO_ROOT / "jobs/demo.py"), "--pretrain.train.max_steps", "30",
                        "--build.build.output", str(tmp_path / "outputs")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert "derived.total_steps: 70 -> 30" in errors[0] and "--pretrain.storage.name" in errors[0]
    assert " --storage.name" not in errors[0]
    assert not (tmp_path / "outputs").exists()  # nothing built
