#!/usr/bin/env bash
# The MLflow tracking server + model registry, bound to 127.0.0.1 (MLFLOW_HOST to change it).
#
# Embedded default: its state under $PATENTFLOW_HOME (SQLite, local artifacts).
# Production, by the environment (README, "Running past one machine"):
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow@db:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/mlflow   (+ AWS_* keys; MLFLOW_S3_ENDPOINT_URL for
#                                                       an S3-compatible store)
# Artifacts are always served through the server (--serve-artifacts): clients need no S3 keys.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
home="${PATENTFLOW_HOME:-$here/.patentflow}"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$home/mlflow/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$home/mlflow/artifacts}"
[[ "$artifacts" == *://* ]] || mkdir -p "$artifacts"
[[ "$backend" == sqlite:* ]] && mkdir -p "$home/mlflow"
export MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # GenAI job runner, unused here; halves start-up
exec "$here/.venv/bin/mlflow" server \
  --backend-store-uri "$backend" \
  --artifacts-destination "$artifacts" --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-4}"
