"""A multi-label model's life as users live it, through the CLI: synthetic multi-label DICOM
with an NIH-format label CSV -> `medops run` (gated on the macro AUC) -> `medops models
approve` -> `medops serve` answering with per-finding probabilities and the positive findings
-> radiologists' findings as feedback (POST /v1/feedback, and `medops feedback import` for a
CSV) -> `medops monitor` reporting the live quality of every finding."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from medops.data.labels import format_findings
from medops.demo.multilabel import MultilabelImage, write_multilabel_dataset
from medops.monitor import CaptureStore
from tests.agent.conftest import MEDOPS, make_agent_project

from .conftest import ServeProcess

pytestmark = pytest.mark.slow  # a training, a server and the CLI: about a minute on two cores

FINDINGS = ("Effusion", "Cardiomegaly", "Nodule")
NAME = "ml-e2e-classifier"
TRAFFIC = 36  # served images; each gets its findings back as feedback


def _medops(root: Path, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([MEDOPS, *args, "-C", str(root)], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"medops {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _settings(labels_csv: Path) -> dict[str, Any]:
    return {
        "task": "multilabel",
        "data.source.path": "data/raw/images",
        "data.labels": {"from": "csv", "csv": str(labels_csv), "id_column": "Image Index",
                        "label_column": "Finding Labels", "patient_column": "Patient ID"},
        "executor.kind": "serial",  # ~100 small images: a process pool costs more than it saves
        "train.epochs": 2,
        "gate.metric": "macro_auc",
        "gate.min": 0.7,
        "serve.poll_seconds": 0.5,
        "monitor.window": "1h",
        "monitor.min_samples": TRAFFIC,
        "monitor.quality.min_labels": 20,
    }


def _predict(client: httpx.Client, image: MultilabelImage) -> dict[str, Any]:
    r = client.post(f"/v1/models/{NAME}/predict", content=image.path.read_bytes(),
                    headers={"content-type": "application/dicom"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_multilabel_run_gate_approve_serve_feedback_monitor(
        tmp_path: Path, servers: Callable[[Path], ServeProcess]) -> None:
    data = write_multilabel_dataset(tmp_path / "data", n_patients=24, images_per_patient=3,
                                    size=32, findings=FINDINGS, seed=0)
    root = tmp_path / "proj"
    make_agent_project(root, data.root, name="ml-e2e",
                       settings=_settings(root / "data" / "raw" / "labels.csv"))

    # `medops run`: the gate judges the macro AUC over the findings
    run = json.loads(_medops(root, "run", "--json"))
    assert run["status"] == "succeeded", run
    steps = {s["name"]: s["outputs"] for s in run["steps"]}
    findings = sorted(FINDINGS)
    assert steps["split"]["classes"] == findings
    gate = steps["gate"]
    assert gate["metric"] == "macro_auc" and gate["passed"], gate
    assert gate["value"] == steps["evaluate"]["metrics"]["test_macro_auc"] >= 0.7
    assert steps["register"]["version"] == "1" and steps["register"]["alias"] == "candidate"

    # a person approves it: it goes live
    _medops(root, "models", "approve", NAME, "1", "--by", "Dr. Lee", "--note", "reviewed")
    server = servers(root)
    assert server.ready_version() == "1"

    # new patients' films, served: a probability per finding, the positive findings, and the
    # label as the findings' canonical text
    traffic = write_multilabel_dataset(tmp_path / "traffic", n_patients=TRAFFIC // 3,
                                       images_per_patient=3, size=32, findings=FINDINGS,
                                       seed=1)
    answers = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for image in traffic.images:
            body = _predict(client, image)
            [answer] = body["predictions"]
            assert list(answer["probabilities"]) == findings
            assert set(answer["findings"]) <= set(findings)
            assert answer["label"] == format_findings(answer["findings"])
            answers.append((body["request_id"], image))

        # the radiologists' findings: half through the API (a list, or NIH-style text)...
        half = len(answers) // 2
        for i, (request_id, image) in enumerate(answers[:half]):
            label: Any = list(image.findings) if i % 2 else format_findings(image.findings)
            r = client.post("/v1/feedback", json={"request_id": request_id, "label": label})
            assert r.status_code == 202, r.text
        r = client.post("/v1/feedback", json={"request_id": answers[0][0],
                                              "label": "Effusion|Pneumothorax"})
        assert r.status_code == 422 and "'Pneumothorax' is not a finding" in r.text

    # ...and half as a CSV file, once the server has stored its captures
    store = CaptureStore.under(root / ".medops" / "artifacts")
    ids = {request_id for request_id, _ in answers}
    deadline = time.monotonic() + 30
    while not ids <= set(store.read()["request_id"]):
        assert time.monotonic() < deadline, "the served predictions were never captured"
        time.sleep(0.2)
    csv_file = tmp_path / "reads.csv"
    csv_file.write_text("request_id,label\n" + "".join(
        f"{request_id},{format_findings(image.findings)}\n"
        for request_id, image in answers[half:]))
    assert f"imported {len(answers) - half} labels" in \
        _medops(root, "feedback", "import", str(csv_file))

    # `medops monitor`: every finding's live quality from the feedback
    deadline = time.monotonic() + 30
    while len(set(store.feedback()["request_id"]) & ids) < TRAFFIC:  # the API's: in the
        assert time.monotonic() < deadline, "the feedback was never stored"  # background
        time.sleep(0.2)
    report = json.loads(_medops(root, "monitor", "--json"))
    assert report["status"] in ("ok", "drift") and report["n_current"] == TRAFFIC
    tested = {t["name"] for t in report["drift"]["tests"]}
    assert {f"prediction:p_{f}" for f in findings} <= tested
    quality = report["quality"]
    assert quality["evaluated"]
    by_finding = {f["name"]: f for f in quality["findings"]}
    assert list(by_finding) == findings
    for name, f in by_finding.items():
        assert f["n"] == TRAFFIC
        assert f["positives"] == sum(name in image.findings for _, image in answers)
        assert f["reference_auc"] is not None
    # the model learnt the findings: new patients' films are ranked well (0.93 when written)
    assert quality["live"]["macro_auc"] >= 0.7
    assert "macro_auc" in {c["name"] for c in quality["checks"]}

    text = _medops(root, "monitor")
    for name in findings:
        assert f"finding {name}: AUC" in text
    assert "report:" in text
