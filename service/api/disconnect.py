"""Cancel a request's handler when its client disconnects (pure ASGI middleware).

Neither uvicorn nor Starlette cancels a plain (non-streaming) handler when the client goes away:
it would run to the end and its batch slot would be spent on nobody. This middleware owns the
request's `receive` channel: it reads the body (already buffered by `RequestMiddleware`), hands
it to the app, and then waits on `receive()` itself; an `http.disconnect` before the response has
started cancels the handler task. The cancellation reaches `MicroBatcher.submit`, which cancels the
request's future, so the batch worker skips it. Later `receive()` calls from the app get the
disconnect message as usual.

Paths under `paths` only (the search routes): elsewhere the app runs directly, with no extra task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CancelOnDisconnect:
    def __init__(self, app: Any, paths: Iterable[str] = ("/search",)) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.disconnects = 0  # handlers cancelled (tests read it)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            while True:
                message = await receive()
                body.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        disconnected = asyncio.Event()
        started = False

        async def receive_app() -> Message:
            if body:
                return body.pop(0)
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send_app(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        handler = asyncio.create_task(self.app(scope, receive_app, send_app))

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    if not started and not handler.done():
                        self.disconnects += 1
                        scope.setdefault("state", {})["client_disconnected"] = True
                        handler.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not scope.get("state", {}).get("client_disconnected"):
                handler.cancel()  # we are being cancelled ourselves (server shutdown): pass it on
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
