"""The commented medops.yaml that `medops init` writes."""

from __future__ import annotations

import math

import yaml

_TEMPLATE = """\
# medops project configuration. Every key is optional except `project`;
# the values shown are the defaults. Docs: README.md, section "Configuration", and docs/
# in the medops source; `medops --help` lists the commands.
project: {project}
task: multiclass          # one class per image; multilabel: any set of findings per image

data:
  # Where images come from. kind: folder (DICOM, PNG, JPEG; DICOM found by extension or preamble)
  # or npz (a MedMNIST-style file). Relative paths are relative to this file.
  source: {{kind: folder, path: {source_path}}}
  # Labels from sub-folder names (data/raw/<label>/...), or from a CSV:
  #   labels: {{from: csv, csv: labels.csv, id_column: path, label_column: label,
  #             patient_column: patient}}
  # With top-level `task: multilabel` the CSV gives findings: label_column holds them joined
  # by '|' (NIH's "Finding Labels", `No Finding` for none), or one 0/1 column each:
  #   finding_columns: [Effusion, Cardiomegaly]   (or auto)
  labels: {{from: folder-names}}
  frames: middle          # multi-frame DICOM: middle frame, or `each` frame as its own item
  # Which DICOM instances become items (empty: all). Checked when this file is loaded.
  #   select: {{modality: [CR, DX], body_part: [CHEST], series_description: "(?i)pa|ap",
  #            image_type: [ORIGINAL], min_rows: 256, min_columns: 256,
  #            ranges: {{SliceThickness: {{max: 5}}}}}}
  select: {{}}
  # De-identification (DICOM PS3.15 Basic Profile) of everything network sources bring in.
  # UIDs are remapped with a project secret: the variable secret_env, else a file made once.
  deid:
    enabled: true
    secret_env: MEDOPS_DEID_SECRET
    secret_file: .medops/deid-secret
    date_shift: false     # true: shift dates by a per-patient number of days instead
    max_shift_days: 365
    keep_private: []      # private tags "(0019,100A)" or private creator names to keep
    allow_burned_in: false  # false: BurnedInAnnotation=YES images are quarantined
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
  # or your own network (docs/models.md): models/mynet.py:build, or
  # monai.networks.nets:DenseNet121 with args: {{spatial_dims: 2}}, or a TorchXRayVision
  # chest X-ray model to fine-tune: txv:densenet121-res224-all (its weights always load)
  pretrained: false       # true loads ImageNet weights (needs a download or `weights`)
  weights: null           # a weights file, or an http(s) URL pinned by weights_sha256
  small_input: auto       # stride-1 stem for images under 64 px
  flip_tta: auto          # predict on the image and its mirror; auto: when training flips

train:
  epochs: {epochs}
  batch_size: {batch_size}
  lr: {lr}
  patience: {patience}             # early stopping: epochs in which none joins the best below
  device: auto            # auto, cpu, cuda, mps
  seed: 0
  class_weighting: true   # inverse-frequency class weights for imbalanced data
  ema_epochs: {ema_epochs}         # validate/keep an average of the weights over ~this many epochs
  average_best: {average_best}         # model = mean weights of the N best epochs (<= epochs/4)
  recalibrate_bn: true    # then measure its batch-norm statistics again on the training set

gate:
  metric: auc             # auc, accuracy, balanced_accuracy, f1_macro; multilabel: auc
                          # (= macro_auc), micro_auc, f1_macro, or gate.finding: NAME
  min: {gate_min}
  must_beat_champion: true

registry:
  name: null              # registered model name; default <project>-classifier
  approval: manual        # manual sign-off, or auto

storage:                  # URIs; relative paths resolve against this folder; no passwords
  state: sqlite:///.medops/medops.db       # or postgresql+psycopg://user@host/db
  tracking: sqlite:///.medops/mlflow.db    # MLflow tracking + registry, or http(s)://server
  artifacts: .medops/artifacts             # or s3://bucket/prefix (docs/storage.md)

executor: {{kind: local, workers: null}}    # process pool; null = one worker per core

pipeline:
  retries: {{attempts: 2, backoff_seconds: 1.0}}

# `medops serve`: the live model over HTTP (SageMaker contract: /ping, /invocations).
serve:
  host: 127.0.0.1         # 0.0.0.0 in a container
  port: 8080
  model: null             # NAME@alias or NAME/VERSION; null = <registry name>@champion
  max_batch: 32           # images per forward pass (dynamic micro-batching)
  max_wait_ms: 5          # how long a batch may wait to fill while requests are arriving
  workers: null           # forward passes run at once; null = one per core (at most 4), the
                          # cores' torch threads shared out between them; 1 = lowest latency
  poll_seconds: 10        # how often the alias is checked; a new version is swapped in live
  token_env: null         # env variable holding a bearer token; null = no authentication
  max_body_mb: 32
  max_image_pixels: 50000000  # rows x columns x frames, refused before decoding
  capture: true           # store predictions, statistics and embeddings for monitoring

# `medops monitor` (and the agent, on schedule): live traffic against the training baseline.
monitor:
  window: 24h             # the recent capture window checked
  min_samples: 100        # fewer captured images: no verdict
  p_value: 0.05           # false-alarm rate of one check, all tests together
  permutations: 500       # of the embedding MMD test
  schedule: "0 * * * *"   # cron (UTC) of the agent's check; drift -> event drift.detected
  quality: {{max_drop: 0.05, min_labels: 50}}  # live metrics vs the version's test metrics

# `medops agent`: what starts a retraining run (decisions: `medops events ls`).
triggers:
  - {{on: run.requested}}     # `medops agent request`, `medops run --via-agent`
  # data.arrived counts the new labelled items since the champion's dataset
  - {{on: data.arrived, min_new_items: 100, debounce: 1m}}
  - {{on: drift.detected}}   # min_new_items: N waits for N new labelled items as well
  # - {{on: schedule, cron: "0 3 1 * *"}}   # or every: 1d
  # - {{on: code.changed, repo: ../model, branch: main}}   # a commit on the model repository
agent:
  cooldown: 10m           # automatic triggers wait this long after a run ends
  watch: true             # import files landing in data.source as they arrive
  source_poll: 1m         # how often data.sources are polled
notify:
  urls: []                # apprise URLs: mailto://..., slack://..., msteams://..., json://...
  drift_repeat: 1d        # a version still drifting: reminded at most this often (0: every check)
"""


def render_template(project: str, source_path: str = "data/raw") -> str:
    """The commented default configuration for a new project called ``project``."""
    # Imported here so the template shows the real defaults, never stale copies of them.
    from medops.config.schema import GateConfig, TrainConfig

    train, gate = TrainConfig(), GateConfig()
    return _TEMPLATE.format(
        # quoted where YAML would read it as something else (`true`, `1.0`, `#x`, `a: b`)
        project=yaml.safe_dump(project, width=math.inf).removesuffix("\n...\n").strip(),
        source_path=source_path,
        epochs=train.epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        patience=train.patience,
        ema_epochs=train.ema_epochs,
        average_best=train.average_best,
        gate_min=gate.min,
    )
