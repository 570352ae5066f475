"""Two real `medops agent` processes on one PostgreSQL database, as on two machines: separate
project folders, the same storage (state, tracking, artifacts), no shared lock file. One acts,
the other stands by; SIGKILL of the active one hands its runs and events to the other. Every
event leads to exactly one run, and none is lost."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medops.agent import request_run
from medops.demo.synthetic import SyntheticDataset
from medops.storage import EventRecord, RunRecord, RunStatus, StateStore
from tests.agent.conftest import AgentProcess, make_agent_project, wait_for
from tests.conftest import _postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
Agents = Callable[..., AgentProcess]

# Quick hand-overs: a lease of 2 s, runs beating every 0.5 s.
QUICK = {"agent.lease": 2, "pipeline.heartbeat": 0.5, "agent.watch": False, "train.epochs": 1}


@pytest.fixture
def state_db() -> Iterator[str]:
    yield from _postgres_database()


def _machines(tmp_path: Path, dataset: SyntheticDataset, url: str) -> tuple[Path, Path]:
    shared = tmp_path / "shared"  # what a team shares: here folders, in production S3 & co.
    shutil.copytree(dataset.root, shared / "raw")
    settings = {**QUICK, "storage.state": url,
                "storage.tracking": f"sqlite:///{shared / 'mlflow.db'}",
                "storage.artifacts": str(shared / "artifacts"),
                "data.source.path": str(shared / "raw")}
    a, b = (make_agent_project(tmp_path / name, settings=settings)
            for name in ("machine-a", "machine-b"))
    return a, b


def _run_of(store: StateStore, event: EventRecord) -> list[RunRecord]:
    return [r for r in store.list_runs(100) if r.id.endswith(f"-e{event.id}")]


def _step_running(store: StateStore, event: EventRecord, after: str = "ingest") -> bool:
    """A step after ``after`` of ``event``'s run is running (the run is well under way)."""
    runs = _run_of(store, event)
    if not runs:
        return False
    names = [s.name for s in runs[0].steps]
    return any(s.status.value == "running" and names.index(s.name) > names.index(after)
               for s in runs[0].steps)


def _active(agent: AgentProcess) -> bool:
    return "leading project" in agent.text()


def test_two_agents_hand_over_on_sigkill_and_every_event_runs_once(
        tmp_path: Path, dataset: SyntheticDataset, agents: Agents, state_db: str) -> None:
    root_a, root_b = _machines(tmp_path, dataset, state_db)
    store = StateStore(state_db)
    a = agents(root_a)  # warm: it has made MLflow's tables, which B then need not race for
    wait_for(lambda: _active(a), 30, f"agent A active\n{a.tail()}")
    b = agents(root_b)  # returns once warm: a standby is ready to take over at once
    assert "standby: agent" in b.text() and not _active(b)

    # A starts a run; it is killed in the middle of it.
    e1 = request_run(store, key="e1")
    assert e1 is not None
    wait_for(lambda: _step_running(store, e1), 300, f"e1's run under way\n{a.tail()}")
    a.kill()
    # An event stored while no agent acts must not be lost.
    e2 = request_run(store, key="e2")
    assert e2 is not None
    wait_for(lambda: _active(b), 30, f"agent B taking over\n{b.tail()}")
    a2 = agents(root_a)  # machine A's agent, restarted: now the standby
    assert not _active(a2)

    # B resumes e1's run, then starts e2's; it is killed in the middle of that one.
    wait_for(lambda: _step_running(store, e2), 300, f"e2's run under way\n{b.tail()}")
    b.kill()
    wait_for(lambda: _active(a2), 30, f"agent A taking over again\n{a2.tail()}")

    def handled() -> bool:
        return all(e.decision is not None and e.decision.status.value == "handled"
                   for e in store.event_log("run.requested"))

    wait_for(handled, 300, f"both events handled\n{a2.tail()}")
    assert a2.terminate(timeout=30) == 0
    assert store.leases.state("agent:agent-test", "-").holder is None  # released on stop

    runs = store.list_runs(100)
    for event, started, resumed in ((e1, a, b), (e2, b, a2)):
        (run,) = _run_of(store, event)  # exactly one run per event
        assert run.status is RunStatus.SUCCEEDED, (run, a2.tail())
        (logged,) = [x for x in store.event_log("run.requested") if x.id == event.id]
        assert logged.decision is not None and logged.decision.run_id == run.id
        assert logged.decision.decision in ("started", "resumed")
        # Started by one agent, resumed by the next after the kill.
        assert f"run {run.id} started" in started.text()
        assert f"run {run.id} resumed" in resumed.text(), resumed.tail()
    assert len(runs) == 2
    # Every step ran to completion once: a resumed run redoes none of its finished steps.
    for run in runs:
        assert all(s.status.value == "succeeded" for s in run.steps)
        assert next(s for s in run.steps if s.name == "ingest").attempts == 1
    finished = store.event_log("run.finished")
    assert sorted(str(e.payload["run_id"]) for e in finished) == sorted(r.id for r in runs)
    store.close()
