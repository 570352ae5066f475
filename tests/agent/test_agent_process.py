"""`medops agent` as a real process: folder watch, policy, crash safety, shutdown, schedules."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from medops.demo.synthetic import SyntheticDataset, make_synthetic_dataset
from medops.storage import RunStatus
from tests.agent.conftest import (
    MEDOPS,
    AgentProcess,
    Webhook,
    events,
    make_agent_project,
    runs_of,
    wait_for,
)

pytestmark = pytest.mark.slow  # real agent processes running the whole pipeline
Agents = Callable[..., AgentProcess]


def _request(root: Path, key: str) -> dict[str, object]:
    out = subprocess.run([MEDOPS, "agent", "request", "-C", str(root), "--json",
                          "--idempotency-key", key], check=True, capture_output=True,
                         text=True, timeout=60)
    return dict(json.loads(out.stdout))


def _event(root: Path, event_id: object) -> dict[str, object]:
    return next(e for e in events(root) if e["id"] == event_id)


def _handled(root: Path, event_id: object) -> dict[str, object] | None:
    """The event once the agent has handled it, else None."""
    event = _event(root, event_id)
    return event if event["status"] == "handled" else None


def _pid_alive(pid: int | None) -> bool:
    """Running, not merely a zombie its parent has not reaped yet."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(b")", 1)[-1].split()[0] != b"Z"


def test_landing_files_start_one_run_then_too_little_new_data_is_skipped(
        tmp_path: Path, dataset: SyntheticDataset, agents: Agents, webhook: Webhook) -> None:
    root = make_agent_project(tmp_path / "p", settings={
        "notify.urls": [webhook.url],
        "triggers": [{"on": "data.arrived", "min_new_items": 5, "debounce": 0.3}]})
    agents(root)
    shutil.copytree(dataset.root, root / "data" / "raw", dirs_exist_ok=True)

    wait_for(lambda: [r for r in runs_of(root) if r.status is not RunStatus.RUNNING], 300,
             "the run started by the landed files to end")
    runs = runs_of(root)
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED]
    arrived = events(root, "data.arrived")
    assert arrived and all(e["status"] == "handled" and e["run_id"] == runs[0].id
                           for e in arrived)
    started = [e for e in arrived if e["decision"] == "started"]
    assert len(started) == 1 and runs[0].trigger == f"data.arrived#{started[0]['id']}"
    assert f"{len(dataset.images)} new labelled item(s) >= min_new_items 5" in \
        str(started[0]["reason"])

    # Approval is manual: the webhook hears about the candidate. Approving it deploys it,
    # and the agent passes the model.deployed event on.
    approval = wait_for(lambda: [m for m in webhook.received if "awaits approval" in m["title"]],
                        20, "the approval notification")[0]
    assert approval["type"] == "info" and runs[0].id in approval["message"]
    subprocess.run([MEDOPS, "models", "approve", "agent-test-classifier", "1", "-C", str(root),
                    "--by", "tester", "--note", "ok"], check=True, capture_output=True,
                   timeout=120)
    wait_for(lambda: [m for m in webhook.received if "deployed" in m["title"]], 20,
             "the deployment notification")

    # The same files written again are no new data: no event, no run.
    for image in dataset.images[:5]:
        landed = root / "data" / "raw" / image.path.relative_to(dataset.root)
        landed.write_bytes(landed.read_bytes())
    time.sleep(1.5)
    assert len(events(root, "data.arrived")) == len(arrived)

    # Two new files: fewer than min_new_items since the champion's dataset, so no run.
    extra = make_synthetic_dataset(tmp_path / "extra", n_patients=2, images_per_patient=1,
                                   size=48, seed=7)
    for image in extra.images:
        dest = root / "data" / "raw" / image.label / f"new-{image.path.name}"
        shutil.copy(image.path, dest)
    skipped = wait_for(lambda: [e for e in events(root, "data.arrived")
                                if e["decision"] == "skipped"], 20, "the skip decision")
    assert "only 2 new labelled item(s) < min_new_items 5 since the champion's dataset ds-" \
        in str(skipped[0]["reason"])
    assert len(runs_of(root)) == 1


