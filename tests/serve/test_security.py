"""Security and bad input: the admin token, upload limits, content sniffing, path traversal, no tracebacks."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from snapshop.settings import load_settings


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 8000) -> bytes:
    """A valid greyscale PNG of side x side black pixels: tens of kilobytes that decode to `side`² bytes."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def bad_uploads(shopper_jpeg) -> dict[str, tuple[bytes, str]]:
    """Uploads that are not usable photos, with the words their error must contain."""
    good = shopper_jpeg("circle-0")
    return {
        "zero-byte": (b"", "empty"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "text": (b"just some text, not a photo\n" * 20, "not a readable image"),
        "html": (b"<html><script>alert(1)</script></html>", "not a readable image"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "not a readable image"),
        "bomb": (bomb_png(), "over the limit"),
    }


@pytest.fixture(scope="module")
def small_limit(make_client, served_index):
    """A server that takes at most 100 kB per request."""
    return make_client(served_index, max_upload_bytes=100_000)


# --- the admin token ---------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="},
                                     {"Authorization": "Bearer "}, "prefix", "suffix"])
def test_writes_without_the_right_token_are_refused(client, served_index, admin_token, check_error, headers):
    if headers == "prefix":
        headers = {"Authorization": f"Bearer {admin_token[:-1]}"}
    elif headers == "suffix":
        headers = {"Authorization": f"Bearer {admin_token}x"}
    add = client.post("/items", files={"image": ("a.png", png_bytes(), "image/png")}, data={"item_id": "sneaky"},
                      headers=headers)
    check_error(add, 401, "unauthorized")
    assert add.headers["www-authenticate"] == "Bearer"
    check_error(client.delete("/items/circle-0", headers=headers), 401, "unauthorized")
    assert client.get("/items/circle-0").status_code == 200
    check_error(client.get("/items/sneaky"), 404)
    assert not (served_index / "uploads").exists()


def test_with_no_token_configured_writes_are_disabled(make_client, served_index, admin_token, check_error):
    closed = make_client(served_index, admin_token="")
    for headers in ({}, {"Authorization": f"Bearer {admin_token}"}, {"Authorization": "Bearer "}):
        check_error(closed.post("/items", files={"image": ("a.png", png_bytes(), "image/png")},
                                data={"item_id": "x"}, headers=headers), 403, "writes_disabled")
        check_error(closed.delete("/items/circle-0", headers=headers), 403, "writes_disabled")
    assert closed.get("/stats").json()["serve"]["writes_enabled"] is False


def test_search_needs_no_token(make_client, served_index, shopper_jpeg):
    closed = make_client(served_index, admin_token="")
    assert closed.post("/search", files={"image": ("a.jpg", shopper_jpeg("circle-0"), "image/jpeg")}).status_code == 200


def test_the_admin_token_is_never_shown():
    settings = load_settings(environ={"SNAPSHOP_ADMIN_TOKEN": "s3cret-value"})
    assert settings.admin_token == "s3cret-value"
    assert "s3cret-value" not in repr(settings) and "s3cret-value" not in str(settings)
    assert "'admin_token': '***'" in repr(settings)


# --- bad uploads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "text", "html", "svg", "bomb"])
def test_a_bad_photo_is_a_clear_400(client, bad_uploads, check_error, kind):
    data, needle = bad_uploads[kind]
    message = check_error(client.post("/search", files={"image": ("photo.jpg", data, "image/jpeg")}), 400, "bad_image")
    assert needle in message


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "text", "bomb"])
def test_a_bad_catalog_image_is_a_clear_400(client, served_index, bad_uploads, auth_header, check_error, kind):
    data, needle = bad_uploads[kind]
    response = client.post("/items", files={"image": ("a.png", data, "image/png")}, data={"item_id": f"bad-{kind}"},
                           headers=auth_header)
    assert needle in check_error(response, 400, "bad_image")
    check_error(client.get(f"/items/bad-{kind}"), 404, "unknown_item")


@pytest.fixture(scope="module")
def auth_header(admin_token) -> dict:
    return {"Authorization": f"Bearer {admin_token}"}


def test_a_huge_upload_is_refused_before_it_is_read(small_limit, check_error):
    data = png_bytes() + b"\x00" * 150_000
    message = check_error(small_limit.post("/search", files={"image": ("a.png", data, "image/png")}), 413)
    assert "100,000" in message


def test_a_huge_streamed_upload_is_refused(small_limit, check_error):
    """No Content-Length (chunked): the limit counts the bytes as they arrive."""
    def body():
        for _ in range(20):
            yield b"x" * 10_000

    response = small_limit.post("/search", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert "100,000" in check_error(response, 413)


def test_a_photo_under_the_limit_still_passes(small_limit):
    photo = {"image": ("a.png", png_bytes((200, 160)), "image/png")}
    assert small_limit.post("/search", files=photo).status_code == 200


def test_the_content_decides_not_the_name_or_header(client, shopper_jpeg, check_error):
    photo = shopper_jpeg("square-0")
    as_text = client.post("/search", files={"image": ("notes.txt", photo, "text/plain")}, data={"k": "1"})
    assert as_text.status_code == 200 and as_text.json()["results"][0]["item_id"] == "square-0"
    check_error(client.post("/search", files={"image": ("photo.jpg", b"MZ\x90\x00" * 100, "image/jpeg")}),
                400, "bad_image")


def test_the_server_keeps_serving_after_bad_input(client, bad_uploads, shopper_jpeg):
    for data, _ in bad_uploads.values():
        assert client.post("/search", files={"image": ("x.jpg", data, "image/jpeg")}).status_code == 400
    assert client.get("/health").json()["status"] == "ok"
    good = client.post("/search", files={"image": ("x.jpg", shopper_jpeg("triangle-0"), "image/jpeg")}, data={"k": "1"})
    assert good.status_code == 200 and good.json()["results"][0]["item_id"] == "triangle-0"


# --- paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/items/..%2F..%2F..%2Fetc%2Fpasswd/image",
    "/items/%2Fetc%2Fpasswd/image",
    "/items/circle-0%2F..%2F..%2Fmeta.sqlite/image",
    "/items/..%2Fmeta.sqlite",
    "/static/..%2F..%2Fsettings.py",
    "/static/%2e%2e/app.py",
    "/queries/",
    "/uploads/",
])
def test_no_path_reaches_a_file_the_index_does_not_reference(client, check_error, path):
    response = client.get(path)
    check_error(response, 404)
    assert b"root:" not in response.content and b"SQLite" not in response.content


def test_an_image_number_is_a_number(client, check_error):
    check_error(client.get("/items/circle-0/image", params={"n": "../../meta.sqlite"}), 422, "invalid_request")


# --- no tracebacks ------------------------------------------------------------------------------------


def test_an_unexpected_error_is_a_plain_500(make_client, served_index, shopper_jpeg, check_error, monkeypatch):
    broken = make_client(served_index, raise_server_exceptions=False)

    def explode(*args, **kwargs):
        raise RuntimeError("secret detail at /srv/secret/path")

    monkeypatch.setattr(broken.app.state.service.engine, "search", explode)
    response = broken.post("/search", files={"image": ("x.jpg", shopper_jpeg("circle-0"), "image/jpeg")})
    assert check_error(response, 500, "internal_error") == "internal server error"
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert broken.get("/health").status_code == 200
