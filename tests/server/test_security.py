"""Who gets in: every route of the app without credentials, with wrong ones and with a viewer's;
how passwords and tokens are stored; revocation, disabling, cookies. A real uvicorn server."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from medops.server.api import PUBLIC_PATHS
from medops.server.auth import REMEMBER_SECONDS, Role

from .conftest import Team, new_password

pytestmark = pytest.mark.slow

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
#: Writes any authenticated caller may make.
ANY_CALLER_WRITES = {("POST", "/api/logout"), ("POST", "/logout")}
#: Authorization headers that carry no valid credential.
WRONG = ["Bearer mdt_" + "A" * 43, "Bearer mds_" + "B" * 43, "Bearer not-a-token", "Bearer",
         "Basic dmlld2VyLXVzZXI6cGFzc3dvcmQ="]


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, concrete path) of every route of the app, path parameters filled in; routers
    included with a prefix are walked (FastAPI >= 0.16x keeps them as one entry each)."""
    from fastapi import routing
    from starlette.routing import Mount

    walk = getattr(routing, "iter_route_contexts", None)
    entries = list(walk(app.routes)) if walk is not None else list(app.routes)
    found = []
    for entry in entries:
        route = getattr(entry, "original_route", entry)
        if isinstance(route, Mount):
            continue  # static files (CSS): public by design
        path, methods = entry.path, entry.methods
        if not path or not methods:
            continue
        for method in sorted(methods):
            if method != "HEAD":
                found.append((method, re.sub(r"\{[^}]+\}", "1", path)))
    return found


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static") or path == "/login"


def _refused(path: str, answer: httpx.Response) -> bool:
    """401 for the API. A dashboard page may instead send the browser to the login form, and
    a form post without a valid session fails its CSRF check (403)."""
    if answer.status_code == 401:
        return True
    if path.startswith("/api/"):
        return False
    location = answer.headers.get("location", "")
    return answer.status_code == 403 or (answer.status_code in (302, 303, 307)
                                         and "/login" in location)


def _call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    body: dict[str, Any] | None = {} if method in WRITES else None
    return client.request(method, path, json=body, follow_redirects=False)


def test_the_app_has_the_api_routes(team: Team) -> None:
    routes = set(_routes(team.app))
    for expected in [("GET", "/api/runs"), ("POST", "/api/models/1/versions/1/approve"),
                     ("POST", "/api/models/1/rollback"), ("GET", "/api/users"),
                     ("DELETE", "/api/tokens/1"), ("GET", "/api/monitor")]:
        assert expected in routes


def test_every_route_refuses_no_token_and_wrong_tokens(team: Team) -> None:
    clients = [httpx.Client(base_url=team.url, headers={"Authorization": h} if h else {},
                            timeout=30) for h in [None, *WRONG]]
    # a wrong session cookie is no better
    clients.append(httpx.Client(base_url=team.url, cookies={"medops_session": "mds_" + "B" * 43},
                                timeout=30))
    checked = 0
    try:
        for method, path in _routes(team.app):
            if _public(path):
                continue
            for c in clients:
                answer = _call(c, method, path)
                where = (method, path, c.headers.get("authorization"), answer.status_code,
                         answer.text)
                assert answer.status_code < 500, where
                assert _refused(path, answer), where
                if path.startswith("/api/"):
                    assert answer.json()["error"]["message"], where
            checked += 1
    finally:
        for c in clients:
            c.close()
    assert checked >= 20


def test_a_viewer_is_refused_every_write(team: Team) -> None:
    token = team.sessions["viewer"]
    by_header = httpx.Client(base_url=team.url, headers={"Authorization": f"Bearer {token}"})
    by_cookie = httpx.Client(base_url=team.url, cookies={"medops_session": token})
    checked = 0
    with by_header, by_cookie:
        for method, path in _routes(team.app):
            if method not in WRITES or _public(path) or (method, path) in ANY_CALLER_WRITES:
                continue
            for c in (by_header, by_cookie):
                answer = _call(c, method, path)
                assert answer.status_code == 403, (method, path, answer.text)
            checked += 1
    assert checked >= 8


def test_every_route_answers_a_viewer_without_a_server_error(team: Team) -> None:
    with team.client("viewer") as c:
        for method, path in _routes(team.app):
            if method not in WRITES:
                answer = _call(c, method, path)
                assert answer.status_code < 500, (method, path, answer.text)


def test_a_viewer_approving_changes_nothing(team: Team) -> None:
    model = team.new_model(2)
    with team.client("viewer") as c:
        answer = c.post(f"/api/models/{model}/versions/1/approve", json={"note": "looks fine"})
    assert answer.status_code == 403
    assert "approver" in answer.json()["error"]["message"]
    with team.client("admin") as c:
        versions = c.get(f"/api/models/{model}/versions").json()
    assert not any(v["live"] for v in versions)


def test_passwords_and_tokens_are_never_stored_in_clear(team: Team) -> None:
    auth = team.authenticator
    password = new_password()
    auth.add_user("clear-check", Role.VIEWER, password, by="tests")
    token, _ = auth.create_token("clear-check-token", Role.VIEWER, by="tests")
    session = team.login("clear-check", password).json()["token"]
    with team.project.state.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM server_users "
                                   "WHERE name = 'clear-check'")).scalar_one()
        hashes = set(conn.execute(text("SELECT token_hash FROM server_tokens")).scalars())
        sessions = set(conn.execute(text("SELECT token_hash FROM server_sessions")).scalars())
    assert stored.startswith("$argon2id$") and password not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in hashes
    assert hashlib.sha256(session.encode()).hexdigest() in sessions
    # nowhere in the database file (nor its write-ahead log) in clear
    url = team.project.state.engine.url
    assert url.get_backend_name() == "sqlite" and url.database
    for path in Path(url.database).parent.glob(Path(url.database).name + "*"):
        blob = path.read_bytes()
        for secret in (password, token, session):
            assert secret.encode() not in blob, path


