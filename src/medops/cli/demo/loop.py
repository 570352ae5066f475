"""The second half of `medops demo`: the loop closing by itself.

The first model is live. A server (`medops serve`'s app under uvicorn, in a thread of this
process) answers over HTTP and captures its traffic; the agent (`medops agent`'s loop in a
thread, its runs in child processes) watches the data folder and runs the monitor every few
seconds. The demo then plays the world outside: labelled images from a new detector land in the
data folder, and that detector's images are sent for prediction, each answer followed by its
ground truth. Everything after that is the agent's doing -- drift.detected, the "sufficient
data?" check, a retraining, the gate, ``approval: auto``, the server swapping to the new version
-- and the demo only watches the state database and the server's answers.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from typing import Any

from medops.cli.demo.services import AgentThread, DemoServer, Traffic, until
from medops.cli.demo.timeline import Timeline, decided
from medops.cli.render import console
from medops.demo.synthetic import NEW_DETECTOR, make_synthetic_dataset
from medops.project import Project
from medops.storage import EventKind, EventRecord, RunRecord, RunStatus

MIN_NEW_ITEMS = 50  # new labelled images a drift alarm needs before it retrains
# What the loop needs in medops.yaml (written there, so `medops agent` in the folder behaves
# the same): approval by the gate alone, a monitor every 5 s that needs 60 images, drift (with
# enough new data) rather than a trickle of files as the reason to retrain, and no cooldown:
# the first run has just ended, and the default would hold every trigger for 10 minutes.
LOOP_SETTINGS: dict[str, Any] = {
    "registry.approval": "auto",
    "agent.cooldown": 0,
    "monitor.schedule": "* * * * * */5",  # seconds are the 6th field
    "monitor.min_samples": 60,
    "serve.poll_seconds": 1.0,
    "triggers": [{"on": "run.requested"},
                 {"on": "data.arrived", "min_new_items": 500, "debounce": "2s"},
                 {"on": "drift.detected", "min_new_items": MIN_NEW_ITEMS}],
}
_NEW_PATIENTS = 24  # labelled images of the new detector landing in the data folder (x4)
_TRAFFIC_PATIENTS = 18  # the detector's images sent for prediction (x4)


def missing_dependency() -> str | None:
    """The install hint when the agent's optional packages are missing, else None."""
    missing = [m for m in ("watchdog", "croniter") if importlib.util.find_spec(m) is None]
    return f"pip install 'medops[agent]' (missing: {', '.join(missing)})" if missing else None


def run_loop(project: Project, timeline: Timeline) -> None:
    """Serve the champion, start the agent, land new data and send drifted traffic; then wait
    for the agent's retraining and the server's swap (each wait bounded, each outcome said)."""
    console.rule("[bold]the loop: drift, retraining, the new model live")
    name = project.config.model_name
    with DemoServer(Project.load(project.root)) as server, \
            AgentThread(Project.load(project.root)):
        timeline.mark("serve", f"{name} v{server.version()} answers at {server.url} "
                               "(captured for the monitor)")
        incoming = make_synthetic_dataset(project.root / "incoming", n_patients=_NEW_PATIENTS,
                                          seed=1, first_patient=101, acquisition=NEW_DETECTOR,
                                          corrupt_examples=False)
        raw = project.root / "data" / "raw"
        for image in incoming.images:  # a rename: the watch never sees half a file
            image.path.replace(raw / image.label / image.path.name)
        timeline.mark("new data", f"{len(incoming.images)} labelled images from a new detector "
                                  "(narrower dynamic range, 3x the noise) landed in data/raw")
        for event in (until(lambda: _decided(project, EventKind.DATA_ARRIVED), 60) or [])[:1]:
            _say(event)
        sent = make_synthetic_dataset(project.root / "traffic", n_patients=_TRAFFIC_PATIENTS,
                                      seed=2, first_patient=201, acquisition=NEW_DETECTOR,
                                      corrupt_examples=False)
        with Traffic(server.url, name, sent.images) as traffic:
            timeline.mark("traffic", f"the new detector's {len(sent.images)} images sent to "
                                     "the server, each answer followed by its ground truth "
                                     "(POST /v1/feedback); then 4 requests/s")
            _follow(project, timeline, server, traffic)
        failed = traffic.failed
        timeline.mark("traffic", f"{len(traffic.answers)} requests answered by "
                                 f"{_versions(traffic.answers)}, {failed} failed")


