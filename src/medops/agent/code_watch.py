"""The ``code.changed`` feed: the head of the model repository's watched branch.

Each ``{on: code.changed, repo, branch}`` trigger is read every ``poll`` seconds with
``git rev-parse --verify refs/heads/BRANCH`` (git resolves loose refs, packed refs, worktrees and
``.git`` files, which reading ref files by hand would have to redo). When the head moves, a
``code.changed`` event (repo, branch, commit, previous commit) is stored under the idempotency key
``code.changed:<series>:<commit>`` and the loop is woken; a restart or a second agent stores
nothing twice.

The first sighting of a branch is its baseline: stored with ``baseline: true`` so that the policy
records it without a run, and so that the next start knows what was seen. At a later start, a head
that differs from the last stored event of its series is a commit that landed while no agent was
running, and starts a run like any other.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medops.config.agent import CodeChangedTrigger, Trigger
from medops.errors import ConfigError
from medops.storage import EventKind, StateStore, local_path

log = logging.getLogger(__name__)

_GIT_TIMEOUT = 10.0  # seconds; a repository on a hung network share must not stall the feed


@dataclass(frozen=True)
class WatchedBranch:
    """One ``code.changed`` trigger with its repository resolved against the project root."""

    repo: str  # as written in medops.yaml (what the policy matches events on)
    path: Path
    branch: str
    poll: float

    @property
    def series(self) -> str:
        """The idempotency-key prefix of this branch's events (the key column is bounded, so
        the path and branch are hashed)."""
        digest = hashlib.sha256(f"{self.path}\0{self.branch}".encode()).hexdigest()[:20]
        return f"{EventKind.CODE_CHANGED}:{digest}:"

    def head(self) -> str | None:
        """The commit at the branch head; None while the branch does not exist."""
        out = _git(self.path, "rev-parse", "--verify", "--quiet",
                   f"refs/heads/{self.branch}^{{commit}}")
        return out or None


def watched_branches(triggers: Sequence[Trigger], root: Path) -> list[WatchedBranch]:
    """The ``code.changed`` triggers, each checked to name a git repository (ConfigError with
    the path and the fix if not)."""
    found = []
    for i, t in enumerate(triggers):
        if not isinstance(t, CodeChangedTrigger):
            continue
        key = f"triggers[{i}].repo"
        path = local_path(root, t.repo, key=key)
        if shutil.which("git") is None:
            raise ConfigError(f"{key}: watching {t.repo!r} for commits needs the git command, "
                              "which is not on PATH; fix: install git (apt-get install git)")
        if not path.is_dir():
            raise ConfigError(f"{key}: {t.repo!r} ({path}) is not a folder; fix: point repo at "
                              "the model repository's folder (relative to the project root "
                              f"{root}, or absolute)")
        try:
            _git(path, "rev-parse", "--git-dir")
        except ConfigError:
            raise ConfigError(f"{key}: {t.repo!r} ({path}) is not a git repository; fix: point "
                              "repo at the model repository's clone, or run `git init` "
                              "there") from None
        found.append(WatchedBranch(t.repo, path, t.branch, t.poll))
    return found


class CodeWatch:
    """Stores a ``code.changed`` event whenever a watched branch head moves."""

    def __init__(self, branches: Sequence[WatchedBranch], state: StateStore,
                 on_event: Callable[[], None], stop: threading.Event) -> None:
        self.branches = list(branches)
        self.state = state
        self.on_event = on_event
        self._stop = stop
        self._seen: dict[WatchedBranch, str | None] = {}
        self._failing: set[WatchedBranch] = set()
        self._thread = threading.Thread(target=self._loop, name="code-watch", daemon=True)

    def start(self) -> None:
        for b in self.branches:
            self._catch_up(b)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _catch_up(self, b: WatchedBranch) -> None:
        """At start: baseline, or the commit that landed while no agent watched."""
        head = self._read(b)
        if head is None:
            self._seen[b] = None
            return
        stored = self.state.keyed_events(b.series)
        last = stored[-1].payload.get("commit") if stored else None
        if last is None:
            self._store(b, head, None, baseline=True)
        elif last != head:
            self._store(b, head, str(last), baseline=False)
        self._seen[b] = head

    def poll_once(self) -> None:
        """Read every branch now, storing an event for each that moved."""
        for b in self.branches:
            self._poll(b)

    def _poll(self, b: WatchedBranch) -> None:
        if b not in self._seen:  # not read since start
            self._catch_up(b)
            return
        head = self._read(b)
        if head is not None and head != self._seen[b]:
            # stored before it counts as seen: a failed store is retried at the next poll
            self._store(b, head, self._seen[b], baseline=False)
            self._seen[b] = head

    def _loop(self) -> None:
        due = {b: time.monotonic() + b.poll for b in self.branches}
        while not self._stop.wait(max(0.0, min(due.values()) - time.monotonic())):
            for b in [b for b, at in due.items() if at <= time.monotonic()]:
                due[b] = time.monotonic() + b.poll
                try:
                    self._poll(b)
                except Exception:  # the state store away for a moment: the next poll retries
                    log.exception("watching branch %s of %s failed; retrying", b.branch, b.repo)

    def _read(self, b: WatchedBranch) -> str | None:
        try:
            head = b.head()
        except ConfigError as exc:  # moved or broken meanwhile: say so once, keep watching
            if b not in self._failing:
                self._failing.add(b)
                log.warning("cannot read branch %s of %s: %s", b.branch, b.repo, exc)
            return None
        self._failing.discard(b)
        return head

    def _store(self, b: WatchedBranch, commit: str, previous: str | None,
               baseline: bool) -> None:
        payload: dict[str, Any] = {"repo": b.repo, "path": str(b.path), "branch": b.branch,
                                   "commit": commit, "previous": previous}
        if baseline:
            payload["baseline"] = True
        if self.state.add_event(EventKind.CODE_CHANGED, payload, b.series + commit) is None:
            return  # stored before (a restart, another agent)
        if baseline:
            log.info("watching branch %s of %s from %s", b.branch, b.repo, commit[:12])
        else:
            log.info("code.changed: branch %s of %s moved to %s", b.branch, b.repo, commit[:12])
        self.on_event()


def _git(folder: Path, *args: str) -> str:
    """``git -C folder ARGS`` stdout; ConfigError with git's message when it fails (exit
    status 1 with ``--quiet --verify`` is "no such ref": an empty answer)."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=_GIT_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"git in {folder} failed: {type(exc).__name__}: {exc}") from exc
    if done.returncode == 1 and "--quiet" in args:
        return ""
    if done.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} in {folder} failed: "
                          f"{done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


__all__ = ["CodeWatch", "WatchedBranch", "watched_branches"]
