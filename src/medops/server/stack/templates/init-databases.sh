#!/bin/sh
# One role and one database per service: medops (state) and MLflow (tracking, registry and its
# users). The postgres image runs this once, on the first start with an empty data volume.
# Names and passwords come from the environment (MEDOPS_DB, MLFLOW_DB and their *_PASSWORD);
# psql quotes them (:"name" / :'value'), so no value can change the SQL.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v medops_db="$MEDOPS_DB" -v medops_pw="$MEDOPS_DB_PASSWORD" \
     -v mlflow_db="$MLFLOW_DB" -v mlflow_pw="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE :"medops_db" LOGIN PASSWORD :'medops_pw';
CREATE DATABASE :"medops_db" OWNER :"medops_db";
REVOKE ALL ON DATABASE :"medops_db" FROM PUBLIC;
CREATE ROLE :"mlflow_db" LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_db";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;
SQL
