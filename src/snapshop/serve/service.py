"""What the routes share: the engines and their locks, the search batcher, the photo folders and the click log.

Created by `create_app` (never at import time) and handed to routes with `Depends`.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from snapshop.search.engine import Engine
from snapshop.search.results import Query, SearchResult
from snapshop.serve.batcher import Batched, MicroBatcher
from snapshop.serve.errors import APIError
from snapshop.serve.limits import RateLimiter
from snapshop.serve.storage import BoundedPhotoFolder, ClickLog, PhotoFolder, StoredPhoto
from snapshop.settings import Settings

V = TypeVar("V")

# POST /clicks per client address: a shopper clicks a result every few seconds; a script
# filling the click log (training data) with junk is held to this.
CLICKS_PER_SECOND = 2.0
CLICK_BURST = 30
# Searched photos kept for the click log: the least recently searched go first past these.
MAX_QUERY_PHOTOS = 10_000
MAX_QUERY_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class SearchJob:
    """One /search request waiting for its batch."""

    query: Query
    k: int
    category: str | None
    colour: str | None = None


def worker_settings(settings: Settings) -> Settings:
    """The settings of one search worker's engine: with `threads` 0, its share of the CPU cores."""
    share = max(1, (os.cpu_count() or 1) // settings.search_workers)
    return settings if settings.threads else settings.replace(threads=share)


class Service:
    """The engines and the server's own state.

    `search_workers` engines over the one index folder search batches side by side, each in
    its own batcher thread and behind its own lock; the first also answers reads and writes.
    A write holds every lock, so searches and writes never overlap; the other engines see it
    on their next search (through the index's change log).
    """

    def __init__(self, engine: Engine, settings: Settings, *, owns_engine: bool) -> None:
        self.engine = engine
        self.settings = settings
        self._owns_engine = owns_engine
        index = Path(engine.folder.path).resolve()
        self._replicas = [Engine.open(index, worker_settings(settings)) for _ in range(settings.search_workers - 1)]
        self._engines = [engine, *self._replicas]
        self._locks = [threading.Lock() for _ in self._engines]
        self.queries = BoundedPhotoFolder(index / "queries", max_files=MAX_QUERY_PHOTOS, max_bytes=MAX_QUERY_BYTES)
        self.uploads = PhotoFolder(index / "uploads")
        self.clicks = ClickLog(Path(settings.click_log).resolve() if settings.click_log else index / "clicks.jsonl")
        self.click_limit = RateLimiter(CLICKS_PER_SECOND, CLICK_BURST)
        # max_batch is shared out: a worker that finds a long queue leaves some of it to the others.
        self.batcher: MicroBatcher[SearchJob, SearchResult] = MicroBatcher(
            self._search_batch, wait_ms=settings.batch_wait_ms, max_batch=math.ceil(settings.max_batch / self.workers),
            workers=self.workers, key=lambda job: (job.k, job.category, job.colour), name="snapshop-search")

    @property
    def writes_enabled(self) -> bool:
        return bool(self.settings.admin_token)

    def keep_query_photo(self, data: bytes) -> StoredPhoto:
        """Decode a searched photo with the engine's limits (its content decides what it is) and keep it."""
        return self.queries.keep_query(data, self.engine.load(data))

    def keep_catalog_images(self, uploads: list[bytes]) -> list[Path]:
        """Check that every uploaded catalog image decodes with the engine's limits, then keep them all."""
        paths = []
        for data in uploads:
            self.engine.load(data)
            paths.append(self.uploads.catalog_image_path(data))
        for path, data in zip(paths, uploads):
            self.uploads.keep_bytes(path, data)
        return paths

    async def search(self, job: SearchJob) -> Batched[SearchResult]:
        """Search one photo as part of the next batch."""
        return await asyncio.wrap_future(self.batcher.submit(job))

    async def read(self, call: Callable[..., V], *args: Any) -> V:
        """Run a reading call of `engine` in a worker thread, holding its lock."""
        def run() -> V:
            with self._locks[0]:
                return call(*args)
        return await run_in_threadpool(run)

    async def write(self, call: Callable[..., V], *args: Any) -> V:
        """Run a writing call of `engine` in a worker thread, holding every engine's lock."""
        def run() -> V:
            with ExitStack() as held:
                for lock in self._locks:
                    held.enter_context(lock)
                return call(*args)
        return await run_in_threadpool(run)

    @property
    def workers(self) -> int:
        return len(self._engines)

    def _search_batch(self, worker: int, jobs: list[SearchJob]) -> list[SearchResult]:
        """A batcher worker's work: one `Engine.search` on its engine for jobs sharing k, category and colour."""
        with self._locks[worker]:
            return self._engines[worker].search([job.query for job in jobs], k=jobs[0].k, category=jobs[0].category,
                                                colour=jobs[0].colour)

    def close(self) -> None:
        self.batcher.close()
        for replica in self._replicas:
            replica.close()
        if self._owns_engine:
            self.engine.close()


def get_service(request: Request) -> Service:
    return request.app.state.service


_bearer = HTTPBearer(auto_error=False, description="The admin token (setting `admin_token`).")


def require_admin(service: Service = Depends(get_service),
                  credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Catalog writes: 403 when no admin token is configured, 401 without the right bearer token."""
    if not service.writes_enabled:
        raise APIError(403, "writes_disabled", "catalog writes are disabled on this server (no admin_token is set)")
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, service.settings.admin_token.encode()):
        raise APIError(401, "unauthorized", "catalog writes need 'Authorization: Bearer <admin token>'",
                       headers={"WWW-Authenticate": "Bearer"})
