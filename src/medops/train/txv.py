"""TorchXRayVision networks: ``model.architecture: txv:NAME`` for NAME one of TorchXRayVision's
weight names (``densenet121-res224-all``, ``-nih``, ``-pc``, ``-chex``, ``-rsna``, ``-mimic_nb``,
``-mimic_ch``, ``resnet50-res512-all``, and its short aliases ``all``, ``nih``...).

* The network is TorchXRayVision's own (its ``DenseNet``; for ResNet-50 the torchvision ResNet
  with the one-channel stem its ``ResNet`` builds), made without TorchXRayVision's downloading
  and with its operating-point rescaling off, so ``forward`` returns logits; medops applies the
  sigmoid (a ``txv:`` spec is multi-label when it keeps the pretrained findings).
* Weights come from the project's weights store (:mod:`medops.train.weights`) under
  TorchXRayVision's own file name (the last part of its ``weights_url``), never from the
  network: medops does not download them by itself, and the error says where to put the file.
  DenseNet files are whole pickled modules: they are read with ``torch.load(weights_only=True)``
  and an allow-list of exactly the classes such a file holds (:data:`DENSENET_CLASSES`), so no
  other code is ever unpickled; ResNet files are plain state dicts.
* :func:`build` (training, serving) puts a new head for ``spec.num_classes`` on the pretrained
  network (fine-tuning: the head is re-initialised); :func:`pretrained_classifier` keeps the
  pretrained head, its findings and TorchXRayVision's operating points as per-finding thresholds
  (``medops models import txv:NAME``).
* The input convention (one channel, the size of the weights, [-1024, 1024]) is
  :func:`medops.preprocess.txv_profile`.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from medops.config.enums import Task
from medops.config.models import TXV_PREFIX, txv_name, txv_resolution
from medops.errors import ConfigError, DependencyMissingError, WeightsUnavailableError
from medops.train.classifier import Classifier, WrappedClassifier
from medops.train.spec import ModelSpec
from medops.train.weights import (
    ResolvedWeights,
    WeightsStore,
    load_into,
    load_state_dict,
)

log = logging.getLogger(__name__)

PACKAGE = "torchxrayvision"


def _xrv() -> ModuleType:
    try:
        import torchxrayvision
    except ImportError as e:
        raise DependencyMissingError(PACKAGE, "txv", "TorchXRayVision models") from e
    return torchxrayvision


def _allowed_classes() -> list[Any]:
    """Every class a TorchXRayVision DenseNet file pickles (besides tensors and the containers
    ``torch.load(weights_only=True)`` always allows): its DenseNet and block classes and the
    ``torch.nn`` layers they are made of."""
    from torch import nn

    models = _xrv().models
    return [models.DenseNet, models._DenseBlock, models._DenseLayer, models._Transition,
            nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
            nn.Linear, set]


#: The allow-list names, for messages and docs.
DENSENET_CLASSES = ("torchxrayvision.models.DenseNet", "_DenseBlock", "_DenseLayer",
                    "_Transition", "torch.nn Sequential", "Conv2d", "BatchNorm2d", "ReLU",
                    "MaxPool2d", "AvgPool2d", "Linear")


@dataclass(frozen=True)
class TxvWeights:
    """What TorchXRayVision publishes about one weights name."""

    name: str
    url: str
    labels: tuple[str, ...]  # the network's outputs, '' where a dataset lacks the finding
    op_threshs: tuple[float, ...]  # its operating points (NaN: none)
    resolution: int

    @property
    def architecture(self) -> str:
        return f"{TXV_PREFIX}{self.name}"

    @property
    def file_name(self) -> str:
        """TorchXRayVision's own file name: the last part of its URL."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_resnet(self) -> bool:
        return self.name.startswith("resnet")

    @property
    def outputs(self) -> int:
        return len(self.labels)

    @property
    def findings(self) -> list[str]:
        """The findings it predicts: its labels without the empty ones."""
        return [label for label in self.labels if label]

    @property
    def thresholds(self) -> dict[str, float]:
        """Its operating points per finding (those it has: NaN ones are left out)."""
        return {label: float(t) for label, t in zip(self.labels, self.op_threshs, strict=True)
                if label and not math.isnan(t)}

    def origin(self) -> dict[str, str]:
        """Where the network's code comes from, for lineage and packaging (the package and
        version a packaged model needs)."""
        try:
            version = importlib.metadata.version(PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = str(getattr(_xrv(), "__version__", "unknown"))
        return {"kind": "package", "package": PACKAGE, "version": version,
                "weights": self.name, "weights_file": self.file_name}


def weights_info(architecture: str) -> TxvWeights:
    """TorchXRayVision's published facts for ``txv:NAME``; ConfigError naming the known names
    (and the nearest) for an unknown one."""
    name = txv_name(architecture)
    urls: dict[str, dict[str, Any]] = _xrv().models.model_urls
    if name not in urls:
        known = sorted(urls)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"did you mean 'txv:{close[0]}'? " if close else ""
        raise ConfigError(f"model.architecture {architecture!r}: TorchXRayVision has no weights "
                          f"named {name!r}; {hint}known: {', '.join(known)}")
    entry = urls[name]
    labels = tuple(str(x) for x in entry["labels"])
    threshs = tuple(float(x) for x in entry.get("op_threshs") or [math.nan] * len(labels))
    resolution = int(entry.get("input_resolution", txv_resolution(architecture)))
    return TxvWeights(name=name, url=str(entry["weights_url"]), labels=labels,
                      op_threshs=threshs, resolution=resolution)


def find_weights(info: TxvWeights, store: WeightsStore) -> ResolvedWeights:
    """The stored file of ``info``'s weights, found by TorchXRayVision's file name and checked
    against its hash. A file placed by hand at ``<store>/<file name>`` is moved into the store
    first. WeightsUnavailableError saying where to put it when it is not there."""
    found = store.find(info.file_name)
    if found is None:
        placed = store.root / info.file_name
        if placed.is_file():
            store.add(placed, info.file_name)
            placed.unlink()
            found = store.find(info.file_name)
    if found is None:
        raise WeightsUnavailableError(
            f"the TorchXRayVision weights {info.name!r} are not in the weights store "
            f"({store.root}); medops never downloads them by itself. Fix: download "
            f"{info.url} (where there is network) and put the file, named {info.file_name}, "
            f"at {store.root / info.file_name}, or add it with `medops models fetch "
            f"./{info.file_name}`; or, on a machine with network, `medops models fetch "
            f"{info.url} --sha256 HEX` with the file's SHA-256")
    sha = store.verify(found.name).name
    return ResolvedWeights(found, sha, info.url)


def read_weights(info: TxvWeights, path: Path) -> dict[str, Any]:
    """The state dict of a TorchXRayVision weights file, read without running code from it."""
    allowed = [] if info.is_resnet else _allowed_classes()
    try:
        state = load_state_dict(path, allowed=allowed)
    except WeightsUnavailableError as e:
        kind = "a state dict" if info.is_resnet else \
            f"a pickled DenseNet (allowed classes: {', '.join(DENSENET_CLASSES)})"
        raise WeightsUnavailableError(
            f"{e}. A TorchXRayVision {info.name} file is {kind}; check that {path} is "
            f"{info.url}") from None
    state.pop("op_threshs", None)  # a buffer of TorchXRayVision's, not a weight
    return state


def network(info: TxvWeights) -> Any:
    """TorchXRayVision's network for ``info`` with its own head (``info.outputs`` logits),
    randomly initialised, nothing downloaded."""
    xrv = _xrv()
    if info.is_resnet:
        import torch
        import torchvision

        # what xrv.models.ResNet builds before it downloads: a one-channel stem
        net = torchvision.models.resnet50(num_classes=info.outputs, weights=None)
        net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return net
    # op_threshs=None, apply_sigmoid=False: forward returns the logits
    return xrv.models.DenseNet(weights=None, num_classes=info.outputs, in_channels=1)


def _head_name(info: TxvWeights) -> str:
    return "fc" if info.is_resnet else "classifier"


def _load_pretrained(info: TxvWeights, net: Any, path: Path) -> None:
    # everything must fit, the head included: these are the network's own weights
    load_into(net, read_weights(info, path), source=f"{path} ({info.name})", head="")


def _check_spec(spec: ModelSpec) -> None:
    if spec.in_channels != 1:
        raise ConfigError(f"{spec.architecture} takes one channel (got in_channels="
                          f"{spec.in_channels}); its input profile is one channel")


def build(spec: ModelSpec, *, pretrained: bool, weights: Path | None) -> Classifier:
    """The TorchXRayVision network of ``spec.architecture`` with a new head of
    ``spec.num_classes`` outputs (re-initialised: fine-tuning on the project's classes).

    Weights: ``weights`` (a file of TorchXRayVision's for that name) when given, else with
    ``pretrained`` the file in the weights store of the project at ``spec.code_root``; else a
    random initialisation (a packaged model loads its own weights after)."""
    from torch import nn

    _check_spec(spec)
    info = weights_info(spec.architecture)
    net = network(info)
    if weights is None and pretrained:
        if spec.code_root is None:
            raise WeightsUnavailableError(
                f"{spec.architecture}: no project to find the weights store of; pass the "
                f"weights file ({info.file_name}, from {info.url}) explicitly")
        weights = find_weights(info, WeightsStore.for_project(spec.code_root)).path
    if weights is not None:
        _load_pretrained(info, net, weights)
        log.info("%s: pretrained backbone from %s, head re-initialised for %d output(s)",
                 spec.architecture, weights, spec.num_classes)
    old = net.get_submodule(_head_name(info))
    setattr(net, _head_name(info), nn.Linear(int(old.in_features), spec.num_classes))
    return WrappedClassifier(spec, net)


def pretrained_classifier(info: TxvWeights, weights: Path) -> Classifier:
    """TorchXRayVision's pretrained model as it is: a multi-label classifier of
    ``info.findings`` (its outputs for empty labels dropped), weights from ``weights``."""
    import torch
    from torch import nn

    findings = info.findings
    if not findings:
        raise ConfigError(f"{info.architecture} predicts no named finding")
    net = network(info)
    _load_pretrained(info, net, weights)
    old = net.get_submodule(_head_name(info))
    keep = [i for i, label in enumerate(info.labels) if label]
    if len(keep) != info.outputs:  # a smaller head: only the rows of named findings
        head = nn.Linear(int(old.in_features), len(keep))
        with torch.no_grad():
            head.weight.copy_(old.weight[keep])
            head.bias.copy_(old.bias[keep])
        setattr(net, _head_name(info), head)
    spec = ModelSpec(architecture=info.architecture, in_channels=1, num_classes=len(findings),
                     small_input=False, task=Task.MULTILABEL, origin=info.origin())
    return WrappedClassifier(spec, net.eval())
