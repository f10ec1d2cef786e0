"""POST /clicks: a shopper clicked a result; one line of DESIGN.md's click log, for training."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StringConstraints

from snapshop.serve.errors import APIError
from snapshop.serve.service import Service, get_service
from snapshop.serve.storage import QUERY_ID_PATTERN

router = APIRouter(tags=["clicks"])

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Click(BaseModel):
    """One search impression and what was clicked in it."""

    query_id: str = Field(pattern=QUERY_ID_PATTERN, description="`query_id` of the /search answer.")
    box: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=4, max_length=4,
                                                          description="The box that was searched.")
    shown: list[ItemId] = Field(min_length=1, max_length=1000, description="Item ids shown, best first.")
    clicked: list[ItemId] = Field(min_length=1, max_length=100, description="Item ids clicked, all among `shown`.")


def limit_clicks(request: Request, service: Service = Depends(get_service)) -> None:
    """429 for a client (by address) that sends clicks faster than `Service.click_limit` allows."""
    wait = service.click_limit.wait_seconds(request.client.host if request.client else "")
    if wait:
        seconds = math.ceil(wait)
        raise APIError(429, "too_many_requests", f"too many clicks from this address; try again in {seconds} s",
                       headers={"Retry-After": str(seconds)})


@router.post("/clicks", status_code=201, dependencies=[Depends(limit_clicks)],
             responses={429: {"description": "Too many clicks from this address (see Retry-After)."}})
async def log_click(click: Click, service: Service = Depends(get_service)) -> dict[str, Any]:
    """Append the impression to the click log; returns the line written."""
    strays = [item for item in click.clicked if item not in click.shown]
    if strays:
        raise APIError(400, "bad_click", f"clicked items that were not shown: {', '.join(strays[:5])}")
    photo = service.queries.query_path(click.query_id)
    if photo is None:
        raise APIError(404, "unknown_query", "no searched photo has this query_id")
    return await run_in_threadpool(service.clicks.append, photo, click.box, click.shown, click.clicked)
