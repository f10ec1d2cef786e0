"""Request limits: a body size limit that answers with the API's JSON error (413), declared length or
streamed, and a per-client rate limit (token buckets)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from snapshop.serve.errors import error_response, status_code_name


class BodyTooLarge(HTTPException):
    """Raised while a streamed body is read; FastAPI lets HTTPExceptions through to the error handlers."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over the limit of {max_bytes:,} bytes")


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` before they are parsed or spooled to disk."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, status_code_name(413), BodyTooLarge(self.max_bytes).detail,
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


class RateLimiter:
    """A token bucket per client: `rate` requests a second on average, `burst` at once.

    Buckets of the `max_clients` clients seen most recently are kept; an older client starts
    again with a full bucket.
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be positive and burst at least 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client: (tokens, when)
        self._lock = threading.Lock()

    def wait_seconds(self, client: str) -> float:
        """Take a token for one request of `client`: 0 when it may go ahead, else how long until it may."""
        with self._lock:
            now = self._clock()
            tokens, when = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
            return wait
