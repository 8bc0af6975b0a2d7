"""Relative paths of the shipped configs land where the user launched the job, not in Ray's session folder.

The jobs run the way a user runs them, from another working directory with the shipped YAML files (relative
``outputs/...`` and ``runs`` paths): ProtAnno build and a few pre-training steps (the session's
``shipped_tiny_run``, tests/conftest.py), then LoRA on the pre-training run named by ``mlflow:<run id>`` (its
tower is materialised under the run folder and loaded by the Ray workers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protclip.paths import REPO_ROOT

pytestmark = pytest.mark.ray

CONFIGS = REPO_ROOT / "jobs" / "configs"


def test_shipped_configs_from_another_working_directory(shipped_tiny_run, monkeypatch):
    from protclip.recipes import finetune_lora

    tmp_path, out = shipped_tiny_run["tmp"], shipped_tiny_run["summary"]
    assert (tmp_path / "outputs" / "protanno_samples" / "manifest.json").is_file()
    run = tmp_path / "runs" / "tiny"
    assert out["run"] == str(run) and out["export"] == str(run / "export")
    assert (run / "export" / "protein" / "config.json").is_file() and (run / "export" / "heads.safetensors").is_file()
    assert Path(out["checkpoint"]).is_relative_to(run) and Path(out["checkpoint"]).is_dir()
    assert (tmp_path / "mlflow.db").is_file()

    monkeypatch.chdir(tmp_path)
    assert finetune_lora.main(["--config", str(CONFIGS / "deeploc_lora.yaml"),
                               "--base.source", f"mlflow:{out['mlflow_run_id']}",
                               "--data.max_rows", "48", "--data.max_length", "32", "--train.epochs", "1",
                               "--train.batch_size", "8", "--train.num_workers", "1", "--train.cpus_per_worker", "0.5",
                               "--train.eval_at_start", "false", "--run.save_merged", "false"]) == 0
    adapter = tmp_path / "runs" / "deeploc_lora" / "export" / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base).is_relative_to(tmp_path)  # the tower the workers loaded
    assert (Path(base) / "config.json").is_file()
