"""Which model version is live: load it, watch its alias, swap atomically when the alias moves.

The live :class:`Deployment` is one attribute, replaced in a single assignment once the new
version is loaded and warmed up. A request keeps the deployment it started with (its
preprocessing profile and its model) until it is answered, so a swap never fails or mixes up
a request in flight.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medops.errors import ConfigError, MedopsError
from medops.registry import CHAMPION, LoadedModel, ModelRegistry
from medops.serve.batch import ModelRef
from medops.serve.batcher import forward

log = logging.getLogger(__name__)


#: From this many images a forward pass runs faster on channels-last weights (oneDNN's blocked
#: convolutions; ~30 % less CPU per image at 16-32 images), below it slower (+15 % for one).
BATCHED_FROM = 4


@dataclass(frozen=True)
class Deployment:
    """A loaded model version. ``batched`` is a channels-last copy of ``loaded.model`` for
    batches of at least :data:`BATCHED_FROM` images; it computes the same outputs."""

    name: str
    version: str
    loaded: LoadedModel
    batched: Any = field(default=None, compare=False, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    def model_for(self, n: int) -> Any:
        """The copy of the model to run ``n`` images through."""
        return self.batched if self.batched is not None and n >= BATCHED_FROM \
            else self.loaded.model


class ModelHost:
    """Holds the live deployment of ``ref`` and keeps it current."""

    def __init__(self, registry: ModelRegistry, ref: ModelRef, poll_seconds: float,
                 on_swap: Callable[[Deployment], None] | None = None) -> None:
        if registry.name != ref.name:
            raise ConfigError(f"the registry is bound to {registry.name!r}, not {ref.name!r}")
        self.registry = registry
        self.ref = ref
        self.poll_seconds = poll_seconds
        self.current: Deployment | None = None
        self.status = "starting"  # a human-readable reason while not ready
        self._on_swap = on_swap
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    def start(self) -> None:
        """Load (and then follow) the model in the background; returns at once."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="medops-model")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> bool:
        """Check the registry once; load and swap in a new version. True when it swapped."""
        version = await asyncio.to_thread(self._wanted_version)
        if version is None or (self.current is not None and self.current.version == version):
            return False
        self.status = f"loading version {version}"
        loaded, batched = await asyncio.to_thread(self._load, version)
        old = self.current
        self.current = Deployment(self.ref.name, version, loaded, batched)  # the atomic swap
        self.status = "ready"
        log.info("serving %s version %s (was %s)", self.ref.name, version,
                 old.version if old else "none")
        if self._on_swap is not None:
            self._on_swap(self.current)
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except MedopsError as exc:
                self.status = f"cannot load {self.ref}: {exc}"
                log.error("%s; retrying in %.0f s", self.status, self.poll_seconds)
            except Exception as exc:  # the registry being unreachable must not kill serving
                self.status = f"cannot load {self.ref}: {type(exc).__name__}: {exc}"
                log.error("%s; retrying in %.0f s", self.status, self.poll_seconds)
            if self.ref.version is not None and self.ready:
                return  # pinned: nothing to follow
            await asyncio.sleep(self.poll_seconds)

    def _wanted_version(self) -> str | None:
        if self.ref.version is not None:
            return self.registry.get(self.ref.version).version
        info = self.registry.by_alias(self.ref.alias or CHAMPION)
        if info is None:
            self.status = (f"no version of {self.ref.name!r} has the alias {self.ref.alias!r} "
                           f"yet; approve one (`medops models approve`)")
            return None
        return info.version

    def _load(self, version: str) -> tuple[LoadedModel, Any]:
        import torch

        loaded = self.registry.load(version)
        batched = copy.deepcopy(loaded.model).to(memory_format=torch.channels_last)
        # Warm up: the first forward pass allocates; do it before any request waits on it.
        c, (h, w) = loaded.profile.channels, loaded.profile.size
        forward(loaded, np.zeros((1, c, h, w), dtype=np.float32))
        forward(loaded, np.zeros((BATCHED_FROM, c, h, w), dtype=np.float32), batched)
        return loaded, batched
