"""The model card: what a version is for, what it was trained and tested on, and how it did.

Written by the register step as ``model_card/model_card.json`` (for programs) and
``model_card/model_card.md`` (for people) in the version's MLflow run, so it travels with the
version wherever MLflow goes; the dashboard renders it. Its fields follow two references:

- MONAI bundles' ``metadata.json``: ``task``, ``description``, ``authors``, ``references``,
  ``intended_use``, ``data_source``, ``eval_metrics``, ``network_data_format`` (the inputs a
  network takes and the outputs it gives), the versions of the software it was made with.
- Google's model cards (Mitchell et al., 2019): intended and out-of-scope uses, training and
  evaluation data, quantitative analyses, caveats and recommendations.

What only people know (intended use, out-of-scope uses, known limits, authors) comes from
``registry.card`` in medops.yaml; everything measured is filled in from the run. Limitations
that the numbers themselves reveal (a class with few test images, an undefined metric, code
with uncommitted changes) are added as ``derived_limitations``, so a card is never silent
about them because nobody wrote them down.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medops.config import MedopsConfig
from medops.errors import RegistryError

#: The folder of the card in the version's MLflow run, and its two files.
CARD_DIR = "model_card"
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"
SCHEMA = "medops-model-card/1"

#: Fewer test images of a class than this: its metrics are too uncertain to rely on.
FEW_TEST_IMAGES = 20
_NOT_STATED = "not stated (set registry.card in medops.yaml)"


@dataclass(frozen=True)
class ModelCard:
    """One version's card; :meth:`to_dict` is the JSON document, :meth:`to_markdown` the text."""

    name: str
    version: str
    created_at: str
    task: str
    classes: list[str]
    description: str | None = None
    intended_use: str | None = None
    out_of_scope: list[str] = field(default_factory=list)
    limitations: list[str] = field(default_factory=list)
    derived_limitations: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    #: dataset_version and images per split and class ({split: {class: n}})
    data: dict[str, Any] = field(default_factory=dict)
    #: the evaluate step's metrics on the test split (None where undefined)
    metrics: dict[str, float | None] = field(default_factory=dict)
    #: the gate's verdict: passed, metric, value, threshold, champion, reasons
    gate: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: architecture, origin of its code, arguments, weights (trained and initial)
    network: dict[str, Any] = field(default_factory=dict)
    #: MONAI's network_data_format: what goes in and what comes out
    network_data_format: dict[str, Any] = field(default_factory=dict)
    #: git commits, medops version, the medops and MLflow runs
    lineage: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a required field missing: not a card of this schema
            raise RegistryError(f"not a medops model card ({exc}); expected {SCHEMA}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RegistryError(f"the model card is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RegistryError("the model card is not a JSON object")
        return cls.from_dict(data)

    @property
    def weights_sha256(self) -> str | None:
        found = self.network.get("weights_sha256")
        return str(found) if found else None

    def to_markdown(self) -> str:
        return render_markdown(self)

    def write(self, folder: Path) -> Path:
        """Write both files into ``folder`` (made if missing); the folder."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CARD_JSON).write_text(self.to_json() + "\n")
        (folder / CARD_MARKDOWN).write_text(self.to_markdown())
        return folder


def build_card(config: MedopsConfig, outputs: Mapping[str, Mapping[str, Any]], *,
               name: str, version: str, run_id: str, mlflow_run_id: str,
               lineage: Mapping[str, str], created_at: datetime | None = None) -> ModelCard:
    """The card of ``name`` v``version`` from the outputs of the run's steps (by step name:
    split, preprocess, train, evaluate, gate) and the project's configuration."""
    split, train = outputs.get("split", {}), outputs.get("train", {})
    evaluate, gate = outputs.get("evaluate", {}), outputs.get("gate", {})
    profile = dict(outputs.get("preprocess", {}).get("profile") or {})
    classes = [str(c) for c in split.get("classes") or []]
    counts = {str(s): {str(c): int(n) for c, n in per.items()}
              for s, per in (split.get("counts") or {}).items()}
    metrics = {str(k): _number(v) for k, v in (evaluate.get("metrics") or {}).items()}
    spec = dict(train.get("spec") or {})
    weights = train.get("weights")
    card_cfg = config.registry.card
    network = {"architecture": spec.get("architecture", config.model.architecture),
               "origin": spec.get("origin") or {}, "args": spec.get("args") or {},
               "in_channels": spec.get("in_channels"), "num_classes": len(classes),
               "weights_sha256": _sha256(Path(weights)) if weights else None,
               "init_weights": train.get("init_weights"),
               "epochs_run": train.get("epochs_run"), "best_epoch": train.get("best_epoch")}
    lineage_out = {**dict(lineage), "run_id": run_id, "mlflow_run_id": mlflow_run_id,
                   "dataset_version": split.get("dataset_version")}
    return ModelCard(
        name=name, version=str(version),
        created_at=(created_at or datetime.now(timezone.utc)).isoformat(),
        task=config.task.value, classes=classes, description=card_cfg.description,
        intended_use=card_cfg.intended_use, out_of_scope=list(card_cfg.out_of_scope),
        limitations=list(card_cfg.limitations),
        derived_limitations=derived_limitations(counts, metrics, split, lineage),
        authors=list(card_cfg.authors), references=list(card_cfg.references),
        data={"dataset_version": split.get("dataset_version"), "counts": counts,
              "missing_findings": split.get("missing_findings") or {}},
        metrics=metrics, gate=dict(gate), preprocessing=profile, network=network,
        network_data_format=_data_format(profile, classes, config.task.value),
        lineage=lineage_out)


