"""TorchXRayVision networks: built without downloading, weights from the store under
TorchXRayVision's file names, read without running pickled code; the pretrained head with its
findings and operating points, or a new head for fine-tuning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medops.config.enums import Task
from medops.errors import ConfigError, WeightsUnavailableError
from medops.train import ModelSpec, WrappedClassifier, build_model, txv
from medops.train.weights import WeightsStore
from tests.train.txv_files import write_malicious, write_weights

xrv = pytest.importorskip("torchxrayvision", reason="the txv extra is not installed")

DENSENET = "densenet121-res224-all"
RESNET = "resnet50-res512-all"


@pytest.fixture(scope="module")
def densenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_weights(DENSENET, tmp_path_factory.mktemp("txv"))


@pytest.fixture
def store(tmp_path: Path, densenet_file: Path) -> WeightsStore:
    """A project's store holding the DenseNet file, added the way `medops models fetch
    ./FILE` adds it (indexed under its own name)."""
    s = WeightsStore.for_project(tmp_path)
    s.add(densenet_file)
    return s


def _images(n: int = 2, size: int = 64) -> torch.Tensor:
    # TorchXRayVision's range; the networks take any size, a small one keeps the test fast
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2048 - 1024


def _spec(num_classes: int, root: Path | None = None, **kw: object) -> ModelSpec:
    return ModelSpec.from_dict({"architecture": f"txv:{DENSENET}", "in_channels": 1,
                                "num_classes": num_classes, "small_input": False,
                                "task": "multilabel", **kw}, code_root=root)


def test_a_pickled_densenet_loads_under_the_allow_list(densenet_file: Path) -> None:
    info = txv.weights_info(f"txv:{DENSENET}")
    model = txv.pretrained_classifier(info, densenet_file).eval()
    # the file is a whole module; medops never unpickles it with weights_only=False, but the
    # test may, to know what TorchXRayVision's own loader would compute
    original = torch.load(densenet_file, weights_only=False).eval()
    x = _images()
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(logits, original(x), atol=1e-5)
        assert torch.allclose(model.activate(logits), torch.sigmoid(original(x)), atol=1e-6)
        assert model.embed(x).shape == (2, 1024)
    assert model.spec.task is Task.MULTILABEL and model.spec.num_classes == 18
    assert model.spec.origin["package"] == "torchxrayvision"
    assert model.spec.origin["weights"] == DENSENET


def test_a_resnet_state_dict_loads(tmp_path: Path) -> None:
    path = write_weights(RESNET, tmp_path)
    info = txv.weights_info(f"txv:{RESNET}")
    assert info.resolution == 512
    model = txv.pretrained_classifier(info, path).eval()
    reference = txv.network(info)
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = _images(1)
    with torch.no_grad():
        assert torch.allclose(model(x), reference.eval()(x), atol=1e-5)
        assert model.embed(x).shape == (1, 2048)


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_malicious(DENSENET, tmp_path / "files", marker)
    info = txv.weights_info(f"txv:{DENSENET}")
    with pytest.raises(WeightsUnavailableError, match="refused") as caught:
        txv.pretrained_classifier(info, path)
    assert "system" in str(caught.value) and info.url in str(caught.value)
    assert not marker.exists()


def test_classes_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / txv.weights_info(f"txv:{DENSENET}").file_name
    torch.save(torchvision.models.densenet121(weights=None), path)  # another library's module
    with pytest.raises(WeightsUnavailableError, match=r"torchvision\.models\.densenet"):
        txv.read_weights(txv.weights_info(f"txv:{DENSENET}"), path)


def test_missing_weights_say_which_file_goes_where(tmp_path: Path) -> None:
    store = WeightsStore.for_project(tmp_path)
    info = txv.weights_info(f"txv:{DENSENET}")
    with pytest.raises(WeightsUnavailableError) as caught:
        txv.find_weights(info, store)
    text = str(caught.value)
    assert info.file_name in text and str(store.root / info.file_name) in text
    assert info.url in text and "medops models fetch" in text and "--sha256" in text


def test_a_file_placed_by_hand_moves_into_the_store(tmp_path: Path, densenet_file: Path) -> None:
    store = WeightsStore.for_project(tmp_path)
    info = txv.weights_info(f"txv:{DENSENET}")
    store.root.mkdir(parents=True)
    (store.root / info.file_name).write_bytes(densenet_file.read_bytes())
    found = txv.find_weights(info, store)
    assert found.path == store.path(found.sha256) and found.source == info.url
    assert not (store.root / info.file_name).exists()
    assert txv.find_weights(info, store).sha256 == found.sha256


def test_a_stored_file_whose_content_changed_is_refused(store: WeightsStore) -> None:
    info = txv.weights_info(f"txv:{DENSENET}")
    path = txv.find_weights(info, store).path
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsUnavailableError, match="SHA-256"):
        txv.find_weights(info, store)


def test_fine_tuning_keeps_the_backbone_and_re_initialises_the_head(
        store: WeightsStore, densenet_file: Path, tmp_path: Path) -> None:
    spec = _spec(3, root=tmp_path, task="multiclass")
    model = build_model(spec, pretrained=True)  # the store of the project at spec.code_root
    assert isinstance(model, WrappedClassifier)
    original = torch.load(densenet_file, weights_only=False)
    own, theirs = model.state_dict(), original.state_dict()
    assert torch.equal(own["net.features.conv0.weight"], theirs["features.conv0.weight"])
    assert torch.equal(own["net.features.norm5.running_var"], theirs["features.norm5.running_var"])
    assert own["net.classifier.weight"].shape == (3, 1024)
    with torch.no_grad():
        assert model.eval()(_images()).shape == (2, 3)
    # how a trained model is loaded again (serving): built bare, then its own weights
    again = build_model(spec)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(_images()), model(_images()))


def test_pretrained_without_a_project_or_a_file_says_so() -> None:
    with pytest.raises(WeightsUnavailableError, match="no project"):
        build_model(_spec(2), pretrained=True)


def test_findings_thresholds_and_a_smaller_head(densenet_file: Path) -> None:
    full = txv.weights_info(f"txv:{DENSENET}")
    assert len(full.findings) == 18 and list(full.labels) == full.findings
    assert list(full.thresholds.values()) == pytest.approx(list(full.op_threshs))
    nih = txv.weights_info("txv:densenet121-res224-nih")
    assert len(nih.findings) == 14 and "" not in nih.findings
    assert set(nih.thresholds) == set(nih.findings)  # NaN operating points are left out
    resnet = txv.weights_info(f"txv:{RESNET}")  # two findings without an operating point
    assert "Lung Lesion" in resnet.findings and "Lung Lesion" not in resnet.thresholds
    assert len(resnet.thresholds) == 16
    # a model of 14 findings: the rows of the 18-output head for those findings
    model = txv.pretrained_classifier(nih, densenet_file).eval()
    bigger = txv.pretrained_classifier(full, densenet_file).eval()
    x = _images()
    with torch.no_grad():
        assert torch.allclose(model(x), bigger(x)[:, :14], atol=1e-6)
    assert model.spec.num_classes == 14


def test_thresholds_decide_as_torchxrayvision_operating_points(densenet_file: Path) -> None:
    """TorchXRayVision rescales each sigmoid so its operating point maps to 0.5; medops keeps
    the sigmoid and stores the operating point as the threshold: the same decisions."""
    info = txv.weights_info(f"txv:{DENSENET}")
    model = txv.pretrained_classifier(info, densenet_file).eval()
    with torch.no_grad():
        probs = model.activate(model(_images(4)))
    threshs = torch.tensor(info.op_threshs)
    theirs = xrv.models.op_norm(probs, threshs) >= 0.5
    ours = probs >= threshs
    assert torch.equal(ours, theirs)


def test_unknown_names_and_channels_are_config_errors(densenet_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'txv:densenet121-res224-all'"):
        txv.weights_info("txv:densenet121-res224-al")
    spec = ModelSpec.from_dict({"architecture": f"txv:{DENSENET}", "in_channels": 3,
                                "num_classes": 2, "small_input": False})
    with pytest.raises(ConfigError, match="one channel"):
        build_model(spec, weights=densenet_file)


def test_every_weights_name_builds_and_its_resolution_is_known() -> None:
    from medops.config.models import txv_resolution

    for name, entry in xrv.models.model_urls.items():
        info = txv.weights_info(f"txv:{name}")
        assert info.resolution == txv_resolution(f"txv:{name}") == entry["input_resolution"]
        assert info.outputs == 18 and not math.isnan(sum(info.thresholds.values()))
