"""What one prediction says, for either task: the same fields in the HTTP answer, the CSV
answer, ``medops predict`` and the rows of ``medops batch-predict``.

- ``probabilities``: ``{class: p}``; softmax over the classes (multiclass) or one independent
  sigmoid per finding (multilabel);
- ``label``: the predicted class, or the positive findings as one canonical text (sorted,
  ``|``-joined; ``No Finding`` for none), the form feedback labels and captures use;
- ``findings`` (multilabel only): the positive findings as a list, each finding's probability
  at or above the threshold stored with the model (chosen on the validation split; 0.5 where
  none was stored).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medops.data.labels import FINDING_SEPARATOR
from medops.registry import LoadedModel

FINDINGS = "findings"


def predictions(loaded: LoadedModel, probs: np.ndarray) -> list[dict[str, Any]]:
    """One answer per row of ``probs`` (N, K), as the model's task reads it."""
    probs = np.asarray(probs, dtype=np.float64).reshape(len(probs), len(loaded.classes))
    labels = loaded.labels
    out: list[dict[str, Any]] = []
    for row, decided in zip(probs, loaded.decide(probs), strict=True):
        answer: dict[str, Any] = {"label": labels.label_text(decided)}
        if labels.multilabel:
            answer[FINDINGS] = list(decided)
        answer["probabilities"] = dict(zip(loaded.classes, row.tolist(), strict=True))
        out.append(answer)
    return out


def findings_text(findings: list[str]) -> str:
    """The ``findings`` column of a table: the positive findings ``|``-joined, empty for none."""
    return FINDING_SEPARATOR.join(findings)
