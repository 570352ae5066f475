"""Prediction answers as JSON or CSV, chosen by the Accept header (SageMaker batch transform
asks for text/csv): the negotiation and the table, then a real server answering."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from medops.errors import NotAcceptableError
from medops.project import Project
from medops.serve.answers import AnswerType, negotiate, prediction_rows, predictions_csv

from .conftest import TOKEN, ct_small, jpeg_bytes, png_bytes, wait_ready

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(("accept", "expected"), [
    (None, AnswerType.JSON), ("", AnswerType.JSON), ("*/*", AnswerType.JSON),
    ("application/json", AnswerType.JSON), ("application/*", AnswerType.JSON),
    ("text/csv", AnswerType.CSV), ("TEXT/CSV; charset=utf-8", AnswerType.CSV),
    ("text/*", AnswerType.CSV),
    ("text/csv, */*", AnswerType.CSV),  # named outright beats a wildcard
    ("application/json, text/csv", AnswerType.JSON),  # equal: the server's preference
    ("text/csv;q=0.5, application/json", AnswerType.JSON),
    ("application/json;q=0.2, text/csv;q=0.9", AnswerType.CSV),
    ("*/*;q=0.1, text/csv;q=0", AnswerType.JSON),
    ("text/html,application/xhtml+xml,*/*;q=0.8", AnswerType.JSON),  # a browser
])
def test_negotiation(accept: str | None, expected: AnswerType) -> None:
    assert negotiate(accept) is expected


@pytest.mark.parametrize("accept", ["image/png", "application/xml, text/html",
                                    "text/csv;q=0", "application/json;q=0, text/csv;q=0"])
def test_nothing_offered_is_refused_naming_what_is(accept: str) -> None:
    with pytest.raises(NotAcceptableError) as err:
        negotiate(accept)
    assert "application/json or text/csv" in str(err.value) and accept in str(err.value)


def test_rows_have_probability_columns_then_the_other_keys() -> None:
    predictions = [{"label": "malignant", "probabilities": {"benign": 0.25, "malignant": 0.75}},
                   {"label": "benign", "probabilities": {"benign": 0.5, "malignant": 0.5}}]
    columns, rows = prediction_rows(predictions)
    assert columns == ["p_benign", "p_malignant", "label"]
    assert rows == [[0.25, 0.75, "malignant"], [0.5, 0.5, "benign"]]
    text = predictions_csv(predictions)
    assert text.splitlines() == ["p_benign,p_malignant,label", "0.25,0.75,malignant",
                                 "0.5,0.5,benign"]


def test_new_keys_become_columns_and_lists_join_with_a_bar() -> None:
    predictions = [{"findings": ["Effusion", "Cardiomegaly"], "label": "Effusion",
                    "probabilities": {"Effusion": 0.9, "Cardiomegaly": 0.6}},
                   {"findings": [], "label": "Effusion",
                    "probabilities": {"Effusion": 0.1, "Cardiomegaly": 0.2}}]
    columns, rows = prediction_rows(predictions)
    assert columns == ["p_Effusion", "p_Cardiomegaly", "findings", "label"]
    assert [r[2] for r in rows] == ["Effusion|Cardiomegaly", ""]
    parsed = list(csv.DictReader(io.StringIO(predictions_csv(predictions))))
    assert parsed[0]["findings"] == "Effusion|Cardiomegaly" and parsed[1]["findings"] == ""


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as c:
        wait_ready(c)
        yield c


def _multipart() -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", ("a.dcm", ct_small(), "application/dicom")),
            ("files", ("b.png", png_bytes(), "image/png")),
            ("files", ("c.jpg", jpeg_bytes(), "image/jpeg"))]


@pytest.mark.slow
@pytest.mark.parametrize("route", ["/invocations", "predict"])
def test_csv_answer_carries_what_the_json_does(client: httpx.Client, served_project: Project,
                                               route: str) -> None:
    path = route if route.startswith("/") else \
        f"/v1/models/{served_project.config.model_name}/predict"
    as_json = client.post(path, files=_multipart(), headers={"accept": "application/json"})
    assert as_json.status_code == 200, as_json.text
    as_csv = client.post(path, files=_multipart(), headers={"accept": "text/csv"})
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["x-request-id"]

    classes = served_project.registry.load("1").classes
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == [*(f"p_{c}" for c in classes), "label"]
    assert len(rows) == 1 + 3  # one row per image
    expected = as_json.json()["predictions"]
    for row, pred in zip(rows[1:], expected, strict=True):
        np.testing.assert_allclose([float(v) for v in row[:-1]],
                                   [pred["probabilities"][c] for c in classes], atol=1e-6)
        assert row[-1] == pred["label"]


@pytest.mark.slow
def test_json_without_an_accept_header_or_with_a_wildcard(client: httpx.Client) -> None:
    body, headers = png_bytes(), {"content-type": "image/png"}
    for accept in ("*/*", "application/json"):
        r = client.post("/invocations", content=body, headers={**headers, "accept": accept})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["predictions"][0]["label"]
    bare = httpx.Client(base_url=str(client.base_url), headers=AUTH, timeout=30)
    with bare:
        del bare.headers["accept"]  # httpx sends */* unless told otherwise
        r = bare.post("/invocations", content=body, headers=headers)
        assert "accept" not in r.request.headers
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text


@pytest.mark.slow
def test_an_answer_type_not_offered_gets_406_naming_the_offered_ones(
        client: httpx.Client) -> None:
    r = client.post("/invocations", content=png_bytes(),
                    headers={"content-type": "image/png", "accept": "application/xml"})
    assert r.status_code == 406, r.text
    error = r.json()["error"]
    assert error["type"] == "NotAcceptableError" and error["status"] == 406
    assert "application/json or text/csv" in error["message"]
    assert "application/xml" in error["message"]
    spec = client.get("/openapi.json").json()
    answers = spec["paths"]["/invocations"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/csv"} <= set(answers)
