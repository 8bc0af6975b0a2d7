#!/usr/bin/env python
"""Pre-train ProtCLIP with Ray Train (FSDP2 workers), Ray Data sampling and MLflow tracking.

    python jobs/pretrain.py --config jobs/configs/tiny.yaml [--train.max_steps 50 --storage.name try1 ...]
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/pretrain.py --config jobs/configs/paper.yaml

Any config field can be overridden with a dotted flag. Starting the job again with the same storage.name and
storage.storage_path resumes from the latest checkpoint. On a cluster (RAY_ADDRESS set) the job joins it;
otherwise it starts a local Ray instance on 127.0.0.1. Exit codes: 0 ok, 1 failed, 2 config error,
3 storage error.
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.pretrain", doc=__doc__))
