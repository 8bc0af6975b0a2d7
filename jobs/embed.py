#!/usr/bin/env python
"""Embed proteins or function texts with a trained ProtCLIP model (Ray Data batch inference).

    python jobs/embed.py --config jobs/configs/embed.yaml --source.export runs/real_small/export \
        --input.uri proteome.fasta --output outputs/embeddings/proteome
    python jobs/embed.py --config jobs/configs/embed.yaml --source.mlflow_run_id <run id> \
        --input.uri shared:go/goslim_generic.obo --input.kind text --output s3://bucket/embeddings/go
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/embed.py --config ... --workers 8 --num_gpus 1

Inputs: FASTA, UniProt .dat(.gz) or ProtAnno Parquet (proteins); ProtAnno Parquet, GO OBO, id<TAB>text TSV or one
statement a line (texts); a file, folder or glob, local or s3://. Writes Parquet shards of (row, id, description,
length, embedding) and manifest.json. Malformed records are skipped and reported (input.on_error: raise to fail).
Exit codes: 0 ok, 1 failed (bad input), 2 config error, 3 storage error.
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.embed", doc=__doc__))
