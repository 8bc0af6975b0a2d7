#!/usr/bin/env python
"""Build ProtAnno (Parquet + manifest) from raw UniProtKB files with Ray Data.

    python jobs/build_protanno.py --config jobs/configs/build_samples.yaml
    ray job submit --runtime-env cluster/runtime_env.yaml -- python jobs/build_protanno.py --config jobs/configs/build_uniprot.yaml
"""

import sys

import protclip.runtime  # noqa: F401  (must precede ray: loopback binding for local runs)
from protclip.cli import run_main
from protclip.recipes.build_protanno import main

if __name__ == "__main__":
    sys.exit(run_main(main))
