"""Two-sample tests between a reference window (the training baseline) and live traffic.

Why not evidently or alibi-detect: alibi-detect pins numpy<2 and Pillow<11 (it downgrades both
here), evidently brings ~1 GB (plotly, nltk, statsmodels) for the same KS/PSI arithmetic. The
tests below are scipy's KS test, PSI, and a kernel MMD with a permutation p-value, which is
what alibi-detect's MMDDrift computes, in a few lines of numpy.

One decision over many tests, by a weighted Bonferroni: ``alpha`` is split equally between
the groups of tests present (``intensity``, ``embedding``, ``prediction``: the part before the
``:`` of a test's name), then equally between the tests of a group, so the chance of any false
alarm on in-distribution traffic stays <= ``alpha``. A plain ``alpha / n_tests`` would let the
18 correlated intensity statistics drown the single embedding test: with 30 tests its
threshold (0.0017 for alpha 0.05) lies below the smallest p-value 200 permutations can give
(1/201), so the MMD could never raise an alarm. :func:`min_permutations` says how many
permutations a threshold needs, and :func:`compare` uses at least that many.

A multi-label model's findings each have a test of their own probability
(``prediction:p_<finding>``, KS): its sigmoid outputs are separate columns, not a distribution
over classes. They share the ``prediction`` group's part of alpha equally, so eighteen findings
raise no more false alarms between them than one class probability would.
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
    name: str  # "intensity:pre_mean", "embedding", "prediction:p_malignant"
    kind: str  # "ks", "mmd"
    statistic: float
    p_value: float
    psi: float | None = None
    threshold: float = float("nan")  # set by DriftReport: this test's share of alpha

    @property
    def group(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def drifted(self) -> bool:
        return self.p_value < self.threshold


def thresholds(names: list[str], alpha: float) -> list[float]:
    """Each test's weighted-Bonferroni threshold (see the module docstring); they sum to alpha."""
    groups: dict[str, int] = {}
    for name in names:
        groups[name.split(":", 1)[0]] = groups.get(name.split(":", 1)[0], 0) + 1
    return [alpha / len(groups) / groups[n.split(":", 1)[0]] for n in names]


def min_permutations(threshold: float) -> int:
    """Permutations for which the smallest possible p-value, 1/(n+1), is a fifth of
    ``threshold``: strong drift then reaches the threshold with room to spare."""
    return int(np.ceil(5.0 / threshold))


@dataclass
class DriftReport:
    tests: list[TestResult]
    alpha: float
    n_reference: int
    n_current: int
    drift: bool = field(init=False)

    def __post_init__(self) -> None:
        for t, limit in zip(self.tests, thresholds([t.name for t in self.tests], self.alpha),
                            strict=True):
            t.threshold = limit
        self.drift = any(t.drifted for t in self.tests)

    @property
    def min_p_value(self) -> float:
        return min((t.p_value for t in self.tests), default=1.0)

    @property
    def drifted(self) -> list[TestResult]:
        return [t for t in self.tests if t.drifted]

    def group_min_p(self) -> dict[str, float]:
        """The smallest p-value of each group of tests."""
        out: dict[str, float] = {}
        for t in self.tests:
            out[t.group] = min(out.get(t.group, 1.0), t.p_value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"drift": self.drift, "alpha": self.alpha,
                "n_reference": self.n_reference, "n_current": self.n_current,
                "min_p_value": self.min_p_value,
                "tests": [{**asdict(t), "drifted": t.drifted} for t in self.tests]}


def ks_test(name: str, reference: np.ndarray, current: np.ndarray) -> TestResult:
    # scipy's exact p-value costs O(n*m); past a million pairs the asymptotic one is as good
    method = "asymp" if reference.size * current.size > 1_000_000 else "auto"
    res = stats.ks_2samp(reference, current, method=method)
    p_value = float(res.pvalue)
    return TestResult(name, "ks", float(res.statistic), 1.0 if p_value != p_value else p_value,
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
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # sklearn dep

    # One BLAS thread: the matrices are small (at most 2000 rows), and on a machine busy with
    # serving or training, threads spinning for a core cost 10x the time they save.
    with threadpool_limits(1, user_api="blas"):
        return _mmd(reference, current, n_permutations, seed, name)


def _mmd(reference: np.ndarray, current: np.ndarray, n_permutations: int, seed: int,
         name: str) -> TestResult:
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
    """KS on every scalar feature both sides have, MMD on the embeddings when both exist.

    Keys are test names (``group:feature``); NaN values (a statistic not measured for some
    rows) are left out of their test. The MMD runs at least :func:`min_permutations` of its
    threshold, so ``n_permutations`` never makes the embedding test unable to fire."""
    ref = {k: _finite(v) for k, v in reference.items()}
    cur = {k: _finite(v) for k, v in current.items()}
    keys = [k for k in sorted(ref.keys() & cur.keys()) if ref[k].size and cur[k].size]
    with_mmd = (reference_embeddings is not None and current_embeddings is not None
                and len(reference_embeddings) > 1 and len(current_embeddings) > 1)
    names = keys + (["embedding"] if with_mmd else [])
    tests = [ks_test(key, ref[key], cur[key]) for key in keys]
    if with_mmd:
        assert reference_embeddings is not None and current_embeddings is not None
        limit = thresholds(names, alpha)[-1]
        tests.append(mmd_test(reference_embeddings, current_embeddings,
                              max(n_permutations, min_permutations(limit))))
    n_cur = max([v.size for v in cur.values()]
                + [len(current_embeddings) if current_embeddings is not None else 0])
    n_ref = max([v.size for v in ref.values()]
                + [len(reference_embeddings) if reference_embeddings is not None else 0])
    return DriftReport(tests, alpha, n_ref, n_cur)


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    return a[np.isfinite(a)]


def _subsample(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = np.asarray(a).reshape(len(a), -1)
    if len(a) <= MAX_MMD_ROWS:
        return a
    return a[rng.choice(len(a), MAX_MMD_ROWS, replace=False)]


def _pca(z: np.ndarray, dims: int) -> np.ndarray:
    scale = z.std(axis=0)
    scale[scale == 0] = 1.0
    zs = (z - z.mean(axis=0)) / scale
    # eigenvectors of the (F, F) scatter matrix: the SVD's right singular vectors at a
    # fraction of the cost for N >> F
    _, vectors = np.linalg.eigh(zs.T @ zs)
    return zs @ vectors[:, ::-1][:, :dims]
