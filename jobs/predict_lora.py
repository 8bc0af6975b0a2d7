#!/usr/bin/env python
"""Predict with a LoRA adapter (same arguments as ``python -m protclip.finetune.infer``):

    python jobs/predict_lora.py --adapter runs/deeploc_lora/export/adapter --input seqs.fasta --output preds.csv

Exit codes: 0 ok, 1 failed (a missing adapter or input file: one line), 2 bad arguments.
"""

import sys

from protclip.cli import run_main


def main(argv: list[str]) -> int:
    """Load the adapter (torch, peft) only after the arguments parsed."""
    from protclip.finetune.infer import main as predict

    return predict(argv)


if __name__ == "__main__":
    sys.exit(run_main(main, help_passthrough=True))
