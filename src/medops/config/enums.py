"""Every option of medops.yaml that takes one of a fixed set of values."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A string enum that prints as its value (Python 3.10 has no enum.StrEnum)."""

    def __str__(self) -> str:
        return str(self.value)


class SourceKind(StrEnum):
    FOLDER = "folder"
    NPZ = "npz"


class LabelsFrom(StrEnum):
    FOLDER_NAMES = "folder-names"
    CSV = "csv"


class GroupBy(StrEnum):
    PATIENT = "patient"
    STUDY = "study"
    ITEM = "item"


class FrameMode(StrEnum):
    """How a multi-frame DICOM becomes items."""

    MIDDLE = "middle"
    EACH = "each"


class WindowMode(StrEnum):
    """How DICOM intensities are windowed before normalisation."""

    AUTO = "auto"  # VOI LUT or WindowCenter/Width when the file has them, else the full range
    NONE = "none"  # modality values (after RescaleSlope/Intercept) as they are


class Normalize(StrEnum):
    ZSCORE = "zscore"  # per image: (x - mean) / std
    MINMAX = "minmax"  # per image: to [0, 1]
    # TorchXRayVision's scaling: the range the file's bit depth allows to [-1024, 1024], colour
    # averaged to grey (xrv.datasets.normalize); the profile of every txv:NAME model
    TXV = "txv"


class Architecture(StrEnum):
    RESNET18 = "resnet18"
    RESNET34 = "resnet34"
    RESNET50 = "resnet50"
    DENSENET121 = "densenet121"
    EFFICIENTNET_B0 = "efficientnet_b0"
    EFFICIENTNET_B1 = "efficientnet_b1"
    EFFICIENTNET_B2 = "efficientnet_b2"
    EFFICIENTNET_B3 = "efficientnet_b3"
    EFFICIENTNET_B4 = "efficientnet_b4"
    EFFICIENTNET_B5 = "efficientnet_b5"
    EFFICIENTNET_B6 = "efficientnet_b6"
    EFFICIENTNET_B7 = "efficientnet_b7"
    MOBILENET_V2 = "mobilenet_v2"


class Task(StrEnum):
    """What a model predicts for an image."""

    MULTICLASS = "multiclass"  # exactly one class (softmax over the classes)
    MULTILABEL = "multilabel"  # any set of findings, the empty set included (a sigmoid each)


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class GateMetric(StrEnum):
    """What the gate compares. A multi-label model's ``auc`` is its macro AUC over findings."""

    AUC = "auc"
    ACCURACY = "accuracy"  # multiclass only
    BALANCED_ACCURACY = "balanced_accuracy"  # multiclass only
    F1_MACRO = "f1_macro"
    MACRO_AUC = "macro_auc"  # multilabel only: the mean of the per-finding AUCs
    MICRO_AUC = "micro_auc"  # multilabel only: the AUC of all (image, finding) pairs pooled


class Approval(StrEnum):
    MANUAL = "manual"
    AUTO = "auto"


class ExecutorKind(StrEnum):
    LOCAL = "local"  # a process pool on this machine
    SERIAL = "serial"  # one process, for debugging
    SPARK = "spark"  # a Spark cluster (local[*], standalone, YARN, Kubernetes); extra 'spark'


class Step(StrEnum):
    """The pipeline steps, in order."""

    INGEST = "ingest"
    VALIDATE = "validate"
    SPLIT = "split"
    PREPROCESS = "preprocess"
    TRAIN = "train"
    EVALUATE = "evaluate"
    GATE = "gate"
    REGISTER = "register"


class EventKind(StrEnum):
    """What an event of the state store's log says happened (stored as its value)."""

    DATA_ARRIVED = "data.arrived"
    SCHEDULE_FIRED = "schedule.fired"
    RUN_REQUESTED = "run.requested"
    RUN_FINISHED = "run.finished"
    DRIFT_DETECTED = "drift.detected"
    MODEL_APPROVED = "model.approved"
    MODEL_DEPLOYED = "model.deployed"
    CODE_CHANGED = "code.changed"  # the watched branch of the model repository moved
    IMAGE_PUSHED = "image.pushed"  # a container image was pushed (ECR, through the SQS feed)
