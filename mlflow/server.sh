#!/usr/bin/env bash
# The MLflow tracking server + model registry on 127.0.0.1, its state under $PATENTFLOW_HOME.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
home="${PATENTFLOW_HOME:-$here/.patentflow}"
mkdir -p "$home/mlflow/artifacts"
export MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # GenAI job runner, unused here; halves start-up
exec "$here/.venv/bin/mlflow" server \
  --backend-store-uri "sqlite:///$home/mlflow/mlflow.db" \
  --artifacts-destination "$home/mlflow/artifacts" \
  --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}"
