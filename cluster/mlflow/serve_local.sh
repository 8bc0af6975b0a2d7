#!/usr/bin/env bash
# One-machine MLflow tracking server: sqlite backend + local artifacts, bound to 127.0.0.1 (this machine only).
# A thin wrapper around `python -m protclip.mlflow_server`, which tests use too; every option passes through:
#
#   cluster/mlflow/serve_local.sh                      # http://127.0.0.1:5000, data in ./mlflow-server/
#   cluster/mlflow/serve_local.sh --port 5001 --root /data/mlflow
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   # then run jobs; `mlflow ui` is not needed
#
# Needs full mlflow (`pip install -e '.[ui]'`). Reach it from a laptop with `ssh -L 5000:127.0.0.1:5000 host`
# rather than --host 0.0.0.0: the server has no authentication. Team setup: docker-compose.yaml / k8s.yaml here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" -m protclip.mlflow_server "$@"
