"""Networks from a user's code: files in the project, project packages, installed packages
(MONAI), what lineage records about each, and the errors for entry points that do not work."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medops.errors import ConfigError, WeightsUnavailableError
from medops.train import ModelSpec, WrappedClassifier, build_model
from medops.train.entrypoints import code_files, origin

MYNET = """
from torch import nn


def build(in_channels, num_classes, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def broken(in_channels, num_classes):
    raise RuntimeError("no GPU here")


def not_a_net(in_channels, num_classes):
    return {"in": in_channels}


NOT_CALLABLE = 3
"""

#: MONAI's DenseNet121 shrunk so a test builds and runs it in milliseconds
MONAI_ARGS: dict[str, Any] = {"spatial_dims": 2, "init_features": 8, "growth_rate": 8,
                              "block_config": [2, 2]}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mynet.py").write_text(MYNET)
    return tmp_path


def _spec(arch: str, root: Path | None, classes: int = 3, **args: Any) -> ModelSpec:
    return ModelSpec(arch, in_channels=1, num_classes=classes, small_input=False, args=args,
                     code_root=root)


def _logits(model: nn.Module, size: int = 16) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(torch.randn(2, 1, size, size))


def test_a_project_file_builds_a_wrapped_network_with_its_args(project: Path) -> None:
    model = build_model(_spec("models/mynet.py:build", project, width=5))
    assert isinstance(model, WrappedClassifier)
    assert _logits(model).shape == (2, 3)
    assert model.feature_dim == 5  # the input of its last nn.Linear


def test_monai_densenet_takes_the_class_count_as_out_channels() -> None:
    model = build_model(_spec("monai.networks.nets:DenseNet121", None, **MONAI_ARGS))
    assert _logits(model, 32).shape == (2, 3)


def test_origin_of_a_file_a_project_package_and_an_installed_package(project: Path) -> None:
    file = origin("models/mynet.py:build", project)
    assert file["kind"] == "file" and file["path"] == "models/mynet.py"
    assert len(file["sha256"]) == 64

    (project / "mynets").mkdir()
    (project / "mynets" / "__init__.py").write_text("")
    (project / "mynets" / "small.py").write_text(MYNET)
    folder = origin("mynets.small:build", project)
    assert folder["kind"] == "file" and folder["path"] == "mynets"
    # a package of the project that is not installed is imported from the project folder
    assert _logits(build_model(_spec("mynets.small:build", project))).shape == (2, 3)

    assert origin("monai.networks.nets:DenseNet121", project) == {
        "kind": "package", "package": "monai", "version": importlib.metadata.version("monai")}
    assert origin("resnet18", project) == {}


def test_a_changed_file_changes_its_origin_and_cannot_be_packaged_as_trained(
        project: Path) -> None:
    before = origin("models/mynet.py:build", project)
    assert code_files(before, project) == project / "models" / "mynet.py"
    (project / "models" / "mynet.py").write_text(MYNET + "\n# tuned\n")
    assert origin("models/mynet.py:build", project)["sha256"] != before["sha256"]
    with pytest.raises(ConfigError, match=r"changed since the model was trained"):
        code_files(before, project)


@pytest.mark.parametrize(("arch", "expected"), [
    # missing module: what was found and the nearest names in it
    ("monai.networks.netz:DenseNet121",
     r"no module named 'monai\.networks\.netz' \(found monai\.networks at .*\); nearest: nets"),
    ("nosuchpackage_xyz.nets:build", r"no module named 'nosuchpackage_xyz'.*pip install"),
    # missing file: the nearest files of the project
    ("models/mynett.py:build", r"no file .*models/mynett\.py; nearest: models/mynet\.py"),
    # missing attribute: the nearest public names
    ("models/mynet.py:buidl", r"models/mynet\.py has no attribute 'buidl'; nearest: build"),
    ("monai.networks.nets:DenseNet12",
     r"monai\.networks\.nets has no attribute 'DenseNet12'; nearest: DenseNet121"),
    ("models/mynet.py:NOT_CALLABLE", r"NOT_CALLABLE is int 3, not a callable"),
    # a factory that raises: the exception, the call and the factory's parameters
    ("models/mynet.py:broken",
     r"raised RuntimeError: no GPU here when called with in_channels=1, num_classes=3; "
     r"its parameters are \(in_channels, num_classes\)"),
    ("torch.nn:Linear", r"raised TypeError: .*'in_channels'.*its parameters are \(in_features"),
    # a factory that returns something else
    ("models/mynet.py:not_a_net", r"returned dict \{'in': 1\}, not a torch\.nn\.Module"),
])
def test_bad_entry_points_name_what_was_found(project: Path, arch: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        build_model(_spec(arch, project))
    assert arch in str(info.value)


def test_a_file_entry_point_must_lie_in_the_project(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"relative to the project folder"):
        build_model(_spec(f"{project}/models/mynet.py:build", project))
    with pytest.raises(ConfigError, match=r"relative to the project folder"):
        build_model(_spec("../elsewhere/mynet.py:build", project))
    with pytest.raises(ConfigError, match=r"no project folder was given"):
        build_model(_spec("models/mynet.py:build", None))


def test_model_args_may_not_set_what_medops_sets(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.args sets num_classes"):
        build_model(_spec("models/mynet.py:build", project, num_classes=4))


def test_weights_of_an_earlier_medops_model_start_a_new_one(project: Path, tmp_path: Path) -> None:
    """A team's own earlier model: its weights.pt (keys prefixed ``net.``) loads into the same
    network; a new class count re-initialises the head only."""
    torch.manual_seed(0)
    earlier = build_model(_spec("models/mynet.py:build", project, classes=2))
    saved = tmp_path / "earlier.pt"
    torch.save(earlier.state_dict(), saved)
    assert all(k.startswith("net.") for k in torch.load(saved, weights_only=True))

    same = build_model(_spec("models/mynet.py:build", project, classes=2), weights=saved)
    for key, value in earlier.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key

    wider = build_model(_spec("models/mynet.py:build", project, classes=5), weights=saved)
    assert torch.equal(wider.state_dict()["net.0.weight"], earlier.state_dict()["net.0.weight"])
    assert wider.state_dict()["net.4.weight"].shape == (5, 8)

    with pytest.raises(WeightsUnavailableError, match=r"backbone: 0\.weight: file \(8, 1, 3, 3\), "
                                                      r"network \(6, 1, 3, 3\)"):
        build_model(_spec("models/mynet.py:build", project, width=6), weights=saved)


def test_model_pretrained_is_not_silently_ignored_for_an_entry_point(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.pretrained is for built-in.*model\.args"):
        build_model(_spec("models/mynet.py:build", project), pretrained=True)
