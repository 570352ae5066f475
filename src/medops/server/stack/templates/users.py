"""Create the MLflow user the medops services log in as, or reset its password (one-shot job).

Reads MLFLOW_URL (e.g. http://mlflow:5000/mlflow), MLFLOW_ADMIN_PASSWORD (the user `admin`),
MLFLOW_MEDOPS_PASSWORD and optionally MLFLOW_MEDOPS_USER (default `medops`). Standard library
only, so any Python image runs it. Idempotent: a second run sets the same password again, and
after a rotation in .env it sets the new one. Never prints a password.
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request


def call(method: str, path: str, body: dict) -> int:
    url = os.environ["MLFLOW_URL"].rstrip("/") + "/api/2.0/mlflow/users/" + path
    token = base64.b64encode(f"admin:{os.environ['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Authorization": f"Basic {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def main() -> int:
    user = os.environ.get("MLFLOW_MEDOPS_USER", "medops")
    password = os.environ["MLFLOW_MEDOPS_PASSWORD"]
    status = call("POST", "create", {"username": user, "password": password})
    if status == 200:
        print(f"created the MLflow user {user}")
        return 0
    # 400 RESOURCE_ALREADY_EXISTS: it exists, so make its password the configured one
    status = call("PATCH", "update-password", {"username": user, "password": password})
    if status == 200:
        print(f"set the password of the MLflow user {user}")
        return 0
    print(f"MLflow refused to create or update the user {user} (HTTP {status}); check "
          "MLFLOW_ADMIN_PASSWORD against the admin's current password", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