def derived_limitations(counts: Mapping[str, Mapping[str, int]],
                        metrics: Mapping[str, float | None], split: Mapping[str, Any],
                        lineage: Mapping[str, str]) -> list[str]:
    """What the run's own numbers say a reader must know."""
    out = []
    test = counts.get("test", {})
    few = sorted(c for c, n in test.items() if n < FEW_TEST_IMAGES)
    if few:
        out.append(f"fewer than {FEW_TEST_IMAGES} test images of {', '.join(few)}: their "
                   "metrics are uncertain")
    undefined = sorted(k for k, v in metrics.items() if v is None)
    if undefined:
        out.append(f"undefined on the test split (a class without positives or negatives): "
                   f"{', '.join(undefined)}")
    for where, findings in (split.get("missing_findings") or {}).items():
        out.append(f"the {where} split has no positive image of {', '.join(findings)}")
    total = sum(sum(per.values()) for per in counts.values())
    if total:
        out.append(f"trained and tested on {total} images of one dataset version; "
                   "performance on other sites, scanners or populations is unknown")
    commit = lineage.get("git_commit", "unknown")
    # a run of a watched model repository is named by that repository's commit
    if commit == "unknown" and not lineage.get("code_commit"):
        out.append("the project is not a git repository: the code that trained it cannot be "
                   "named by a commit")
    elif commit.endswith("+dirty"):
        out.append("trained from code with uncommitted changes: the commit does not fully "
                   "describe it")
    return out


def _data_format(profile: Mapping[str, Any], classes: list[str], task: str) -> dict[str, Any]:
    size = profile.get("size") or []
    channels = profile.get("channels")
    return {
        "inputs": {"image": {"type": "image", "format": "DICOM, PNG or JPEG file bytes",
                             "num_channels": channels, "spatial_shape": list(size),
                             "dtype": "float32", "preprocessing": "the profile above, applied "
                             "inside the model"}},
        "outputs": {"pred": {"type": "probabilities", "format": task,
                             "num_channels": len(classes), "channel_def": dict(enumerate(classes))
                             }},
    }


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render_markdown(card: ModelCard) -> str:
    """The card as Markdown, section by section (Google's model-card order)."""
    lines = [f"# Model card: {card.name} v{card.version}", "",
             card.description or "", "",
             "## Model details", "",
             f"- Task: {card.task} classification of {', '.join(card.classes)}",
             f"- Architecture: {card.network.get('architecture')}",
             f"- Weights SHA-256: {card.weights_sha256 or 'unknown'}",
             f"- Registered: {card.created_at}"]
    lines += [f"- Authors: {', '.join(card.authors)}"] if card.authors else []
    lines += ["", "## Intended use", "", card.intended_use or _NOT_STATED, ""]
    if card.out_of_scope:
        lines += ["Out of scope:", "", *[f"- {u}" for u in card.out_of_scope], ""]
    lines += ["## Data", "", f"Dataset version: {card.data.get('dataset_version')}", "",
              *_counts_table(card.data.get("counts") or {}, card.classes), "",
              "## Metrics (test split)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {'undefined' if v is None else f'{v:.4f}'} |"
              for k, v in sorted(card.metrics.items())]
    gate = card.gate
    if gate:
        verdict = "passed" if gate.get("passed") else "failed"
        lines += ["", f"Gate: {verdict} ({'; '.join(gate.get('reasons') or [])})"]
    lines += ["", "## Limitations", ""]
    lines += [f"- {x}" for x in [*card.limitations, *card.derived_limitations]] or ["- none stated"]
    lines += ["", "## Preprocessing", "", "```json",
              json.dumps(card.preprocessing, indent=2, sort_keys=True), "```", "",
              "## Lineage", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(card.lineage.items())]
    if card.references:
        lines += ["", "## References", "", *[f"- {r}" for r in card.references]]
    return "\n".join(lines) + "\n"


def _counts_table(counts: Mapping[str, Mapping[str, int]], classes: list[str]) -> list[str]:
    splits = [s for s in ("train", "val", "test") if s in counts]
    if not splits:
        return []
    names = [*classes, *sorted({c for per in counts.values() for c in per} - set(classes))]
    rows = [f"| class | {' | '.join(splits)} |", "|---|" + "---|" * len(splits)]
    rows += [f"| {c} | " + " | ".join(str(counts[s].get(c, 0)) for s in splits) + " |"
             for c in names]
    return rows
