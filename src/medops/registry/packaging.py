"""A trained model as an MLflow pyfunc folder: weights, architecture, classes and the exact
preprocessing profile, so that any MLflow tool (or `medops serve`) can load and serve it as is.

Input: a DataFrame with a binary column ``image`` holding DICOM, PNG or JPEG file bytes.
Output: one probability column per class (``p_<class>``) and the predicted ``label`` (for a
multi-label model: the positive findings at the stored thresholds, ``A|B`` or ``No Finding``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from medops.config.enums import Task
from medops.data.labels import LabelTask, label_task
from medops.errors import ConfigError, RegistryError
from medops.preprocess import PreprocessProfile, preprocess_bytes
from medops.train import Classifier, ModelSpec, build_model, predict_proba

META_FILE = "medops_model.json"
WEIGHTS_FILE = "weights.pt"
#: Where MLflow puts a model's ``code_paths``; an entry point's project code is found there.
CODE_DIR = "code"


@dataclass
class LoadedModel:
    model: Classifier
    classes: list[str]
    profile: PreprocessProfile
    meta: dict[str, Any]

    @property
    def task(self) -> Task:
        return self.model.spec.task

    @property
    def labels(self) -> LabelTask:
        """The label rules of the model's task (what a prediction's label is)."""
        return label_task(self.task)

    @property
    def thresholds(self) -> list[float] | None:
        """Per-finding decision thresholds of a multi-label model, in ``classes`` order (chosen
        on the validation split when it was trained); None: 0.5 for every finding."""
        found = self.meta.get("thresholds")
        if not found:
            return None
        return [float(found.get(c, 0.5)) for c in self.classes]

    def decide(self, probs: np.ndarray) -> list[list[str]]:
        """The predicted class (a list of one) or the positive findings, per row of ``probs``."""
        return self.labels.decide(probs, self.classes, self.thresholds)

    def predict_images(self, blobs: list[bytes]) -> np.ndarray:
        """Class probabilities (N, classes) for DICOM/PNG/JPEG file bytes."""
        x = np.stack([preprocess_bytes(b, self.profile) for b in blobs])
        return predict_proba(self.model, x)


def load_model_files(weights: Path, meta_file: Path, code_root: Path | None = None) -> LoadedModel:
    """``code_root``: the model folder's copy of its network's project code (``<model>/code``),
    never the project it was trained in."""
    import torch

    meta = json.loads(meta_file.read_text())
    model = build_model(ModelSpec.from_dict(meta["spec"], code_root=code_root))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return LoadedModel(model=model, classes=list(meta["classes"]),
                       profile=PreprocessProfile.from_json(json.dumps(meta["profile"])), meta=meta)


def load_model_dir(model_dir: Path) -> LoadedModel:
    """Load a packaged model folder (as written by :func:`package_model`) without MLflow."""
    return load_model_files(model_dir / "artifacts" / WEIGHTS_FILE,
                            model_dir / "artifacts" / META_FILE, model_dir / CODE_DIR)


class MedopsImageClassifier(PythonModel):
    """The pyfunc flavour: raw image bytes in, class probabilities out."""

    def load_context(self, context: Any) -> None:
        meta = Path(context.artifacts["meta"])  # <model>/artifacts/medops_model.json
        self._loaded = load_model_files(Path(context.artifacts["weights"]), meta,
                                        meta.parent.parent / CODE_DIR)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        blobs = [bytes(b) for b in model_input["image"]]
        probs = self._loaded.predict_images(blobs)
        classes = self._loaded.classes
        out = pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])
        labels = self._loaded.labels  # a class, or the positive findings as one text
        out["label"] = [labels.label_text(d) for d in self._loaded.decide(probs)]
        return out


def package_model(model: Classifier, classes: list[str], profile: PreprocessProfile,
                  meta: dict[str, Any], out_dir: Path,
                  extra: dict[str, Path] | None = None) -> Path:
    """Write the pyfunc model folder to ``out_dir`` (which must not exist). ``extra`` files
    (e.g. the monitoring baseline) land beside the weights, in ``<out_dir>/artifacts/``."""
    import mlflow.pyfunc
    import torch
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from medops import __version__

    outputs: list[Any] = [ColSpec("double", f"p_{c}") for c in classes]
    signature = ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                               outputs=Schema([*outputs, ColSpec("string", "label")]))
    with tempfile.TemporaryDirectory() as tmp:
        code_paths, requirements = _network_code(model.spec, Path(tmp) / "code")
        weights = Path(tmp) / WEIGHTS_FILE
        torch.save(model.state_dict(), weights)
        meta_file = Path(tmp) / META_FILE
        full = {**meta, "spec": model.spec.to_dict(), "classes": classes,
                "profile": json.loads(profile.to_json()), "medops_version": __version__}
        meta_file.write_text(json.dumps(full, indent=2, sort_keys=True))
        with warnings.catch_warnings():
            # MLflow asks for an input example, which it would run through the model at save
            # time; the explicit signature already says what the model takes.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            mlflow.pyfunc.save_model(
                path=str(out_dir),
                # Models from code: the model folder names medops' class instead of pickling it.
                python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                artifacts={"weights": str(weights), "meta": str(meta_file),
                           **{k: str(v) for k, v in (extra or {}).items()}},
                signature=signature,
                # the network's project code, put on sys.path when MLflow loads the model
                code_paths=code_paths or None,
                # Explicit requirements: MLflow's inference would import-trace the model (slow).
                pip_requirements=[f"medops=={__version__}", *requirements],
            )
    return out_dir


def _network_code(spec: ModelSpec, stage: Path) -> tuple[list[str], list[str]]:
    """What the model needs besides medops to rebuild its network elsewhere: the ``code_paths``
    (a project file or package folder of an entry point, staged under ``stage`` at its path
    relative to the project, so it lands at ``<model>/code/<that path>``) and the pip
    requirements (an installed package's ``name==version``)."""
    from medops.train.entrypoints import code_files

    kind = spec.origin.get("kind") if spec.origin else None
    if kind == "package":
        return [], [f"{spec.origin['package']}=={spec.origin['version']}"]
    if kind != "file":
        return [], []
    if spec.code_root is None:
        raise RegistryError(f"{spec.architecture}: the model's spec does not say where its "
                            "project code lies, so it cannot be packaged")
    try:
        source = code_files(spec.origin, spec.code_root)
    except ConfigError as e:
        raise RegistryError(str(e)) from e
    assert source is not None
    relative = Path(spec.origin["path"])
    target = stage / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copyfile(source, target)
    # MLflow copies each code path under <model>/code/ by its base name
    return [str(stage / relative.parts[0])], []
