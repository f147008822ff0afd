#!/bin/sh
# Creates the MLflow and Prefect databases, each owned by its own role, on the first start of an empty
# data volume (the postgres image runs /docker-entrypoint-initdb.d/* only then). The passwords come from
# the container's environment (infra/.env), never from this file; psql's :'var' quotes them safely.
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" \
    -v prefect_password="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
SQL
