"""The loop closes by itself: a champion serves, a new detector's images drift, the monitor
(on its schedule, inside the agent) raises drift.detected, the agent retrains on the new
labelled images that landed in the watched folder, the new version passes its gate, goes live
by `registry.approval: auto`, and the running server swaps to it without a failed request.

After `medops serve` and `medops agent` start, nothing is run by hand: the test only plays the
outside world (clients, radiologists' feedback, files landing) and then checks what a user
would: `medops events ls --json`, `medops models history --json`, the served version and the
notifications that reached the webhook. In-distribution traffic first must raise no alarm;
the false-alarm *rate* over many windows is measured in tests/monitor/test_drift_detection.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medops.demo.synthetic import NEW_DETECTOR, SyntheticDataset, make_synthetic_dataset
from medops.pipeline import PipelineRunner
from medops.project import Project
from medops.storage import RunStatus, StateStore
from medops.storage.monitoring import MonitorRecord, MonitorResults
from tests.agent.conftest import (
    MEDOPS,
    AgentProcess,
    Webhook,
    events,
    make_agent_project,
    wait_for,
)

from .conftest import ServeProcess, Traffic

pytestmark = pytest.mark.slow  # two trainings, a server and an agent: minutes on two cores

NAME = "e2e-classifier"
MIN_SAMPLES = 40  # captured images a monitor check needs
MIN_NEW = 30  # new labelled images a drift alarm needs before it retrains


def _settings(webhook: Webhook) -> dict[str, Any]:
    return {
        # Steps over ~100 images: starting a process pool costs more than it saves.
        "executor.kind": "serial",
        "registry.approval": "auto",
        # Two-epoch models tested on a dozen images score too noisily to rank against each
        # other: here the gate passes on its threshold alone. The champion comparison is
        # tested in tests/pipeline, and in the loop by the demo's test (tests/cli/test_demo.py)
        # whose models are good enough to rank.
        "gate.must_beat_champion": False,
        "triggers": [{"on": "drift.detected", "min_new_items": MIN_NEW},
                     {"on": "data.arrived", "min_new_items": 1000, "debounce": "1s"}],
        "monitor.schedule": "* * * * * */3",  # every 3 s (seconds are the 6th cron field)
        "monitor.window": "10m",
        "monitor.min_samples": MIN_SAMPLES,
        "monitor.p_value": 0.01,
        "monitor.permutations": 200,
        "monitor.quality.min_labels": 30,
        "serve.poll_seconds": 0.5,
        "notify.urls": [webhook.url],
    }


def _room(folder: Path, seed: int, first_patient: int, patients: int,
          new_detector: bool = False) -> SyntheticDataset:
    return make_synthetic_dataset(folder, n_patients=patients, images_per_patient=3, size=48,
                                  seed=seed, first_patient=first_patient,
                                  corrupt_examples=False,
                                  **({"acquisition": NEW_DETECTOR} if new_detector else {}))


def _land(data: SyntheticDataset, raw: Path) -> None:
    """The new images arrive in the watched folder, each file whole (a rename)."""
    for image in data.images:
        image.path.replace(raw / image.label / image.path.name)


def _cli_json(root: Path, *args: str) -> Any:
    out = subprocess.run([MEDOPS, *args, "-C", str(root), "--json"], check=True,
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def _checks(root: Path, version: str) -> list[MonitorRecord]:
    """The monitor's verdicts on ``version`` (what its HTML reports and MLflow show)."""
    state = StateStore(f"sqlite:///{root / '.medops' / 'medops.db'}")
    try:
        return [r for r in MonitorResults(state.db).history(NAME, version)
                if r.status != "insufficient"]
    finally:
        state.close()


