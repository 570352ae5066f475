"""Retraining when the model repository's branch moves (``code.changed``) or an image is pushed
(``image.pushed``): configuration, the branch watcher on real git repositories, the policy, the
lineage a run records, and a real `medops agent` process end to end."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from medops.agent.code_watch import CodeWatch, watched_branches
from medops.agent.newdata import NewData
from medops.agent.policy import Policy, Verdict
from medops.config import parse_config
from medops.demo.synthetic import SyntheticDataset
from medops.errors import ConfigError
from medops.pipeline.lineage import trigger_lineage
from medops.project import Project
from medops.storage import DecisionStatus, EventRecord, RunStatus, StateStore
from tests.agent.conftest import AgentProcess, events, make_agent_project, runs_of, wait_for

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=timezone.utc)
DIGEST = "sha256:" + "ab" * 32


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, timeout=30).stdout.strip()


def commit(repo: Path, message: str) -> str:
    (repo / "model.py").write_text(f"# {message}\n")
    git(repo, "add", "model.py")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def model_repo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    git(folder, "init", "-q", "-b", "main")
    git(folder, "config", "user.email", "ml@example.org")
    git(folder, "config", "user.name", "ML Engineer")
    commit(folder, "first model")
    return folder


@pytest.fixture
def state(state_url: str) -> Iterator[StateStore]:
    store = StateStore(state_url)
    yield store
    store.close()


def _config(*triggers: dict[str, Any], **agent: Any) -> Any:
    return parse_config({"project": "p", "agent": {"cooldown": "10m", **agent},
                         "triggers": list(triggers)})


# -- configuration ---------------------------------------------------------------------------
def test_triggers_parse_with_defaults() -> None:
    code, image = _config({"on": "code.changed", "repo": "../model"},
                          {"on": "image.pushed", "repository": "medops/train",
                           "tag": "latest"}).triggers
    assert (code.repo, code.branch, code.poll, code.debounce) == ("../model", "main", 1.0, 0.0)
    assert (image.repository, image.tag) == ("medops/train", "latest")


@pytest.mark.parametrize(("trigger", "message"), [
    ({"on": "code.changed", "repo": "m", "branch": "feat..x"}, "not a valid git branch name"),
    ({"on": "code.changed", "repo": "m", "branch": "refs/heads/main"}, "without refs/"),
    ({"on": "code.changed", "repo": "m", "poll": 0}, "greater than 0"),
    ({"on": "image.pushed", "repository": "1.dkr.ecr.eu-west-1.amazonaws.com/train:v1"},
     "looks like an image URI"),
    ({"on": "image.pushed", "repository": "Medops Train"}, "not an ECR repository name"),
])
def test_bad_triggers_are_rejected_at_load_with_the_value(trigger: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(trigger)


def test_the_same_branch_watched_twice_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"triggers 0 and 1 are the same code\.changed"):
        _config({"on": "code.changed", "repo": "../m"}, {"on": "code.changed", "repo": "../m/"})


def test_a_repo_that_is_not_a_git_repository_names_the_path_and_the_fix(
        tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    cfg = _config({"on": "code.changed", "repo": "plain"})
    with pytest.raises(ConfigError, match=r"triggers\[0\]\.repo: 'plain' \(.*plain\) is not a "
                                          r"git repository; .*git init"):
        watched_branches(cfg.triggers, tmp_path)
    cfg = _config({"on": "code.changed", "repo": "absent"})
    with pytest.raises(ConfigError, match=r"'absent' \(.*absent\) is not a folder"):
        watched_branches(cfg.triggers, tmp_path)


# -- the watcher on a real repository ---------------------------------------------------------
def _watch(root: Path, state: StateStore, branch: str = "main") -> CodeWatch:
    cfg = _config({"on": "code.changed", "repo": "model", "branch": branch})
    watch = CodeWatch(watched_branches(cfg.triggers, root), state, lambda: None,
                      threading.Event())
    for b in watch.branches:  # what start() does, without the polling thread
        watch._catch_up(b)
    return watch


def _changes(state: StateStore) -> list[dict[str, Any]]:
    return [e.payload for e in reversed(state.event_log("code.changed"))]


def test_branch_moves_are_stored_once_across_restarts(tmp_path: Path,
                                                      state: StateStore) -> None:
    repo = model_repo(tmp_path / "model")
    first = git(repo, "rev-parse", "HEAD")
    watch = _watch(tmp_path, state)
    assert _changes(state) == [{"repo": "model", "path": str(repo), "branch": "main",
                                "commit": first, "previous": None, "baseline": True}]

    git(repo, "switch", "-q", "-c", "feature")
    commit(repo, "an experiment")  # another branch: nothing
    git(repo, "switch", "-q", "main")
    watch.poll_once()
    assert len(_changes(state)) == 1

    second = commit(repo, "a better model")
    watch.poll_once()
    watch.poll_once()
    changes = _changes(state)
    assert len(changes) == 2 and changes[1]["commit"] == second
    assert changes[1]["previous"] == first and "baseline" not in changes[1]

    _watch(tmp_path, state)  # a restart with the head where it was: nothing new
    assert len(_changes(state)) == 2

    third = commit(repo, "while no agent ran")  # a commit while the agent was down
    git(repo, "gc", "-q")  # packed refs read as well as loose ones
    _watch(tmp_path, state)
    changes = _changes(state)
    assert [c["commit"] for c in changes] == [first, second, third]
    assert changes[2]["previous"] == second


def test_a_branch_that_does_not_exist_yet_starts_a_run_when_it_appears(
        tmp_path: Path, state: StateStore) -> None:
    repo = model_repo(tmp_path / "model")
    watch = _watch(tmp_path, state, branch="release")
    watch.poll_once()
    assert _changes(state) == []
    git(repo, "branch", "release")
    watch.poll_once()
    (change,) = _changes(state)
    assert change["commit"] == git(repo, "rev-parse", "HEAD") and "baseline" not in change


# -- the policy -------------------------------------------------------------------------------
def _event(id_: int, kind: str, ago: float = 60, **payload: Any) -> EventRecord:
    return EventRecord(kind=kind, payload=payload, created_at=NOW - timedelta(seconds=ago),
                       id=id_)


def _decide(cfg: Any, events: list[EventRecord], running: str | None = None,
            finished: datetime | None = None) -> Any:
    return Policy(cfg.triggers, cfg.agent).decide(events, NOW, running, finished,
                                                  lambda: NewData(0, "-"))


def test_commits_on_the_watched_branch_start_a_run_and_baselines_do_not() -> None:
    cfg = _config({"on": "code.changed", "repo": "../model"})
    out = _decide(cfg, [
        _event(1, "code.changed", repo="../model", branch="main", commit="a" * 40,
               baseline=True),
        _event(2, "code.changed", repo="../model", branch="dev", commit="b" * 40),
        _event(3, "code.changed", repo="../model", branch="main", commit="c" * 40)])
    assert out.decisions[1].verdict is Verdict.RECORDED
    assert "baseline: branch main of ../model at aaaaaaaaaaaa" in out.decisions[1].reason
    assert out.decisions[2].verdict is Verdict.IGNORED
    assert "`on: code.changed` (repo '../model', branch 'dev')" in out.decisions[2].reason
    assert [(e.id, why) for e, why in out.start] == [(3, "branch main of ../model at "
                                                         "cccccccccccc")]


def test_image_pushes_match_repository_and_tag_and_wait_like_other_triggers() -> None:
    cfg = _config({"on": "image.pushed", "repository": "medops/train", "tag": "latest"})
    push: dict[str, Any] = {"repository": "medops/train", "tag": "latest", "digest": DIGEST}
    out = _decide(cfg, [_event(1, "image.pushed", **push),
                        _event(2, "image.pushed", **{**push, "tag": "dev"}),
                        _event(3, "image.pushed", **{**push, "repository": "medops/serve"})])
    assert [e.id for e, _ in out.start] == [1]
    assert out.start[0][1] == "image medops/train:latest pushed (sha256:abababababab)"
    assert {out.decisions[i].verdict for i in (2, 3)} == {Verdict.IGNORED}

    waiting = _decide(cfg, [_event(1, "image.pushed", **push)], running="run-1")
    assert waiting.decisions[1].status is DecisionStatus.WAITING
    cooling = _decide(cfg, [_event(1, "image.pushed", **push)],
                      finished=NOW - timedelta(minutes=1))
    assert cooling.decisions[1].verdict is Verdict.COOLDOWN and not cooling.start


def test_debounce_waits_for_the_quiet_time_after_the_newest_commit() -> None:
    cfg = _config({"on": "code.changed", "repo": "m", "debounce": "30s"})
    burst = [_event(i, "code.changed", ago=40 - 10 * i, repo="m", branch="main",
                    commit=str(i) * 40) for i in (1, 2)]
    out = _decide(cfg, burst)
    assert {d.verdict for d in out.decisions.values()} == {Verdict.DEBOUNCED}
    assert out.wake_at == NOW + timedelta(seconds=10)
    later = Policy(cfg.triggers, cfg.agent).decide(burst, NOW + timedelta(seconds=11), None,
                                                   None, lambda: NewData(0, "-"))
    assert [e.id for e, _ in later.start] == [1, 2]


# -- lineage: what the run's registered version records ---------------------------------------
def test_the_run_records_the_pushed_digest_and_the_newest_commit(state: StateStore,
                                                                 tmp_path: Path) -> None:
    cfg = _config({"on": "image.pushed", "repository": "medops/train"},
                  {"on": "code.changed", "repo": "model"})
    # stored as the SQS feed and the branch watcher store them
    push = state.add_event("image.pushed", {"repository": "medops/train", "tag": "v7",
                                            "digest": DIGEST}, "ecr:medops/train:" + DIGEST)
    old = state.add_event("code.changed", {"repo": "model", "branch": "main",
                                           "commit": "1" * 40}, "code.changed:x:1")
    new = state.add_event("code.changed", {"repo": "model", "branch": "main",
                                           "commit": "2" * 40}, "code.changed:x:2")
    other = state.add_event("image.pushed", {"repository": "medops/train", "digest": "sha256:0"})
    assert push and old and new and other and push.id and old.id and new.id
    out = Policy(cfg.triggers, cfg.agent).decide([push, old, new], NOW, None, None,
                                                 lambda: NewData(0, "-"))
    assert [e.id for e, _ in out.start] == [push.id, old.id, new.id]
    claims = {push.id: ("started", "started"), old.id: ("coalesced", "covered"),
              new.id: ("coalesced", "covered")}
    assert state.claim_events_for_run("run-1", f"image.pushed#{push.id}", {}, ["train"], claims)
    assert trigger_lineage(state, "run-1", cfg.triggers, tmp_path) == {
        "image_digest": DIGEST, "image_repository": "medops/train", "image_tag": "v7",
        "code_commit": "2" * 40, "code_repo": "model", "code_branch": "main"}

    # A run started otherwise records the watched branch's head at registration.
    repo = model_repo(tmp_path / "model")
    assert trigger_lineage(state, "run-2", cfg.triggers, tmp_path) == {
        "code_commit": git(repo, "rev-parse", "HEAD"), "code_repo": "model",
        "code_branch": "main"}


# -- a real agent -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_commit_on_the_watched_branch_trains_and_registers_with_that_commit(
        tmp_path: Path, dataset: SyntheticDataset,
        agents: Callable[..., AgentProcess]) -> None:
    repo = model_repo(tmp_path / "model")
    root = make_agent_project(tmp_path / "p", data=dataset.root, settings={
        "triggers": [{"on": "code.changed", "repo": "../model", "branch": "main",
                      "poll": 0.2}]})
    agent = agents(root)
    wait_for(lambda: [e for e in events(root, "code.changed")
                      if e["decision"] == "recorded"], 30, "the branch's baseline")
    git(repo, "switch", "-q", "-c", "feature")
    commit(repo, "an experiment")
    git(repo, "switch", "-q", "main")
    time.sleep(1.0)  # five polls: a commit on another branch starts nothing
    assert len(events(root, "code.changed")) == 1 and runs_of(root) == []

    t0 = time.monotonic()
    head = commit(repo, "a better model")
    (run,) = wait_for(lambda: runs_of(root), 30, "the run the commit starts")
    # goal 2 s (bench/agent_latency.py); the bound leaves room for a loaded machine
    assert time.monotonic() - t0 < 10, agent.tail()
    change = next(e for e in events(root, "code.changed") if e["decision"] == "started")
    assert change["payload"]["commit"] == head
    assert run.trigger == f"code.changed#{change['id']}"
    wait_for(lambda: runs_of(root)[0].status is not RunStatus.RUNNING, 300,
             "the run to end")
    (run,) = runs_of(root)
    assert run.status is RunStatus.SUCCEEDED, run.error
    tags = Project.load(root).registry.get("1").tags
    assert (tags["code_commit"], tags["code_repo"], tags["code_branch"]) == \
        (head, "../model", "main")

    assert agent.terminate(timeout=30) == 0
    agents(root)  # the handled commit is not a change again
    time.sleep(1.0)
    assert len(events(root, "code.changed")) == 2 and len(runs_of(root)) == 1
