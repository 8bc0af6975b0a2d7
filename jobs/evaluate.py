#!/usr/bin/env python
"""Run downstream evaluation suites on a ProtCLIP model and log them to MLflow.

    python jobs/evaluate.py --config jobs/configs/evaluate.yaml --source.export runs/real_small/export
    python jobs/evaluate.py --config jobs/configs/evaluate.yaml --source.checkpoint runs/real_small   # latest checkpoint
    python jobs/evaluate.py --config jobs/configs/evaluate.yaml --source.mlflow_run_id <run id> --select '[retrieval]'
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/evaluate.py --config ... --source.export s3://...

The source is a DCP pre-training checkpoint (or a run folder: its latest complete checkpoint), an export folder
(protein/ + text/ from save_pretrained, heads.safetensors) or a pre-training MLflow run id. Results go into
``--run_id`` when given, else into the source's pre-training run (found via its tags), else a new run: metrics
``eval/<suite>/<metric>`` at the checkpoint's training step, figures under
``eval/step_<N>/round_<id>/`` (one round per call). ``--mode ray`` (default)
runs each suite as a Ray task (joins RAY_ADDRESS or starts a local instance on 127.0.0.1); ``--mode local`` runs
them in this process. Prints a JSON summary. Exit codes: 0 all suites ok, 1 a suite failed, 2 config error,
3 storage error.
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.evaluate", doc=__doc__))
