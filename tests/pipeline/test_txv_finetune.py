"""Fine-tuning a TorchXRayVision backbone through `medops run` (a real subprocess): the weights
come from the project's store under TorchXRayVision's file name, the images get its input
convention whatever preprocess.* says, the 18-finding head is replaced by one for the project's
classes, and the lineage records the weights' SHA-256."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from medops.config import set_dotted
from medops.demo.synthetic import make_synthetic_dataset
from medops.preprocess import PreprocessProfile, txv_profile
from medops.project import Project
from medops.train import txv
from medops.train.weights import sha256_file
from tests.agent.conftest import MEDOPS
from tests.pipeline.conftest import FAST
from tests.train.txv_files import write_weights

pytest.importorskip("torchxrayvision", reason="the txv extra is not installed")
pytestmark = pytest.mark.slow  # a DenseNet-121 at 224 px on a few images: about a minute

NAME = "densenet121-res224-all"


def test_medops_run_fine_tunes_a_txv_backbone(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    Project.init(root, name="txv-tune")
    data = make_synthetic_dataset(tmp_path / "raw", n_patients=10, images_per_patient=1,
                                  size=48, corrupt_examples=False)
    shutil.rmtree(root / "data" / "raw")
    shutil.copytree(data.root, root / "data" / "raw")
    raw = yaml.safe_load((root / "medops.yaml").read_text())
    for dotted, value in {**FAST, "model.architecture": f"txv:{NAME}", "train.epochs": 1,
                          "train.batch_size": 8, "train.num_threads": 2,
                          }.items():
        set_dotted(raw, dotted, value)
    (root / "medops.yaml").write_text(yaml.safe_dump(raw))
    # the file placed by hand where the error message says; it moves into the store
    info = txv.weights_info(f"txv:{NAME}")
    placed = write_weights(NAME, root / ".medops" / "weights")
    sha = sha256_file(placed)

    started = time.monotonic()
    done = subprocess.run([MEDOPS, "run", "-C", str(root)], capture_output=True, text=True,
                          timeout=600)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"medops run with txv:{NAME}: {seconds:.0f} s")  # shown with -s
    # FAST's preprocess.size [32, 32] is the user's choice, and is overridden: say so; the
    # scaffold's defaults (window: auto...) are no choice and get no notice
    said = " ".join(done.stdout.split())
    assert "preprocess.size: [32, 32] is ignored" in said
    assert "preprocess.window" not in said

    project = Project.load(root)
    (run,) = project.state.list_runs()
    assert run.status.value == "succeeded", run.error
    steps = {s.name: s for s in run.steps}
    profile = PreprocessProfile.model_validate(steps["preprocess"].outputs["profile"])
    assert profile == txv_profile(224)
    train = steps["train"].outputs
    assert train["init_weights"] == {"sha256": sha, "source": info.url}
    assert train["spec"]["origin"]["package"] == "torchxrayvision"
    assert train["spec"]["num_classes"] == 2 and train["spec"]["task"] == "multiclass"
    assert not placed.exists() and project.weights_store.find(info.file_name) is not None
    if steps["register"].outputs.get("registered"):  # the gate passed on this tiny test split
        loaded = project.registry.load("1")
        assert loaded.profile == txv_profile(224) and loaded.model.spec.num_classes == 2
        assert loaded.meta["weights"]["sha256"] == sha
        tags = project.registry.get("1").tags
        assert "torchxrayvision" in project.registry.download("1").joinpath(
            "requirements.txt").read_text()
        assert tags["approval"] == "pending"
