# The serving image of this medops project (written by `medops init --ci github`): SageMaker's
# inference contract (`IMAGE serve`, port 8080, /ping and /invocations) over `medops serve`,
# which loads the model named by MEDOPS_MODEL (default: the project's model @champion) from the
# MLflow registry of the project's configuration or of MLFLOW_TRACKING_URI.
#   docker build -f docker/serve.Dockerfile -t PROJECT-serve .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_LOGGING_LEVEL=WARNING

RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
ARG MEDOPS_SPEC="__MEDOPS_SPEC__"
RUN pip install "${MEDOPS_SPEC}"

COPY docker/entrypoint.sh /usr/local/bin/medops-entrypoint
COPY . /opt/medops/project
RUN chmod 0755 /usr/local/bin/medops-entrypoint \
    && useradd --system --uid 10001 --home-dir /opt/medops medops \
    && chown -R medops /opt/medops
USER medops
WORKDIR /opt/medops/project
EXPOSE 8080
ENTRYPOINT ["medops-entrypoint"]
CMD ["serve"]
