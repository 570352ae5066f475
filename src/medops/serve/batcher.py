"""Dynamic micro-batching: many concurrent requests, one forward pass per batch.

Preprocessed images wait in an asyncio queue. A free worker takes the first, then whatever
else is queued, up to ``max_batch``; it waits (at most ``max_wait_ms``) for more only while
other requests are still being preprocessed, so a lone request never pays the wait. Each worker
runs its forward passes in a thread of its own, and while they run the queue fills: under load
the batches grow by themselves. Several workers (``serve.workers``, by default one per core with
one torch thread each) keep every core busy with a batch of its own, instead of one batch whose
threads wait for each other at every layer. Each image carries the deployment it was
preprocessed for; a batch that straddles a model swap runs as one forward per deployment. A
request that finds a worker free and nothing queued hands in its undecoded image instead,
decoded in the forward thread: one thread hand-off fewer for a lone request, while under load
decoding overlaps the forward passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medops.registry import LoadedModel
from medops.serve.inputs import PreparedImage

if TYPE_CHECKING:
    from medops.serve.host import Deployment

log = logging.getLogger(__name__)


def forward(loaded: LoadedModel, x: np.ndarray,
            model: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, K) and penultimate embeddings (N, F) from one forward pass of
    ``model`` (default ``loaded.model``; another copy of the same weights, say channels-last).

    The probabilities are ``model(x)``'s, whatever it does in eval mode (test-time flips
    included), so they equal ``predict_proba``. Safe to call from several threads at once."""
    import torch

    net = model or loaded.model
    with torch.inference_mode():
        logits, features = net.logits_and_features(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        probs = net.activate(logits)
    return probs.numpy(), features.float().numpy()


@dataclass
class Result:
    prepared: PreparedImage
    probabilities: np.ndarray  # (K,)
    embedding: np.ndarray  # (F,)
    deployment: Deployment


#: What a request hands in: a preprocessed image, or the (thread-safe) work that makes one.
Input = PreparedImage | Callable[[], PreparedImage]


@dataclass
class _Item:
    input: Input
    deployment: Deployment
    future: asyncio.Future[Result]


class MicroBatcher:
    def __init__(self, max_batch: int, max_wait_ms: float, workers: int = 1,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a batcher needs at least one worker, got {workers}")
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.workers = workers
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._preparing = 0  # requests admitted and still in preprocessing
        self._busy = 0  # workers running a batch
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="medops-forward")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def idle(self) -> bool:
        """A worker is free and nothing is queued or preprocessing: a lone request's image can
        be decoded in the forward thread itself, saving a thread hand-off."""
        return self._busy < self.workers and self._preparing == 0 and self._queue.empty()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name=f"medops-batcher-{i}")
                       for i in range(self.workers)]

    async def stop(self) -> None:
        """Finish what is queued, then stop the workers."""
        while not self._queue.empty() or self._busy:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=True)

    def preparing(self, delta: int) -> None:
        """Count requests in preprocessing (+1 before, -1 after) so the worker knows whether
        waiting for more images can pay off."""
        self._preparing += delta

    async def submit(self, image: Input, deployment: Deployment) -> Result:
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(image, deployment, fut))
        self._arrived.set()
        return await fut

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            self._busy += 1
            try:
                deadline = loop.time() + self.max_wait
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                        continue
                    except asyncio.QueueEmpty:
                        pass
                    remaining = deadline - loop.time()
                    if self._preparing <= 0 or remaining <= 0:
                        break
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
                await self._run(loop, batch)
            finally:
                self._busy -= 1

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        groups: dict[int, list[_Item]] = {}
        for item in batch:
            groups.setdefault(id(item.deployment), []).append(item)
        for items in groups.values():
            try:
                outcomes = await loop.run_in_executor(self._pool, _execute, items)
            except Exception as exc:  # a model fault fails this batch, not the server
                log.exception("forward pass failed for a batch of %d", len(items))
                outcomes = [exc] * len(items)
            ran = sum(isinstance(o, Result) for o in outcomes)
            if ran and self._on_batch is not None:
                self._on_batch(ran)
            for item, outcome in zip(items, outcomes, strict=True):
                if item.future.done():  # the client went away
                    continue
                if isinstance(outcome, Result):
                    item.future.set_result(outcome)
                else:
                    item.future.set_exception(outcome)


def _execute(items: list[_Item]) -> list[Result | BaseException]:
    """In the forward thread: make the inputs not yet made, then one forward pass."""
    outcomes: list[Result | BaseException | None] = [None] * len(items)
    ready: list[tuple[int, PreparedImage]] = []
    for i, item in enumerate(items):
        if isinstance(item.input, PreparedImage):
            ready.append((i, item.input))
            continue
        try:
            ready.append((i, item.input()))
        except Exception as exc:  # bad input fails its own request only
            outcomes[i] = exc
    if ready:
        deployment = items[0].deployment
        probs, feats = forward(deployment.loaded, np.stack([p.x for _, p in ready]),
                               deployment.model_for(len(ready)))
        for row, (i, prepared) in enumerate(ready):
            outcomes[i] = Result(prepared, probs[row], feats[row], deployment)
    return [o for o in outcomes if o is not None]
