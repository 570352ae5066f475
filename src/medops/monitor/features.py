"""What the drift tests compare: named scalar features and the embeddings of a set of rows.

The same function reads the baseline and a capture window (they share their column names), so
both sides of every test are extracted alike. Test names are ``group:feature``; the group
(``intensity``, ``prediction``) is the unit of the weighted Bonferroni split in
:mod:`medops.monitor.drift`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medops.config.enums import Task
from medops.data.labels import label_task
from medops.monitor.baseline import STAT_COLUMNS, matrix

# A reference statistic whose spread is this small relative to its size is fixed by the
# preprocessing (pre_mean and pre_std under per-image z-scoring): it carries no information,
# and rounding noise alone could make a KS test on it fire.
_CONSTANT_RTOL = 1e-6


@dataclass
class Features:
    scalars: dict[str, np.ndarray]  # test name -> one value per row (NaN: not measured)
    embeddings: np.ndarray | None  # (N, F)
    probabilities: np.ndarray  # (N, K)

    @property
    def n(self) -> int:
        return len(self.probabilities)


def extract(frame: pd.DataFrame, classes: list[str],
            task: Task = Task.MULTICLASS) -> Features:
    """Intensity statistics, class probabilities and embeddings of ``frame``'s rows.

    Softmax probabilities of two classes sum to one: the first is left out, it would repeat
    the test of the second. A multi-label model's per-finding sigmoid probabilities are
    independent columns: each is tested (``prediction:p_<finding>``)."""
    scalars = {f"intensity:{c}": frame[c].to_numpy(np.float64)
               for c in STAT_COLUMNS if c in frame.columns}
    probs = matrix(frame["probabilities"]).astype(np.float64) if len(frame) \
        else np.zeros((0, len(classes)))
    if probs.shape[1] != len(classes):
        raise ValueError(f"rows have {probs.shape[1]} class probabilities, the model "
                         f"{len(classes)} classes")
    every = len(classes) > 2 or label_task(task).multilabel
    for k in (range(len(classes)) if every else [len(classes) - 1]):
        scalars[f"prediction:p_{classes[k]}"] = probs[:, k]
    emb = matrix(frame["embedding"]) if len(frame) else np.zeros((0, 0))
    embeddings = emb.astype(np.float32) if emb.ndim == 2 and emb.shape[1] > 0 else None
    return Features(scalars, embeddings, probs)


def informative(reference: Features) -> list[str]:
    """The scalar features worth testing: measured in the reference and not constant there."""
    keep = []
    for name, values in reference.scalars.items():
        v = values[np.isfinite(values)]
        if v.size < 2:
            continue
        if float(np.std(v)) <= _CONSTANT_RTOL * max(1.0, float(np.abs(np.median(v)))):
            continue
        keep.append(name)
    return keep
