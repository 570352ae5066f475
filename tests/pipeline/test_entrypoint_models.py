"""Networks from user code through the whole lifecycle, as users run it: `medops run` trains a
MONAI DenseNet121 entry point, or a network in a project file (starting from pinned weights),
registers it with its lineage, and a fresh `medops serve` and `medops batch-predict` in another
folder, which has only the registered model, answer with it after the project file is gone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from medops.demo.synthetic import SyntheticDataset, make_synthetic_dataset
from medops.project import Project
from tests.pipeline.conftest import FAST

pytestmark = pytest.mark.slow

MEDOPS = str(Path(sys.executable).parent / "medops")
MODEL = "ep-project-classifier"

MYNET = """
from torch import nn


def build(in_channels, num_classes, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
                         nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
"""

#: MONAI's DenseNet121 class with fewer, thinner blocks: the same code path, a fraction of the
#: compute on a CPU
MONAI = {"architecture": "monai.networks.nets:DenseNet121",
         "args": {"spatial_dims": 2, "init_features": 8, "growth_rate": 8, "block_config": [2, 2]}}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("ep") / "raw", n_patients=12,
                                  images_per_patient=3, size=48, corrupt_examples=False)


def _write_config(root: Path, values: dict[str, Any]) -> None:
    """Set dotted keys of ``root/medops.yaml``."""
    path = root / "medops.yaml"
    config = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _project(tmp_path: Path, images: SyntheticDataset, model: dict[str, Any]) -> Path:
    root = tmp_path / "proj"
    Project.init(root, name="ep-project")
    shutil.rmtree(root / "data" / "raw")
    shutil.copytree(images.root, root / "data" / "raw")
    _write_config(root, {**FAST, "train.epochs": 1, "registry.approval": "auto",
                         **{f"model.{k}": v for k, v in model.items()}})
    return root


def _medops(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEDOPS, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _consumer(tmp_path: Path, trained: Path) -> Path:
    """Another folder whose project reads the trained project's registry, and nothing else."""
    consumer = tmp_path / "consumer"
    Project.init(consumer, name="consumer")
    _write_config(consumer, {"storage.tracking": f"sqlite:///{trained / '.medops' / 'mlflow.db'}",
                             "registry.name": MODEL})
    return consumer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_and_ask(consumer: Path, image: bytes) -> dict[str, Any]:
    port = _free_port()
    log = consumer / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([MEDOPS, "serve", "-C", str(consumer), "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=consumer, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            answer = client.post("/invocations", content=image,
                                 headers={"content-type": "application/dicom"})
            assert answer.status_code == 200, answer.text
            return dict(answer.json())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _lifecycle(tmp_path: Path, images: SyntheticDataset, root: Path,
               code: Path | None) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """`medops run` in ``root``; then, with ``code`` deleted, serve and batch-predict from
    another folder. The served answer, the MLflow run's params and the model folder used."""
    done = _medops("run", "-C", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / '.medops' / 'mlflow.db'}")
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1"
    assert version.run_id is not None
    params = client.get_run(version.run_id).data.params
    tags = client.get_run(version.run_id).data.tags

    if code is not None:
        shutil.rmtree(code)
    consumer = _consumer(tmp_path, root)
    image = images.images[0].path.read_bytes()
    answer = _serve_and_ask(consumer, image)
    assert answer["version"] == "1"
    [prediction] = answer["predictions"]
    assert set(prediction["probabilities"]) == set(images.class_counts)

    incoming = consumer / "incoming"
    incoming.mkdir()
    for i, item in enumerate(images.images[:4]):
        shutil.copyfile(item.path, incoming / f"{i}.dcm")
    out = consumer / "preds.csv"
    done = _medops("batch-predict", str(incoming), "--out", str(out), "-C", str(consumer),
                   cwd=consumer)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    preds = pd.read_csv(out)
    assert len(preds) == 4 and preds["error"].isna().all()
    assert {f"p_{c}" for c in images.class_counts} <= set(preds.columns)
    model_dir = consumer / ".medops" / "artifacts" / "models" / MODEL / "1"
    return {**params, **{f"tag:{k}": v for k, v in tags.items()}}, answer, model_dir


def test_a_monai_entry_point_trains_registers_and_serves(
        tmp_path: Path, images: SyntheticDataset) -> None:
    root = _project(tmp_path, images, MONAI)
    from importlib.metadata import version

    lineage, _, model_dir = _lifecycle(tmp_path, images, root, code=None)
    monai = version("monai")
    assert lineage["model_origin.kind"] == "package"
    assert (lineage["model_origin.package"], lineage["model_origin.version"]) == ("monai", monai)
    assert lineage["tag:model_origin"] == f"package monai=={monai}"
    assert f"monai=={monai}" in (model_dir / "requirements.txt").read_text()
    meta = json.loads((model_dir / "artifacts" / "medops_model.json").read_text())
    assert meta["spec"]["architecture"] == MONAI["architecture"]
    assert meta["spec"]["args"] == MONAI["args"]


def test_a_project_file_network_from_pinned_weights_serves_without_the_project_file(
        tmp_path: Path, images: SyntheticDataset) -> None:
    import torch

    models = tmp_path / "proj-code" / "models"
    models.mkdir(parents=True)
    (models / "mynet.py").write_text(MYNET)
    namespace: dict[str, Any] = {}
    exec(MYNET, namespace)  # the same network, to write the weights it starts from
    torch.manual_seed(0)
    start = tmp_path / "start.pt"
    torch.save(namespace["build"](in_channels=1, num_classes=2).state_dict(), start)
    sha = hashlib.sha256(start.read_bytes()).hexdigest()

    root = _project(tmp_path, images, {"architecture": "models/mynet.py:build",
                                       "weights": "weights/start.pt", "weights_sha256": sha})
    shutil.copytree(models, root / "models")
    (root / "weights").mkdir()
    shutil.copyfile(start, root / "weights" / "start.pt")

    lineage, _, model_dir = _lifecycle(tmp_path, images, root, code=root / "models")
    assert not (root / "models").exists()
    file_sha = hashlib.sha256(MYNET.encode()).hexdigest()
    assert (lineage["model_origin.kind"], lineage["model_origin.path"],
            lineage["model_origin.sha256"]) == ("file", "models/mynet.py", file_sha)
    assert (lineage["init_weights.sha256"], lineage["init_weights.source"]) == \
        (sha, "weights/start.pt")
    # the served model's network came from the model folder's own copy of the file
    assert (model_dir / "code" / "models" / "mynet.py").read_text() == MYNET
    meta = json.loads((model_dir / "artifacts" / "medops_model.json").read_text())
    assert meta["weights"] == {"sha256": sha, "source": "weights/start.pt"}
    assert meta["spec"]["origin"] == {"kind": "file", "path": "models/mynet.py",
                                      "sha256": file_sha}
