"""Monitoring a multi-label model: per-finding quality from finding-list feedback, a drift test
per finding probability, a baseline of multi-hot labels, and a whole monitor check of a
registered multi-label version (report and CLI)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medops.config.enums import Task
from medops.data.labels import format_findings, label_task, parse_findings
from medops.monitor import CaptureRecord, CaptureStore, Feedback
from medops.monitor.drift import compare, thresholds
from medops.monitor.features import extract, informative
from medops.monitor.quality import assess
from tests.serve import multilabel
from tests.serve.multilabel import FINDINGS, THRESHOLDS


def test_quality_per_finding_with_known_numbers() -> None:
    labels: list[str | None] = ["A|B", "A", "B", "No Finding",
                                None,  # no feedback
                                "A|Z",  # a finding the model does not have
                                "No Finding|A"]  # not a finding list
    probs = np.array([[0.9, 0.2], [0.4, 0.5], [0.6, 0.7], [0.1, 0.6],
                      [0.5, 0.5], [0.9, 0.9], [0.9, 0.9]])
    report = assess(labels, probs, ["A", "B"], {"test_macro_auc": 0.9, "test_auc_A": 0.9},
                    max_drop=0.05, min_labels=4, alpha=0.05, task=Task.MULTILABEL,
                    thresholds=[0.5, 0.15])
    assert report.n_labelled == 4 and report.evaluated
    a, b = report.findings
    # A: truth 1 1 0 0, p .9 .4 .6 .1: 3 of 4 positive-negative pairs ordered; at 0.5 it
    # calls rows 1 and 3: one right of two called, one found of two.
    assert (a.name, a.n, a.positives, a.threshold) == ("A", 4, 2, 0.5)
    assert (a.auc, a.precision, a.recall, a.f1) == pytest.approx((0.75, 0.5, 0.5, 0.5))
    assert a.reference_auc == 0.9
    # B: truth 1 0 1 0, p .2 .5 .7 .6: 2 of 4 pairs; at 0.15 every row is called positive.
    assert (b.auc, b.precision, b.recall, b.f1) == pytest.approx((0.5, 0.5, 1.0, 2 / 3))
    assert b.reference_auc is None
    # micro: the 8 image-finding pairs pooled, 10 of 16 pairs ordered
    assert report.live["macro_auc"] == pytest.approx(0.625)
    assert report.live["micro_auc"] == pytest.approx(0.625)
    assert report.live["f1_macro"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert report.live["auc_A"] == pytest.approx(0.75)
    assert report.live["f1_B"] == pytest.approx(2 / 3)
    # only the macro AUC has enough labels to be tested (a finding needs 10 of each)
    assert [c.name for c in report.checks] == ["macro_auc"]
    assert report.checks[0].threshold == pytest.approx(0.05)
    assert json.dumps(report.to_dict())  # JSON-able: NaN as null


def test_quality_finds_the_finding_that_degraded() -> None:
    rng = np.random.default_rng(0)
    n = 300
    truth = rng.random((n, 2)) < 0.4
    probs = np.column_stack([np.clip(0.2 + 0.6 * truth[:, 0] + rng.normal(0, 0.1, n), 0, 1),
                             rng.random(n)])  # A still separates; B has become a coin
    labels: list[str | None] = [format_findings(f for f, t in zip("AB", row, strict=True) if t)
                                for row in truth]
    reference = {"test_macro_auc": 0.95, "test_auc_A": 0.95, "test_auc_B": 0.95,
                 "test_recall_A": 0.9}
    report = assess(labels, probs, ["A", "B"], reference, max_drop=0.05, min_labels=30,
                    alpha=0.05, task=Task.MULTILABEL, thresholds=[0.5, 0.5])
    checks = {c.name: c for c in report.checks}
    assert set(checks) == {"macro_auc", "auc_A", "auc_B", "recall_A"}
    assert checks["auc_A"].live > 0.95 and not checks["auc_A"].degraded
    assert not checks["recall_A"].degraded
    assert abs(checks["auc_B"].live - 0.5) < 0.1 and checks["auc_B"].degraded
    assert checks["macro_auc"].degraded
    assert {c.name for c in report.degraded} == {"macro_auc", "auc_B"}
    assert all(c.threshold == pytest.approx(0.05 / 4) for c in report.checks)


def _frame(probs: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"probabilities": list(probs),
                         "embedding": list(rng.normal(size=(len(probs), 4)))})


def test_drift_tests_each_finding_probability() -> None:
    rng = np.random.default_rng(1)
    reference = rng.beta(2, 5, size=(400, 2))
    current = rng.beta(2, 5, size=(200, 2))
    current[:, 1] = rng.beta(5, 2, size=200)  # finding B is now called far more often
    ref = extract(_frame(reference, rng), ["A", "B"], Task.MULTILABEL)
    cur = extract(_frame(current, rng), ["A", "B"], Task.MULTILABEL)
    # two findings: two independent columns, both tested (a softmax over two classes has one)
    assert informative(ref) == ["prediction:p_A", "prediction:p_B"]
    assert list(extract(_frame(reference, rng), ["A", "B"]).scalars) == ["prediction:p_B"]
    report = compare(ref.scalars, cur.scalars, ref.embeddings, cur.embeddings, alpha=0.05)
    by_name = {t.name: t for t in report.tests}
    assert by_name["prediction:p_B"].drifted and not by_name["prediction:p_A"].drifted
    # the prediction group's half of alpha is shared by its findings
    assert by_name["prediction:p_A"].threshold == pytest.approx(0.05 / 2 / 2)
    assert thresholds(list(by_name), 0.05) == [t.threshold for t in report.tests]


# -- a registered multi-label version, its baseline and its live traffic ----------------------

def _reference(folder: Path, n: int, seed: int) -> tuple[Any, list[tuple[str, int | None]]]:
    from medops.preprocess.transforms import preprocess_file

    files = []
    for i in range(n):
        path = folder / f"ref-{seed}-{i}.png"
        path.write_bytes(multilabel.png(seed + i))
        files.append(path)
    x = np.stack([preprocess_file(p, None, multilabel.profile()) for p in files])
    return x, [(str(p), None) for p in files]


def _truth(rng: np.random.Generator, n: int) -> list[str]:
    return [format_findings(f for f in FINDINGS if rng.random() < 0.4) for _ in range(n)]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    from medops.monitor.baseline import ReferenceSplit, build_baseline
    from medops.project import Project

    folder = tmp_path_factory.mktemp("multilabel-monitor")
    root = folder / "proj"
    Project.init(root, name="multilabel-monitor")
    with (root / "medops.yaml").open("a") as f:
        f.write("\nmonitor: {min_samples: 30, permutations: 200, quality: {min_labels: 20}}\n")
    project = Project.load(root)
    net = multilabel.model()
    rng = np.random.default_rng(0)
    lt = label_task(Task.MULTILABEL)
    splits = []
    for name, seed in (("val", 1000), ("test", 2000)):
        x, files = _reference(folder, 30, seed)
        splits.append(ReferenceSplit(name, x, lt.targets(_truth(rng, 30), FINDINGS), files))
    test_metrics = {"test_macro_auc": 0.5, "test_auc_Nodule": 0.5}
    baseline = build_baseline(net, FINDINGS, multilabel.profile(), splits, raw_sample=20,
                              thresholds=[THRESHOLDS[f] for f in FINDINGS],
                              meta={"test_metrics": test_metrics})
    baseline_file = baseline.save(folder / "baseline.parquet")
    version = multilabel.register(project, net, folder, extra={"baseline": baseline_file})
    return project, version


def test_baseline_keeps_finding_lists(monitored: tuple[Any, str]) -> None:
    from medops.monitor.baseline import BASELINE_FILE, Baseline

    project, version = monitored
    stored = Baseline.load(project.registry.download(version) / "artifacts" / BASELINE_FILE)
    assert stored.task is Task.MULTILABEL and stored.classes == FINDINGS
    assert len(stored.frame) == 60
    assert stored.frame["label"].str.contains("|", regex=False).any()
    assert (stored.frame["label"] == "No Finding").any()
    for label, predicted, probs in zip(stored.frame["label"], stored.frame["predicted"],
                                       stored.frame["probabilities"], strict=True):
        assert label == format_findings(parse_findings(label))  # canonical text
        # Cardiomegaly (threshold 0) is always predicted, Effusion (1.5) never
        expected = ["Cardiomegaly"] + (["Nodule"] if probs[2] >= 0.5 else [])
        assert predicted == format_findings(expected)


def test_monitor_reports_quality_per_finding(monitored: tuple[Any, str]) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app
    from medops.monitor.run import MonitorStatus, run_monitor
    from medops.serve.batcher import forward
    from medops.serve.inputs import prepare

    project, version = monitored
    loaded = project.registry.load(version)
    blobs = [multilabel.png(5000 + i) for i in range(40)]
    prepared = [prepare(b, loaded.profile, 10_000_000) for b in blobs]
    probs, feats = forward(loaded, np.stack([p.x for p in prepared]))
    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    decided = loaded.decide(probs)
    records = [CaptureRecord(
        request_id=f"ml{i}", image=0, time=start + timedelta(seconds=i),
        model_name=project.registry.name, model_version=version,
        predicted=format_findings(d), classes=FINDINGS, probabilities=pr.tolist(),
        input_format=p.input_format, height=p.height, width=p.width, stats=p.stats,
        embedding=f.tolist(), task="multilabel")
        for i, (p, pr, f, d) in enumerate(zip(prepared, probs, feats, decided, strict=True))]
    store = CaptureStore.under(project.artifacts)
    store.append(records)
    truth = _truth(np.random.default_rng(7), 30)
    store.add_feedback([Feedback(f"ml{i}", label) for i, label in enumerate(truth)])

    result = run_monitor(project, window="1h")
    assert result.status in (MonitorStatus.OK, MonitorStatus.DRIFT), result.message
    names = {t.name for t in result.drift.tests} if result.drift else set()
    assert {f"prediction:p_{f}" for f in FINDINGS} & names  # per-finding probability tests
    quality = result.quality
    assert quality is not None and quality.n_labelled == 30 and quality.evaluated
    # the version's own thresholds, read from its model folder
    assert [(f.name, f.threshold) for f in quality.findings] == \
        [(f, THRESHOLDS[f]) for f in FINDINGS]
    y = label_task(Task.MULTILABEL).targets(truth, FINDINGS)
    nodule = quality.findings[2]
    assert nodule.positives == int(y[:, 2].sum())
    from sklearn.metrics import roc_auc_score

    assert nodule.auc == pytest.approx(roc_auc_score(y[:, 2], probs[:30, 2]))
    assert nodule.reference_auc == 0.5
    assert math.isfinite(quality.live["macro_auc"]) and "micro_auc" in quality.live
    assert "macro_auc" in {c.name for c in quality.checks}
    assert result.report is not None
    html = result.report.read_text()
    assert "Per finding" in html and "Nodule" in html

    out = CliRunner().invoke(app, ["monitor", "--window", "1h", "-C", str(project.root)],
                             env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for f in FINDINGS:
        assert f"finding {f}: AUC" in out.output
    as_json = CliRunner().invoke(app, ["monitor", "--window", "1h", "-C", str(project.root),
                                       "--json"])
    findings = json.loads(as_json.output)["quality"]["findings"]
    assert [f["name"] for f in findings] == FINDINGS
