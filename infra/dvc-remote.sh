#!/usr/bin/env bash
# Point this checkout's DVC at the team remote: the DVC bucket on the stack's MinIO (S3 API).
# Writes the remote to .dvc/config.local (never committed) unless --project is given, so it does not
# replace the local default remote set in .dvc/config; credentials always go to config.local.
#
#   infra/dvc-remote.sh                                   # MinIO from infra/docker-compose.yml on localhost
#   DVC_S3_ENDPOINT=http://minio.example:9000 infra/dvc-remote.sh --project   # commit it for everyone
#   dvc push -r team && dvc pull -r team
#
# Reads infra/.env (or the environment): DVC_BUCKET, MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, S3_REGION.
# Needs the dvc-s3 plugin (infra/requirements-team.txt; the images have it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f infra/.env ]; then
  set -a
  # shellcheck disable=SC1091
  . infra/.env
  set +a
fi
ENDPOINT=${DVC_S3_ENDPOINT:-http://localhost:${MINIO_API_PORT:-9000}}
BUCKET=${DVC_BUCKET:?set DVC_BUCKET (infra/.env)}
REMOTE=${DVC_REMOTE_NAME:-team}
SCOPE=--local
[ "${1:-}" = "--project" ] && SCOPE=--project

python -c "import dvc_s3" 2>/dev/null || {
  echo "dvc-remote: the dvc-s3 plugin is missing: pip install -r infra/requirements-team.txt" >&2
  exit 2
}
dvc remote add "$SCOPE" --force "$REMOTE" "s3://$BUCKET/genprm"
dvc remote modify "$SCOPE" "$REMOTE" endpointurl "$ENDPOINT"
dvc remote modify "$SCOPE" "$REMOTE" region "${S3_REGION:-us-east-1}"
dvc remote modify --local "$REMOTE" access_key_id "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}"
dvc remote modify --local "$REMOTE" secret_access_key "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
echo "dvc-remote: '$REMOTE' -> s3://$BUCKET/genprm at $ENDPOINT ($SCOPE); try: dvc push -r $REMOTE"
