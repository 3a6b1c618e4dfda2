"""The micro-batcher under concurrency: every request answered exactly once, whatever happens.

Pure asyncio with a fake batch function (no model): hundreds of concurrent submits with random
cancellations and deadlines, a full queue, failing batches, a stop with requests still queued, and
a client that disconnects while its request waits (httpx ASGI with a cancelled task, and a raw
ASGI `http.disconnect` as uvicorn sends it)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI

from service.api.disconnect import CancelOnDisconnect
from service.serving.batcher import MicroBatcher
from service.serving.errors import DeadlineExceeded, NotReady, Overloaded
from service.serving.logctx import request_id_var


class Recorder:
    """A batch function that records every item it ran and can be held shut by a gate."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.ran: list[int] = []
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.request_ids: list[str] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.ran.extend(items)
        self.sizes.append(len(items))
        self.request_ids.append(request_id_var.get())
        return [x * 10 for x in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def started(batcher: MicroBatcher) -> MicroBatcher:
    await batcher.start()
    return batcher


def test_hundreds_of_concurrent_requests_with_cancellations_and_deadlines() -> None:
    rec = Recorder(delay_s=0.002)

    async def main() -> None:
        b = await started(MicroBatcher(rec, max_batch=16, max_wait_us=300, max_queue=10_000, timeout_s=5.0))
        rng = random.Random(0)
        n = 600
        kinds = [rng.choice(["ok", "ok", "ok", "cancel", "deadline"]) for _ in range(n)]

        async def one(i: int) -> int:
            return await b.submit(i, timeout_s=0.0005 if kinds[i] == "deadline" else None)

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        for i, t in enumerate(tasks):  # cancel some right away, some after a while
            if kinds[i] == "cancel":
                asyncio.get_running_loop().call_later(rng.uniform(0, 0.05), t.cancel)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await b.stop()

        counts = Counter(rec.ran)
        assert all(c == 1 for c in counts.values()), "an item ran twice"
        for i, r in enumerate(results):
            if isinstance(r, int):
                assert r == i * 10  # its own answer, not a neighbour's
                assert counts[i] == 1
            elif isinstance(r, asyncio.CancelledError):
                assert kinds[i] == "cancel"
            else:
                assert isinstance(r, DeadlineExceeded) and kinds[i] == "deadline", (i, kinds[i], r)
        assert sum(isinstance(r, int) for r in results) >= kinds.count("ok")
        assert max(rec.sizes) <= 16 and max(rec.sizes) > 1  # batches formed, bounded
        assert b.in_flight == 0 and b.depth == 0

    run(main())


def test_cancelled_while_queued_is_skipped() -> None:
    rec = Recorder()
    rec.gate.clear()  # the worker is stuck in the first batch

    async def main() -> None:
        b = await started(MicroBatcher(rec, max_batch=4, max_wait_us=0, timeout_s=5.0))
        first = asyncio.create_task(b.submit(1))
        await asyncio.to_thread(rec.entered.wait, 5)
        waiting = [asyncio.create_task(b.submit(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0.01)
        waiting[1].cancel()  # item 3 leaves while queued
        await asyncio.sleep(0.01)
        rec.gate.set()
        assert await first == 10
        assert await waiting[0] == 20 and await waiting[2] == 40
        with pytest.raises(asyncio.CancelledError):
            await waiting[1]
        await b.stop()
        assert sorted(rec.ran) == [1, 2, 4]

    run(main())


def test_queue_full_is_overloaded_and_nothing_is_lost() -> None:
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        b = await started(MicroBatcher(rec, max_batch=2, max_wait_us=0, max_queue=3, timeout_s=5.0))
        first = asyncio.create_task(b.submit(0))
        await asyncio.to_thread(rec.entered.wait, 5)  # item 0 is running, the queue is empty
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="max_queue=3"):
            await b.submit(99)
        rec.gate.set()
        assert [await t for t in [first, *queued]] == [0, 10, 20, 30]
        await b.stop()
        assert 99 not in rec.ran

    run(main())


def test_deadline_while_the_worker_is_busy() -> None:
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        b = await started(MicroBatcher(rec, max_batch=8, max_wait_us=0, timeout_s=5.0))
        first = asyncio.create_task(b.submit(1))
        await asyncio.to_thread(rec.entered.wait, 5)
        with pytest.raises(DeadlineExceeded):
            await b.submit(2, timeout_s=0.02)
        rec.gate.set()
        assert await first == 10
        assert await b.submit(3) == 30
        await b.stop()
        assert 2 not in rec.ran  # expired before its batch: never run

    run(main())


def test_failing_batches_fail_their_callers_and_the_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        if calls["n"] == 2:
            return [1]  # wrong length for a batch of 2+
        return [x + 1 for x in items]

    async def main() -> None:
        b = await started(MicroBatcher(flaky, max_batch=8, max_wait_us=20_000, timeout_s=5.0))
        r1 = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in r1)
        r2 = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "returned 1 results" in str(r) for r in r2)
        assert await b.submit(5) == 6
        await b.stop()

    run(main())


