#!/usr/bin/env python
"""The embedded end-to-end demo: the 1,449 real UniProt entries beside the repository -> ProtAnno with a
homology-aware split (Ray Data + MMseqs2) -> ProtCLIP pre-training of the real small towers (ESM-2 8M +
MiniLM-L6, Ray Train, 2 FSDP2 CPU workers) -> before/after evaluation on the held-out test clusters (Ray tasks)
-> the table, the MLflow run in ./mlflow.db and how to open the MLflow UI.

    python jobs/demo.py [--verbose] [--build.<section>.<key> v ...] [--pretrain.<section>.<key> v ...]

Settings: jobs/configs/build_corpus.yaml and jobs/configs/real_small.yaml (the defaults --help lists are the
config classes'; those files override them). About 11 minutes on a 2-core machine: local Ray on 127.0.0.1, local
storage, MLflow SQLite. Run again, it resumes its run folder ./runs/real_small; with a changed training config
(say --pretrain.train.max_steps 30) add --pretrain.storage.name <new name> for a new run. The same steps on a
cluster are jobs/build_protanno.py and jobs/pretrain.py.
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.demo", doc=__doc__,
                     configs={"build": "protclip.recipes.build_protanno:BuildJobConfig",
                              "pretrain": "protclip.recipes.pretrain:PretrainConfig"}))
