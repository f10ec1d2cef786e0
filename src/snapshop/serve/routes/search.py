"""POST /search: a photo in, DESIGN.md's search object out, extended with the kept photo's id."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from snapshop.curate.colour import check_colour
from snapshop.search.results import Query
from snapshop.serve.errors import APIError
from snapshop.serve.routes.items import item_image_url
from snapshop.serve.service import SearchJob, Service, get_service
from snapshop.serve.storage import StoredPhoto

router = APIRouter(tags=["search"])

MAX_K = 100


@router.post("/search")
async def search(
    image: UploadFile = File(..., description="The photo. Its content decides what it is, not its name or header."),
    box: str | None = Form(None, description="Search this box instead of the detected object: x0,y0,x1,y1 in "
                                             "pixels of the upright photo."),
    category: str | None = Form(None, description="Search only this category; empty: the predicted one."),
    k: int | None = Form(None, ge=1, le=MAX_K, description="Results to return [default: setting k]."),
    colour: str | None = Form(None, description="Keep only products of this basic colour (red, navy, ...)."),
    service: Service = Depends(get_service),
) -> dict[str, Any]:
    """Find the products in a photo. Concurrent searches are batched into one CNN call.

    Returns the `snapshop search --json` object with `results[].image` as a URL, plus
    `query_id` / `query_image` (the kept photo, for POST /clicks), `image_size` and `batch`.
    """
    wanted_colour = check_colour(colour) if colour else None
    data = await image.read()
    photo = await run_in_threadpool(service.keep_query_photo, data)
    query_box = _parse_box(box, photo) if box else None
    name = f"queries/{photo.path.name}"
    answer = await service.search(SearchJob(Query(name, data, query_box), k or service.settings.k, category or None,
                                             wanted_colour))
    result = answer.value
    if result.error is not None:
        raise APIError(400, "bad_image", result.error)
    body = result.to_json()
    for hit, found in zip(body["results"], result.results):
        hit["image"] = item_image_url(hit["item_id"], found.image_number)  # the image that matched
    body.update(query_id=photo.id, query_image=name, image_size=[photo.width, photo.height],
                batch={"size": answer.batch_size, "queued_ms": round(answer.queued_ms, 2), "worker": answer.worker})
    return body


def _parse_box(text: str, photo: StoredPhoto) -> list[int]:
    values = [value for value in re.split(r"[\s,\[\]]+", text) if value]
    try:
        box = [int(round(float(value))) for value in values]
    except (ValueError, OverflowError):
        box = []
    if len(box) != 4:
        raise APIError(400, "bad_box", f"box takes four numbers x0,y0,x1,y1, got {text[:60]!r}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= photo.width and 0 <= y0 < y1 <= photo.height):
        raise APIError(400, "bad_box", f"box {box} is not inside the {photo.width}x{photo.height} photo")
    return box
