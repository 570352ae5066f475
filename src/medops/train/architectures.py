"""Classifier networks built from torchvision backbones, adapted to medical images.

Every :class:`~medops.config.enums.Architecture` is a torchvision model with three changes:

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
With ``flip_tta`` the network in eval mode returns the mean of the logits of the image and of its
left-right mirror (one forward pass of both): validation, evaluation, the packaged model and
serving all go through ``forward``, so they score the same predictions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from medops.config.enums import Architecture
from medops.config.schema import AugmentConfig, ModelConfig
from medops.errors import ConfigError, WeightsUnavailableError

log = logging.getLogger(__name__)

#: Images whose shorter side is below this get the small-input stem when ``small_input: auto``.
SMALL_INPUT_BELOW = 64


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier's architecture (not its weights)."""

    architecture: Architecture
    in_channels: int
    num_classes: int
    small_input: bool
    flip_tta: bool = False
    # models saved before the small-input stem kept the max-pool were built without it
    small_input_pool: bool = True

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3 (got {self.in_channels})")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2 (got {self.num_classes})")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` reads it back."""
        d = asdict(self)
        d["architecture"] = self.architecture.value
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Read a dict written by :meth:`to_dict`."""
        try:
            arch = Architecture(data["architecture"])
            return cls(
                architecture=arch,
                in_channels=int(data["in_channels"]),
                num_classes=int(data["num_classes"]),
                small_input=bool(data["small_input"]),
                # absent from specs written before test-time flips existed
                flip_tta=bool(data.get("flip_tta", False)),
                small_input_pool=bool(data.get("small_input_pool", False)),
            )
        except KeyError as e:
            raise ConfigError(f"model spec {dict(data)!r} lacks the key {e}") from e
        except ValueError as e:
            known = ", ".join(a.value for a in Architecture)
            raise ConfigError(f"model spec {dict(data)!r} is invalid: {e} (known: {known})") from e


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


class Classifier(nn.Module):
    """A backbone that maps images to a feature vector, and a head that maps it to logits."""

    def __init__(
        self, spec: ModelSpec, backbone: nn.Module, head: nn.Module, feature_dim: int
    ) -> None:
        super().__init__()
        self.spec = spec
        self.feature_dim = feature_dim  # the width of embed()'s output
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (N, num_classes); in eval mode flip-averaged when ``spec.flip_tta``."""
        return self.logits_and_features(x)[0]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x)`` and ``embed(x)`` from one pass through the backbone (the features of
        the images as given, not of their flipped copies)."""
        if self.training or not self.spec.flip_tta:
            features = self.backbone(x)
            return self.head(features), features
        both = self.backbone(torch.cat([x, x.flip(-1)]))
        logits = self.head(both)
        n = len(x)
        return (logits[:n] + logits[n:]) / 2, both[:n]

    def single_view_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the images as given, never flip-averaged: what the trainer validates
        with, at half the cost of ``forward`` in eval mode with ``spec.flip_tta``."""
        return self.head(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, F): the input of the head."""
        return self.backbone(x)


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
    """A :class:`Classifier` for ``spec``.

    Weights: ``weights`` (a local torchvision state dict for the same architecture) when given,
    else torchvision's ImageNet weights when ``pretrained``, else a random initialisation. The
    ImageNet head is never used; a small-input ResNet/DenseNet stem is freshly initialised too
    (its kernel has another size). Raises :class:`WeightsUnavailableError` when the weights cannot
    be downloaded, read or loaded.
    """
    family = _FAMILIES[spec.architecture]
    net = _torchvision_builder(spec.architecture)(weights=None)
    feature_dim = _adapt(net, family, spec)
    state = None
    if weights is not None:
        state = _read_weights_file(spec.architecture, weights)
    elif pretrained:
        state = _download_imagenet(spec.architecture)
    if state is not None:
        source = str(weights) if weights is not None else "ImageNet (torchvision DEFAULT)"
        _load_backbone_state(net, family, spec, state, source)
    head: nn.Module = nn.Linear(feature_dim, spec.num_classes)
    if family.head_dropout > 0:
        head = nn.Sequential(nn.Dropout(p=family.head_dropout, inplace=True), head)
    return Classifier(spec, net, head, feature_dim)


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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling/IO failure means the same to the user
        raise WeightsUnavailableError(
            f"weights file {str(path)!r} for {arch.value} cannot be read ({e}); {_fix_hint(arch)}"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"weights file {str(path)!r} is not a torchvision state dict (a dict of tensors); "
            f"{_fix_hint(arch)}"
        )
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
            f"weights from {source} do not fit {spec.architecture.value}: {_first_line(e)}; "
            f"{_fix_hint(spec.architecture)}"
        ) from e
    allowed_missing = {stem_key} if stem_key not in sd else set()
    missing = [k for k in missing if k not in allowed_missing]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"weights from {source} do not fit {spec.architecture.value}: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:3]}; {_fix_hint(spec.architecture)}"
        )
    log.info("loaded %s weights from %s", spec.architecture.value, source)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return " ".join(line.strip() for line in text[:3])
