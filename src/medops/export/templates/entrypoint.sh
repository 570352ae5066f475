#!/bin/sh
# The entry point of this project's medops images (written by `medops init --ci github`).
# SageMaker starts a training job as `IMAGE train` (`medops run` on the project) and an endpoint
# as `IMAGE serve` (`medops serve` on port 8080); anything else is a medops command.
#
# MEDOPS_ENV_SECRET_ARN names a Secrets Manager secret holding a JSON object of environment
# variables (MLFLOW_TRACKING_PASSWORD, ...): they are exported first, so no credential is ever
# written into the image or the stack's template.
set -eu
project=/opt/medops/project

if [ -n "${MEDOPS_ENV_SECRET_ARN:-}" ]; then
    exports=$(python - <<'PY'
import json
import os
import re
import shlex

import boto3

arn = os.environ["MEDOPS_ENV_SECRET_ARN"]
client = boto3.client("secretsmanager", region_name=arn.split(":")[3])
for key, value in json.loads(client.get_secret_value(SecretId=arn)["SecretString"] or "{}").items():
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        print(f"export {key}={shlex.quote(str(value))}")
PY
)
    eval "$exports"
fi

command="${1:-serve}"
[ "$#" -gt 0 ] && shift
case "$command" in
    train)
        exec medops run -C "$project" "$@" ;;
    serve)
        if [ -n "${MEDOPS_MODEL:-}" ]; then
            set -- --model "$MEDOPS_MODEL" "$@"
        fi
        # exec: uvicorn gets SIGTERM itself and drains in-flight requests
        exec medops serve -C "$project" --host 0.0.0.0 --port "${MEDOPS_PORT:-8080}" "$@" ;;
    *)
        exec medops "$command" "$@" ;;
esac
