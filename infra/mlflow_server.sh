#!/usr/bin/env bash
# Team MLflow server: SQL backend + proxied artifacts (S3 when MLFLOW_ARTIFACTS is an s3:// URI).
#   bash infra/mlflow_server.sh                       # sqlite:///mlflow.db, artifacts in ./mlartifacts, port 5000
#   MLFLOW_BACKEND=postgresql://... MLFLOW_ARTIFACTS=s3://bucket/mlflow bash infra/mlflow_server.sh
# For S3 the server needs AWS credentials from the environment / profile (never in the repo), and
# MLFLOW_S3_ENDPOINT_URL for a non-AWS endpoint. Clients then set MLFLOW_TRACKING_URI=http://HOST:PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND:-sqlite:///mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS:-./mlartifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}"
