"""Every architecture builds, adapts its stem and head, and loads (or refuses) weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from medops.config.enums import Architecture
from medops.config.schema import AugmentConfig, ModelConfig
from medops.errors import ConfigError, WeightsUnavailableError
from medops.train import (
    BackboneClassifier,
    Classifier,
    ModelSpec,
    build_model,
    predict_proba,
    resolve_flip_tta,
    resolve_small_input,
)

# building these takes seconds (tens of millions of parameters): one build each is enough
_BIG = {Architecture.EFFICIENTNET_B5, Architecture.EFFICIENTNET_B6, Architecture.EFFICIENTNET_B7}


def _forward(model: Classifier, channels: int, size: int = 32) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(torch.randn(2, channels, size, size))


@pytest.mark.parametrize("arch", list(Architecture), ids=str)
def test_every_architecture_builds_and_runs(arch: Architecture) -> None:
    variants = [(1, 4, True)] if arch in _BIG else [(1, 4, True), (3, 2, False)]
    for channels, classes, small in variants:
        model = _tv(ModelSpec(arch, channels, classes, small))
        logits = _forward(model, channels)
        assert logits.shape == (2, classes)
        assert torch.isfinite(logits).all()
        with torch.inference_mode():
            features = model.embed(torch.randn(2, channels, 32, 32))
        assert features.shape == (2, model.feature_dim)
        assert model.spec.architecture == arch.value


def _tv(spec: ModelSpec, **kwargs: Any) -> BackboneClassifier:
    """A built-in (torchvision) model, typed as such."""
    model = build_model(spec, **kwargs)
    assert isinstance(model, BackboneClassifier)
    return model


def _conv(model: BackboneClassifier, path: str) -> nn.Conv2d:
    conv = model.backbone.get_submodule(path)
    assert isinstance(conv, nn.Conv2d)
    return conv


def test_small_input_stems() -> None:
    resnet = _tv(ModelSpec(Architecture.RESNET18, 1, 2, small_input=True))
    assert _conv(resnet, "conv1").kernel_size == (3, 3)
    assert _conv(resnet, "conv1").stride == (1, 1)
    assert isinstance(resnet.backbone.get_submodule("maxpool"), nn.MaxPool2d)
    dense = _tv(ModelSpec(Architecture.DENSENET121, 3, 2, small_input=True))
    assert _conv(dense, "features.conv0").stride == (1, 1)
    assert isinstance(dense.backbone.get_submodule("features.pool0"), nn.MaxPool2d)
    mobile = _tv(ModelSpec(Architecture.MOBILENET_V2, 1, 2, small_input=True))
    assert _conv(mobile, "features.0.0").stride == (1, 1)
    assert _conv(mobile, "features.0.0").in_channels == 1
    standard = _tv(ModelSpec(Architecture.RESNET18, 3, 2, small_input=False))
    assert _conv(standard, "conv1").kernel_size == (7, 7)
    assert _conv(standard, "conv1").stride == (2, 2)


def test_spec_round_trips_through_json() -> None:
    spec = ModelSpec(Architecture.EFFICIENTNET_B0, 3, 5, True)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ConfigError, match=r"did you mean .resnet18."):
        ModelSpec.from_dict({**spec.to_dict(), "architecture": "resnet19"})
    with pytest.raises(ConfigError):
        ModelSpec(Architecture.RESNET18, 2, 5, True)


def test_flip_tta_averages_the_mirror_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    plain = _tv(ModelSpec(Architecture.RESNET18, 1, 3, small_input=False))
    tta = _tv(ModelSpec(Architecture.RESNET18, 1, 3, small_input=False, flip_tta=True))
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 32, 32)
    plain.eval(), tta.eval()
    with torch.inference_mode():
        expected = (plain(x) + plain(x.flip(-1))) / 2
        torch.testing.assert_close(tta(x), expected)
        # a prediction no longer depends on which way round the image is
        torch.testing.assert_close(tta(x.flip(-1)), tta(x))
        assert not torch.allclose(plain(x), plain(x.flip(-1)))
        # what validation during training scores: the images as given, at half the cost
        torch.testing.assert_close(tta.single_view_logits(x), plain(x))
    # what inference and the packaged model call goes through the same forward
    probs = predict_proba(tta, x.numpy())
    np.testing.assert_allclose(probs, torch.softmax(expected, 1).numpy(), rtol=1e-5, atol=1e-6)
    tta.train(), plain.train()
    torch.manual_seed(1)
    a = tta(x)
    torch.manual_seed(1)
    assert torch.allclose(a, plain(x))  # training sees the images as given


def test_flip_tta_in_spec_and_config() -> None:
    spec = ModelSpec(Architecture.RESNET18, 1, 2, True, flip_tta=True)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    # a model saved before flips and the max-pool of the small-input stem is rebuilt as it was
    old = {k: v for k, v in spec.to_dict().items() if k not in ("flip_tta", "small_input_pool")}
    rebuilt = ModelSpec.from_dict(old)
    assert rebuilt.flip_tta is False and rebuilt.small_input_pool is False
    assert isinstance(_tv(rebuilt).backbone.get_submodule("maxpool"), nn.Identity)
    auto = ModelConfig()
    assert resolve_flip_tta(auto, AugmentConfig()) is True
    assert resolve_flip_tta(auto, AugmentConfig(hflip=False)) is False
    assert resolve_flip_tta(auto, None) is False
    assert resolve_flip_tta(ModelConfig(flip_tta=False), AugmentConfig()) is False
    assert resolve_flip_tta(ModelConfig(flip_tta=True), None) is True


def test_resolve_small_input() -> None:
    auto = ModelConfig()
    assert resolve_small_input(auto, (28, 28)) is True
    assert resolve_small_input(auto, (64, 128)) is False
    assert resolve_small_input(ModelConfig(small_input=False), (28, 28)) is False
    assert resolve_small_input(ModelConfig(small_input=True), (224, 224)) is True


def _w(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_parameter(name)


def test_local_weights_file_rgb_and_summed_to_grey(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    rgb = _tv(ModelSpec(Architecture.RESNET18, 3, 2, False), weights=path).backbone
    for name in ("conv1.weight", "layer3.1.conv2.weight", "bn1.bias"):
        torch.testing.assert_close(_w(rgb, name), _w(reference, name))
    grey = _tv(ModelSpec(Architecture.RESNET18, 1, 2, False), weights=path).backbone
    summed = _w(reference, "conv1.weight").sum(1, keepdim=True)
    torch.testing.assert_close(_w(grey, "conv1.weight"), summed)
    # a small-input stem has a 3x3 kernel: it starts fresh, the rest is loaded
    small = _tv(ModelSpec(Architecture.RESNET18, 1, 2, True), weights=path).backbone
    assert _w(small, "conv1.weight").shape == (64, 1, 3, 3)
    name = "layer1.0.conv1.weight"
    torch.testing.assert_close(_w(small, name), _w(reference, name))


def test_local_weights_keep_a_stride_one_stem(tmp_path: Path) -> None:
    reference = torchvision.models.mobilenet_v2()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    model = _tv(ModelSpec(Architecture.MOBILENET_V2, 1, 3, True), weights=path)
    summed = _w(reference, "features.0.0.weight").sum(1, keepdim=True)
    torch.testing.assert_close(_w(model.backbone, "features.0.0.weight"), summed)
    assert _forward(model, 1).shape == (2, 3)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"does not exist.*model\.weights"):
        _tv(ModelSpec(Architecture.RESNET18, 1, 2, True), weights=tmp_path / "missing.pth")


def test_incompatible_or_corrupt_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet50"):
        _tv(ModelSpec(Architecture.RESNET50, 3, 2, False), weights=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot be read"):
        _tv(ModelSpec(Architecture.RESNET18, 3, 2, False), weights=garbage)


def test_pretrained_offline_without_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an empty cache, and every download sent to a closed local port: a real offline machine
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(WeightsUnavailableError, match=r"ResNet18_Weights.*model\.weights"):
        _tv(ModelSpec(Architecture.RESNET18, 3, 2, False), pretrained=True)
