"""GET /health and GET /stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from snapshop import __version__
from snapshop.serve.service import Service, get_service

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: answers without touching the engine, even while a long write runs."""
    return {"status": "ok", "version": __version__}


@router.get("/stats")
async def stats(service: Service = Depends(get_service)) -> dict[str, Any]:
    """`snapshop stats --json` without server paths, plus the categories and the server's batching counters."""
    info, categories = await service.read(lambda: (service.engine.stats(), service.engine.categories))
    info.pop("index", None)
    info["categories"] = sorted(categories)
    info["serve"] = {**service.batcher.stats.to_json(), "workers": service.workers,
                     "writes_enabled": service.writes_enabled}
    return info
