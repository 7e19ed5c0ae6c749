"""Dynamic micro-batching: the images of concurrent requests share one model call.

The first waiting image opens a batch; it closes when ``max_batch`` images wait, when no other request is on its
way (``announce``: a request that is still reading or decoding its body; so a lone request never waits), or when
``max_wait_ms`` has passed, then runs on one worker thread (the model and the index are only ever used by that
thread, one batch at a time), while new requests queue for the next batch. ``max_batch=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

RunBatch = Callable[[list[Any], list[int]], tuple[list[Any], dict[str, float]]]
"""``run(images, ks) -> (one result per image, timings of the batch in ms)``."""
OnBatch = Callable[[int, dict[str, float]], None]
"""``on_batch(size, timings)`` after each batch."""


@dataclass
class _Item:
    image: Any
    k: int
    future: asyncio.Future
    submitted: float


class MicroBatcher:
    """Queue images from any number of requests; ``submit`` returns each image's result and timings."""

    def __init__(self, run: RunBatch, max_batch: int = 32, max_wait_ms: float = 5.0, on_batch: OnBatch | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_ms at least 0")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self.pending: list[_Item] = []
        self.on_the_way = 0
        self.batches = 0
        self.task: asyncio.Task | None = None

    def announce(self) -> None:
        """A request that will ``submit`` soon (it is reading or decoding its body): a batch may wait for it."""
        self.on_the_way += 1

    def withdraw(self) -> None:
        """An announced request that will not submit after all (bad input, a client gone)."""
        self.on_the_way -= 1
        self.changed.set()

    async def start(self) -> None:
        self.wakeup, self.changed = asyncio.Event(), asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="loqi-model")
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop after the batch in progress; images still waiting fail (the server drained requests before)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for item in self.pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self.executor.shutdown(wait=True)

    async def submit(self, images: Sequence[Any], k: int, announced: bool = False) -> list[tuple[Any, dict[str, float]]]:
        """Each image's result and the timings of its batch (``queue_ms``, ``batch_size``, ``batch``: its number);
        ``announced``: the request called ``announce`` before."""
        loop = asyncio.get_running_loop()
        items = [_Item(img, k, loop.create_future(), time.perf_counter()) for img in images]
        self.pending.extend(items)
        if announced:
            self.on_the_way -= 1
        self.wakeup.set()
        self.changed.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:  # a request that timed out or disconnected leaves nothing behind
            for item in items:
                item.future.cancel()

    async def _next_batch(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        while not self.pending:
            self.wakeup.clear()
            await self.wakeup.wait()
        deadline = loop.time() + self.max_wait
        while len(self.pending) < self.max_batch and self.on_the_way > 0 and (remaining := deadline - loop.time()) > 0:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
        return [item for item in batch if not item.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results, timings = await loop.run_in_executor(
                    self.executor, self.run, [item.image for item in batch], [item.k for item in batch]
                )
            except Exception as exc:  # a failure of the model is the server's: every request of the batch gets it
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(batch), timings)
            for item, result in zip(batch, results):
                if not item.future.done():
                    queue_ms = (start - item.submitted) * 1000
                    item.future.set_result((result, {**timings, "queue_ms": queue_ms, "batch_size": len(batch),
                                                     "batch": self.batches}))  # fmt: skip
