"""What a label means for each task, in one place: a class per image (multiclass) or a set of
findings (multilabel). Splitting, training targets, evaluation, serving output and monitoring
ask a :class:`LabelTask` instead of testing the task themselves.

A multi-label item stores its findings as one canonical string: the findings sorted and joined
by ``|`` (as NIH ChestX-ray14's ``Finding Labels`` column writes them), and the empty set as
``No Finding``. So the catalog, manifests and captures keep one text label per image for both
tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medops.config.enums import Task
from medops.errors import LabelError

FINDING_SEPARATOR = "|"
NO_FINDING = "No Finding"


def parse_findings(text: str | None) -> tuple[str, ...]:
    """``"Effusion|Cardiomegaly"`` -> ``("Cardiomegaly", "Effusion")``; ``No Finding`` and
    the empty string are the empty set."""
    if text is None:
        return ()
    parts = {p.strip() for p in text.split(FINDING_SEPARATOR)}
    parts.discard("")
    if NO_FINDING in parts:
        if len(parts) > 1:
            raise LabelError(f"label {text!r} lists {NO_FINDING!r} together with findings")
        return ()
    return tuple(sorted(parts))


def format_findings(findings: Iterable[str]) -> str:
    """The canonical label of a set of findings (``No Finding`` for none)."""
    unique = sorted({f.strip() for f in findings if f.strip()})
    for f in unique:
        if FINDING_SEPARATOR in f or f == NO_FINDING:
            raise LabelError(f"{f!r} cannot be a finding name")
    return FINDING_SEPARATOR.join(unique) or NO_FINDING


@dataclass(frozen=True)
class LabelTask:
    """The label rules of one task."""

    task: Task

    @property
    def multilabel(self) -> bool:
        return self.task is Task.MULTILABEL

    def classes(self, labels: Iterable[str]) -> list[str]:
        """The model's outputs: the classes seen, or the findings seen (sorted)."""
        if not self.multilabel:
            from medops.data.manifest import sort_classes

            return sort_classes(list(labels))
        return sorted({f for label in labels for f in parse_findings(label)})

    def targets(self, labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
        """Training targets: class indices (N,) int64, or a multi-hot matrix (N, K) float32."""
        index = {c: i for i, c in enumerate(classes)}
        if not self.multilabel:
            try:
                return np.array([index[label] for label in labels], dtype=np.int64)
            except KeyError as e:
                raise LabelError(f"label {e} is not one of the classes {list(classes)}") from e
        out = np.zeros((len(labels), len(classes)), dtype=np.float32)
        for row, label in enumerate(labels):
            for finding in parse_findings(label):
                if finding not in index:
                    raise LabelError(f"finding {finding!r} is not one of {list(classes)}")
                out[row, index[finding]] = 1.0
        return out

    def texts(self, targets: np.ndarray, classes: Sequence[str]) -> list[str]:
        """The inverse of :meth:`targets`: each row's stored text label."""
        if not self.multilabel:
            return [classes[int(i)] for i in np.asarray(targets).reshape(-1)]
        return [format_findings(c for c, v in zip(classes, row, strict=True) if v >= 0.5)
                for row in np.asarray(targets).reshape(len(targets), len(classes))]

    def decide(self, probs: np.ndarray, classes: Sequence[str],
               thresholds: Sequence[float] | None = None) -> list[list[str]]:
        """Per row of probabilities (N, K): the predicted class (a list of one), or the findings
        whose probability reaches their threshold (0.5 where none is given)."""
        if not self.multilabel:
            return [[classes[int(i)]] for i in np.argmax(probs, axis=1)] if len(probs) else []
        cut = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds)
        return [[c for c, hit in zip(classes, row >= cut, strict=True) if hit] for row in probs]

    def label_text(self, decided: Sequence[str]) -> str:
        """One decision as the stored text label."""
        return format_findings(decided) if self.multilabel else decided[0]

    def canonical(self, label: str | Sequence[str], classes: Sequence[str]) -> str:
        """A ground-truth label given by a person (feedback) as the stored text, checked
        against the model's outputs: one of the classes, or findings given as ``A|B`` text,
        ``No Finding`` or a list (``[]``: no finding). :class:`LabelError` says what is wrong."""
        if not self.multilabel:
            if not isinstance(label, str):
                raise LabelError(f"label {list(label)!r}: a multiclass model takes one class "
                                 f"name, one of {list(classes)}")
            if label.strip() not in classes:
                raise LabelError(f"label {label!r} is not one of the model's classes "
                                 f"{list(classes)}")
            return label.strip()
        if isinstance(label, str):
            if not label.strip():
                raise LabelError(f"an empty label; give the findings as 'A|B', or "
                                 f"{NO_FINDING!r} for none")
            findings = parse_findings(label)
        else:
            findings = parse_findings(FINDING_SEPARATOR.join(label))
        unknown = [f for f in findings if f not in classes]
        if unknown:
            raise LabelError(f"label {label!r}: {', '.join(map(repr, unknown))} "
                             f"{'is not a finding' if len(unknown) == 1 else 'are not findings'}"
                             f" of the model; its findings are {list(classes)} (or "
                             f"{NO_FINDING!r} for none)")
        return format_findings(findings)


def label_task(task: Task) -> LabelTask:
    return LabelTask(Task(task))
