"""Networks for a :class:`~medops.train.spec.ModelSpec`: :func:`build_model` dispatches on the
architecture to the built-in torchvision backbones below, to TorchXRayVision
(:mod:`medops.train.txv`) or to a user's entry point (:mod:`medops.train.entrypoints`).

Every built-in :class:`~medops.config.enums.Architecture` is a torchvision model with three
changes:

* the first convolution takes 1 or 3 channels (pretrained RGB filters are summed for 1 channel,
  which keeps a grey image's response equal to the same image in RGB);
* the ImageNet head is replaced by a linear layer for ``num_classes`` (behind the family's own
  dropout for EfficientNet and MobileNet);
* ``small_input`` halves the early downsampling, which would throw away most of a 28 px image:
  ResNet and DenseNet get a stride-1 3x3 stem in place of the stride-2 7x7 one and keep their
  max-pool (2x before the first block instead of 4x); EfficientNet and MobileNet keep their 3x3
  stem but with stride 1. Removing the max-pool too (as the MedMNIST ResNets do) scored no
  better on BreastMNIST and costs 3.3x the compute at 28 px (docs/benchmarks.md).

A :class:`ModelSpec` is all it takes to rebuild the network; it is stored with every model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from medops.config.enums import Architecture
from medops.config.models import is_builtin, is_txv
from medops.config.schema import AugmentConfig, ModelConfig
from medops.errors import ConfigError, WeightsUnavailableError
from medops.train.classifier import BackboneClassifier, Classifier
from medops.train.spec import ModelSpec
from medops.train.weights import load_state_dict

log = logging.getLogger(__name__)

#: Images whose shorter side is below this get the small-input stem when ``small_input: auto``.
SMALL_INPUT_BELOW = 64


def resolve_flip_tta(cfg: ModelConfig, augment: AugmentConfig | None) -> bool:
    """``model.flip_tta`` made concrete: ``auto`` is on when training augments with flips."""
    if cfg.flip_tta == "auto":
        return augment is not None and augment.hflip
    return bool(cfg.flip_tta)


def resolve_small_input(cfg: ModelConfig, image_size: tuple[int, int]) -> bool:
    """``model.small_input`` made concrete: ``auto`` is True below 64 px on the shorter side."""
    if cfg.small_input == "auto":
        return min(image_size) < SMALL_INPUT_BELOW
    return bool(cfg.small_input)


@dataclass(frozen=True)
class _Family:
    """Where a torchvision family keeps its stem and its head, and how to make it small-input."""

    stem: str  # attribute path of the first nn.Conv2d
    head: str  # attribute path of the module replaced by nn.Identity in the backbone
    head_dropout: float  # dropout before the new linear head (the family's own value)
    small_stem_kernel: int | None  # new kernel size for small input, None: keep the kernel
    pool: str | None  # the max-pool after the stem (removed in specs without small_input_pool)


_RESNET = _Family("conv1", "fc", 0.0, 3, "maxpool")
_DENSENET = _Family("features.conv0", "classifier", 0.0, 3, "features.pool0")
_MOBILENET = _Family("features.0.0", "classifier", 0.2, None, None)


def _efficientnet(dropout: float) -> _Family:
    return _Family("features.0.0", "classifier", dropout, None, None)


_FAMILIES: dict[Architecture, _Family] = {
    Architecture.RESNET18: _RESNET,
    Architecture.RESNET34: _RESNET,
    Architecture.RESNET50: _RESNET,
    Architecture.DENSENET121: _DENSENET,
    # torchvision's own classifier dropout for each EfficientNet size
    Architecture.EFFICIENTNET_B0: _efficientnet(0.2),
    Architecture.EFFICIENTNET_B1: _efficientnet(0.2),
    Architecture.EFFICIENTNET_B2: _efficientnet(0.3),
    Architecture.EFFICIENTNET_B3: _efficientnet(0.3),
    Architecture.EFFICIENTNET_B4: _efficientnet(0.4),
    Architecture.EFFICIENTNET_B5: _efficientnet(0.4),
    Architecture.EFFICIENTNET_B6: _efficientnet(0.5),
    Architecture.EFFICIENTNET_B7: _efficientnet(0.5),
    Architecture.MOBILENET_V2: _MOBILENET,
}


def build_model(
    spec: ModelSpec, *, pretrained: bool = False, weights: Path | None = None
) -> Classifier:
    """A :class:`Classifier` for ``spec``, randomly initialised unless ``weights`` (a local
    file) or ``pretrained`` (the architecture's own pretrained weights) say otherwise.

    Raises :class:`~medops.errors.ConfigError` for an architecture that cannot be built and
    :class:`WeightsUnavailableError` when the weights cannot be found, read or loaded."""
    if is_builtin(spec.architecture):
        return _build_torchvision(spec, pretrained=pretrained, weights=weights)
    if is_txv(spec.architecture):
        from medops.train import txv

        return txv.build(spec, pretrained=pretrained, weights=weights)
    from medops.train import entrypoints

    if pretrained:
        raise ConfigError(
            f"model.pretrained is for built-in and txv: architectures; {spec.architecture} is "
            "an entry point: pass its own argument in model.args (MONAI: pretrained: true) or "
            "give weights in model.weights, and set model.pretrained: false")
    return entrypoints.build(spec, weights=weights)


def _build_torchvision(
    spec: ModelSpec, *, pretrained: bool, weights: Path | None
) -> BackboneClassifier:
    """A torchvision backbone for ``spec`` with a new head.

    Weights: ``weights`` (a local torchvision state dict for the same architecture) when given,
    else torchvision's ImageNet weights when ``pretrained``, else a random initialisation. The
    ImageNet head is never used; a small-input ResNet/DenseNet stem is freshly initialised too
    (its kernel has another size)."""
    arch = Architecture(spec.architecture)
    family = _FAMILIES[arch]
    net = _torchvision_builder(arch)(weights=None)
    feature_dim = _adapt(net, family, spec)
    state = None
    if weights is not None:
        state = _read_weights_file(arch, weights)
    elif pretrained:
        state = _download_imagenet(arch)
    if state is not None:
        source = str(weights) if weights is not None else "ImageNet (torchvision DEFAULT)"
        _load_backbone_state(net, family, spec, state, source)
    head: nn.Module = nn.Linear(feature_dim, spec.num_classes)
    if family.head_dropout > 0:
        head = nn.Sequential(nn.Dropout(p=family.head_dropout, inplace=True), head)
    return BackboneClassifier(spec, net, head, feature_dim)


def _torchvision_builder(arch: Architecture) -> Callable[..., nn.Module]:
    return getattr(torchvision.models, arch.value)


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path)


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, new)


def _adapt(net: nn.Module, family: _Family, spec: ModelSpec) -> int:
    """Change the stem and drop the head in place; the backbone's feature size."""
    old = _get(net, family.stem)
    assert isinstance(old, nn.Conv2d)
    kernel = old.kernel_size[0]
    stride = old.stride[0]
    if spec.small_input:
        kernel = family.small_stem_kernel or kernel
        stride = 1
        if family.pool is not None and not spec.small_input_pool:
            _set(net, family.pool, nn.Identity())
    if (
        spec.in_channels != old.in_channels
        or kernel != old.kernel_size[0]
        or stride != old.stride[0]
    ):
        conv = nn.Conv2d(
            spec.in_channels,
            old.out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=kernel // 2,
            bias=old.bias is not None,
        )
        _set(net, family.stem, conv)
    head = _get(net, family.head)
    linear = (
        head
        if isinstance(head, nn.Linear)
        else next(m for m in head.modules() if isinstance(m, nn.Linear))
    )
    _set(net, family.head, nn.Identity())
    return int(linear.in_features)


def _fix_hint(arch: Architecture) -> str:
    return (
        f"fix: put a torchvision state dict for {arch.value} on this machine (for example "
        f"torch.save(torchvision.models.{arch.value}(weights='DEFAULT').state_dict(), "
        f"'{arch.value}.pth') where there is internet) and set model.weights: /path/to/file.pth, "
        "or set model.pretrained: false"
    )


def _read_weights_file(arch: Architecture, path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {str(path)!r} for {arch.value} does not exist; {_fix_hint(arch)}"
        )
    try:
        # torch.load(weights_only=True): a file that would run code when unpickled is refused
        state = load_state_dict(path)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(f"{e}; {_fix_hint(arch)}") from e
    return _legacy_densenet_keys(state)


def _download_imagenet(arch: Architecture) -> dict[str, torch.Tensor]:
    enum = torchvision.models.get_model_weights(arch.value)
    default = enum.DEFAULT
    try:
        # torch.hub caches under $TORCH_HOME/hub/checkpoints, so only the first call downloads
        state: dict[str, torch.Tensor] = default.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, hash mismatch, disk full: none can be fixed here
        raise WeightsUnavailableError(
            f"ImageNet weights {default} for {arch.value} are not cached and cannot be "
            f"downloaded from {default.url} ({type(e).__name__}: {e}); {_fix_hint(arch)}"
        ) from e
    return _legacy_densenet_keys(state)


#: DenseNet checkpoints published before torchvision 0.3 name ``norm.1`` what is now ``norm1``.
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _legacy_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = _DENSENET_LEGACY_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def _load_backbone_state(
    net: nn.Module, family: _Family, spec: ModelSpec, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load a torchvision state dict into the adapted backbone: head dropped, stem adapted."""
    head_prefix = family.head + "."
    stem_key = family.stem + ".weight"
    sd = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    stem = _get(net, family.stem)
    assert isinstance(stem, nn.Conv2d)
    w = sd.get(stem_key)
    if w is not None and w.ndim == 4:
        if w.shape[2:] != stem.weight.shape[2:]:
            # a small-input stem has another kernel size; it learns from scratch
            del sd[stem_key]
        elif w.shape[1] != spec.in_channels:
            if spec.in_channels == 1:
                w = w.sum(dim=1, keepdim=True)
            elif w.shape[1] == 1:
                w = w.repeat(1, spec.in_channels, 1, 1) / spec.in_channels
            sd[stem_key] = w
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise WeightsUnavailableError(
            f"weights from {source} do not fit {spec.architecture}: {_first_line(e)}; "
            f"{_fix_hint(Architecture(spec.architecture))}"
        ) from e
    allowed_missing = {stem_key} if stem_key not in sd else set()
    missing = [k for k in missing if k not in allowed_missing]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"weights from {source} do not fit {spec.architecture}: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:3]}; {_fix_hint(Architecture(spec.architecture))}"
        )
    log.info("loaded %s weights from %s", spec.architecture, source)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])