def _follow(project: Project, timeline: Timeline, server: DemoServer, traffic: Traffic) -> None:
    drift = until(lambda: _decided(project, EventKind.DRIFT_DETECTED, "started"), 180)
    if not drift:
        console.print("[yellow]no retraining started within 3 minutes[/yellow]; the agent's "
                      "decisions: `medops events ls`", highlight=False)
        return
    event = drift[0]
    assert event.decision is not None and event.decision.run_id is not None
    console.print(f"  monitor: v{event.payload.get('version')} drifted "
                  f"({', '.join(event.payload.get('reasons', []))}; smallest p-value "
                  f"{event.payload.get('min_p_value', float('nan')):.2g})", highlight=False)
    _say(event)
    record = _watch_run(project, event.decision.run_id)
    if record is None:
        return
    reg = next((s.outputs for s in record.steps if s.name == "register"), {})
    gate = next((s.outputs for s in record.steps if s.name == "gate"), {})
    console.print(f"  gate: {'; '.join(gate.get('reasons', []))}", highlight=False)
    if not reg.get("registered") or reg.get("approval") != "approved":
        console.print(f"  nothing new went live; v{server.version()} keeps serving",
                      highlight=False)
        return
    version = str(reg["version"])
    served = until(lambda: version in traffic.versions() or None, 120)
    timeline.mark("swap", f"the server answers with v{version}" if served else
                  f"the server did not swap to v{version} within 2 minutes "
                  f"(it answers with v{server.version()})")
    after = len(traffic.answers)
    until(lambda: len(traffic.answers) >= after + 8 or None, 30)  # a few answers past it
    # The agent records the deployment within a poll or two: the timeline shows its decision.
    until(lambda: [e for e in _decided(project, EventKind.MODEL_DEPLOYED)
                    if e.payload.get("version") == version], 10)


def _watch_run(project: Project, run_id: str) -> RunRecord | None:
    """Print each step of ``run_id`` as it ends; the ended record, None on time-out."""
    shown: set[str] = set()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        record = project.state.get_run(run_id)
        for step in record.steps:
            if step.name not in shown and step.finished_at and step.started_at:
                shown.add(step.name)
                seconds = (step.finished_at - step.started_at).total_seconds()
                console.print(f"  run {run_id}: {step.name} {step.status.value} "
                              f"({seconds:.1f} s)", highlight=False)
        # The end is the agent's run.finished, not the status: an interrupted run resumes.
        if record.status is not RunStatus.RUNNING and any(
                e.payload.get("run_id") == run_id
                for e in project.state.event_log(EventKind.RUN_FINISHED, 20)):
            return record
        time.sleep(0.5)
    console.print(f"[yellow]run {run_id} is still going after 15 minutes[/yellow]; "
                  f"`medops runs show {run_id}`", highlight=False)
    return None


def _say(event: EventRecord) -> None:
    d = event.decision
    if d is not None:
        console.print(f"  agent: {event.kind} {decided(d)}", highlight=False)


def _decided(project: Project, kind: str, decision: str | None = None) -> list[EventRecord]:
    return [e for e in project.state.event_log(kind, 200)
            if e.decision is not None and (decision is None or e.decision.decision == decision)
            and e.decision.decision not in ("waiting", "debounced", "cooldown")]


def _versions(answers: Sequence[tuple[int, str | None]]) -> str:
    seen = list(dict.fromkeys(f"v{v}" for status, v in answers if status == 200 and v))
    return " then ".join(seen) or "no version"


__all__ = ["LOOP_SETTINGS", "missing_dependency", "run_loop"]
