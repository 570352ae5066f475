"""Serving a multi-label model: per-finding probabilities and the positive findings in every
output (JSON, CSV, captures, `predict`, `batch-predict`), and feedback given as finding lists,
checked against the model's findings."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from medops.data.labels import format_findings
from medops.errors import LabelError
from medops.monitor import CaptureStore
from medops.project import Project

from . import multilabel
from .conftest import ServerThread, serve_config, wait_ready
from .multilabel import FINDINGS, THRESHOLDS


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("multilabel-serve") / "proj"
    Project.init(root, name="multilabel")
    proj = Project.load(root)
    assert multilabel.register(proj, multilabel.model(), root.parent) == "1"
    return proj


@pytest.fixture(scope="module")
def client(project: Project) -> Iterator[httpx.Client]:
    from medops.serve import create_app

    app = create_app(project.registry, serve_config(),
                     capture=CaptureStore.under(project.artifacts))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        wait_ready(c)
        yield c


def _predict(client: httpx.Client, project: Project, *blobs: bytes,
             accept: str | None = None) -> httpx.Response:
    files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    headers = {"accept": accept} if accept else {}
    return client.post(f"/v1/models/{project.config.model_name}/predict", files=files,
                       headers=headers)


def _expected(probabilities: dict[str, float]) -> list[str]:
    return [f for f in FINDINGS if probabilities[f] >= THRESHOLDS[f]]


def test_answers_carry_per_finding_probabilities_and_the_positive_findings(
        client: httpx.Client, project: Project) -> None:
    blobs = [multilabel.png(i) for i in range(3)]
    expected = project.registry.load("1").predict_images(blobs)
    r = _predict(client, project, *blobs)
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    for answer, probs in zip(answers, expected, strict=True):
        assert list(answer["probabilities"]) == FINDINGS
        got = np.array([answer["probabilities"][f] for f in FINDINGS])
        np.testing.assert_allclose(got, probs, atol=1e-5)
        assert not np.isclose(got.sum(), 1.0)  # independent sigmoids, not a softmax
        # the stored thresholds decide: Cardiomegaly (0) always, Effusion (1.5) never
        assert answer["findings"] == _expected(answer["probabilities"])
        assert "Cardiomegaly" in answer["findings"] and "Effusion" not in answer["findings"]
        assert answer["label"] == format_findings(answer["findings"])

    csv_answer = _predict(client, project, *blobs, accept="text/csv")
    assert csv_answer.status_code == 200, csv_answer.text
    rows = list(csv.DictReader(io.StringIO(csv_answer.text)))
    assert list(rows[0]) == [*(f"p_{f}" for f in FINDINGS), "label", "findings"]
    assert [r["findings"] for r in rows] == ["|".join(a["findings"]) for a in answers]
    assert [r["label"] for r in rows] == [a["label"] for a in answers]


def test_feedback_takes_finding_lists_and_refuses_unknown_findings(
        client: httpx.Client, project: Project) -> None:
    ids = [_predict(client, project, multilabel.png(10 + i)).json()["request_id"]
           for i in range(4)]
    given = [("Nodule|Cardiomegaly", "Cardiomegaly|Nodule"), (["Effusion"], "Effusion"),
             ("No Finding", "No Finding"), ([], "No Finding")]
    for request_id, (label, _) in zip(ids, given, strict=True):
        r = client.post("/v1/feedback", json={"request_id": request_id, "label": label})
        assert r.status_code == 202, r.text

    refused = [
        ({"request_id": ids[0], "label": "Cardiomegaly|Pneumonia"},
         ["'Pneumonia' is not a finding of the model", "Cardiomegaly", "No Finding"]),
        ({"request_id": ids[0], "label": ["Pneumonia", "Mass"]},
         ["'Mass', 'Pneumonia' are not findings"]),
        ({"request_id": ids[0], "label": "No Finding|Nodule"},
         ["'No Finding' together with findings"]),
        ([{"request_id": ids[0], "label": "Nodule"}, {"request_id": ids[1], "label": "Mass"}],
         ["feedback item 2 of 2", "'Mass'"]),
    ]
    for body, words in refused:
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert all(w in message for w in words), message

    # Only the accepted labels are stored, in their canonical text.
    store = CaptureStore.under(project.artifacts)
    deadline = time.monotonic() + 15
    while True:
        frame = store.read()
        rows = frame[frame["request_id"].isin(ids)].set_index("request_id")
        if len(rows) == len(ids) and rows["label"].notna().all():
            break
        assert time.monotonic() < deadline, f"feedback not joined in time:\n{rows}"
        time.sleep(0.2)
    assert [rows.loc[i, "label"] for i in ids] == [stored for _, stored in given]
    for i in ids:
        assert rows.loc[i, "task"] == "multilabel"
        assert list(rows.loc[i, "classes"]) == FINDINGS
        probs = dict(zip(FINDINGS, rows.loc[i, "probabilities"], strict=True))
        assert rows.loc[i, "predicted"] == format_findings(_expected(probs))


def test_feedback_import_reads_finding_lists(client: httpx.Client, project: Project,
                                             tmp_path: Path) -> None:
    store = CaptureStore.under(project.artifacts)
    ids = [_predict(client, project, multilabel.png(20 + i)).json()["request_id"]
           for i in range(2)]
    deadline = time.monotonic() + 15
    while not set(ids) <= set(store.read()["request_id"]):
        assert time.monotonic() < deadline, "the predictions were never captured"
        time.sleep(0.1)

    bad = tmp_path / "bad.csv"
    bad.write_text(f"request_id,label\n{ids[0]},Nodule\n{ids[1]},Effusion|Atelectasis\n")
    with pytest.raises(LabelError, match=r"bad.csv, line 3: .*'Atelectasis' is not a finding"
                                         r".*nothing was imported"):
        store.import_feedback_csv(bad)
    good = tmp_path / "good.csv"
    good.write_text(f"request_id,label\n{ids[0]},Nodule|Effusion\n{ids[1]},No Finding\n")
    assert store.import_feedback_csv(good) == 2
    labels = store.feedback().set_index("request_id")["label"]
    assert labels[ids[0]] == "Effusion|Nodule" and labels[ids[1]] == "No Finding"


def test_batch_predict_and_predict_write_findings(project: Project, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app
    from medops.serve.batch import Files, ModelRef, Predictor, batch_predict

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(multilabel.png(30 + i))
    (folder / "broken.png").write_bytes(b"not an image")
    predictor = Predictor.from_registry(project.registry,
                                        ModelRef.parse(None, project.config.model_name))
    out = tmp_path / "preds.csv"
    summary = batch_predict(predictor, str(folder), str(out), files=Files())
    assert (summary.predicted, summary.failed) == (3, 1)
    rows = pd.read_csv(out, dtype={"label": str, "findings": str}, keep_default_na=False)
    assert list(rows.columns) == ["uri", *(f"p_{f}" for f in FINDINGS), "label", "findings",
                                  "model", "version", "error"]
    good = rows[rows["error"] == ""]
    for _, row in good.iterrows():
        findings = _expected({f: float(row[f"p_{f}"]) for f in FINDINGS})
        assert row["findings"] == "|".join(findings)
        assert row["label"] == format_findings(findings)
    broken = rows[rows["uri"].str.endswith("broken.png")].iloc[0]
    assert broken["label"] == "" and broken["findings"] == "" and broken["error"]

    runner = CliRunner()
    files = [str(folder / "0.png"), str(folder / "1.png")]
    result = runner.invoke(app, ["predict", *files, "-C", str(project.root), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [r["findings"] for r in records] == list(good["findings"][:2])
    table = runner.invoke(app, ["predict", *files, "-C", str(project.root)],
                          env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "findings" in table.output and "most probable" in table.output
    assert records[0]["label"] in table.output


def test_the_mlflow_pyfunc_labels_with_findings(project: Project) -> None:
    import mlflow.pyfunc

    folder = project.registry.download("1")
    model = mlflow.pyfunc.load_model(str(folder))
    blobs = [multilabel.png(40 + i) for i in range(2)]
    out = model.predict(pd.DataFrame({"image": blobs}))
    assert list(out.columns) == [*(f"p_{f}" for f in FINDINGS), "label"]
    for _, row in out.iterrows():
        assert row["label"] == format_findings(_expected({f: row[f"p_{f}"] for f in FINDINGS}))
