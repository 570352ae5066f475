"""The commented medops.yaml that `medops init` writes."""

from __future__ import annotations

_TEMPLATE = """\
# medops project configuration. Every key is optional except `project`;
# the values shown are the defaults. Docs: https://github.com/medops/medops#configuration
project: {project}

data:
  # Where images come from. kind: folder (DICOM, PNG, JPEG; DICOM found by extension or preamble)
  # or npz (a MedMNIST-style file). Relative paths are relative to this file.
  source: {{kind: folder, path: {source_path}}}
  # Labels from sub-folder names (data/raw/<label>/...), or from a CSV:
  #   labels: {{from: csv, csv: labels.csv, id_column: path, label_column: label,
  #             patient_column: patient}}
  labels: {{from: folder-names}}
  frames: middle          # multi-frame DICOM: middle frame, or `each` frame as its own item
  deidentify: true
  # Patient-level, stratified, seeded split. An item keeps its split forever, even as data grows.
  split: {{val: 0.1, test: 0.2, group_by: patient, seed: 0}}
  min_items_per_class: 2

preprocess:
  size: auto              # [height, width], or auto: the median image size, at most max_auto_size
  max_auto_size: 128
  channels: auto          # 1, 3, or auto (3 when most images are colour)
  window: auto            # DICOM VOI LUT / window when present; `none`: modality values
  normalize: zscore       # per image: zscore or minmax

model:
  architecture: resnet18  # resnet18/34/50, densenet121, efficientnet_b0..b7, mobilenet_v2
  pretrained: false       # true loads ImageNet weights (needs a download or `weights`)
  weights: null           # a local torchvision weights file, for offline machines
  small_input: auto       # stride-1 stem for images under 64 px

train:
  epochs: {epochs}
  batch_size: {batch_size}
  lr: {lr}
  patience: {patience}             # early stopping on validation AUC
  device: auto            # auto, cpu, cuda, mps
  seed: 0
  class_weighting: true   # inverse-frequency class weights for imbalanced data

gate:
  metric: auc             # auc, accuracy, balanced_accuracy, f1_macro
  min: {gate_min}
  must_beat_champion: true

registry:
  name: null              # registered model name; default <project>-classifier
  approval: manual        # manual sign-off, or auto

storage:                  # URIs; relative paths resolve against this folder
  state: sqlite:///.medops/medops.db       # or postgresql+psycopg://user@host/db
  tracking: sqlite:///.medops/mlflow.db    # MLflow tracking + registry
  artifacts: .medops/artifacts

executor: {{kind: local, workers: null}}    # process pool; null = one worker per core

pipeline:
  retries: {{attempts: 2, backoff_seconds: 1.0}}
"""


def render_template(project: str, source_path: str = "data/raw") -> str:
    """The commented default configuration for a new project called ``project``."""
    # Imported here so the template shows the real defaults, never stale copies of them.
    from medops.config.schema import GateConfig, TrainConfig

    train, gate = TrainConfig(), GateConfig()
    return _TEMPLATE.format(
        project=project,
        source_path=source_path,
        epochs=train.epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        patience=train.patience,
        gate_min=gate.min,
    )
