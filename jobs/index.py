#!/usr/bin/env python
"""Build a FAISS index over an embedding output (jobs/embed.py) for `python -m protclip search`.

    python jobs/index.py --config jobs/configs/index.yaml --embeddings outputs/embeddings/proteome \
        --output outputs/indexes/proteome
    ray job submit -- python jobs/index.py --config ... --embeddings s3://bucket/emb --output s3://bucket/idx

Exact inner-product index by default; IVF or HNSW above index.approx_above vectors (index.type forces one).
Writes index.faiss, rows.parquet and index.json (model source and checksum, dimension, count, index type and
parameters, the embedding manifest's SHA-256). Exit codes: 0 ok, 1 failed, 2 config error, 3 storage error.
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.index", doc=__doc__))
