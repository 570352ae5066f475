"""A real `medops server` app under uvicorn over a trained project, with a user per role."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from medops.project import Project
from medops.server.auth import Authenticator, Role
from medops.server.settings import ServerSettings
from tests.conftest import TrainedProject
from tests.serve.conftest import ServerThread


def new_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass
class Team:
    """A running server: its URL and app, the project, a user (and session) per role."""

    url: str
    app: Any  # fastapi.FastAPI
    project: Project
    trained: TrainedProject
    passwords: dict[str, str] = field(default_factory=dict)  # user name -> password
    sessions: dict[str, str] = field(default_factory=dict)  # role -> a session token

    def client(self, role: str | None = None, token: str | None = None) -> httpx.Client:
        """A client with the session of the user of ``role`` (or ``token``), or none."""
        bearer = token or (self.sessions[role] if role else None)
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    @property
    def authenticator(self) -> Authenticator:
        return Authenticator(self.project.state.db, audit=self.project.state.audit)

    @property
    def run_id(self) -> str:
        """The medops run that trained the project's model (``trained.run_id`` is MLflow's)."""
        return self.project.registry.get("1").tags["medops_run_id"]

    def new_model(self, versions: int = 3) -> str:
        """A registered model of its own (so tests do not share a champion); its name."""
        name = f"team-{uuid.uuid4().hex[:8]}"
        self.trained.new_model(name, versions)
        return name

    def login(self, user: str, password: str | None = None) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            return c.post("/api/login",
                          json={"user": user, "password": password or self.passwords[user]})


@pytest.fixture(scope="session")
def team(trained_project: TrainedProject) -> Iterator[Team]:
    """One server for the session over the trained project's state (SQLite), with the users
    viewer-user, trainer-user, approver-user and admin-user logged in."""
    from medops.server.app import create_app

    project = trained_project.project
    app = create_app(project, ServerSettings())
    with ServerThread(app) as url:
        found = Team(url, app, project, trained_project)
        auth = found.authenticator
        for role in Role:
            name = f"{role.value}-user"
            found.passwords[name] = new_password()
            auth.add_user(name, role, found.passwords[name], by="tests")
            answer = found.login(name)
            assert answer.status_code == 200, answer.text
            found.sessions[role.value] = answer.json()["token"]
        yield found
