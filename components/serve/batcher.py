"""Dynamic batching: images of concurrent requests wait a short window, then go through the model together.

Every request puts one item per image into one bounded queue and awaits an asyncio future per item. One collector
task takes the oldest items, up to a batch, once the oldest has waited the window (or at once when a batch is full),
and runs the model on them in a scorer thread; then it sets each item's future. Up to `in_flight` batches are scored
at once (the server's --batches-in-flight, 2): while one batch is in the model, the next has its faces found, so the
cores are not idle while a batch's answers go out and the next requests come in. Items carry the model they
were submitted with, and a batch holds items of one model only: after a swap, the requests already queued finish on
the old model. A request that gave up (its deadline passed, its client left) leaves items whose futures are
cancelled; the collector drops them unscored.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)


class Model(Protocol):
    """What the batcher needs of a model: components.common.inference.Scorer's score()."""

    def score(self, images: list[bytes], names: list[str]) -> list[dict]: ...


class QueueFull(Exception):
    """The queue holds as many images as it may; the request is refused (HTTP 503 with Retry-After)."""


@dataclasses.dataclass
class _Item:
    model: Model
    image: bytes
    name: str
    future: asyncio.Future
    arrived: float


class Batcher:
    """The queue, the collector task (run()) and the scorer threads (one per batch in flight)."""

    def __init__(self, max_batch: int = 32, window_s: float = 0.0, max_queue: int = 128,
                 executor: concurrent.futures.Executor | None = None, in_flight: int = 1):
        if max_batch < 1 or max_queue < 1 or window_s < 0 or in_flight < 1:
            raise ValueError(f"max_batch ({max_batch}), max_queue ({max_queue}) and in_flight ({in_flight}) must be "
                             f"at least 1, window_s ({window_s}) at least 0")
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.in_flight = in_flight
        # A thread per batch in flight: the scorer takes calls from several threads (each picture's faces are
        # found by a detector of the scorer's own threads, never shared).
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(in_flight, thread_name_prefix="scorer")
        self._owns_executor = executor is None
        self._pending: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self.batches = 0  # batches scored, for tests and the benchmark
        self.scored = 0  # images scored

    @property
    def queued(self) -> int:
        """Images waiting for a batch (those of requests that gave up are dropped first)."""
        self._drop_abandoned()
        return len(self._pending)

    def _drop_abandoned(self) -> None:
        if any(i.future.done() for i in self._pending):
            self._pending = collections.deque(i for i in self._pending if not i.future.done())

    async def submit(self, model: Model, images: list[bytes], names: list[str]) -> list[dict]:
        """Scores the images with the model in batches shared with other requests; one result per image, in order.

        Raises QueueFull at once when the queue cannot take them all (nothing is queued then). Cancelling the
        caller (asyncio.wait_for's deadline, a client that left) drops its images that are not scored yet.
        """
        if len(images) != len(names):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        if len(self._pending) + len(images) > self.max_queue:
            self._drop_abandoned()
            if len(self._pending) + len(images) > self.max_queue:
                raise QueueFull(f"the queue holds {len(self._pending)} of at most {self.max_queue} images; "
                                f"this request brings {len(images)}")
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(model, image, name, loop.create_future(), now) for image, name in zip(images, names)]
        self._pending.extend(items)
        self._wake.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for i in items:
                if not i.future.done():
                    i.future.cancel()

    async def call(self, fn: Callable[..., Any], *args) -> Any:
        """Runs fn on a scorer thread (a new model's warmup goes there, beside at most in_flight - 1 batches)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _next_batch(self) -> list[_Item]:
        """Up to max_batch live items of the oldest live item's model, oldest first; taken out of the queue."""
        self._drop_abandoned()
        if not self._pending:
            return []
        model = self._pending[0].model
        batch, rest = [], collections.deque()
        for item in self._pending:
            if item.model is model and len(batch) < self.max_batch:
                batch.append(item)
            else:
                rest.append(item)
        self._pending = rest
        return batch

    def _ready(self, loop: asyncio.AbstractEventLoop) -> float:
        """Seconds until a batch should be taken: 0 when a batch is full or the oldest item has waited the window."""
        self._drop_abandoned()
        if not self._pending:
            return float("inf")
        model = self._pending[0].model
        if sum(1 for i in self._pending if i.model is model) >= self.max_batch:
            return 0.0
        # A batch of another model is waiting behind this one: it too wants the scorer, so do not hold it back.
        if any(i.model is not model for i in self._pending):
            return 0.0
        return max(0.0, self._pending[0].arrived + self.window_s - loop.time())

    async def run(self) -> None:
        """The collector: forever takes a batch and scores it on a scorer thread, up to in_flight at once. Cancel it
        to stop (the batches in flight are cancelled with it)."""
        loop = asyncio.get_running_loop()
        scoring: set[asyncio.Task] = set()
        try:
            while True:
                if len(scoring) >= self.in_flight:
                    await asyncio.wait(set(scoring), return_when=asyncio.FIRST_COMPLETED)
                    continue
                await self._collect(loop, scoring)
        finally:
            for task in list(scoring):
                task.cancel()

    async def _collect(self, loop: asyncio.AbstractEventLoop, scoring: set) -> None:
        """Waits for a batch to be ready and starts scoring it (a task added to `scoring`)."""
        while True:
            wait = self._ready(loop)
            if wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), None if wait == float("inf") else wait)
                except TimeoutError:
                    pass
                continue
            batch = self._next_batch()
            if not batch:
                continue
            task = asyncio.create_task(self._score(loop, batch))
            scoring.add(task)
            task.add_done_callback(scoring.discard)
            return

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        model = batch[0].model
        try:
            results = await loop.run_in_executor(self._executor, model.score, [i.image for i in batch],
                                                 [i.name for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} images")
        except asyncio.CancelledError:  # the server stops: its requests end with it
            for i in batch:
                i.future.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - one batch's failure is its requests' error, never the server's end
            log.exception("scoring a batch of %d images failed", len(batch))
            for i in batch:
                if not i.future.done():
                    i.future.set_exception(e)
            return
        self.batches += 1
        self.scored += len(batch)
        for i, result in zip(batch, results):
            if not i.future.done():
                i.future.set_result(result)

    def close(self) -> None:
        """Cancels what is still queued and stops the scorer threads (when the batcher made them)."""
        for i in self._pending:
            if not i.future.done():
                i.future.cancel()
        self._pending.clear()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
