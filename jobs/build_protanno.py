#!/usr/bin/env python
"""Build ProtAnno (Parquet + manifest) from raw UniProtKB files with Ray Data.

    python jobs/build_protanno.py --config jobs/configs/build_samples.yaml
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/build_protanno.py --config jobs/configs/build_uniprot.yaml
"""

import sys

import protclip.runtime  # noqa: F401  (first: the loopback switch is set before anything imports ray)
from protclip.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("protclip.recipes.build_protanno", doc=__doc__))
