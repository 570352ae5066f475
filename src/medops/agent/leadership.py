"""The agent's leader lease: one agent of a project acts, the others stand by.

The lease is the ``leases`` row ``agent:PROJECT`` in the state database (holder, expiry; see
:mod:`medops.storage.leases`). Why a lease, and what stands under it, is explained in
:mod:`medops.agent.loop`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from medops.errors import StoreError
from medops.storage.leases import LeaseStore

log = logging.getLogger("medops.agent")


class Leadership:
    """``owner``'s claim to lead ``project``: wait for it, keep it renewed, hand it over."""

    def __init__(self, leases: LeaseStore, project: str, owner: str, seconds: float,
                 stopping: threading.Event, on_lost: Callable[[], None]) -> None:
        self.leases, self.project, self.owner = leases, project, owner
        self.name = f"agent:{project}"
        self.seconds = seconds
        self.stopping = stopping
        self.on_lost = on_lost
        self.lost = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="lease", daemon=True)

    @property
    def key(self) -> tuple[str, str]:
        """(lease name, holder): what a claim checks in its own transaction."""
        return self.name, self.owner

    def wait(self) -> bool:
        """Stand by until this agent holds the lease, then keep renewing it from a thread;
        False if stopped first."""
        announced = None
        while not self.stopping.is_set():
            state = self.leases.acquire(self.name, self.owner, self.seconds)
            if state.held:
                log.info("leading project %r (lease %s held by %s)", self.project, self.name,
                         self.owner)
                self._keeper.start()
                return True
            if state.holder != announced:
                announced = state.holder
                log.info("standby: agent %s leads project %r; taking over when it stops or "
                         "its lease (%gs) runs out", state.holder, self.project, self.seconds)
            self.stopping.wait(min(self.seconds / 3, 2.0))
        return False

    def held(self) -> bool:
        return self.leases.state(self.name, self.owner).held

    def give_up(self, why: str) -> None:
        """The lease is gone: stop acting, so that two agents never act at once."""
        log.error("lost the lease of project %r (%s); stopping so that two agents never act "
                  "at once", self.project, why)
        self.lost.set()
        self.on_lost()

    def release(self) -> None:
        """A clean stop hands over at once: a standby need not wait for the expiry."""
        try:
            self.leases.release(self.name, self.owner)
        except StoreError as exc:
            log.warning("lease not released (%s); a standby takes over when it expires", exc)

    def _keep(self) -> None:
        renewed = time.monotonic()
        while not self.stopping.wait(self.seconds / 3):
            try:
                if self.leases.renew(self.name, self.owner, self.seconds):
                    renewed = time.monotonic()
                    continue
                why = "another agent holds it now"
            except StoreError as exc:
                if time.monotonic() - renewed < self.seconds:
                    log.warning("lease not renewed (%s); trying again", exc)
                    continue
                why = f"not renewed for {self.seconds:g}s: {exc}"
            self.give_up(why)
            return
