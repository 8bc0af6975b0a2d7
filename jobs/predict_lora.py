#!/usr/bin/env python
"""Predict with a LoRA adapter (same arguments as ``python -m protclip.finetune.infer``):

    python jobs/predict_lora.py --adapter runs/deeploc_lora/export/adapter --input seqs.fasta --output preds.csv
"""

import sys

from protclip.finetune.infer import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
