#!/usr/bin/env python
"""LoRA fine-tuning of the pre-trained protein tower on a downstream task.

    python jobs/finetune_lora.py --config jobs/configs/deeploc_lora.yaml [--train.strategy fsdp2 --lora.r 16 ...]
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/finetune_lora.py --config <task>_lora.yaml

Any config field can be overridden as ``--section.key value``. Starts a local Ray instance on 127.0.0.1 when no
cluster address is set; a rerun with the same run.name/run.storage_path resumes. Prints the final metrics as
JSON on the last line; the adapter, merged model and metrics land in <storage_path>/<name>/export.
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.finetune_lora", doc=__doc__))
