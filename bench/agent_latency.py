"""Agent latency: from a trigger to the first pipeline step starting (goal: <= 1 s; a commit
on a watched branch: <= 2 s).

A real `medops agent` process runs on a temporary project. Each repeat measures, against the
``started_at`` of the run's first step (``ingest``) in the state DB:

* file landing: one new DICOM file is written into the watched folder; the clock starts just
  before the write (what a PACS export or a copy does);
* event posted: a ``run.requested`` event is stored from this (another) process, as
  `medops agent request`, the C-STORE receiver or the monitor do; the clock starts at the
  event's stored ``created_at``; the agent finds it by its DB poll (``agent.poll_interval``);
* `medops agent request`: the same through the CLI, its process start-up included;
* commit: a commit on the branch a ``code.changed`` trigger watches (a real git repository,
  ``git commit`` run by this process); the clock starts just before the commit, so the row
  includes the watcher's poll (``--code-poll``) and the git process. Its ratio is against the
  "event stored by another process" row of the same run: what the branch watch adds to the
  agent's own path from a stored event to a run.

Every landed file has one label, so each run fails at once at validation (one class) and the
next repeat starts from an idle agent; what is timed ends at the first step's start anyway.

    python bench/agent_latency.py --repeats 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from medops.demo.synthetic import make_synthetic_dataset
from medops.project import Project
from medops.storage import RunRecord, RunStatus, StateStore, StepRecord

MEDOPS = str(Path(sys.executable).parent / "medops")


def first_step_started(state: StateStore, known: set[str], timeout: float = 30) -> datetime:
    """The ingest start of the first run not in ``known``, once that run has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [r for r in state.list_runs(200) if r.id not in known]
        if new and new[0].status is not RunStatus.RUNNING:
            known.add(new[0].id)
            started = _ingest(new[0]).started_at
            assert started is not None
            return started
        time.sleep(0.05)
    raise TimeoutError("no run started")


def _ingest(run: RunRecord) -> StepRecord:
    return next(s for s in run.steps if s.name == "ingest")


def summary(name: str, values: list[float]) -> str:
    v = sorted(values)
    p90 = v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]
    return (f"| {name} | {len(v)} | {statistics.median(v):.3f} | {p90:.3f} | {v[0]:.3f} | "
            f"{v[-1]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--code-poll", type=float, default=1.0,
                        help="the code.changed trigger's poll (its default is 1 s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "proj"
        Project.init(root, name="bench-agent")
        raw = yaml.safe_load((root / "medops.yaml").read_text())
        repo = model_repository(Path(tmp) / "model")
        raw["triggers"] = [{"on": "data.arrived", "min_new_items": 1, "debounce": 0},
                           {"on": "run.requested"},
                           {"on": "code.changed", "repo": str(repo), "branch": "main",
                            "poll": args.code_poll}]
        raw["agent"] = {"cooldown": 0, "poll_interval": args.poll_interval,
                        "watch_quiet": 0.1}
        (root / "medops.yaml").write_text(yaml.safe_dump(raw))
        data = make_synthetic_dataset(Path(tmp) / "synthetic", n_patients=args.repeats,
                                      images_per_patient=1, size=64)
        files = [i.path for i in data.images]
        landing = root / "data" / "raw" / "normal"
        landing.mkdir(parents=True, exist_ok=True)

        log = (root / "agent.log").open("wb")
        agent = subprocess.Popen([MEDOPS, "agent", "-C", str(root)], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        state = StateStore(f"sqlite:///{root / '.medops' / 'medops.db'}")
        try:
            t0 = time.monotonic()
            while "warm in" not in (root / "agent.log").read_text():  # imports done
                if agent.poll() is not None or time.monotonic() - t0 > 120:
                    raise SystemExit((root / "agent.log").read_text())
                time.sleep(0.1)
            known: set[str] = set()
            landed, posted, cli, committed = [], [], [], []
            for n in range(args.repeats):
                start = time.time()
                shutil.copy(files[n], landing / f"{n:03d}.dcm")
                landed.append(first_step_started(state, known).timestamp() - start)

                event = state.add_event("run.requested", {"by": "bench"})
                assert event is not None
                posted.append(first_step_started(state, known).timestamp()
                              - event.created_at.timestamp())

                start = time.time()
                subprocess.run([MEDOPS, "agent", "request", "-C", str(root)], check=True,
                               capture_output=True)
                cli.append(first_step_started(state, known).timestamp() - start)

                start = time.time()
                git_commit(repo, f"model change {n}")
                committed.append(first_step_started(state, known).timestamp() - start)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
            state.close()
            log.close()
    print(f"agent.poll_interval {args.poll_interval}s, watch_quiet 0.1s; seconds to the first "
          "step's start\n")
    print("| trigger | n | median | p90 | min | max |\n|---|---|---|---|---|---|")
    print(summary("file lands in the watched folder", landed))
    print(summary("event stored by another process", posted))
    print(summary("`medops agent request` (CLI start-up included)", cli))
    print(summary(f"commit on the watched branch (poll {args.code_poll:g}s)", committed))
    ratio = statistics.median(committed) / statistics.median(posted)
    print(f"\ncommit vs event stored by another process (medians): {ratio:.2f}x; goal: commit "
          f"<= 2 s: {'met' if statistics.median(committed) <= 2.0 else 'NOT met'}")


def model_repository(folder: Path) -> Path:
    """A git repository with one commit on main, as a model repository would be."""
    folder.mkdir(parents=True)
    _git(folder, "init", "-q", "-b", "main")
    git_commit(folder, "first model")
    return folder


def git_commit(repo: Path, message: str) -> None:
    (repo / "model.py").write_text(f"# {message}\n")
    _git(repo, "add", "model.py")
    _git(repo, "commit", "-q", "-m", message)


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


if __name__ == "__main__":
    main()
