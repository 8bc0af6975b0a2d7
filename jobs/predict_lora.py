#!/usr/bin/env python
"""Predict with a LoRA adapter (same arguments as ``python -m protclip.finetune.infer``):

    python jobs/predict_lora.py --adapter runs/deeploc_lora/export/adapter --input seqs.fasta --output preds.csv

Exit codes (one line on stderr): 0 ok; 1 failed on its input (a missing or unreadable adapter, an input record
that does not parse: the line names file, record and field); 2 bad arguments (options that do not fit the file);
3 the input file does not exist.
"""

import sys

from protclip.cli import run_main


def main(argv: list[str]) -> int:
    """Load the adapter (torch, peft) only after the arguments parsed; ``--help`` reads the options from the
    source of ``PredictConfig`` without importing torch."""
    if any(a in ("-h", "--help") for a in argv):
        from protclip.help import options_help

        print(options_help("protclip.finetune.infer", "PredictConfig", __doc__))
        return 0
    from protclip.finetune.infer import main as predict

    return predict(argv)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:], help_passthrough=True))
