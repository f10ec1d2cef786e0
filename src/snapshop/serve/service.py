"""What the routes share: the engine behind one lock, the search batcher, the photo folders and the click log.

Created by `create_app` (never at import time) and handed to routes with `Depends`.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
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
from snapshop.serve.storage import ClickLog, PhotoFolder, StoredPhoto
from snapshop.settings import Settings

V = TypeVar("V")


@dataclass(frozen=True)
class SearchJob:
    """One /search request waiting for its batch."""

    query: Query
    k: int
    category: str | None


class Service:
    """The engine and the server's own state. Every engine call holds `lock`: searches and writes never overlap."""

    def __init__(self, engine: Engine, settings: Settings, *, owns_engine: bool) -> None:
        self.engine = engine
        self.settings = settings
        self.lock = threading.Lock()
        self._owns_engine = owns_engine
        index = Path(engine.folder.path).resolve()
        self.queries = PhotoFolder(index / "queries")
        self.uploads = PhotoFolder(index / "uploads")
        self.clicks = ClickLog(Path(settings.click_log).resolve() if settings.click_log else index / "clicks.jsonl")
        self.batcher: MicroBatcher[SearchJob, SearchResult] = MicroBatcher(
            self._search_batch, wait_ms=settings.batch_wait_ms, max_batch=settings.max_batch,
            key=lambda job: (job.k, job.category), name="snapshop-search-batcher")

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

    async def locked(self, call: Callable[..., V], *args: Any) -> V:
        """Run an engine call in a worker thread, holding the engine lock."""
        def run() -> V:
            with self.lock:
                return call(*args)
        return await run_in_threadpool(run)

    def _search_batch(self, jobs: list[SearchJob]) -> list[SearchResult]:
        """The batcher's work: one `Engine.search` for jobs sharing k and category."""
        with self.lock:
            return self.engine.search([job.query for job in jobs], k=jobs[0].k, category=jobs[0].category)

    def close(self) -> None:
        self.batcher.close()
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
