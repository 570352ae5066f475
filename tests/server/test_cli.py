"""`medops server ...` as an admin types it, `medops models approve` through a server, and a
real `medops server` process making its first admin."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from medops.cli.main import app
from medops.project import Project
from medops.server.auth import Role

from .conftest import Team, new_password

runner = CliRunner()


def medops(*args: str, env: Mapping[str, str | None] | None = None,
           stdin: str | None = None) -> tuple[int, str]:
    """Exit code and what the user sees; with --json, stdout alone."""
    result = runner.invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout if "--json" in args else " ".join(result.output.split())


@pytest.fixture
def root(tmp_path: Path) -> str:
    Project.init(tmp_path / "proj", name="cli-server")
    return str(tmp_path / "proj")


def test_users_and_tokens_on_the_host(root: str) -> None:
    password = new_password()
    code, out = medops("server", "users", "add", "dr-lee", "--role", "approver",
                       "--password-stdin", "-C", root, stdin=password + "\n")
    assert code == 0 and "user dr-lee added (approver)" in out
    code, out = medops("server", "users", "add", "weak", "--role", "viewer",
                       "--password-stdin", "-C", root, stdin="short\n")
    assert code == 2 and "at least 12" in out
    code, out = medops("server", "users", "add", "x", "--role", "owner", "--password-stdin",
                       "-C", root, stdin=password + "\n")
    assert code == 2 and "no role 'owner'" in out
    code, out = medops("server", "users", "add", "boss", "--role", "admin", "-C", root,
                       stdin=f"{password}\n{password}\n")  # typed twice at the prompt
    assert code == 0, out
    code, out = medops("server", "users", "set-role", "dr-lee", "viewer", "-C", root)
    assert code == 0 and "dr-lee is now viewer" in out
    code, out = medops("server", "users", "set-role", "boss", "viewer", "-C", root)
    assert code == 2 and "only enabled admin" in out
    code, out = medops("server", "users", "disable", "dr-lee", "-C", root)
    assert code == 0
    code, out = medops("server", "users", "ls", "-C", root, "--json")
    users = {u["name"]: u for u in json.loads(out)}
    assert users["dr-lee"]["disabled"] and users["boss"]["role"] == "admin"
    assert not any("password" in key for u in users.values() for key in u)
    code, out = medops("server", "users", "disable", "nobody", "-C", root)
    assert code == 4 and "no user 'nobody'" in out

    result = runner.invoke(app, ["server", "tokens", "create", "gpu-agent", "--role", "trainer",
                                 "-C", root])
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert token.startswith("mdt_") and len(token) > 40
    code, out = medops("server", "tokens", "create", "gpu-agent", "--role", "trainer", "-C",
                       root)
    assert code == 2 and "exists already" in out
    code, out = medops("server", "tokens", "ls", "-C", root, "--json")
    assert [(t["name"], t["role"]) for t in json.loads(out)] == [("gpu-agent", "trainer")]
    assert token not in out
    code, out = medops("server", "tokens", "revoke", "gpu-agent", "-C", root)
    assert code == 0 and "revoked" in out
    code, out = medops("server", "tokens", "ls", "-C", root, "--json")
    assert json.loads(out) == []
    code, out = medops("server", "tokens", "ls", "--all", "-C", root)
    assert code == 0 and "revoked" in out


def _client_project(tmp_path: Path, url: str) -> str:
    root = tmp_path / "laptop"
    Project.init(root, name="laptop")
    with (root / "medops.yaml").open("a") as f:
        f.write(f"\nserver:\n  url: {url}\n")
    return str(root)


@pytest.mark.slow
def test_models_sign_off_goes_through_the_server(team: Team, tmp_path: Path) -> None:
    model = team.new_model(2)
    root = _client_project(tmp_path, team.url)
    approver, _ = team.authenticator.create_token("laptop-approver", Role.APPROVER, by="tests")
    viewer, _ = team.authenticator.create_token("laptop-viewer", Role.VIEWER, by="tests")
    empty = str(tmp_path / "no-credentials")
    as_approver = {"MEDOPS_TOKEN": approver, "XDG_CONFIG_HOME": empty}

    code, out = medops("models", "approve", model, "1", "--note", "reviewed", "-C", root,
                       "--json", env=as_approver)
    assert code == 0, out
    assert json.loads(out)["actor"] == "token:laptop-approver"
    code, out = medops("models", "approve", model, "2", "--by", "Dr. Lee", "--note", "x",
                       "-C", root, env=as_approver)
    assert code == 2 and "leave out --by" in out
    code, out = medops("models", "approve", model, "2", "--note", "better", "-C", root,
                       env=as_approver)
    assert code == 0 and f"{model} v2 approved" in out and "token:laptop-approver" in out
    code, out = medops("models", "reject", model, "2", "--note", "no", "-C", root,
                       env=as_approver)
    assert code == 7 and "409" in out and "roll back" in out
    code, out = medops("models", "rollback", model, "--note", "drift", "-C", root, "--json",
                       env=as_approver)
    assert code == 0 and json.loads(out)["version"] == "1"
    code, out = medops("models", "reject", model, "2", "--note", "fails on AP", "-C", root,
                       env=as_approver)
    assert code == 0 and "rejected by token:laptop-approver" in out

    code, out = medops("models", "approve", model, "2", "--note", "x", "-C", root,
                       env={"MEDOPS_TOKEN": viewer, "XDG_CONFIG_HOME": empty})
    assert code == 1 and "403" in out and "approver" in out
    code, out = medops("models", "approve", model, "2", "--note", "x", "-C", root,
                       env={"MEDOPS_TOKEN": "mdt_wrong", "XDG_CONFIG_HOME": empty})
    assert code == 1 and "401" in out and "$MEDOPS_TOKEN" in out
    code, out = medops("models", "approve", model, "2", "--note", "x", "-C", root,
                       env={"MEDOPS_TOKEN": None, "XDG_CONFIG_HOME": empty})
    assert code == 1 and "no token" in out and "medops server login" in out

    history = team.project.state.audit_log(f"{model}/1")
    assert {a.actor for a in history} == {"token:laptop-approver"}


@pytest.mark.slow
def test_login_keeps_the_token_in_a_private_credentials_file(team: Team,
                                                             tmp_path: Path) -> None:
    model = team.new_model(1)
    root = _client_project(tmp_path, team.url)
    env: dict[str, str | None] = {"MEDOPS_TOKEN": None, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    code, out = medops("server", "login", "--user", "approver-user", "--password-stdin", "-C",
                       root, env=env, stdin=team.passwords["approver-user"] + "\n")
    assert code == 0 and "as approver-user (approver)" in out
    creds = tmp_path / "cfg" / "medops" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert team.passwords["approver-user"] not in creds.read_text()
    code, out = medops("models", "approve", model, "1", "--note", "ok", "-C", root, "--json",
                       env=env)
    assert code == 0 and json.loads(out)["actor"] == "approver-user"

    creds.chmod(0o644)
    code, out = medops("models", "approve", model, "1", "--note", "ok", "-C", root, env=env)
    assert code == 2 and "chmod 600" in out
    creds.chmod(0o600)
    code, out = medops("server", "logout", "-C", root, env=env)
    assert code == 0 and "logged out" in out
    code, out = medops("models", "approve", model, "1", "--note", "ok", "-C", root, env=env)
    assert code == 1 and "no token" in out
    code, out = medops("server", "login", "--user", "approver-user", "--password-stdin", "-C",
                       root, env=env, stdin="not-the-password\n")
    assert code == 1 and "wrong user name or password" in out


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = _client_project(tmp_path, f"http://127.0.0.1:{port}")
    code, out = medops("models", "approve", "m", "1", "--note", "x", "-C", root,
                       env={"MEDOPS_TOKEN": "mdt_x"})
    assert code == 1 and "cannot reach the medops server" in out and str(port) in out
    code, out = medops("models", "approve", "m", "1", "--note", "x", "-C", str(tmp_path))
    assert code == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_first_start_makes_the_admin_and_refuses_a_weak_password(root: str) -> None:
    medops_bin = str(Path(sys.executable).parent / "medops")
    port = _free_port()
    env = {**os.environ, "MEDOPS_ADMIN_PASSWORD": "short"}
    weak = subprocess.run([medops_bin, "server", "--port", str(port), "-C", root], env=env,
                          capture_output=True, text=True, timeout=120)
    assert weak.returncode == 2 and "MEDOPS_ADMIN_PASSWORD" in weak.stderr
    assert "at least 12" in weak.stderr

    password = new_password()
    env["MEDOPS_ADMIN_PASSWORD"] = password
    proc = subprocess.Popen([medops_bin, "server", "--port", str(port), "-C", root], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        login = httpx.post(f"{url}/api/login", json={"user": "admin", "password": password})
        assert login.status_code == 200 and login.json()["role"] == "admin"
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "created the admin user 'admin'" in log and password not in log


def test_worker_processes_build_the_app_from_the_environment(
        root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each process of `medops server --workers N` runs (uvicorn's factory)."""
    from medops.server.app import PROJECT_ENV, SETTINGS_ENV, app_from_environment

    monkeypatch.setenv(PROJECT_ENV, root)
    monkeypatch.setenv(SETTINGS_ENV, json.dumps({"port": 8123, "session_hours": 1.5}))
    built = app_from_environment()
    assert built.state.settings.port == 8123
    assert built.state.authenticator.session_hours == 1.5
    built.state.project.close()


@pytest.mark.parametrize(("server", "problem"), [
    ({"url": "https://dr:secret@medops.example.org"}, "credentials never go in medops.yaml"),
    ({"url": "medops.example.org"}, "not an http(s) URL"),
    ({"token_env": "mdt_0123456789abcdef"}, None),  # a token-looking name is still a name
    ({"token_env": "MY TOKEN"}, "not an environment variable name"),
    ({"tokn_env": "X"}, "tokn_env"),
])
def test_the_server_section_of_medops_yaml(server: dict[str, str], problem: str | None) -> None:
    from medops.config import parse_config
    from medops.errors import ConfigError

    raw = {"project": "p", "server": server}
    if problem is None:
        assert parse_config(raw).server.token_env == server["token_env"]
        return
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config(raw)
