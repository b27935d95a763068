#!/usr/bin/env bash
# Team MLflow server: SQL backend + proxied artifacts (S3 when MLFLOW_ARTIFACTS is an s3:// URI).
#   bash infra/mlflow_server.sh                       # sqlite:///mlflow.db, artifacts in ./mlartifacts, port 5000
#   MLFLOW_BACKEND=postgresql://... MLFLOW_ARTIFACTS=s3://bucket/mlflow bash infra/mlflow_server.sh
# After `wsss infra s3-init` (which writes .wsss/s3.env), MLFLOW_ARTIFACTS unset means that bucket's
# mlflow/ prefix, with MLFLOW_S3_ENDPOINT_URL for its endpoint. For S3 the server needs AWS credentials
# from the environment / profile (never in the repo). Optional: MLFLOW_WORKERS (MLflow's default: 4).
# Clients then set MLFLOW_TRACKING_URI=http://HOST:PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${MLFLOW_ARTIFACTS:-}" && -f .wsss/s3.env ]]; then
  source .wsss/s3.env  # exports MLFLOW_ARTIFACTS and, for a non-AWS endpoint, MLFLOW_S3_ENDPOINT_URL
fi
mlflow=.venv/bin/mlflow
[[ -x "$mlflow" ]] || mlflow=mlflow  # a project installed elsewhere (CI): the mlflow on PATH
exec "$mlflow" server \
  --backend-store-uri "${MLFLOW_BACKEND:-sqlite:///mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS:-./mlartifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  ${MLFLOW_WORKERS:+--workers "$MLFLOW_WORKERS"}
