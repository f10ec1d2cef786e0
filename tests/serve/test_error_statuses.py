"""What each kind of snapshop error answers over HTTP."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from snapshop.errors import BackendError, ImageError, IndexError_, SnapshopError
from snapshop.serve.errors import install_error_handlers


@pytest.mark.parametrize(("error", "status", "code"), [
    (BackendError("Milvus at http://127.0.0.1:19530: failed to connect"), 503, "backend_unavailable"),
    (ImageError("not an image"), 400, "bad_image"),
    (IndexError_("the index is locked"), 409, "index_unavailable"),
    (SnapshopError("something else"), 400, "bad_request"),
])
def test_each_error_kind_has_its_status(error, status, code, check_error):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fails")
    def fails():
        raise error

    message = check_error(TestClient(app).get("/fails"), status, code)
    assert message == str(error)
