"""`medops serve` on a real uvicorn server, a real MLflow registry and a pipeline-trained model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from medops.monitor import CaptureStore
from medops.project import Project
from medops.registry import CHAMPION

from .conftest import (
    TOKEN,
    ServerThread,
    ct_small,
    jpeg_bytes,
    png_bytes,
    register_copy,
    serve_config,
    wait_ready,
)

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def predict_path(served_project: Project) -> str:
    return f"/v1/models/{served_project.config.model_name}/predict"


def _probs(answer: dict, classes: list[str]) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in classes] for p in answer["predictions"]])


@pytest.mark.parametrize(("kind", "ctype"), [("dicom", "application/dicom"),
                                             ("png", "image/png"), ("jpeg", "image/jpeg")])
def test_served_predictions_equal_the_model(client: httpx.Client, predict_path: str,
                                            served_project: Project, kind: str,
                                            ctype: str) -> None:
    blob = {"dicom": ct_small, "png": png_bytes, "jpeg": jpeg_bytes}[kind]()
    loaded = served_project.registry.load("1")
    expected = loaded.predict_images([blob])

    r = client.post(predict_path, content=blob, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == served_project.config.model_name and answer["version"] == "1"
    assert len(answer["request_id"]) == 32 and r.headers["x-request-id"] == answer["request_id"]
    np.testing.assert_allclose(_probs(answer, loaded.classes), expected, atol=1e-5)
    assert answer["predictions"][0]["label"] == loaded.classes[int(expected[0].argmax())]
    # SageMaker's route takes the same bodies and gives the same answer.
    r2 = client.post("/invocations", content=blob, headers={"content-type": ctype})
    assert r2.status_code == 200, r2.text
    np.testing.assert_allclose(_probs(r2.json(), loaded.classes), expected, atol=1e-5)


def test_multipart_with_several_files(client: httpx.Client, predict_path: str,
                                      served_project: Project) -> None:
    blobs = [ct_small(), png_bytes(), jpeg_bytes()]
    files = [("files", ("a.dcm", blobs[0], "application/dicom")),
             ("files", ("b.png", blobs[1], "image/png")),
             ("files", ("c.jpg", blobs[2], "image/jpeg"))]
    r = client.post(predict_path, files=files)
    assert r.status_code == 200, r.text
    loaded = served_project.registry.load("1")
    np.testing.assert_allclose(_probs(r.json(), loaded.classes), loaded.predict_images(blobs),
                               atol=1e-5)


def _bad_inputs(served_project: Project) -> list[tuple[str, bytes, dict[str, str], int, str]]:
    dicom = ct_small()
    return [
        ("malformed DICOM", dicom[:132] + b"\x08\x00\x05\x00CS\xff\xff" + b"\x00" * 40,
         {"content-type": "application/dicom"}, 400, "DICOM"),
        ("truncated DICOM", dicom[: len(dicom) // 2], {"content-type": "application/dicom"},
         400, "truncated"),
        ("text file", b"patient notes, not an image\n" * 20, {"content-type": "image/png"}, 400,
         "not a DICOM, PNG or JPEG"),
        ("empty body", b"", {"content-type": "application/dicom"}, 400, "empty request body"),
        ("wrong content type", png_bytes(), {"content-type": "text/plain"}, 415,
         "unsupported content type 'text/plain'"),
        ("no content type", png_bytes(), {}, 415, "no Content-Type"),
        ("oversized body", b"\x00" * (1024 * 1024 + 10), {"content-type": "image/png"}, 413,
         "max_body_mb"),
        ("too many pixels (PNG)", png_bytes(size=200), {"content-type": "image/png"}, 413,
         "max_image_pixels"),
    ]


def test_bad_inputs_get_4xx_with_a_message_and_serving_goes_on(
        client: httpx.Client, predict_path: str, served_project: Project) -> None:
    for what, body, headers, status, message in _bad_inputs(served_project):
        r = client.post(predict_path, content=body, headers=headers)
        assert r.status_code == status, (what, r.text)
        error = r.json()["error"]
        assert message in error["message"], (what, error)
        assert error["status"] == status and r.json()["request_id"]
        ok = client.post(predict_path, content=png_bytes(), headers={"content-type": "image/png"})
        assert ok.status_code == 200, (what, ok.text)


def test_more_bad_requests(client: httpx.Client, predict_path: str) -> None:
    from tests.samples import pydicom_file

    # 100x100 pixels x 2 frames: each frame is under the limit (18,000), the file is not.
    multi = pydicom_file("SC_rgb_rle_2frame.dcm").read_bytes()
    r = client.post(predict_path, content=multi, headers={"content-type": "application/dicom"})
    assert r.status_code == 413 and "100x100x2 frames" in r.json()["error"]["message"]

    r = client.post("/v1/models/no-such-model/predict", content=png_bytes(),
                    headers={"content-type": "image/png"})
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]["message"]

    files = [("files", ("a.png", png_bytes(), "image/png")),
             ("files", ("b.png", b"garbage", "image/png"))]
    r = client.post(predict_path, files=files)
    assert r.status_code == 400 and "image 2 of 2" in r.json()["error"]["message"]

    r = client.post(predict_path, files=[("files", ("a.txt", b"hello", "text/plain"))])
    assert r.status_code == 415, r.text

    r = client.post(predict_path, content=b"--xyz\r\nbroken",
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert 400 <= r.status_code < 500, r.text


def test_auth_is_enforced(server: str, predict_path: str) -> None:
    body, headers = png_bytes(), {"content-type": "image/png"}
    with httpx.Client(base_url=server, timeout=30) as anonymous:
        r = anonymous.post(predict_path, content=body, headers=headers)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = anonymous.post(predict_path, content=body,
                           headers={**headers, "Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid bearer token"
        assert anonymous.post("/v1/feedback", json={"request_id": "x", "label": "y"}
                              ).status_code == 401
        # Health checks stay open: load balancers and SageMaker call them without a token.
        for path in ("/ping", "/healthz", "/readyz", "/metrics"):
            assert anonymous.get(path).status_code == 200, path


def test_metrics_count_requests_errors_latency_and_batches(client: httpx.Client,
                                                         predict_path: str) -> None:
    client.post(predict_path, content=png_bytes(), headers={"content-type": "image/png"})
    client.post(predict_path, content=b"", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    route = 'route="/v1/models/{name}/predict"'
    ok = _sample(text, f'medops_requests_total{{{route},status="200"}}')
    assert ok >= 1
    assert _sample(text, f'medops_errors_total{{{route},type="RequestError"}}') >= 1
    assert _sample(text, f'medops_request_seconds_count{{{route}}}') >= ok + 1
    assert 'medops_request_seconds_bucket{le="0.005",' in text or "le=\"0.005\"" in text
    assert _sample(text, "medops_batch_size_count") >= 1
    assert _sample(text, 'medops_model_version{model="test-project-classifier"}') == 1.0


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_capture_and_feedback_join(client: httpx.Client, predict_path: str,
                                   served_project: Project, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app

    loaded = served_project.registry.load("1")
    dicom_id = client.post(predict_path, content=ct_small(),
                           headers={"content-type": "application/dicom"}).json()["request_id"]
    png_id = client.post(predict_path, content=png_bytes(),
                         headers={"content-type": "image/png"}).json()["request_id"]
    label = loaded.classes[-1]
    r = client.post("/v1/feedback", json={"request_id": dicom_id, "label": label})
    assert r.status_code == 202 and r.json() == {"accepted": 1}
    # Malformed feedback: 422 with the field named; a label the model does not know: 422.
    r = client.post("/v1/feedback", json={"request_id": dicom_id})
    assert r.status_code == 422 and "label" in r.json()["error"]["message"]
    r = client.post("/v1/feedback", json={"request_id": dicom_id, "label": "no-such-class"})
    assert r.status_code == 422 and "no-such-class" in r.json()["error"]["message"]
    r = client.post("/v1/feedback", content=b"{not json", headers={"content-type":
                                                                    "application/json"})
    assert r.status_code == 422

    # The CLI import path for labels that arrive as a file. It joins on stored captures, which
    # the server writes in the background (within about a second): wait for the PNG's.
    store = CaptureStore.under(served_project.artifacts)
    deadline = time.monotonic() + 15
    while png_id not in set(store.read()["request_id"]):
        assert time.monotonic() < deadline, "the PNG's prediction was never captured"
        time.sleep(0.1)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(f"request_id,label\n{png_id},{loaded.classes[0]}\n")
    result = CliRunner().invoke(app, ["feedback", "import", str(csv_file), "-C",
                                      str(served_project.root)])
    assert result.exit_code == 0, result.output
    assert "imported 1 labels" in result.output

    deadline = time.monotonic() + 15
    while True:
        frame = store.read()
        rows = frame[frame["request_id"].isin([dicom_id, png_id])]
        if len(rows) == 2 and rows["label"].notna().all():
            break
        assert time.monotonic() < deadline, f"capture not joined in time:\n{rows}"
        time.sleep(0.2)
    by_id = rows.set_index("request_id")
    assert by_id.loc[dicom_id, "label"] == label
    assert by_id.loc[png_id, "label"] == loaded.classes[0]
    dicom_row = by_id.loc[dicom_id]
    assert dicom_row["model_version"] == "1" and dicom_row["input_format"] == "dicom"
    assert (dicom_row["height"], dicom_row["width"]) == (128, 128)
    np.testing.assert_allclose(dicom_row["probabilities"],
                               loaded.predict_images([ct_small()])[0], atol=1e-5)
    from medops.preprocess import preprocess_bytes
    from medops.train import embed

    x = preprocess_bytes(ct_small(), loaded.profile)[None]
    np.testing.assert_allclose(dicom_row["embedding"], embed(loaded.model, x)[0], atol=1e-4)
    assert dicom_row["pre_min"] <= dicom_row["pre_p50"] <= dicom_row["pre_max"]
    assert dicom_row["raw_std"] > 0
    files = list((store.folder / "requests").glob("date=*/part-*.parquet"))
    assert files
    # No PHI: CT_small's patient name, id and UIDs appear nowhere in the store.
    blob = b"".join(p.read_bytes() for p in store.folder.rglob("*.parquet"))
    for phi in (b"CompressedSamples", b"1CT1", b"1.3.6.1.4.1.5962"):
        assert phi not in blob


def test_ping_and_readiness_while_loading(served_project: Project) -> None:
    from medops.serve import create_app

    # A version that does not exist yet: the server starts, answers, and is not ready.
    app = create_app(served_project.registry, serve_config(),
                     ref=_ref(served_project, "nope"))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=5) as c:
        started = time.monotonic()
        r = c.get("/ping")
        assert time.monotonic() - started < 2.0
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert c.get("/healthz").status_code == 200
        r = c.post(f"/v1/models/{served_project.config.model_name}/predict",
                   content=png_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 503 and "no model is loaded" in r.json()["error"]["message"]
        assert c.get("/docs").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
        assert {"/ping", "/invocations", "/v1/models/{name}/predict", "/v1/feedback"} <= set(paths)


def _ref(project: Project, alias: str):  # type: ignore[no-untyped-def]
    from medops.serve import ModelRef

    return ModelRef(project.config.model_name, alias=alias)


def test_champion_swap_without_failed_requests(served_project: Project) -> None:
    from medops.serve import create_app

    app = create_app(served_project.registry, serve_config(poll_seconds=0.1))
    path = f"/v1/models/{served_project.config.model_name}/predict"
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post(path, content=ct_small(),
                               headers={"content-type": "application/dicom"})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text}")
                else:
                    versions.append(r.json()["version"])

    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert wait_ready(c)["version"] == "1"
        clients = [threading.Thread(target=hammer, args=(url,)) for _ in range(3)]
        for t in clients:
            t.start()
        try:
            time.sleep(0.5)
            new = register_copy(served_project)
            served_project.registry.client.set_registered_model_alias(
                served_project.config.model_name, CHAMPION, new)
            deadline = time.monotonic() + 30
            while not versions or versions[-1] != new:
                assert time.monotonic() < deadline, "the server never swapped"
                time.sleep(0.05)
            time.sleep(0.3)  # requests keep flowing on the new version
        finally:
            stop.set()
            for t in clients:
                t.join(30)
            served_project.registry.client.set_registered_model_alias(
                served_project.config.model_name, CHAMPION, "1")
        assert failures == []
        assert versions[0] == "1" and versions[-1] == new
        assert versions.index(new) > 0 and set(versions) == {"1", new}
        metrics = c.get("/metrics").text
        assert f'medops_model_version{{model="{served_project.config.model_name}"}} {new}.0' \
            in metrics