def test_login_with_a_wrong_password_or_user_is_refused_alike(team: Team) -> None:
    wrong_password = team.login("viewer-user", "not-the-password-at-all")
    no_such_user = team.login("nobody-at-all", "not-the-password-at-all")
    for answer in (wrong_password, no_such_user):
        assert answer.status_code == 401
        assert answer.json()["error"]["message"] == "wrong user name or password"
        assert "set-cookie" not in answer.headers
    with httpx.Client(base_url=team.url) as c:
        assert c.post("/api/login", json={"user": "viewer-user"}).status_code == 400
        assert c.post("/api/login", content=b"user=x", headers={
            "content-type": "text/plain"}).status_code == 415
        form = c.post("/api/login", data={"user": "viewer-user",
                                          "password": team.passwords["viewer-user"]})
        assert form.status_code == 200 and form.json()["role"] == "viewer"


def test_a_revoked_token_stops_working_at_once(team: Team) -> None:
    with team.client("admin") as admin:
        made = admin.post("/api/tokens", json={"name": "ci-revoke", "role": "approver"})
        assert made.status_code == 201
        token = made.json()["token"]
        assert token.startswith("mdt_")
        listed = admin.get("/api/tokens").json()
        assert [t for t in listed if t["name"] == "ci-revoke"] and "token" not in listed[0]
        with team.client(token=token) as ci:
            assert ci.get("/api/me").json() == {"name": "token:ci-revoke", "role": "approver",
                                                 "kind": "token"}
            assert admin.delete("/api/tokens/ci-revoke").status_code == 200
            assert ci.get("/api/me").status_code == 401
    # revoked on the host (`medops server tokens revoke`), straight in the database: the
    # server believes a checked token for REMEMBER_SECONDS at most
    token, _ = team.authenticator.create_token("agent-revoke", Role.TRAINER, by="tests")
    with team.client(token=token) as agent:
        assert agent.get("/api/runs").status_code == 200
        team.authenticator.revoke_token("agent-revoke", by="tests")
        revoked_at = time.monotonic()
        while agent.get("/api/runs").status_code != 401:
            assert time.monotonic() - revoked_at < REMEMBER_SECONDS + 1.0
            time.sleep(0.05)


def test_a_disabled_user_cannot_log_in_and_loses_their_sessions(team: Team) -> None:
    password = new_password()
    team.authenticator.add_user("to-disable", Role.APPROVER, password, by="tests")
    session = team.login("to-disable", password).json()["token"]
    with team.client("admin") as admin, team.client(token=session) as user:
        assert user.get("/api/me").status_code == 200
        assert admin.patch("/api/users/to-disable", json={"disabled": True}).status_code == 200
        assert user.get("/api/me").status_code == 401
        refused = team.login("to-disable", password)
        assert refused.status_code == 401 and "disabled" in refused.json()["error"]["message"]
        assert admin.patch("/api/users/to-disable", json={"disabled": False}).status_code == 200
        assert team.login("to-disable", password).status_code == 200


def test_a_role_change_applies_to_open_sessions(team: Team) -> None:
    password = new_password()
    team.authenticator.add_user("demoted", Role.APPROVER, password, by="tests")
    session = team.login("demoted", password).json()["token"]
    model = team.new_model(1)
    team.authenticator.set_role("demoted", Role.VIEWER, by="tests")
    with team.client(token=session) as c:
        answer = c.post(f"/api/models/{model}/versions/1/approve", json={"note": "ok"})
    assert answer.status_code == 403


def test_logout_ends_the_session(team: Team) -> None:
    session = team.login("viewer-user").json()["token"]
    with team.client(token=session) as c:
        assert c.post("/api/logout").json()["logged_out"] is True
        assert c.get("/api/me").status_code == 401


def test_the_session_cookie_is_httponly_strict_and_secure_behind_tls(team: Team) -> None:
    body = {"user": "viewer-user", "password": team.passwords["viewer-user"]}
    with httpx.Client(base_url=team.url) as c:
        plain = c.post("/api/login", json=body).headers["set-cookie"]
        behind_tls = c.post("/api/login", json=body, headers={
            "X-Forwarded-Proto": "https"}).headers["set-cookie"]
    for cookie in (plain.lower(), behind_tls.lower()):
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in plain.lower() and "secure" in behind_tls.lower()
    # the cookie alone is a login (what the dashboard's pages rely on)
    session = behind_tls.split("medops_session=")[1].split(";")[0]
    with httpx.Client(base_url=team.url, cookies={"medops_session": session}) as c:
        assert c.get("/api/me").json()["name"] == "viewer-user"


def test_answers_carry_security_headers(team: Team) -> None:
    with team.client("viewer") as c:
        answer = c.get("/api/runs")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-frame-options"] == "DENY"


def test_roles_are_ordered() -> None:
    assert Role.VIEWER < Role.TRAINER < Role.APPROVER < Role.ADMIN
    assert sorted([Role.ADMIN, Role.VIEWER, Role.APPROVER]) == [Role.VIEWER, Role.APPROVER,
                                                                Role.ADMIN]
    assert max(Role) is Role.ADMIN and Role.ADMIN >= Role.APPROVER
