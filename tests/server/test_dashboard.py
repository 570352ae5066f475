"""The dashboard over a real trained project: every page for a viewer, the login redirect, and
sign-off through the form (a real uvicorn server, real MLflow registry and state store)."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from medops.registry.model_card import ModelCard
from medops.server.app import create_app
from medops.server.auth import Authenticator, Role
from medops.server.settings import ServerSettings
from medops.storage import EventKind, RunStatus
from medops.storage.monitoring import MonitorRecord, MonitorResults
from medops.storage.serving import ServingStats, ServingWindow

from ..conftest import TrainedProject
from ..serve.conftest import ServerThread

pytestmark = pytest.mark.slow


@dataclass
class Site:
    url: str
    model: str  # a registered model of two pending versions, for sign-off
    run_id: str  # the run that trained the project's model
    failed_run: str
    report_id: int
    users: dict[str, str]  # role -> password
    names: dict[str, str]  # role -> user name


@pytest.fixture(scope="module")
def site(trained_project: TrainedProject) -> Iterator[Site]:
    project = trained_project.project
    tag = uuid.uuid4().hex[:6]
    model = f"dash-{tag}"
    trained_project.new_model(model, 2)
    auth = Authenticator(project.state.db)
    users, names = {}, {}
    for role in (Role.VIEWER, Role.APPROVER):
        names[role.value], users[role.value] = f"{role.value}-{tag}", secrets.token_urlsafe(16)
        auth.add_user(names[role.value], role, users[role.value], by="test")
    # a failed run, a drift check with its report and an event, as the agent leaves them
    failed = f"failed-{tag}"
    project.state.create_run(failed, "schedule", {"project": "trained"}, [])
    project.state.finish_run(failed, RunStatus.FAILED, "step 'train' failed: out of memory")
    report = project.artifacts / "monitor" / model / "v1" / f"report-{tag}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<html><body><h1>drift report</h1></body></html>")
    end = datetime.now(timezone.utc)
    results = MonitorResults(project.state.db)
    for hours, p in ((2, 0.4), (1, 0.001)):
        results.record(MonitorRecord(
            model, "1", end - timedelta(hours=hours + 1), end - timedelta(hours=hours),
            "ok" if p > 0.05 else "drift", 150, 300, 60, p < 0.05, p,
            {"group_min_p": {"intensity": p, "embedding": min(1.0, p * 3)},
             "quality": {"live": {"accuracy": 0.8 + p / 4, "auc": 0.85}, "checks": []}},
            str(report)))
    report_id = results.history(model)[-1].id
    assert report_id is not None
    project.state.add_event(EventKind.DATA_ARRIVED, {"source": f"folder-{tag}", "new": 7})
    minute = end.replace(second=0, microsecond=0)
    ServingStats(project.state.db).record(*(
        ServingWindow(model, "1", minute - timedelta(minutes=m), 120, 3, m % 2, 18.0, 40.0,
                      95.0 + m, 120.0, instance="test:1") for m in range(5)))
    app = create_app(project, ServerSettings())
    with ServerThread(app) as url:
        yield Site(url, model, _run_of(trained_project), failed, report_id, users, names)


def _run_of(trained: TrainedProject) -> str:
    return str(trained.project.registry.get("1").tags["medops_run_id"])


@contextmanager
def login(site: Site, role: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.url, timeout=60, follow_redirects=False) as client:
        _log_in(client, site, role)
        yield client


def _log_in(client: httpx.Client, site: Site, role: str) -> None:
    form = client.get("/login")
    assert form.status_code == 200
    hidden = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
    assert hidden is not None
    done = client.post("/login", data={"username": site.names[role],
                                       "password": site.users[role], "next": "/runs",
                                       "login_csrf": hidden.group(1)})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/runs"
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


@pytest.fixture(scope="module")
def viewer(site: Site) -> Iterator[httpx.Client]:
    with login(site, "viewer") as client:
        yield client


def test_without_a_session_every_page_sends_the_browser_to_login(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as anonymous:
        for path in ("/", "/runs", f"/runs/{site.run_id}", "/models", f"/models/{site.model}",
                     f"/models/{site.model}/versions/1", f"/models/{site.model}/history",
                     "/approvals", "/monitor", "/serving", "/events",
                     f"/monitor/reports/{site.report_id}",
                     f"/models/{site.model}/versions/1/files/evaluation/roc_curves.png"):
            r = anonymous.get(path)
            assert r.status_code == 303, (path, r.status_code)
            assert r.headers["location"].startswith("/login?next="), path
    with httpx.Client(base_url=site.url, timeout=30,
                      cookies={"medops_session": "mds_not-a-session"}) as forged:
        assert forged.get("/runs").status_code == 303
    with httpx.Client(base_url=site.url, timeout=30) as anonymous:
        # a form POST without a session is refused outright, not redirected
        assert anonymous.post(f"/approvals/{site.model}/1",
                              data={"action": "approve", "note": "x"}).status_code == 401


def test_a_wrong_password_is_refused_on_the_login_page(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as client:
        token = re.search(r'name="login_csrf" value="([^"]+)"', client.get("/login").text)
        assert token is not None
        r = client.post("/login", data={"username": site.names["viewer"], "password": "nope",
                                        "login_csrf": token.group(1)})
        assert r.status_code == 401 and "wrong user name or password" in r.text
        assert "medops_session" not in r.headers.get("set-cookie", "")
        # no double-submit cookie: a cross-site login form is refused
        client.cookies.clear()
        r = client.post("/login", data={"username": site.names["viewer"],
                                        "password": site.users["viewer"],
                                        "login_csrf": token.group(1)})
        assert r.status_code == 403


def test_every_page_answers_a_viewer_with_its_content(site: Site, viewer: httpx.Client,
                                                      trained_project: TrainedProject) -> None:
    own = trained_project.project.config.model_name
    pages: dict[str, list[str]] = {
        "/": [own, site.model, "awaits sign-off", f"run {site.failed_run} failed",
              f"{site.model} v1: drift", site.run_id],
        "/runs": [site.run_id, site.failed_run, "succeeded", "failed"],
        f"/runs/{site.run_id}": ["<svg", "register", "evaluate", "dataset_version",
                                 f"{own} v1"],
        f"/runs/{site.failed_run}": ["out of memory"],
        "/models": [own, site.model],
        f"/models/{site.model}": ["v1", "v2", "pending", site.run_id],
        f"/models/{own}/versions/1": ["test_auc", "git commit", "weights SHA-256",
                                      "evaluation/roc_curves.png",
                                      "evaluation/confusion_matrix.png", "Model card",
                                      "Intended use", "train_loss and val_loss"],
        f"/models/{site.model}/history": ["No version of"],
        "/approvals": [f"{site.model} v1", f"{site.model} v2", "an approver signs off"],
        "/monitor": [site.model, "drift: smallest p-value", "live quality",
                     f"/monitor/reports/{site.report_id}"],
        "/serving": [site.model, "latency per minute", "600 requests, 17 errors"],
        "/events": ["data.arrived", "not seen yet"],
    }
    for path, expected in pages.items():
        r = viewer.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        assert r.headers["content-type"].startswith("text/html")
        for text in expected:
            assert text in r.text, (path, text)
        assert 'class="approve"' not in r.text, path  # a viewer gets no sign-off buttons
    weights = re.search(r"weights SHA-256</td><td>\s*<code[^>]*>([0-9a-f]{64})<",
                        viewer.get(f"/models/{own}/versions/1").text)
    assert weights is not None  # the hash of the trained weights, from the register step


def test_plots_model_card_and_reports_are_served_behind_the_login(site: Site,
                                                                   viewer: httpx.Client,
                                                                   trained_project: TrainedProject
                                                                   ) -> None:
    own = trained_project.project.config.model_name
    png = viewer.get(f"/models/{own}/versions/1/files/evaluation/roc_curves.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    card = viewer.get(f"/models/{own}/versions/1/files/model_card/model_card.json")
    assert card.status_code == 200
    parsed = ModelCard.from_json(card.text)
    assert parsed.name == own and parsed.version == "1" and parsed.metrics["test_auc"] is not None
    assert parsed.data["counts"]["test"] and parsed.weights_sha256
    # nothing outside the shown folders of the run, and no path out of them
    for path in ("model/MLmodel", "evaluation/../model/MLmodel", "evaluation/nope.png"):
        assert viewer.get(f"/models/{own}/versions/1/files/{path}").status_code == 404, path
    report = viewer.get(f"/monitor/reports/{site.report_id}")
    assert report.status_code == 200 and "drift report" in report.text
    assert report.headers["content-security-policy"] == "sandbox"
    assert viewer.get("/monitor/reports/999999").status_code == 404
    # a row naming a file outside the project's artifacts does not make the server read it
    outside = MonitorResults(trained_project.project.state.db).record(MonitorRecord(
        site.model, "1", datetime(2026, 1, 1, tzinfo=timezone.utc),
        datetime(2026, 1, 2, tzinfo=timezone.utc), "ok", 150, report="/etc/hostname"))
    assert viewer.get(f"/monitor/reports/{outside}").status_code == 404
    assert viewer.get("/runs/no-such-run").status_code == 404
    assert viewer.get("/models/no-such-model").status_code == 404


def test_a_viewer_cannot_sign_off_even_with_a_valid_form(site: Site,
                                                         viewer: httpx.Client) -> None:
    token = csrf_of(viewer.get("/approvals").text)  # the logout form carries it
    r = viewer.post(f"/approvals/{site.model}/1", data={"action": "approve",
                                                        "note": "looks fine", "csrf": token})
    assert r.status_code == 403
    assert _champion(site, viewer) is None


def test_an_approver_approves_with_a_note_through_the_form(site: Site,
                                                           trained_project: TrainedProject
                                                           ) -> None:
    with login(site, "approver") as approver:
        page = approver.get("/approvals").text
        assert page.count('class="approve"') >= 2
        token = csrf_of(page)
        path = f"/approvals/{site.model}/2"
        # no note, or a token of no session: refused, nothing changes
        assert approver.post(path, data={"action": "approve", "note": " ",
                                         "csrf": token}).status_code == 400
        assert approver.post(path, data={"action": "approve", "note": "ok",
                                         "csrf": "0" * 64}).status_code == 403
        assert _champion(site, approver) is None

        r = approver.post(path, data={"action": "approve", "csrf": token,
                                      "note": "reviewed the site test set"})
        assert r.status_code == 303 and r.headers["location"].startswith("/approvals?done=")
        assert _champion(site, approver) == "2"
        registry = trained_project.project.registry
        tags = registry.client.get_model_version(site.model, "2").tags
        assert tags["approved_by"] == site.names["approver"]
        audit = trained_project.project.state.audit_log(target=f"{site.model}/2")[0]
        assert (audit.action, audit.actor, audit.details["note"]) == \
            ("model.approved", site.names["approver"], "reviewed the site test set")

        r = approver.post(f"/approvals/{site.model}/1", data={"action": "reject",
                                                              "note": "older", "csrf": token})
        assert r.status_code == 303
        history = approver.get(f"/models/{site.model}/history").text
        assert "reviewed the site test set" in history and site.names["approver"] in history
        assert "Nothing awaits sign-off" in approver.get("/approvals").text \
            or f"{site.model} v" not in _queue(approver.get("/approvals").text)


def test_logging_out_ends_the_session(site: Site) -> None:
    with login(site, "viewer") as client:
        session = client.cookies["medops_session"]
        token = csrf_of(client.get("/").text)
        assert client.post("/logout", data={"csrf": token}).status_code == 303
        assert client.get("/").status_code == 303  # the cookie is gone
    with httpx.Client(base_url=site.url, timeout=30,
                      cookies={"medops_session": session}) as replay:
        assert replay.get("/").status_code == 303  # and so is the session


def _champion(site: Site, client: httpx.Client) -> str | None:
    page = client.get(f"/models/{site.model}").text
    found = re.search(r'>v(\d+)</a> <span class="status s-live">live', page)
    return found.group(1) if found else None


def _queue(page: str) -> str:
    start, end = page.find('id="queue"'), page.find("Recent decisions")
    return page[start:end]


def test_charts_escape_their_text_and_break_lines_at_missing_values() -> None:
    from medops.server.dashboard import svg

    chart = svg.line_chart([svg.Series("<script>x</script>", [(1.0, 0.5), (2.0, None),
                                                               (3.0, 0.7), (4.0, 0.6)])],
                           title="a & b", x_time=False)
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "a &amp; b" in chart
    assert chart.count("<polyline") == 2  # the missing value is a gap, not a line through it
    assert "no data yet" in svg.line_chart([svg.Series("s", [(1.0, None)])], title="t")
