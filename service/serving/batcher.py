"""The asyncio micro-batcher: concurrent requests share one encode + search call.

Requests wait in a bounded queue (full -> `Overloaded`, a 429). One worker task takes the first
waiting request, waits up to `max_wait_us` for more (up to `max_batch`), and runs the batch in a
single worker thread (so the event loop stays free and the GPU sees one caller). Each request has a
deadline: a request whose deadline passed before its batch ran is answered `DeadlineExceeded`
(504) without work; a caller that went away (its task cancelled: a client disconnect, see
`service/api/disconnect.py`) leaves a cancelled future, which the worker skips.

Every request is answered exactly once, whatever happens: a batch that raises, or returns the wrong
number of results, fails each of its callers with that error; the worker loop itself never dies
(an unexpected error is logged and the loop goes on); `stop()` fails whatever is still queued with
`NotReady` instead of leaving callers to time out. Futures are only ever resolved on the event
loop thread, after a `done()` check, so a result and a cancellation cannot both land.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.serving.errors import DeadlineExceeded, NotReady, Overloaded
from service.serving.logctx import request_id_var

log = logging.getLogger("service.serving.batcher")
# Request ids named in the worker thread's log lines for one batch (the rest are counted).
LOG_IDS_PER_BATCH = 8


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float
    deadline: float
    request_id: str


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch: int = 32,
        max_wait_us: int = 500,
        max_queue: int = 1024,
        timeout_s: float = 2.0,
        on_batch: Callable[[int, Sequence[float]], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        """on_batch(size, queue waits in seconds, one per request) runs once per batch that runs."""
        if max_batch < 1 or max_queue < 1 or max_wait_us < 0 or timeout_s <= 0:
            raise ValueError(f"batcher: need max_batch >= 1, max_queue >= 1, max_wait_us >= 0, timeout_s > 0; "
                             f"got {max_batch}, {max_queue}, {max_wait_us}, {timeout_s}")
        self.run_batch = run_batch
        self.max_batch, self.max_wait = max_batch, max_wait_us / 1e6
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.on_batch, self.on_depth = on_batch, on_depth
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        self._closing = False
        self._held: list[_Pending] = []  # the batch being collected or run
        self.in_flight = 0
        self.batches = 0  # batches run (tests and benchmarks read it)

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: Any, timeout_s: float | None = None) -> Any:
        if self._queue is None or self._closing or self._task is None or self._task.done():
            raise NotReady("the service is shutting down" if self._closing else "the batcher is not running")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        pending = _Pending(item, loop.create_future(), now, now + timeout, request_id_var.get())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"too many queued requests (max_queue={self.max_queue}); retry later") from None
        if self.on_depth:
            self.on_depth(self._queue.qsize())
        self.in_flight += 1
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(pending.future)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout * 1000:.0f} ms") from None
        finally:
            self.in_flight -= 1
            if not pending.future.done():
                pending.future.cancel()  # the caller is gone: the worker will skip it

    async def _collect(self) -> list[_Pending]:
        """Gather one batch into `self._held` (so `stop()` can answer it if cancelled mid-way)."""
        assert self._queue is not None
        batch = self._held
        batch.append(await self._queue.get())
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
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    def _run(self, items: list[Any], request_ids: list[str]) -> Sequence[Any]:
        """In the worker thread: the batch's request ids go into its log lines."""
        shown = ",".join(request_ids[:LOG_IDS_PER_BATCH])
        extra = len(request_ids) - LOG_IDS_PER_BATCH
        token = request_id_var.set(shown + (f",+{extra}" if extra > 0 else ""))
        try:
            return self.run_batch(items)
        finally:
            request_id_var.reset(token)

    async def _loop(self) -> None:
        while True:
            self._held = []
            batch = await self._collect()
            try:
                await self._answer(batch)
            except Exception as e:  # noqa: BLE001 - never let the worker die; nobody may hang
                log.exception("micro-batcher: batch handling failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)

    async def _answer(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
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
            return
        if self.on_batch:
            self.on_batch(len(live), [now - p.enqueued for p in live])
        self.batches += 1
        try:
            results = await loop.run_in_executor(self._pool, self._run, [p.item for p in live],
                                                 [p.request_id for p in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch of {len(live)} requests returned {len(results)} results")
        except Exception as e:  # noqa: BLE001 - the batch failed: every caller gets the error
            for p in live:
                if not p.future.done():
                    p.future.set_exception(e)
            return
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
        """Stop the worker; whatever is still queued is answered NotReady (never left hanging)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = list(self._held)
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        for p in left:
            if not p.future.done():
                p.future.set_exception(NotReady("the service is shutting down"))
        # the running batch (if any) finishes in its thread; wait for it without blocking the loop
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
