"""A model whose network comes from user code carries what it needs to load elsewhere: the
project file or package folder under ``<model>/code/``, an installed package as a requirement.
A fresh process in another folder loads it after the project's code is gone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medops.config.enums import FrameMode, Normalize, WindowMode
from medops.errors import RegistryError
from medops.preprocess import PreprocessProfile
from medops.registry.packaging import load_model_dir, package_model
from medops.train import Classifier, ModelSpec, build_model, predict_proba
from medops.train.entrypoints import origin

NET = """
from torch import nn


def build(in_channels, num_classes):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""

PROFILE = PreprocessProfile(size=(16, 16), channels=1, window=WindowMode.AUTO,
                            normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)

# Loads each model folder named on the command line with medops (no MLflow) and as an MLflow
# pyfunc, and prints the probabilities of one image as JSON.
LOADER = """
import io, json, sys
import numpy as np, pandas as pd
from PIL import Image
import mlflow.pyfunc
from medops.registry.packaging import load_model_dir

buf = io.BytesIO()
Image.fromarray((np.arange(256).reshape(16, 16) % 251).astype("uint8")).save(buf, format="PNG")
out = {}
for folder in sys.argv[1:]:
    medops_probs = load_model_dir(__import__("pathlib").Path(folder)).predict_images(
        [buf.getvalue()])
    pyfunc = mlflow.pyfunc.load_model(folder).predict(pd.DataFrame({"image": [buf.getvalue()]}))
    out[folder] = {"medops": medops_probs.tolist(),
                   "pyfunc": pyfunc[[c for c in pyfunc.columns if c.startswith("p_")]]
                   .to_numpy().tolist()}
print(json.dumps(out))
"""


def _package(arch: str, root: Path, out: Path, **args: object) -> Classifier:
    torch.manual_seed(0)
    spec = ModelSpec(arch, 1, 2, small_input=False, args=args, origin=origin(arch, root),
                     code_root=root)
    model = build_model(spec).eval()
    package_model(model, ["normal", "nodule"], PROFILE, {}, out)
    return model


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "models").mkdir(parents=True)
    (root / "models" / "mynet.py").write_text(NET)
    (root / "mynets").mkdir()
    (root / "mynets" / "__init__.py").write_text("")
    (root / "mynets" / "small.py").write_text(NET)
    return root


@pytest.mark.slow  # a fresh Python process imports torch, MLflow and MONAI
def test_user_code_travels_in_the_model_and_loads_in_a_fresh_process(
        project: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    file_model = _package("models/mynet.py:build", project, models / "file")
    _package("mynets.small:build", project, models / "folder")
    _package("monai.networks.nets:DenseNet121", project, models / "monai", spatial_dims=2,
             init_features=4, growth_rate=4, block_config=[1, 1])

    assert (models / "file" / "code" / "models" / "mynet.py").read_text() == NET
    assert (models / "folder" / "code" / "mynets" / "small.py").read_text() == NET
    assert not (models / "monai" / "code" / "models").exists()
    from importlib.metadata import version

    assert f"monai=={version('monai')}" in (models / "monai" / "requirements.txt").read_text()
    meta = json.loads((models / "file" / "artifacts" / "medops_model.json").read_text())
    assert meta["spec"]["origin"]["kind"] == "file"

    shutil.rmtree(project)  # only the model folders are left
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folders = [str(models / name) for name in ("file", "folder", "monai")]
    done = subprocess.run([sys.executable, "-c", LOADER, *folders], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for folder in folders:
        np.testing.assert_allclose(found[folder]["medops"], found[folder]["pyfunc"], atol=1e-6)
    # the file's network in the fresh process is the one packaged here
    loaded = load_model_dir(models / "file")
    x = np.random.default_rng(0).normal(size=(3, 1, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(predict_proba(loaded.model, x), predict_proba(file_model, x),
                               atol=1e-6)


def test_a_file_changed_since_training_is_not_packaged(project: Path, tmp_path: Path) -> None:
    spec = ModelSpec("models/mynet.py:build", 1, 2, small_input=False,
                     origin=origin("models/mynet.py:build", project), code_root=project)
    model = build_model(spec)
    (project / "models" / "mynet.py").write_text(NET + "\n# edited after training\n")
    with pytest.raises(RegistryError, match=r"changed since the model was trained"):
        package_model(model, ["a", "b"], PROFILE, {}, tmp_path / "m")
