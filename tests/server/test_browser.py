"""The dashboard in a real browser: headless Chromium drives a real `medops server` process,
and a real `medops serve` process swaps to the version an approver signs off on the page.

The two processes run from a second project folder that shares the trained project's state,
registry and artifacts (as a second machine would share them), serving a model of their own
so that no other test sees its champion move.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from medops.registry import CHAMPION, ModelLifecycle
from medops.server.auth import Authenticator, Role
from medops.storage import sqlalchemy_url

from ..conftest import REPO, TrainedProject

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@dataclass
class Stack:
    server: str  # `medops server`
    serve: str  # `medops serve` of the model below
    model: str
    passwords: dict[str, str]
    names: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _processes(commands: list[tuple[list[str], str, Path]]) -> Iterator[list[str]]:
    """medops commands, each in its own process group, started together; yields once each
    answers 200 at its URL (``(args, url + readiness path, log file)``)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for args, _, log in commands:
            with log.open("wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", "medops.cli", *args],
                                              stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + 120
        for proc, (_, ready, log) in zip(procs, commands, strict=True):
            while True:
                assert proc.poll() is None, log.read_text()[-4000:]
                try:
                    if httpx.get(ready, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.2)
        yield [ready.rsplit("/", 1)[0] for _, ready, _ in commands]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _second_folder(trained: TrainedProject, folder: Path, model: str) -> Path:
    """A project folder whose storage is the trained project's, serving ``model``."""
    project = trained.project
    storage = project.config.storage
    folder.mkdir(parents=True)
    (folder / "medops.yaml").write_text(
        f"project: {project.config.project}\n"
        "storage:\n"
        f"  state: {sqlalchemy_url(project.root, storage.state)}\n"
        f"  tracking: {sqlalchemy_url(project.root, storage.tracking)}\n"
        f"  artifacts: {project.artifacts}\n"
        f"serve: {{model: '{model}@{CHAMPION}', poll_seconds: 0.5}}\n")
    return folder


@pytest.fixture(scope="module")
def stack(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    tag = uuid.uuid4().hex[:6]
    model = f"browser-{tag}"
    registry = trained_project.new_model(model, 2)
    state = trained_project.project.state
    ModelLifecycle(registry, state).approve("1", "test", "the first live version")
    auth = Authenticator(state.db)
    passwords, names = {}, {}
    for role in (Role.VIEWER, Role.APPROVER):
        names[role.value] = f"{role.value}-{tag}"
        passwords[role.value] = secrets.token_urlsafe(16)
        auth.add_user(names[role.value], role, passwords[role.value], by="test")
    base = tmp_path_factory.mktemp("browser")
    folder = _second_folder(trained_project, base / "machine-b", model)
    server_port, serve_port = _free_port(), _free_port()
    with _processes([
        (["server", "-C", str(folder), "--host", "127.0.0.1", "--port", str(server_port),
          "--log-level", "warning"], f"http://127.0.0.1:{server_port}/login",
         base / "server.log"),
        (["serve", "-C", str(folder), "--host", "127.0.0.1", "--port", str(serve_port)],
         f"http://127.0.0.1:{serve_port}/readyz", base / "serve.log"),
    ]) as (server, serve):
        yield Stack(server, serve, model, passwords, names)


@contextmanager
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / f'chrome-{uuid.uuid4().hex[:6]}'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: Any, stack: Stack, role: str, then: str = "/") -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{stack.server}{then}")  # no session: the page sends us to the login form
    assert "/login?next=" in driver.current_url
    driver.find_element(By.ID, "username").send_keys(stack.names[role])
    driver.find_element(By.ID, "password").send_keys(stack.passwords[role])
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: driver.current_url == f"{stack.server}{then}", "back after logging in")
    assert driver.find_element(By.ID, "who").get_attribute("data-role") == role


def wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.2)


def served_version(stack: Stack) -> str:
    return str(httpx.get(f"{stack.serve}/readyz", timeout=5).json()["version"])


def test_an_approver_signs_off_on_the_page_and_serving_swaps(stack: Stack,
                                                             tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    assert served_version(stack) == "1"
    with browser(tmp_path) as driver:
        log_in(driver, stack, "approver", "/approvals")
        pending = driver.find_element(
            By.CSS_SELECTOR, f'section.pending[data-model="{stack.model}"][data-version="2"]')
        pending.find_element(By.NAME, "note").send_keys("better on the site test set")
        pending.find_element(By.CSS_SELECTOR, "button.approve").click()
        wait_for(lambda: "/approvals?done=" in driver.current_url, "the sign-off page")
        assert f"{stack.model} v2 approved" in driver.find_element(By.ID, "done").text
        wait_for(lambda: served_version(stack) == "2", "medops serve to swap to v2")

        driver.get(f"{stack.server}/models/{stack.model}/history")
        rows = driver.find_element(By.ID, "history").text
        assert "better on the site test set" in rows and stack.names["approver"] in rows


def test_a_viewer_sees_no_buttons_and_a_forged_post_is_refused(stack: Stack,
                                                               tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with browser(tmp_path) as driver:
        log_in(driver, stack, "viewer", "/approvals")
        assert driver.find_elements(By.CSS_SELECTOR, "button.approve") == []
        assert driver.find_element(By.ID, "read-only").is_displayed()
        # The viewer's own session and CSRF token, posted from the page itself: still 403.
        status = driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            const body = new URLSearchParams({action: 'approve', note: 'forged',
                csrf: document.querySelector('input[name=csrf]').value});
            fetch(arguments[0], {method: 'POST', body: body, redirect: 'manual'})
                .then(r => done(r.status));""",
            f"/approvals/{stack.model}/1")
        assert status == 403
    before = served_version(stack)
    time.sleep(1.0)  # two polls of the serving process: nothing moved
    assert served_version(stack) == before


@pytest.mark.skipif(not os.environ.get("MEDOPS_SCREENSHOTS"),
                    reason="set MEDOPS_SCREENSHOTS=1 to remake docs/img/dashboard-*.png")
def test_screenshots_of_every_page(tmp_path: Path) -> None:
    """scripts/screenshots builds a project with realistic content and photographs each page
    into docs/img/ (the PNGs are committed; a run of this test remakes them)."""
    out = tmp_path / "img"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshots"), "--out",
                           str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    shots = sorted(p.name for p in out.glob("dashboard-*.png"))
    assert len(shots) >= 10, shots
    for shot in out.glob("dashboard-*.png"):
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
        shutil.copy(shot, REPO / "docs" / "img" / shot.name)
