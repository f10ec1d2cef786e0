"""The ASGI application: `create_app(engine_or_index, settings)`, a thin adapter over `Engine`.

Routes: POST /search, GET /items/{id}, GET /items/{id}/image, POST /items, DELETE /items/{id},
POST /clicks, GET /health, GET /stats; the search page at /, its assets at /static; the
OpenAPI docs at /docs, served from the package (no CDN).
"""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from snapshop import __version__
from snapshop.search.engine import Engine
from snapshop.serve.errors import install_error_handlers
from snapshop.serve.limits import BodyLimit
from snapshop.serve.routes import clicks, health, items, search
from snapshop.serve.service import Service, worker_settings
from snapshop.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"

# The page loads nothing from anywhere else; the browser is told so.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def create_app(engine_or_index: Engine | str | Path, settings: Settings) -> FastAPI:
    """The HTTP API and search page over an open engine, or over the index folder at a path (opened here).

    An engine passed in stays the caller's to close and is one of the search workers; the other
    workers' engines (setting `search_workers`), and one opened here, close when the app shuts down.
    """
    owns_engine = not isinstance(engine_or_index, Engine)
    engine = Engine.open(engine_or_index, worker_settings(settings)) if owns_engine else engine_or_index
    service = Service(engine, settings, owns_engine=owns_engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # What start-up made (modules, models, the index's views: ~185,000 objects) is moved out
        # of the garbage collector's reach: a full collection over it took ~105 ms, charged to
        # whichever query happened to set it off. Garbage is collected first, not frozen with it.
        gc.collect()
        gc.freeze()
        yield
        service.close()
        gc.unfreeze()

    app = FastAPIOffline(
        title="snapshop", version=__version__, lifespan=lifespan,
        description="Visual product search: a photo in, the matching catalog products out.",
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    for module in (search, items, clicks, health):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    return app
