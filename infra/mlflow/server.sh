#!/usr/bin/env bash
# An MLflow tracking server: database backend, artifact store, bound to 127.0.0.1 unless told.
#   MLFLOW_BACKEND_URI   (default sqlite:///$MLFLOW_HOME/mlflow.db; e.g. postgresql://user:pw@db/mlflow)
#   MLFLOW_ARTIFACTS     (default $MLFLOW_HOME/artifacts; e.g. s3://bucket/mlflow)
#   MLFLOW_HOST / MLFLOW_PORT (default 127.0.0.1 / 5000)
#   MLFLOW_APP_NAME      (optional; `adaptsym-runs` opens the UI on the runs table, needs adaptsym installed)
set -euo pipefail
HOME_DIR=${MLFLOW_HOME:-runs/mlflow-server}
mkdir -p "$HOME_DIR"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec "${MLFLOW_BIN:-mlflow}" server \
  --backend-store-uri "${MLFLOW_BACKEND_URI:-sqlite:///$(cd "$HOME_DIR" && pwd)/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS:-$(cd "$HOME_DIR" && pwd)/artifacts}" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers 1 \
  ${MLFLOW_APP_NAME:+--app-name "$MLFLOW_APP_NAME"}
