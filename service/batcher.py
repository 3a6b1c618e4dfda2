"""The asyncio micro-batcher: concurrent requests share one encode + search call.

Requests wait in a bounded queue (full -> `Overloaded`, a 429). One worker task takes the first
waiting request, waits up to `max_wait_us` for more (up to `max_batch`), and runs the batch in a
single worker thread (so the event loop stays free and the GPU sees one caller). Each request has a
deadline: a request whose deadline passed before its batch ran is answered `DeadlineExceeded`
(504) without work; a caller that went away (cancelled future) is skipped. Every request is
answered exactly once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import DeadlineExceeded, NotReady, Overloaded


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float
    deadline: float


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch: int = 32,
        max_wait_us: int = 500,
        max_queue: int = 1024,
        timeout_s: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        self.run_batch = run_batch
        self.max_batch, self.max_wait = max_batch, max_wait_us / 1e6
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.on_batch, self.on_depth = on_batch, on_depth
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        self._closing = False
        self.in_flight = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: Any, timeout_s: float | None = None) -> Any:
        if self._queue is None or self._closing:
            raise NotReady("the service is shutting down" if self._closing else "the batcher is not running")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        pending = _Pending(item, loop.create_future(), now, now + timeout)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"too many queued requests (max_queue={self.max_queue}); retry later") from None
        if self.on_depth:
            self.on_depth(self._queue.qsize())
        self.in_flight += 1
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout * 1000:.0f} ms") from None
        finally:
            self.in_flight -= 1
            if not pending.future.done():
                pending.future.cancel()  # the caller is gone: the worker will skip it

    async def _collect(self) -> list[_Pending]:
        assert self._queue is not None
        first = await self._queue.get()
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if self.on_depth:
                self.on_depth(self._queue.qsize() if self._queue else 0)
            now = time.monotonic()
            live = []
            for p in batch:
                if p.future.done():  # cancelled: the caller went away
                    continue
                if now > p.deadline:
                    p.future.set_exception(DeadlineExceeded("the request waited past its deadline"))
                    continue
                live.append(p)
            if not live:
                continue
            if self.on_batch:
                self.on_batch(len(live), max(now - p.enqueued for p in live))
            try:
                results = await loop.run_in_executor(self._pool, self.run_batch, [p.item for p in live])
            except Exception as e:  # noqa: BLE001 - the batch failed: every caller gets the error
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, r in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Stop taking requests; wait until the queue and in-flight requests are done."""
        self._closing = True
        end = time.monotonic() + timeout_s
        while (self.in_flight or self.depth) and time.monotonic() < end:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True, cancel_futures=True)
