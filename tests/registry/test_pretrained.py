"""`import_pretrained`: a TorchXRayVision model registered without training, on a real MLflow
store in a temp folder, and loaded back the way serving loads it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medops.config.enums import Task
from medops.errors import ConfigError, WeightsUnavailableError
from medops.preprocess import txv_profile
from medops.project import Project
from medops.registry import CANDIDATE, CHAMPION
from medops.registry.pretrained import Approval, ImportedModel, import_pretrained
from medops.train import txv
from tests.train.txv_files import write_weights

xrv = pytest.importorskip("torchxrayvision", reason="the txv extra is not installed")

NAME = "densenet121-res224-all"
SHARED = (Path(__file__).parents[2] / "../shared/data").resolve()
XRAY = SHARED / "xray" / "00000001_000.png"  # NIH ChestX-ray14, labelled Cardiomegaly


@pytest.fixture
def project(tmp_path: Path) -> Project:
    Project.init(tmp_path / "proj", name="txv-project")
    return Project.load(tmp_path / "proj")


def _import(project: Project, source: str = f"txv:{NAME}",
            approve: Approval | None = None) -> ImportedModel:
    return import_pretrained(source, store=project.weights_store, tracker=project.tracker,
                             registry=project.registry, state=project.state, approve=approve)


def test_import_registers_a_multilabel_version_without_training(
        project: Project, tmp_path: Path) -> None:
    weights = write_weights(NAME, tmp_path / "downloads")
    sha = project.weights_store.add(weights)  # as `medops models fetch ./FILE` does
    done = _import(project)
    info = txv.weights_info(f"txv:{NAME}")
    assert done.to_dict() == {
        "name": "txv-project-classifier", "version": "1", "source": f"txv:{NAME}",
        "findings": info.findings, "thresholds": info.thresholds, "weights_sha256": sha,
        "weights_file": info.file_name, "run_id": done.run_id, "approval": "pending",
        "alias": CANDIDATE}

    version = project.registry.get("1")
    assert version.aliases == [CANDIDATE]
    assert version.tags["source"] == f"txv:{NAME}" and version.tags["approval"] == "pending"
    assert version.tags["weights_sha256"] == sha
    audit = project.state.audit_log("txv-project-classifier/1")
    assert [a.action for a in audit] == ["model.registered"]
    assert audit[0].details["weights_sha256"] == sha

    loaded = project.registry.load("1")
    assert loaded.task is Task.MULTILABEL and loaded.classes == info.findings
    assert loaded.profile == txv_profile(224)
    assert loaded.thresholds == pytest.approx(list(info.op_threshs))
    assert loaded.meta["weights"] == {"sha256": sha, "source": info.url}
    assert loaded.meta["imported"] == {
        "source": f"txv:{NAME}", "weights_sha256": sha, "weights_url": info.url,
        "weights_file": info.file_name,
        "torchxrayvision_version": loaded.model.spec.origin["version"]}

    # the registered model computes what TorchXRayVision computes from the same file, on a
    # real chest X-ray: its preprocessing, its network, a sigmoid
    probs = loaded.predict_images([XRAY.read_bytes()])
    img = xrv.datasets.normalize(np.asarray(_png(XRAY)), 255)[None, ...]
    for step in (xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)):
        img = step(img)
    original = torch.load(weights, weights_only=False).eval()  # the test's own file
    with torch.no_grad():
        expected = torch.sigmoid(original(torch.from_numpy(img)[None])).numpy()
    assert probs.shape == (1, 18)
    assert float(np.abs(probs - expected).max()) <= 1e-5
    decided = loaded.decide(probs)[0]
    assert decided == [f for f, p, t in zip(info.findings, probs[0], info.op_threshs,
                                            strict=True) if p >= t]


def _png(path: Path) -> np.ndarray:
    import skimage.io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(skimage.io.imread(path))


def test_import_and_approve_goes_through_the_lifecycle(project: Project, tmp_path: Path) -> None:
    project.weights_store.add(write_weights(NAME, tmp_path / "downloads"))
    done = _import(project, approve=Approval("Dr. Lee", "seed model"))
    assert done.approval == "approved"
    champion = project.registry.by_alias(CHAMPION)
    assert champion is not None and champion.version == "1"
    actions = [a.action for a in project.state.audit_log("txv-project-classifier/1")]
    assert sorted(actions) == ["model.approved", "model.registered"]
    live = project.state.live_deployment("txv-project-classifier")
    assert live is not None and live.version == "1"


def test_import_without_the_weights_file_names_it(project: Project) -> None:
    info = txv.weights_info(f"txv:{NAME}")
    with pytest.raises(WeightsUnavailableError) as caught:
        _import(project)
    assert info.file_name in str(caught.value) and info.url in str(caught.value)
    assert project.registry.by_alias(CANDIDATE) is None  # nothing was registered


def test_only_txv_sources_are_imported(project: Project) -> None:
    with pytest.raises(ConfigError, match="txv:NAME"):
        _import(project, "resnet18")
    with pytest.raises(ConfigError, match="did you mean"):
        _import(project, "txv:densenet121-res224-nhi")
