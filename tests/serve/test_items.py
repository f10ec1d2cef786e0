"""Catalog writes over HTTP: POST /items and DELETE /items/{id}, each on a private copy of the index."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def writer(make_client, fresh_index):
    return make_client(fresh_index)


@pytest.fixture
def auth(admin_token) -> dict:
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture
def star_photos(draw_product) -> list[bytes]:
    """Two photos of a new product the catalog does not have: a blue dotted circle, large and small."""
    return [png_bytes(draw_product("circle", 1, scale=scale).rotate(45, fillcolor="white")) for scale in (0.7, 0.5)]


def search_ids(client, photo: bytes, **data) -> list[str]:
    response = client.post("/search", files={"image": ("q.png", photo, "image/png")}, data={"k": "12", **data})
    assert response.status_code == 200, response.text
    return [hit["item_id"] for hit in response.json()["results"]]


def test_add_an_item_then_find_it(writer, fresh_index, auth, star_photos):
    files = [("image", ("../../evil name.png", photo, "image/png")) for photo in star_photos]
    data = {"item_id": "new-1", "category": "circles", "title": "rotated circle", "price": "12.5",
            "url": "https://shop.example/new-1"}

    response = writer.post("/items", files=files, data=data, headers=auth)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] is True and body["images"] == 2
    assert body["item"] == {"item_id": "new-1", "category": "circles", "title": "rotated circle", "price": 12.5,
                            "url": "https://shop.example/new-1", "group": "new-1",
                            "images": ["/items/new-1/image", "/items/new-1/image?n=1"],
                            "main_image": body["item"]["main_image"]}
    assert body["item"]["main_image"] in body["item"]["images"]  # a URL, never a server path
    # Kept under the index by content hash, never by the client's file name.
    kept = sorted(path.name for path in (fresh_index / "uploads").iterdir())
    assert kept == sorted(f"{hashlib.sha256(photo).hexdigest()}.png" for photo in star_photos)
    assert not list(fresh_index.parent.glob("**/evil*"))
    assert writer.get("/items/new-1/image?n=1").content == star_photos[1]
    assert writer.get("/items/new-1").json() == body["item"]
    assert writer.get("/stats").json()["items"] == 13
    # Every search worker's engine sees the write.
    workers = set()
    for _ in range(20):
        answer = writer.post("/search", files={"image": ("q.png", star_photos[0], "image/png")}).json()
        assert answer["results"][0]["item_id"] == "new-1"
        workers.add(answer["batch"]["worker"])
        if len(workers) == 2:
            break
    assert workers == {0, 1}


def test_posting_an_item_again_replaces_it(writer, auth, star_photos):
    first = {"item_id": "circle-2", "category": "circles", "title": "new title"}
    response = writer.post("/items", files=[("image", ("a.png", star_photos[0], "image/png"))], data=first,
                           headers=auth)
    assert response.status_code == 201, response.text
    assert response.json()["created"] is False
    item = writer.get("/items/circle-2").json()
    assert item["title"] == "new title" and "price" not in item and len(item["images"]) == 1
    assert writer.get("/items/circle-2/image").content == star_photos[0]


def test_an_item_without_category_or_fields(writer, auth, star_photos):
    response = writer.post("/items", files={"image": ("a.png", star_photos[0], "image/png")},
                           data={"item_id": "plain"}, headers=auth)
    assert response.status_code == 201, response.text
    assert writer.get("/items/plain").json() == {"item_id": "plain", "category": None, "group": "plain",
                                                 "images": ["/items/plain/image"], "main_image": "/items/plain/image"}


def test_delete_an_item(writer, auth, shopper_jpeg, check_error):
    assert "square-2" in search_ids(writer, shopper_jpeg("square-2"))

    response = writer.delete("/items/square-2", headers=auth)

    assert response.status_code == 200 and response.json() == {"removed": ["square-2"]}
    for _ in range(4):  # on every search worker
        assert "square-2" not in search_ids(writer, shopper_jpeg("square-2"))
        assert "square-2" not in search_ids(writer, shopper_jpeg("square-2"), category="squares")
    check_error(writer.get("/items/square-2"), 404, "unknown_item")
    check_error(writer.get("/items/square-2/image"), 404, "unknown_item")
    check_error(writer.delete("/items/square-2", headers=auth), 404, "unknown_item")
    assert writer.get("/stats").json()["items"] == 11


def test_an_item_id_with_slashes_is_an_id_never_a_path(writer, auth, star_photos):
    item_id = "../../etc/passwd"
    response = writer.post("/items", files={"image": ("a.png", star_photos[1], "image/png")},
                           data={"item_id": item_id}, headers=auth)
    assert response.status_code == 201, response.text
    assert response.json()["item"]["images"] == ["/items/..%2F..%2Fetc%2Fpasswd/image"]
    image = writer.get("/items/..%2F..%2Fetc%2Fpasswd/image")
    assert image.status_code == 200 and image.content == star_photos[1]
    assert writer.get("/items/..%2F..%2Fetc%2Fpasswd").json()["item_id"] == item_id
    assert writer.delete("/items/..%2F..%2Fetc%2Fpasswd", headers=auth).json() == {"removed": [item_id]}


@pytest.mark.parametrize("data,needle", [
    ({"item_id": ""}, "item_id"),
    ({"item_id": "x" * 201}, "item_id"),
    ({"item_id": "ok", "price": "cheap"}, "price"),
    ({"item_id": "ok", "price": "-1"}, "price"),
    ({"item_id": "ok", "url": "javascript:alert(1)"}, "url"),
])
def test_bad_item_fields(writer, auth, star_photos, check_error, data, needle):
    message = check_error(writer.post("/items", files={"image": ("a.png", star_photos[0], "image/png")}, data=data,
                                      headers=auth), 422, "invalid_request")
    assert needle in message


def test_an_item_id_that_is_only_spaces(writer, auth, star_photos, check_error):
    check_error(writer.post("/items", files={"image": ("a.png", star_photos[0], "image/png")}, data={"item_id": "  "},
                            headers=auth), 400, "bad_item_id")


def test_an_item_without_images(writer, auth, check_error):
    assert "image" in check_error(writer.post("/items", data={"item_id": "x"}, headers=auth), 422, "invalid_request")


def test_one_bad_image_adds_nothing(writer, fresh_index, auth, star_photos, check_error):
    files = [("image", ("a.png", star_photos[0], "image/png")), ("image", ("b.png", b"not an image", "image/png"))]
    assert "not a readable image" in check_error(writer.post("/items", files=files, data={"item_id": "half"},
                                                             headers=auth), 400, "bad_image")
    check_error(writer.get("/items/half"), 404, "unknown_item")
    assert not (fresh_index / "uploads").exists()  # checked before anything was kept


def test_a_format_not_kept_for_catalogs(writer, auth, check_error):
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(out, format="PCX")
    message = check_error(writer.post("/items", files={"image": ("a.pcx", out.getvalue(), "image/x-pcx")},
                                      data={"item_id": "pcx"}, headers=auth), 400, "bad_image")
    assert "PCX" in message
