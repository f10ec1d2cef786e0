"""One JSON error shape for the whole API, `{"error": {"code": ..., "message": ...}}`, never a traceback."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from snapshop.errors import (BackendError, ImageError, IndexError_, ManifestError, ModelError, SettingsError,
                             SnapshopError)

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status and code.
SNAPSHOP_ERRORS: tuple[tuple[type[SnapshopError], int, str], ...] = (
    (ImageError, 400, "bad_image"),
    (ManifestError, 400, "bad_catalog"),
    (SettingsError, 400, "bad_setting"),
    (IndexError_, 409, "index_unavailable"),
    (ModelError, 409, "model_unavailable"),
    (BackendError, 503, "backend_unavailable"),  # Milvus down: the request may succeed later
    (SnapshopError, 400, "bad_request"),
)


class APIError(Exception):
    """An error the API answers with its own status, code and message."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def status_code_name(status: int) -> str:
    """The error code of a plain HTTP status: its phrase in snake case ("Not Found" -> "not_found")."""
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error, expected or not, to the one JSON shape."""

    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def snapshop_error(_: Request, exc: SnapshopError) -> JSONResponse:
        status, code = next((status, code) for kind, status, code in SNAPSHOP_ERRORS if isinstance(exc, kind))
        return error_response(status, code, str(exc))

    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, status_code_name(exc.status_code), message,
                              dict(exc.headers) if exc.headers else None)

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
            problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal server error")

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(SnapshopError, snapshop_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
