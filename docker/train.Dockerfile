# The medops training image: runs the pipeline (`medops run`) or the agent (`medops agent`) on a
# mounted project.
#   docker build -f docker/train.Dockerfile -t medops-train .
#   docker run -v "$PWD:/project" medops-train                      # = medops run -C /project
#   docker run -v "$PWD:/project" medops-train train --set train.epochs=5
# SageMaker training jobs start it as `IMAGE train` (see docker/train).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_LOGGING_LEVEL=WARNING

# CPU PyTorch by default; for GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" torch torchvision

WORKDIR /opt/medops/src
COPY pyproject.toml README.md ./
COPY src ./src
# git: the lineage tags record the project's commit when the project is a git checkout.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && pip install ".[aws,postgres,gdcm,agent]" \
    && rm -rf /opt/medops/src

COPY docker/train /usr/local/bin/train
RUN chmod 0755 /usr/local/bin/train
WORKDIR /project
CMD ["train"]
