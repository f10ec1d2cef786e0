"""Fixtures for the HTTP API and the page: apps over copies of the session index, photos as upload bytes."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest
from PIL import Image

TOKEN = "test-admin-token-0123456789"


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="session")
def shopper_jpeg(catalog, draw_shopper_photo) -> Callable[[str], bytes]:
    """A JPEG "shopper photo" of a catalog item: the product pasted off-centre on a 420x320 background."""

    def make(item_id: str) -> bytes:
        with Image.open(catalog.image(item_id)) as product:
            return jpeg_bytes(draw_shopper_photo(product.convert("RGB")))

    return make


@pytest.fixture(scope="module")
def served_index(tmp_path_factory, index_template) -> Path:
    """A copy of the session index per test module: searches keep photos and clicks in it."""
    path = tmp_path_factory.mktemp("served") / "index"
    shutil.copytree(index_template, path)
    return path


@pytest.fixture(scope="module")
def make_client(make_settings) -> Iterator[Callable]:
    """Start TestClients over an index (closed, with their apps, at the end of the module)."""
    from fastapi.testclient import TestClient

    from snapshop.serve import create_app

    opened = []

    def make(index: Path, *, raise_server_exceptions: bool = True, **overrides) -> TestClient:
        settings = make_settings(**{"admin_token": TOKEN, **overrides})
        client = TestClient(create_app(index, settings), raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(make_client, served_index):
    """The API over the module's index copy, admin token TOKEN."""
    return make_client(served_index)


@pytest.fixture(scope="session")
def admin_token() -> str:
    return TOKEN


@pytest.fixture(scope="session")
def check_error() -> Callable[..., str]:
    return _check_error


def _check_error(response, status: int, code: str | None = None) -> str:
    """The one JSON error shape, with no traceback; returns the message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]["message"]