def test_drift_retrains_and_the_server_swaps_with_no_command(
        tmp_path: Path, agents: Callable[..., AgentProcess],
        servers: Callable[[Path], ServeProcess], webhook: Webhook) -> None:
    first_room = _room(tmp_path / "first-room", seed=0, first_patient=1, patients=20)
    root = make_agent_project(tmp_path / "e2e", first_room.root, name="e2e",
                              settings=_settings(webhook))
    project = Project.load(root)
    assert project.config.model_name == NAME
    v1_run = PipelineRunner(project).run("setup")  # the champion, live by approval: auto
    project.close()
    assert v1_run.status is RunStatus.SUCCEEDED, v1_run.error

    server = servers(root)
    agent = agents(root)
    assert server.ready_version() == "1"

    # In-distribution traffic (new patients, same detector): the first check that compares
    # them with the baseline finds nothing.
    same_room = _room(tmp_path / "same-room", seed=3, first_patient=301, patients=14)
    calm = Traffic(server.url, NAME, feedback=False)
    calm.send_all(same_room.images[:MIN_SAMPLES])
    calm.stop()
    assert calm.failures() == []
    checked = wait_for(lambda: _checks(root, "1"), 120,
                       f"a monitor check of v1\n{agent.tail()}")
    assert checked[0].status == "ok" and checked[0].n_current == MIN_SAMPLES, checked[0]
    assert events(root, "drift.detected") == []

    # Labelled images from a new detector land in the watched folder: too few for a
    # retraining on their own (data.arrived wants 1000).
    new_room = _room(tmp_path / "new-room", seed=1, first_patient=101, patients=12,
                     new_detector=True)
    _land(new_room, root / "data" / "raw")
    arrived = wait_for(lambda: [e for e in events(root, "data.arrived")
                                if e["decision"] == "skipped"], 60,
                       f"the data.arrived decision\n{agent.tail()}")
    n_new = len(new_room.images)
    assert f"only {n_new} new labelled item(s) < min_new_items 1000 since the champion's " \
           "dataset ds-" in arrived[0]["reason"]

    # The new detector's images are sent for prediction, and their ground truth follows.
    shifted = _room(tmp_path / "new-room-traffic", seed=2, first_patient=201, patients=14,
                    new_detector=True)
    traffic = Traffic(server.url, NAME, feedback=True)
    traffic.start(shifted.images, pause=0.05)
    try:
        started = wait_for(lambda: [e for e in events(root, "drift.detected")
                                    if e["decision"] == "started"], 180,
                           f"drift.detected starting a run\n{agent.tail()}")[0]
        wait_for(lambda: "2" in traffic.versions(), 600,
                 f"the server answering with v2\n{agent.tail()}\n{server.tail()}",
                 proc=agent.proc)
        swapped_at = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) >= swapped_at + 20, 60, "answers after the swap")
    finally:
        traffic.stop()

    # The server swapped without dropping or failing a request, and never went back.
    assert traffic.failures() == []
    versions = traffic.versions()
    first_v2 = versions.index("2")
    assert first_v2 > 0 and set(versions[:first_v2]) == {"1"}
    assert set(versions[first_v2:]) == {"2"}
    assert server.ready_version() == "2"

    # Why the run started: v1 drifted and enough new labelled images were there.
    assert started["payload"]["model"] == NAME and started["payload"]["version"] == "1"
    reasons = started["payload"]["reasons"]
    assert reasons and set(reasons) <= {"intensity", "embedding", "prediction", "quality"}
    assert started["reason"].startswith(f"started run {started['run_id']}: v1 drifted (")
    assert f"; {n_new} new labelled item(s) >= min_new_items {MIN_NEW} since the champion's " \
           "dataset ds-" in started["reason"]

    # It passed its gate and went live by itself.
    finished = wait_for(lambda: [e for e in events(root, "run.finished")
                                 if e["payload"]["run_id"] == started["run_id"]], 60,
                        "run.finished")[0]["payload"]
    assert finished["status"] == "succeeded" and finished["trigger"] == \
        f"drift.detected#{started['id']}"
    assert finished["gate"]["passed"] is True
    assert finished["registered"] == {"name": NAME, "version": "2", "approval": "approved"}
    history = _cli_json(root, "models", "history", NAME)
    assert [(d["version"], d["action"], d["actor"]) for d in history] == [
        ("1", "auto-approve", "medops (approval: auto)"),
        ("2", "auto-approve", "medops (approval: auto)")]
    assert history[0]["live_until"] is not None and history[1]["live_until"] is None
    deployed = {e["payload"]["version"]: e["payload"] for e in events(root, "model.deployed")}
    assert deployed["2"]["previous"] == "1"

    # One retraining only: the alarms about v1 raised while it ran are moot once v2 is live,
    # and v2 has no new data to learn from.
    def settled() -> list[dict[str, Any]]:
        drifts = events(root, "drift.detected")
        return drifts if all(e["status"] == "handled" for e in drifts) else []

    drifts = wait_for(settled, 60, f"every drift.detected decided\n{agent.tail()}")
    assert [e["id"] for e in events(root) if e["decision"] == "started"] == [started["id"]]
    later = [e for e in drifts if e["payload"]["version"] == "1" and e["id"] != started["id"]
             and e["decision"] != "coalesced"]  # stored before the run started: part of it
    assert later, "no drift alarm about v1 was raised while the retraining ran"
    for e in later:
        assert (e["decision"], e["reason"]) == (
            "skipped", "v1 drifted but is no longer live (the champion is v2)"), e
    for e in (e for e in drifts if e["payload"]["version"] == "2"):
        assert e["decision"] == "skipped" and "only 0 new labelled item(s)" in e["reason"], e

    # The people on the webhook heard about the drift and each deployment, with no PHI.
    def heard() -> list[str]:
        titles = [m["title"] for m in webhook.received]
        wanted = {"[e2e] drift detected", "[e2e] model v1 deployed", "[e2e] model v2 deployed"}
        return titles if wanted <= set(titles) else []

    wait_for(heard, 30, f"the notifications\n{webhook.received}")
    v2 = next(m for m in webhook.received if m["title"] == "[e2e] model v2 deployed")
    assert "previous=1" in v2["message"] and v2["type"] == "success"
    assert not any("SYN-" in json.dumps(m) for m in webhook.received)
    assert agent.proc is not None and agent.proc.poll() is None, agent.tail()
