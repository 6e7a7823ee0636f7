#!/usr/bin/env bash
# MLflow tracking server for this project (`make mlflow-ui` runs it from the venv).
#
# Default: the embedded store the jobs write to when MLFLOW_TRACKING_URI is unset
# (mlflow/mlflow.db + mlflow/artifacts), served on http://127.0.0.1:5000 and nowhere else.
# Team: point it at Postgres and an S3 bucket (infra/compose.yaml does this):
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.internal:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://team-bucket/mlflow \
#   MLFLOW_HOST=0.0.0.0 MLFLOW_SERVER_ALLOWED_HOSTS=mlflow.internal:5000 bash mlflow/server.sh
# Credentials come from the environment (PGPASSWORD or ~/.pgpass, AWS_* or an instance role,
# MLFLOW_S3_ENDPOINT_URL for a non-AWS S3 store); none belong in this file.
# Extra arguments go to `mlflow server` (e.g. --workers 4).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${HERE}/mlflow.db}"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-${HERE}/artifacts}"
export MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_DISABLE_TELEMETRY=true

if [[ "${MLFLOW_HOST}" != "127.0.0.1" && "${MLFLOW_HOST}" != "localhost" ]]; then
  echo "mlflow/server.sh: listening on ${MLFLOW_HOST}:${MLFLOW_PORT}; MLflow has no login of its own," \
       "keep it behind a private network or an authenticating proxy" >&2
fi
echo "mlflow/server.sh: store ${MLFLOW_BACKEND_STORE_URI%%://*}://..., artifacts ${MLFLOW_ARTIFACTS_DESTINATION%%://*}," \
     "UI on http://${MLFLOW_HOST}:${MLFLOW_PORT}" >&2
# A SQLite store written by the jobs records file:// artifact locations; when its folder has moved
# (another checkout, a copied mlflow/ folder), point them at the artifacts/ folder beside it now.
# Then print the links to open: the newest sweep's saved view, each experiment's runs table.
if [[ "${MLFLOW_BACKEND_STORE_URI}" == sqlite:///* ]]; then
  PYTHONPATH="${HERE}/..${PYTHONPATH:+:${PYTHONPATH}}" python - "${MLFLOW_BACKEND_STORE_URI}" "http://${MLFLOW_HOST}:${MLFLOW_PORT}" <<'PY' || echo "mlflow/server.sh: could not check the store's artifact locations" >&2
import os, sys
from raylib.tracking import relocate_artifacts, sqlite_path, store_links
db = sqlite_path(sys.argv[1])
n = relocate_artifacts(db)
if n:
    print(f"mlflow/server.sh: {n} artifact location(s) now under {db.rsplit('/', 1)[0]}/artifacts", file=sys.stderr)
if os.path.exists(db):  # where to look first
    for line in store_links(sys.argv[1], sys.argv[2]):
        print(f"mlflow/server.sh: {line}", file=sys.stderr)
PY
fi
# --backend-store-uri, --artifacts-destination, --host and --port come from the variables above
exec mlflow server --serve-artifacts "$@"
