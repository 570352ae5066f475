"""`medops run` with `train.processes: 2`: data-parallel training through the pipeline, its
faults (a rank killed with SIGKILL, the parent stopped with SIGTERM) and a torchrun launch of
two "nodes" on this machine, as docs/distributed.md describes for several machines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medops.project import Project
from medops.storage import RunStatus
from medops.train.checkpoint import CHECKPOINT_FILE

from .conftest import FAST, make_project

pytestmark = pytest.mark.slow

MEDOPS = [sys.executable, "-m", "medops.cli"]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _settings(**extra: object) -> list[str]:
    args: list[str] = []
    values = {**FAST, "train.epochs": 10, "train.patience": 10, "train.processes": 2,
              "train.device": "cpu", **extra}
    for key, value in values.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def _ranks(parent: int) -> list[int]:
    """The training processes the launcher spawned under ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_and_wait_for_a_checkpoint(project: Project, log: Path,
                                     ) -> tuple[subprocess.Popen[bytes], list[int]]:
    with log.open("w") as out:
        proc = subprocess.Popen([*MEDOPS, "run", "-C", str(project.root), *_settings(**{
            "pipeline.retries.attempts": 1})], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "COLUMNS": "400"})
    checkpoints = project.artifacts / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob(f"*/{CHECKPOINT_FILE}")):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.2)
    ranks = _ranks(proc.pid)
    assert len(ranks) == 2, (ranks, log.read_text())
    return proc, ranks


def test_a_rank_killed_with_sigkill_stops_the_others_and_the_run_resumes(
        project: Project) -> None:
    log = project.root / "run.log"
    proc, ranks = _start_and_wait_for_a_checkpoint(project, log)
    killed = ranks[-1]
    os.kill(killed, signal.SIGKILL)
    # the launcher notices at once and stops the other rank; nothing waits for a timeout
    stopped = time.monotonic()
    assert proc.wait(timeout=60) != 0, log.read_text()
    took = time.monotonic() - stopped
    print(f"medops run exited {took:.1f} s after the kill")  # shown with -s
    assert took < 30
    assert not any(_alive(pid) for pid in ranks)
    text = log.read_text()
    assert "was killed by SIGKILL" in text and "runs resume" in text, text

    state = make_project(project.root).state
    failed = state.list_runs()[0]
    assert failed.status is RunStatus.FAILED
    train = next(s for s in failed.steps if s.name == "train")
    assert train.attempts == 1 and "SIGKILL" in (train.error or "")

    done = subprocess.run([*MEDOPS, "runs", "resume", failed.id, "-C", str(project.root)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    record = state.get_run(failed.id)
    assert record.status is RunStatus.SUCCEEDED
    out = next(s for s in record.steps if s.name == "train").outputs
    assert out["processes"] == 2 and out["resumed_from_epoch"] >= 1
    assert out["epochs_run"] == 10 or out["stopped_early"]
    # the parent alone logged, once per epoch; epochs trained again after the kill (those whose
    # checkpoint had not been written yet) are logged again, at their own step
    mlflow = make_project(project.root).tracker.client
    assert failed.mlflow_run_id is not None
    history = mlflow.get_metric_history(failed.mlflow_run_id, "val_auc")
    steps = [m.step for m in history]
    assert set(steps) == set(range(1, out["epochs_run"] + 1))
    assert all(steps.count(s) <= 2 for s in steps)
    assert mlflow.get_run(failed.mlflow_run_id).data.params["train.processes"] == "2"


def test_sigterm_to_the_parent_stops_the_ranks_and_interrupts_the_run(project: Project) -> None:
    log = project.root / "run.log"
    proc, ranks = _start_and_wait_for_a_checkpoint(project, log)
    proc.terminate()
    assert proc.wait(timeout=60) == 130, log.read_text()
    assert not any(_alive(pid) for pid in ranks)
    run = make_project(project.root).state.list_runs()[0]
    assert run.status is RunStatus.INTERRUPTED, log.read_text()
    assert "medops runs resume" in log.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_torchrun_two_nodes(project: Project) -> None:
    # two torchrun agents on one machine stand for two nodes: each starts one process, which
    # joins the other through the c10d rendezvous; rank 0 runs the pipeline, rank 1 trains
    endpoint = f"127.0.0.1:{_free_port()}"
    logs = [project.root / f"node{n}.log" for n in range(2)]
    env = {**os.environ, "COLUMNS": "200", "PATH": f"{TORCHRUN.parent}:{os.environ['PATH']}"}
    nodes = []
    for log in logs:
        with log.open("w") as out:
            nodes.append(subprocess.Popen(
                [str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={endpoint}", "--rdzv-id=medops-test", "--max-restarts=0",
                 "--module", "medops.cli", "run", "-C", str(project.root),
                 *_settings(**{"train.epochs": 3, "train.processes": 1})],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    try:
        for node in nodes:
            node.wait(timeout=400)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log.read_text() for log in logs)
    runs = make_project(project.root).state.list_runs()
    assert len(runs) == 1 and runs[0].status is RunStatus.SUCCEEDED  # one rank ran the pipeline
    train = next(s for s in runs[0].steps if s.name == "train").outputs
    assert train["processes"] == 2 and train["epochs_run"] == 3
