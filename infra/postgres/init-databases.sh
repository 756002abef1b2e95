#!/usr/bin/env bash
# Runs once, on the first start of an empty PostgreSQL volume (docker-entrypoint-initdb.d): one database
# and one owner role each for MLflow and Prefect, so neither service can touch the other's tables.
set -euo pipefail

create_db() {
  local db=$1 user=$2 password=$3
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v db="$db" -v user="$user" -v password="$password" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
SQL
}

create_db "$MLFLOW_DB" "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD"
create_db "$PREFECT_DB" "$PREFECT_DB_USER" "$PREFECT_DB_PASSWORD"
