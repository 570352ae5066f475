"""Two-sample tests between a reference window (the training baseline) and live traffic.

Why not evidently or alibi-detect: alibi-detect pins numpy<2 and Pillow<11 (it downgrades both
here), evidently brings ~1 GB (plotly, nltk, statsmodels) for the same KS/PSI arithmetic. The
tests below are scipy's KS test, PSI, and a kernel MMD with a permutation p-value, which is
what alibi-detect's MMDDrift computes, in a few lines of numpy.

One decision over many tests: each test's p-value is compared with ``alpha / n_tests``
(Bonferroni), so the chance of any false alarm on in-distribution traffic stays <= ``alpha``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

#: Embedding tests work on at most this many rows per side: the kernel matrix is (2n)^2.
MAX_MMD_ROWS = 1000


@dataclass
class TestResult:
    name: str  # "intensity:mean", "embedding", "prediction:p_malignant"
    kind: str  # "ks", "mmd"
    statistic: float
    p_value: float
    psi: float | None = None


@dataclass
class DriftReport:
    tests: list[TestResult]
    alpha: float
    n_reference: int
    n_current: int
    drift: bool = field(init=False)
    threshold: float = field(init=False)

    def __post_init__(self) -> None:
        self.threshold = self.alpha / max(len(self.tests), 1)
        self.drift = any(t.p_value < self.threshold for t in self.tests)

    @property
    def min_p_value(self) -> float:
        return min((t.p_value for t in self.tests), default=1.0)

    @property
    def drifted(self) -> list[TestResult]:
        return [t for t in self.tests if t.p_value < self.threshold]

    def to_dict(self) -> dict[str, Any]:
        return {"drift": self.drift, "alpha": self.alpha, "threshold": self.threshold,
                "n_reference": self.n_reference, "n_current": self.n_current,
                "min_p_value": self.min_p_value, "tests": [asdict(t) for t in self.tests]}


def ks_test(name: str, reference: np.ndarray, current: np.ndarray) -> TestResult:
    res = stats.ks_2samp(reference, current)
    return TestResult(name, "ks", float(res.statistic), float(res.pvalue),
                      psi=psi(reference, current))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's deciles (> 0.25 reads as a big shift)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        return 0.0
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.histogram(reference, edges)[0] / max(reference.size, 1)
    cur = np.histogram(current, edges)[0] / max(current.size, 1)
    ref, cur = np.clip(ref, 1e-4, None), np.clip(cur, 1e-4, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def mmd_test(reference: np.ndarray, current: np.ndarray, n_permutations: int = 200,
             seed: int = 0, name: str = "embedding") -> TestResult:
    """Squared MMD with a Gaussian kernel (median-distance bandwidth) and a permutation p-value.

    With the pooled kernel matrix K and a signed weight vector s (1/m on reference rows, -1/n on
    current rows), MMD^2 = s' K s, so all permutations cost one matrix product.
    """
    rng = np.random.default_rng(seed)
    x, y = _subsample(reference, rng), _subsample(current, rng)
    z = np.concatenate([x, y]).astype(np.float64)
    # principal axes of the pooled sample: distances in 512-d are dominated by noise, and a
    # projection fitted on both sides alike keeps the permutation test exact
    z = _pca(z, dims=min(32, z.shape[1]))
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    bandwidth = np.median(d2[np.triu_indices_from(d2, k=1)]) or 1.0
    k = np.exp(-d2 / bandwidth)
    m, n = x.shape[0], y.shape[0]
    s = np.concatenate([np.full(m, 1.0 / m), np.full(n, -1.0 / n)])
    observed = float(s @ k @ s)
    perms = np.stack([rng.permutation(s) for _ in range(n_permutations)], axis=1)
    null = np.einsum("ip,ip->p", perms, k @ perms)
    p_value = (1.0 + float(np.sum(null >= observed))) / (1.0 + n_permutations)
    return TestResult(name, "mmd", observed, p_value)


def compare(reference: dict[str, np.ndarray], current: dict[str, np.ndarray],
            reference_embeddings: np.ndarray | None, current_embeddings: np.ndarray | None,
            alpha: float, n_permutations: int = 200) -> DriftReport:
    """KS on every scalar feature both sides have, MMD on the embeddings when both exist."""
    tests = [ks_test(key, reference[key], current[key])
             for key in sorted(reference.keys() & current.keys())
             if reference[key].size and current[key].size]
    if (reference_embeddings is not None and current_embeddings is not None
            and len(reference_embeddings) > 1 and len(current_embeddings) > 1):
        tests.append(mmd_test(reference_embeddings, current_embeddings, n_permutations))
    n_cur = max((v.size for v in current.values()), default=0)
    n_ref = max((v.size for v in reference.values()), default=0)
    return DriftReport(tests, alpha, n_ref, n_cur)


def _subsample(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = np.asarray(a).reshape(len(a), -1)
    if len(a) <= MAX_MMD_ROWS:
        return a
    return a[rng.choice(len(a), MAX_MMD_ROWS, replace=False)]


def _pca(z: np.ndarray, dims: int) -> np.ndarray:
    scale = z.std(axis=0)
    scale[scale == 0] = 1.0
    zs = (z - z.mean(axis=0)) / scale
    _, _, vt = np.linalg.svd(zs, full_matrices=False)
    return zs @ vt[:dims].T
