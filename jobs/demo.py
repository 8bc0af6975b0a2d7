#!/usr/bin/env python
"""The embedded end-to-end demo: real UniProt samples -> ProtAnno (Ray Data) -> ProtCLIP pre-training
(Ray Train, 2 FSDP2 CPU workers) -> MLflow run in ./mlflow.db -> how to open the MLflow UI.

    python jobs/demo.py [--pretrain.train.max_steps 50]

Runs on a laptop or a 2-core CI machine in a few minutes: local Ray on 127.0.0.1, local storage, MLflow
SQLite, tiny towers. The same steps on a cluster are `jobs/build_protanno.py` and `jobs/pretrain.py`.
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.demo", doc=__doc__,
                     configs={"build": "protclip.recipes.build_protanno:BuildJobConfig",
                              "pretrain": "protclip.recipes.pretrain:PretrainConfig"}))
