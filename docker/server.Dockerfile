# The medops team server image: `medops server` (API and dashboard) and `mlflow server` with its
# basic-auth app, PostgreSQL driver and S3 client; `medops server init` writes a compose file
# that runs both from it.
#   docker build -f docker/server.Dockerfile -t medops-server .
#   docker run -p 8000:8000 -v "$PWD:/project" medops-server \
#              medops server -C /project --host 0.0.0.0 --port 8000
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_LOGGING_LEVEL=WARNING

# CPU PyTorch from PyTorch's own index (medops depends on it; the server never trains).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision

WORKDIR /opt/medops/src
COPY pyproject.toml README.md ./
COPY src ./src
# server: mlflow[auth], argon2, jinja2, psycopg, boto3 (MLflow's S3 artifact store)
RUN pip install ".[server]" && rm -rf /opt/medops/src \
    && useradd --system --uid 10001 --home-dir /opt/medops medops \
    && mkdir -p /opt/medops && chown medops /opt/medops
USER medops
WORKDIR /project

EXPOSE 8000 5000
CMD ["medops", "server", "-C", "/project", "--host", "0.0.0.0", "--port", "8000"]