def test_a_failing_metrics_hook_does_not_kill_the_worker() -> None:
    def bad_hook(n: int, waits: list[float]) -> None:
        raise RuntimeError("hook")

    async def main() -> None:
        b = await started(MicroBatcher(lambda xs: xs, max_batch=4, max_wait_us=0, timeout_s=5.0, on_batch=bad_hook))
        with pytest.raises(RuntimeError, match="hook"):
            await b.submit(1)
        b.on_batch = None
        assert await b.submit(2) == 2
        await b.stop()

    run(main())


def test_stop_answers_queued_requests() -> None:
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        b = await started(MicroBatcher(rec, max_batch=1, max_wait_us=0, timeout_s=30.0))
        first = asyncio.create_task(b.submit(1))
        await asyncio.to_thread(rec.entered.wait, 5)
        queued = [asyncio.create_task(b.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0.01)
        rec.gate.set()
        await stopping
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        assert all(isinstance(r, NotReady) for r in results[1:]), results
        with pytest.raises(NotReady):
            await b.submit(4)

    run(main())


def test_waits_metrics_and_request_ids_reach_the_worker_thread() -> None:
    rec = Recorder()
    seen: list[tuple[int, list[float]]] = []

    async def main() -> None:
        b = await started(MicroBatcher(rec, max_batch=8, max_wait_us=20_000, timeout_s=5.0,
                                       on_batch=lambda n, w: seen.append((n, list(w)))))

        async def with_id(i: int) -> int:
            request_id_var.set(f"req-{i}")
            return await b.submit(i)

        assert await asyncio.gather(*(with_id(i) for i in range(3))) == [0, 10, 20]
        await b.stop()

    run(main())
    assert seen[0][0] == 3 and len(seen[0][1]) == 3 and all(w >= 0 for w in seen[0][1])
    assert rec.request_ids == ["req-0,req-1,req-2"]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda x: x, max_batch=0)


# ------------------------------------------------------------------ client disconnects


def _app(rec: Recorder) -> tuple[FastAPI, MicroBatcher, CancelOnDisconnect]:
    batcher = MicroBatcher(rec, max_batch=4, max_wait_us=0, timeout_s=10.0)
    app = FastAPI()

    @app.get("/search")
    async def search(i: int) -> dict[str, int]:
        return {"value": await batcher.submit(i)}

    guarded = CancelOnDisconnect(app)
    return app, batcher, guarded


def test_disconnected_httpx_client_is_skipped() -> None:
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        _, batcher, guarded = _app(rec)
        await batcher.start()
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.get("/search", params={"i": 1}))
            await asyncio.to_thread(rec.entered.wait, 5)
            gone = asyncio.create_task(client.get("/search", params={"i": 2}))
            stays = asyncio.create_task(client.get("/search", params={"i": 3}))
            await asyncio.sleep(0.02)
            gone.cancel()  # the client goes away while its request is queued
            await asyncio.sleep(0.01)
            rec.gate.set()
            assert (await first).json() == {"value": 10}
            assert (await stays).json() == {"value": 30}
            with pytest.raises(asyncio.CancelledError):
                await gone
        await batcher.stop()
        assert sorted(rec.ran) == [1, 3]

    run(main())


def test_uvicorn_style_disconnect_cancels_the_handler() -> None:
    """uvicorn does not cancel a handler; it answers receive() with http.disconnect."""
    rec = Recorder()
    rec.gate.clear()

    async def main() -> None:
        _, batcher, guarded = _app(rec)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.to_thread(rec.entered.wait, 5)
        client_left = asyncio.Event()
        sent: list[dict] = []

        async def receive() -> dict:
            await client_left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/search", "raw_path": b"/search",
                 "query_string": b"i=2", "headers": [], "http_version": "1.1", "scheme": "http",
                 "server": ("test", 80), "client": ("test", 1), "root_path": "", "state": {}}
        call = asyncio.create_task(guarded(scope, receive, send))
        await asyncio.sleep(0.02)
        assert batcher.depth == 1  # item 2 waits in the queue
        client_left.set()
        await asyncio.wait_for(call, 5)  # returns (no exception) once the handler is cancelled
        assert guarded.disconnects == 1 and scope["state"]["client_disconnected"] and sent == []
        rec.gate.set()
        assert await first == 10
        assert await batcher.submit(3) == 30
        await batcher.stop()
        assert sorted(rec.ran) == [1, 3]

    run(main())
