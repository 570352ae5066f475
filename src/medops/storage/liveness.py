"""Who holds a run or a lease, and the heartbeat that shows it is still alive.

A process that owns rows of the shared state (a running run, the agent lease) is named by an
*owner* string, ``PID@HOST#NODE.TOKEN``: the pid and host for people, ``NODE`` for the place
where pids mean something (this host's boot and pid namespace: two containers on one host both
run a pid 1), and a random ``TOKEN`` so that a reused pid is another owner.

Liveness is a heartbeat in the database, never a pid alone: a machine cannot see another's
processes. The pid serves only as a fast path where it is meaningful: an owner on this node
whose pid is gone is dead now, without waiting for its heartbeat to go stale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medops.errors import StoreError

log = logging.getLogger("medops.storage")

#: A run whose heartbeat is older than this many intervals is dead. One late beat (a long
#: garbage collection, a slow commit, a database failover) must not kill a healthy run; three
#: missed in a row do not happen to a live process.
STALE_BEATS = 3
#: Seconds between beats when the configuration does not say (``pipeline.heartbeat``).
DEFAULT_BEAT = 5.0

_owner: tuple[int, str] | None = None


def _node() -> str:
    parts = [socket.gethostname()]
    boot, pid_namespace = Path("/proc/sys/kernel/random/boot_id"), Path("/proc/self/ns/pid")
    try:
        parts.append(boot.read_text().strip())
        parts.append(str(pid_namespace.stat().st_ino))
    except OSError:  # not Linux: the host name alone
        pass
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def process_owner() -> str:
    """This process's owner string (made again after a fork: a child is another owner)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{pid}@{socket.gethostname()}#{_node()}.{secrets.token_hex(3)}")
    return _owner[1]


@dataclass(frozen=True)
class Owner:
    pid: int | None
    host: str
    node: str | None

    @classmethod
    def parse(cls, owner: str) -> Owner:
        who, _, place = owner.partition("#")
        pid, _, host = who.partition("@")
        return cls(int(pid) if pid.isdigit() else None, host,
                   place.split(".", 1)[0] or None)

    def dead_here(self) -> bool:
        """True when this owner lived on this node and its process is gone."""
        return (self.pid is not None and self.node is not None
                and self.node == Owner.parse(process_owner()).node
                and not pid_alive(self.pid))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet (a zombie) is dead all the same
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class Beats(Protocol):
    def beat(self, owner: str, run_id: str | None = None,
             stale_after: float | None = None) -> int: ...


class Heartbeat:
    """Beats from a daemon thread every ``every`` seconds for the runs ``owner`` holds (one
    run, or all of them), until stopped. ``on_lost`` hears of a run that is no longer this
    owner's (judged dead and taken by another process): its work must stop. A database that
    cannot be reached is logged and tried again at the next beat."""

    def __init__(self, runs: Beats, owner: str, every: float, run_id: str | None = None,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.runs, self.owner, self.every = runs, owner, every
        self.run_id, self.on_lost = run_id, on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.every + 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                beaten = self.runs.beat(self.owner, self.run_id, self.every * STALE_BEATS)
            except StoreError as exc:
                log.warning("heartbeat not written: %s", exc)
            else:
                if self.run_id is not None and beaten == 0 and not self._stop.is_set():
                    log.error("run %s is no longer held by this process (it was judged "
                              "dead and taken over); stopping it", self.run_id)
                    if self.on_lost is not None:
                        self.on_lost(self.run_id)
                    return
            self._stop.wait(self.every)
