#!/usr/bin/env python
"""Pre-train ProtCLIP with Ray Train (FSDP2 workers), Ray Data sampling and MLflow tracking.

    python jobs/pretrain.py --config jobs/configs/demo.yaml [--train.max_steps 50 --storage.name try1 ...]
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/pretrain.py --config jobs/configs/paper.yaml

Any config field can be overridden with a dotted flag. Starting the job again with the same storage.name and
storage.storage_path resumes from the latest checkpoint. On a cluster (RAY_ADDRESS set) the job joins it;
otherwise it starts a local Ray instance on 127.0.0.1. Exit codes: 0 ok, 1 failed, 2 config error,
3 storage error.
"""

import json
import sys

import protclip.runtime  # noqa: F401  (must precede ray: loopback binding for local runs)
from protclip.cli import run_main, setup_logging


def main(argv: list[str]) -> int:
    """Pre-train ProtCLIP.

    usage: python jobs/pretrain.py --config FILE [--section.key value ...]
    (see jobs/configs/demo.yaml for every section; exit 2 = config error, 3 = storage error)
    """
    from protclip.config import cli_config
    from protclip.runtime import init_ray
    from protclip.storage import check_access, redact
    from protclip.train.config import PretrainConfig

    setup_logging()
    cfg = cli_config(PretrainConfig, argv)
    # fail fast, before torch/Ray start: a wrong bucket or credentials is one line and exit 3, not minutes later
    check_access(cfg.data.uri, cfg.storage.access())
    check_access(cfg.storage.storage_path, cfg.storage.access(), write=True)
    from protclip.train.trainer import run_pretrain

    init_ray()
    result = run_pretrain(cfg)
    summary = {"mlflow_run_id": result.run_id, "run": redact(result.run_uri), "checkpoint": result.checkpoint_path,
               "export": result.export_uri, "final": {k: v for k, v in result.metrics.items()
                                                       if isinstance(v, int | float)}}
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
