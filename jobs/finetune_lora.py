#!/usr/bin/env python
"""LoRA fine-tuning of the pre-trained protein tower on a downstream task.

    python jobs/finetune_lora.py --config jobs/configs/deeploc_lora.yaml [--train.strategy fsdp2 --lora.r 16 ...]
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/finetune_lora.py --config <task>_lora.yaml

Any config field can be overridden as ``--section.key value``. Starts a local Ray instance on 127.0.0.1 when no
cluster address is set; a rerun with the same run.name/run.storage_path resumes. Prints the final metrics as
JSON on the last line; the adapter, merged model and metrics land in <storage_path>/<name>/export.
"""

import json
import logging
import sys

import protclip.runtime  # noqa: F401  (must precede ray: loopback binding for local runs)
from protclip.cli import run_main, setup_logging
from protclip.config import cli_config
from protclip.finetune.config import FinetuneConfig


def main(argv: list[str]) -> int:
    """LoRA fine-tuning job: --config FILE [--section.key value ...] (see jobs/configs/*_lora.yaml)."""
    setup_logging()
    cfg = cli_config(FinetuneConfig, argv)
    from protclip.finetune.trainer import run_finetune
    from protclip.runtime import init_ray

    init_ray()
    metrics = run_finetune(cfg)
    keys = sorted(k for k in metrics if k.startswith(("test/", "untrained/test/", "valid/")))
    for k in keys:
        logging.getLogger("finetune_lora").info("%-28s %s", k, metrics[k])
    extra = [k for k in ("selected_step", "run_id", "checkpoint") if k in metrics]
    print(json.dumps({k: metrics[k] for k in keys + extra}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
