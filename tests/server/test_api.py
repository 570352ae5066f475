"""The API over a real trained project: runs, events, items, models and their sign-off, monitor
results, the audit log, users and tokens; on SQLite, and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from medops.project import Project
from medops.server.auth import Role
from medops.server.settings import ServerSettings
from medops.storage.monitoring import MonitorRecord, MonitorResults
from tests.conftest import TrainedProject, _postgres_database
from tests.serve.conftest import ServerThread

from .conftest import Team, new_password

pytestmark = pytest.mark.slow


def test_runs_list_and_detail_with_steps_and_outputs(team: Team) -> None:
    run_id = team.run_id
    with team.client("viewer") as c:
        listed = c.get("/api/runs", params={"limit": 5}).json()
        assert run_id in [r["id"] for r in listed]
        detail = c.get(f"/api/runs/{run_id[:-2]}").json()  # a prefix of the id is enough
        assert detail["id"] == run_id and detail["status"] == "succeeded"
        steps = {s["name"]: s for s in detail["steps"]}
        assert steps["evaluate"]["outputs"]["metrics"]["test_auc"] >= 0.0
        assert steps["register"]["outputs"]["registered"] is True
        missing = c.get("/api/runs/run-that-does-not-exist")
        assert missing.status_code == 404 and "medops runs ls" in missing.json()["error"]["message"]
        assert c.get("/api/runs", params={"limit": 0}).status_code == 422


def test_a_run_log_is_served_when_the_run_wrote_one(team: Team) -> None:
    run_id = team.run_id
    with team.client("viewer") as c:
        none = c.get(f"/api/runs/{run_id}/log")
        assert none.status_code == 404 and "no log file" in none.json()["error"]["message"]
        log = team.project.artifacts / "runs" / run_id / "run.log"
        log.write_text("ingest started\ntrain finished\n")
        try:
            found = c.get(f"/api/runs/{run_id}/log")
        finally:
            log.unlink()
    assert found.status_code == 200 and "train finished" in found.text
    assert found.headers["content-type"].startswith("text/plain")


def test_events_with_decisions_and_run_requests_by_a_trainer(team: Team) -> None:
    with team.client("viewer") as viewer:
        refused = viewer.post("/api/runs/requests", json={"reason": "new labels"})
        assert refused.status_code == 403
    with team.client("trainer") as trainer:
        asked = trainer.post("/api/runs/requests", json={"reason": "new labels"})
        assert asked.status_code == 202, asked.text
        events = trainer.get("/api/events", params={"kind": "run.requested"}).json()
    mine = next(e for e in events if e["id"] == asked.json()["event_id"])
    assert mine["payload"] == {"reason": "new labels", "by": "trainer-user"}
    assert mine["status"] == "new" and mine["decision"] is None
    with team.client("viewer") as c:
        assert c.get("/api/events", params={"kind": "no.such.kind"}).status_code == 422


def test_items_by_status_and_the_quarantine_with_reasons(team: Team) -> None:
    with team.client("viewer") as c:
        counts = c.get("/api/items").json()
        quarantine = c.get("/api/items/quarantine").json()
    assert counts["total"] == sum(counts["by_status"].values()) > 0
    # the trained project's data holds three deliberately broken files
    assert counts["by_status"]["quarantined"] == quarantine["total"] == 3
    assert all(i["reason"] and i["status"] == "quarantined" for i in quarantine["items"])


def test_model_versions_metrics_and_sign_off_record_the_caller(team: Team) -> None:
    model = team.new_model(3)
    with team.client("approver") as c:
        versions = c.get(f"/api/models/{model}/versions").json()
        assert [v["version"] for v in versions] == ["3", "2", "1"]
        assert all("test_auc" in v["metrics"] and v["approval"] == "pending" for v in versions)
        # the actor comes from the credentials: a "by" in the body is refused outright
        forged = c.post(f"/api/models/{model}/versions/1/approve",
                        json={"note": "ok", "by": "someone-else"})
        assert forged.status_code == 422
        blank = c.post(f"/api/models/{model}/versions/1/approve", json={"note": "  "})
        assert blank.status_code == 422 and "note" in blank.json()["error"]["message"]
        approved = c.post(f"/api/models/{model}/versions/1/approve",
                          json={"note": "reviewed on 40 cases"})
        assert approved.status_code == 200, approved.text
        assert approved.json()["actor"] == "approver-user"
        assert c.post(f"/api/models/{model}/versions/2/approve",
                      json={"note": "better"}).status_code == 200
        live = c.get(f"/api/models/{model}/versions/2").json()
        assert live["live"] and live["approved_by"] == "approver-user"
        assert live["note"] == "better"

        champion = c.post(f"/api/models/{model}/versions/2/reject", json={"note": "no"})
        assert champion.status_code == 409 and "roll back" in champion.json()["error"]["message"]
        rolled = c.post(f"/api/models/{model}/rollback", json={"note": "drift on v2"})
        assert rolled.status_code == 200 and rolled.json()["version"] == "1"
        rejected = c.post(f"/api/models/{model}/versions/2/reject", json={"note": "fails AP"})
        assert rejected.json()["approval"] == "rejected"
        assert rejected.json()["rejected_by"] == "approver-user"

        unknown = c.post(f"/api/models/{model}/versions/99/approve", json={"note": "x"})
        assert unknown.status_code == 404 and "99" in unknown.json()["error"]["message"]
        never = c.post(f"/api/models/{model}/rollback", json={"note": "x", "to": "3"})
        assert never.status_code == 409 and "never live" in never.json()["error"]["message"]

        history = c.get(f"/api/models/{model}/history").json()["deployments"]
        assert [(d["version"], d["action"], d["actor"]) for d in history] == [
            ("1", "approve", "approver-user"), ("2", "approve", "approver-user"),
            ("1", "rollback", "approver-user")]
        at = c.get(f"/api/models/{model}/history", params={"at": history[1]["live_from"]})
        assert at.json()["live_at"]["version"] == "2"
        bad = c.get(f"/api/models/{model}/history", params={"at": "yesterday"})
        assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]["message"]

        audit = c.get("/api/audit", params={"target": f"{model}/2"}).json()
    assert {(a["action"], a["actor"]) for a in audit} == {
        ("model.approved", "approver-user"), ("model.rejected", "approver-user")}


def test_models_list_and_an_unknown_model(team: Team) -> None:
    model = team.new_model(1)
    with team.client("viewer") as c:
        listed = {m["name"]: m for m in c.get("/api/models").json()}
        missing = c.get("/api/models/no-such-model/versions")
    assert model in listed and listed[model]["live_version"] is None
    assert listed[team.project.config.model_name]["project_model"] is True
    assert missing.status_code == 404 and model in missing.json()["error"]["message"]


def test_a_machine_token_signs_off_under_its_own_name(team: Team) -> None:
    model = team.new_model(1)
    token, _ = team.authenticator.create_token("ci-signoff", Role.APPROVER, by="tests")
    with team.client(token=token) as c:
        done = c.post(f"/api/models/{model}/versions/1/approve", json={"note": "CI gate"})
    assert done.status_code == 200 and done.json()["actor"] == "token:ci-signoff"


def test_monitor_results(team: Team) -> None:
    model = team.new_model(1)
    end = datetime.now(timezone.utc).replace(microsecond=0)
    MonitorResults(team.project.state.db).record(MonitorRecord(
        model=model, version="1", window_start=end - timedelta(hours=24), window_end=end,
        status="drift", n_current=150, n_reference=400, drift=True, min_p_value=0.001,
        summary={"tests": {"mean_intensity": 0.001}}))
    with team.client("viewer") as c:
        found = c.get("/api/monitor", params={"model": model}).json()
        default = c.get("/api/monitor").json()
    assert [(r["status"], r["drift"], r["n_current"]) for r in found] == [("drift", True, 150)]
    assert all(r["model"] == team.project.config.model_name for r in default)


def test_users_and_tokens_through_the_api(team: Team) -> None:
    with team.client("admin") as admin:
        made = admin.post("/api/users", json={"name": "new-reader", "role": "viewer",
                                              "password": new_password()})
        assert made.status_code == 201 and made.json()["role"] == "viewer"
        again = admin.post("/api/users", json={"name": "new-reader", "role": "viewer",
                                               "password": new_password()})
        assert again.status_code == 400 and "exists" in again.json()["error"]["message"]
        weak = admin.post("/api/users", json={"name": "weak", "role": "viewer",
                                              "password": "short"})
        assert weak.status_code == 400 and "12" in weak.json()["error"]["message"]
        bad_name = admin.post("/api/users", json={"name": "token:x", "role": "viewer",
                                                  "password": new_password()})
        assert bad_name.status_code == 400
        bad_role = admin.post("/api/users", json={"name": "x", "role": "owner",
                                                  "password": new_password()})
        assert bad_role.status_code == 422
        changed = admin.patch("/api/users/new-reader", json={"role": "approver"})
        assert changed.json()["role"] == "approver"
        assert admin.patch("/api/users/nobody", json={"role": "viewer"}).status_code == 404
        assert admin.patch("/api/users/new-reader", json={}).status_code == 400
        users = {u["name"]: u for u in admin.get("/api/users").json()}
        assert users["new-reader"]["role"] == "approver"
        assert "password_hash" not in users["new-reader"]
        assert admin.delete("/api/tokens/never-made").status_code == 404
    with team.client("approver") as approver:
        assert approver.get("/api/users").status_code == 403


def test_the_last_admin_cannot_be_demoted_or_disabled(tmp_path: Path) -> None:
    from medops.server.auth import Authenticator

    Project.init(tmp_path / "p", name="admins")
    project = Project.load(tmp_path / "p")
    try:
        auth = Authenticator(project.state.db)
        auth.add_user("only-admin", Role.ADMIN, new_password(), by="tests")
        from medops.errors import ConfigError

        with pytest.raises(ConfigError, match="only enabled admin"):
            auth.set_role("only-admin", Role.VIEWER, by="tests")
        with pytest.raises(ConfigError, match="only enabled admin"):
            auth.set_disabled("only-admin", True, by="tests")
        auth.add_user("second-admin", Role.ADMIN, new_password(), by="tests")
        assert auth.set_role("only-admin", Role.VIEWER, by="tests").role == "viewer"
    finally:
        project.close()


def test_the_openapi_description_lists_the_api(team: Team) -> None:
    with httpx.Client(base_url=team.url) as c:
        spec = c.get("/api/openapi.json").json()
        assert c.get("/api/health").json() == {"status": "ok"}
    paths = spec["paths"]
    assert "/api/models/{name}/versions/{version}/approve" in paths
    assert "/api/runs/{run_id}" in paths and "/api/login" in paths


@pytest.fixture
def postgres_team(trained_project: TrainedProject, tmp_path: Path) -> Iterator[Team]:
    """A project whose state is a fresh PostgreSQL database (its MLflow store is the trained
    project's), served by a real uvicorn server, with a viewer and an approver."""
    from medops.server.app import create_app

    for url in _postgres_database():  # one database, dropped when the loop ends
        root = tmp_path / "pg"
        Project.init(root, name="pg-team")
        tracking = trained_project.project.tracker.tracking_uri
        project = Project.load(root, {"storage.state": url, "storage.tracking": tracking})
        try:
            app = create_app(project, ServerSettings())
            with ServerThread(app) as base:
                team = Team(base, app, project, trained_project)
                for role in (Role.VIEWER, Role.APPROVER):
                    name = f"{role.value}-user"
                    team.passwords[name] = new_password()
                    team.authenticator.add_user(name, role, team.passwords[name], by="tests")
                    team.sessions[role.value] = team.login(name).json()["token"]
                yield team
        finally:
            project.close()


@pytest.mark.postgres
def test_sign_off_and_security_on_postgresql(postgres_team: Team) -> None:
    team = postgres_team
    model = team.new_model(2)
    with httpx.Client(base_url=team.url) as anonymous:
        assert anonymous.get("/api/runs").status_code == 401
    with team.client("viewer") as viewer:
        assert viewer.post(f"/api/models/{model}/versions/1/approve",
                           json={"note": "ok"}).status_code == 403
        assert viewer.get("/api/runs").json() == []
    with team.client("approver") as approver:
        done = approver.post(f"/api/models/{model}/versions/1/approve", json={"note": "ok"})
        assert done.status_code == 200 and done.json()["actor"] == "approver-user"
        audit = approver.get("/api/audit", params={"target": f"{model}/1"}).json()
    assert [(a["action"], a["actor"]) for a in audit] == [("model.approved", "approver-user")]
    from sqlalchemy import text

    with team.project.state.engine.connect() as conn:
        hashes = list(conn.execute(text("SELECT password_hash FROM server_users")).scalars())
    assert len(hashes) == 2 and all(h.startswith("$argon2id$") for h in hashes)
    assert not set(team.passwords.values()) & set(hashes)
