# The training image of this medops project (written by `medops init --ci github`): medops, with
# this repository's configuration and code in /opt/medops/project. SageMaker training jobs start
# it as `IMAGE train`, which runs `medops run` on the project.
#   docker build -f docker/train.Dockerfile -t PROJECT-train .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_LOGGING_LEVEL=WARNING

# git: the registered version's lineage records this repository's commit
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
# CPU PyTorch by default; for GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" torch torchvision
ARG MEDOPS_SPEC="__MEDOPS_SPEC__"
RUN pip install "${MEDOPS_SPEC}"

COPY docker/entrypoint.sh /usr/local/bin/medops-entrypoint
COPY . /opt/medops/project
RUN chmod 0755 /usr/local/bin/medops-entrypoint
WORKDIR /opt/medops/project
ENTRYPOINT ["medops-entrypoint"]
CMD ["train"]
