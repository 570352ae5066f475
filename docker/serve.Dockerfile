# The medops serving image: SageMaker-compatible (`serve` on PATH, port 8080, /ping and
# /invocations), also fine for Kubernetes or plain `docker run`.
#   docker build -f docker/serve.Dockerfile -t medops-serve .
#   docker run -p 8080:8080 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#              -e MEDOPS_MODEL=chest-xray-classifier@champion medops-serve serve
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_LOGGING_LEVEL=WARNING

# CPU PyTorch from PyTorch's own index: the default wheels bundle CUDA (several GB).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision

WORKDIR /opt/medops/src
COPY pyproject.toml README.md ./
COPY src ./src
# The aws extra reads s3:// models and artifacts (MLflow with an S3 artifact store); postgres
# writes the per-minute serving figures to a team's state database.
RUN pip install ".[aws,postgres]" && rm -rf /opt/medops/src

COPY docker/serve /usr/local/bin/serve
RUN chmod 0755 /usr/local/bin/serve \
    && useradd --system --uid 10001 --home-dir /opt/medops medops \
    && mkdir -p /opt/medops/project \
    && chown -R medops /opt/medops
USER medops
WORKDIR /opt/medops/project

EXPOSE 8080
# SageMaker runs `docker run IMAGE serve`; without arguments the same thing happens.
CMD ["serve"]