def test_sigkill_at_random_points_never_loses_or_duplicates_a_run(
        tmp_path: Path, dataset: SyntheticDataset, agents: Agents) -> None:
    root = make_agent_project(tmp_path / "p", data=dataset.root)
    extra = make_synthetic_dataset(tmp_path / "extra", n_patients=3, images_per_patient=1,
                                   size=48, seed=11)
    rng = random.Random(int(time.time()))
    agent = agents(root)
    for trial in range(3):
        # One more image each trial: a new dataset version, so the trial trains from scratch.
        image = extra.images[trial]
        shutil.copy(image.path, root / "data" / "raw" / image.label / f"extra-{trial}.dcm")
        event_id = _request(root, f"trial-{trial}")["event_id"]
        if trial > 0:  # somewhere inside the run's steps, from ingest to training
            wait_for(lambda: any(s.status.value == "running" for r in runs_of(root)
                                 for s in r.steps), 300, "a step to start")
        delay = rng.uniform(0.0, 4.0)  # trial 0: around the decision, the claim, the fork
        time.sleep(delay)
        running = [s.name for r in runs_of(root) for s in r.steps if s.status.value == "running"]
        agent.kill()
        delay_note = f"killed {delay:.1f}s in, during {running or 'no step'}"
        # The run's child process notices that the agent is gone and dies too.
        wait_for(lambda: not any(_pid_alive(r.pid) for r in runs_of(root)
                                 if r.status is RunStatus.RUNNING), 30,
                 "the orphaned run process to exit")
        agent = agents(root)
        # A client retrying its request after the crash creates nothing new.
        assert _request(root, f"trial-{trial}")["duplicate"] is True
        event = wait_for(partial(_handled, root, event_id), 300,
                         f"event {event_id} handled ({delay_note})")
        mine = [r for r in runs_of(root) if r.id.endswith(f"-e{event_id}")]
        assert len(mine) == 1, f"trial {trial}, {delay_note}: {mine}"
        assert mine[0].status is RunStatus.SUCCEEDED
        assert event["run_id"] == mine[0].id
        assert event["decision"] in ("started", "resumed")
    assert agent.terminate(timeout=30) == 0
    assert len(runs_of(root)) == 3
    assert all(e["status"] == "handled" for e in events(root))


def test_sigterm_stops_within_seconds_and_the_run_resumes(
        tmp_path: Path, dataset: SyntheticDataset, agents: Agents) -> None:
    root = make_agent_project(tmp_path / "p", data=dataset.root, settings={"train.epochs": 8})
    agent = agents(root)
    event_id = _request(root, "sigterm")["event_id"]
    wait_for(lambda: any(s.name == "train" and s.status.value == "running"
                         for r in runs_of(root) for s in r.steps), 300, "training to start")
    t0 = time.monotonic()
    assert agent.terminate(timeout=20) == 0
    # ~1 s on an idle machine (the step is interrupted at once, the process then exits); the
    # bound leaves room for a loaded CI machine.
    assert time.monotonic() - t0 < 10, agent.tail()
    (run,) = runs_of(root)
    assert run.status is RunStatus.INTERRUPTED
    assert not _pid_alive(run.pid)
    assert _event(root, event_id)["status"] == "claimed"

    agents(root)
    event = wait_for(lambda: (e := _event(root, event_id))["status"] == "handled" and e, 300,
                     "the resumed run to finish")
    assert event["decision"] == "resumed"
    (run,) = runs_of(root)
    assert run.status is RunStatus.SUCCEEDED
    assert next(s for s in run.steps if s.name == "ingest").attempts == 1  # not redone


def test_schedule_fires_once_per_slot_across_a_restart(
        tmp_path: Path, agents: Agents, webhook: Webhook) -> None:
    # No data at all: the first firing starts a run that fails at once (and is notified).
    root = make_agent_project(tmp_path / "p", settings={
        "triggers": [{"on": "schedule", "every": "1s", "name": "tick"}],
        "agent.cooldown": "1h", "notify.urls": [webhook.url]})
    for seconds in (3.5, 2.5):
        agent = agents(root)
        time.sleep(seconds)
        assert agent.terminate(timeout=15) == 0
    fired = events(root, "schedule.fired")
    slots = [str(e["payload"]["at"]) for e in fired]
    assert len(slots) >= 4 and len(set(slots)) == len(slots)
    assert all(s.endswith(".000+00:00") for s in slots)  # whole-second slots
    assert {e["idempotency_key"] for e in fired} == {f"schedule:tick:{s}" for s in slots}
    # One firing started the run (shown as resumed when the stop came before it was running);
    # every other was skipped: the run was running, then the cooldown.
    decisions = sorted(str(e["decision"]) for e in fired)
    started = [d for d in decisions if d in ("started", "resumed")]
    assert len(started) == 1 and set(decisions) == {started[0], "skipped"}
    (run,) = runs_of(root)
    assert run.status is RunStatus.FAILED
    failed = wait_for(lambda: [m for m in webhook.received if "failed" in m["title"]], 10,
                      "the run-failed notification")
    assert f"run {run.id} failed at step ingest (DataError)" in failed[0]["message"]
    assert str(root) not in failed[0]["message"]
