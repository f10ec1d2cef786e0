"""Catalog items: read them and their images (open), add and delete them (admin token)."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from snapshop.catalog.manifest import Catalog, CatalogRow
from snapshop.serve.errors import APIError
from snapshop.serve.service import Service, get_service, require_admin

router = APIRouter(tags=["items"])

MAX_ID_LENGTH = 200
MAX_FIELD_LENGTH = 2000
MAX_IMAGES_PER_ITEM = 20


def item_image_url(item_id: str, n: int = 0) -> str:
    """The URL of an item's image (its main image unless `n` says otherwise)."""
    url = f"/items/{quote(item_id, safe='')}/image"
    return f"{url}?n={n}" if n else url


def public_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the API shows it: images, and the main one the engine chose, as URLs, never as server paths."""
    public = {**item, "images": [item_image_url(item["item_id"], n) for n in range(len(item["images"]))]}
    if "main_image" in item:
        main = item["main_image"]
        public["main_image"] = item_image_url(item["item_id"], item["images"].index(main)) if main else None
    return public


async def _item_or_404(service: Service, item_id: str) -> dict[str, Any]:
    item = await service.read(service.engine.item, item_id)
    if item is None:
        raise APIError(404, "unknown_item", f"no item {item_id!r} in the catalog")
    return item


# The image route comes first: item ids may hold "/", and ".../image" must not read as part of an id.
@router.get("/items/{item_id:path}/image", response_class=FileResponse,
            responses={200: {"content": {"image/*": {}}, "description": "The image file."}})
async def get_item_image(item_id: str,
                         n: int = Query(0, ge=0, description="Which image of the item (0: the main one)."),
                         service: Service = Depends(get_service)) -> FileResponse:
    """An item's image file. Only files the index references are served; the client names an item, never a path."""
    images = (await _item_or_404(service, item_id))["images"]
    if n >= len(images):
        raise APIError(404, "unknown_image", f"item {item_id!r} has {len(images)} image(s)")
    path = Path(images[n])
    if not path.is_file():
        raise APIError(404, "image_missing", f"the file of image {n} of item {item_id!r} is no longer on the server")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff",
                                                              "Cache-Control": "public, max-age=300"})


@router.get("/items/{item_id:path}")
async def get_item(item_id: str, service: Service = Depends(get_service)) -> dict[str, Any]:
    """One catalog item: id, category, fields (title, price, url, ...) and image URLs."""
    return public_item(await _item_or_404(service, item_id))


@router.post("/items", status_code=201, dependencies=[Depends(require_admin)])
async def add_item(
    item_id: str = Form(..., min_length=1, max_length=MAX_ID_LENGTH),
    image: list[UploadFile] = File(..., description="One or more photos of the item; the first is its main image."),
    category: str | None = Form(None, max_length=MAX_FIELD_LENGTH),
    title: str | None = Form(None, max_length=MAX_FIELD_LENGTH),
    price: float | None = Form(None, ge=0),
    url: str | None = Form(None, max_length=MAX_FIELD_LENGTH, pattern=r"^https?://\S+$"),
    service: Service = Depends(get_service),
) -> dict[str, Any]:
    """Add an item, or replace it and all its images (admin token). Images are checked before anything is written."""
    item_id = item_id.strip()
    if not item_id or not item_id.isprintable():
        raise APIError(400, "bad_item_id", "item_id must be non-empty printable text")
    if len(image) > MAX_IMAGES_PER_ITEM:
        raise APIError(400, "too_many_images", f"at most {MAX_IMAGES_PER_ITEM} images per item")
    paths = await run_in_threadpool(service.keep_catalog_images, [await upload.read() for upload in image])
    fields = {name: value for name, value in (("title", title), ("price", price), ("url", url)) if value is not None}
    rows = [CatalogRow(line=number, item_id=item_id, image=path, category=(category or "").strip() or None,
                       fields=fields) for number, path in enumerate(paths, start=1)]
    report = await service.write(service.engine.add, Catalog(source=Path("POST /items"), rows=rows, errors=[]))
    if report.errors and not report.images:
        raise APIError(400, "not_added", "; ".join(error.reason for error in report.errors))
    item = await _item_or_404(service, item_id)
    return {"item_id": item_id, "created": report.items_added > 0, "images": report.images,
            "item": public_item(item)}


@router.delete("/items/{item_id:path}", dependencies=[Depends(require_admin)])
async def delete_item(item_id: str, service: Service = Depends(get_service)) -> dict[str, Any]:
    """Delete an item (admin token); it never appears in results again."""
    report = await service.write(service.engine.remove, [item_id])
    if not report.removed:
        raise APIError(404, "unknown_item", f"no item {item_id!r} in the catalog")
    return {"removed": report.removed}
