"""The HTTP API, route by route, over a copy of the tiny synthetic index (in-process client)."""

from __future__ import annotations

import gc
import json
import re
import threading

import pytest

STAGES = {"decode", "category", "detect", "embed", "search", "curate"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def upload(data: bytes, name: str = "photo.jpg", kind: str = "image/jpeg") -> dict:
    return {"image": (name, data, kind)}


def last_click(index) -> dict:
    return json.loads((index / "clicks.jsonl").read_text(encoding="utf-8").splitlines()[-1])


# --- POST /search ---------------------------------------------------------------------------------


def test_search_finds_the_product_in_a_shopper_photo(client, served_index, shopper_jpeg):
    response = client.post("/search", files=upload(shopper_jpeg("square-1")), data={"k": "4"})

    assert response.status_code == 200, response.text
    body = response.json()
    # DESIGN.md's search object ...
    assert {"query", "category", "boxes", "results", "timing_ms"} <= set(body)
    assert body["category"]["name"] == "squares" and 0 <= body["category"]["score"] <= 1
    assert set(body["timing_ms"]) == STAGES
    hits = body["results"]
    assert len(hits) == 4 and hits[0]["item_id"] == "square-1"
    assert len({hit["item_id"] for hit in hits}) == 4
    assert hits[0]["title"] == "stripes square" and hits[0]["price"] == 11
    box = body["boxes"][0]["box"]
    assert box[0] < 245 < box[2] and box[1] < 165 < box[3]  # on the pasted product
    # ... with images as URLs, never server paths ...
    assert [hit["image"] for hit in hits] == [f"/items/{hit['item_id']}/image" for hit in hits]
    assert str(served_index) not in response.text
    # ... and the kept photo, for the click log.
    assert HEX64.match(body["query_id"])
    assert body["query_image"] == body["query"] == f"queries/{body['query_id']}.jpg"
    assert (served_index / body["query_image"]).is_file()
    assert body["image_size"] == [420, 320]
    assert body["batch"]["size"] >= 1 and body["batch"]["queued_ms"] >= 0


def test_the_same_photo_gives_the_same_query_id(client, shopper_jpeg):
    first, second = (client.post("/search", files=upload(shopper_jpeg("circle-2"))).json() for _ in range(2))
    assert first["query_id"] == second["query_id"]
    assert [hit["item_id"] for hit in first["results"]] == [hit["item_id"] for hit in second["results"]]


def test_search_a_given_box(client, shopper_jpeg):
    response = client.post("/search", files=upload(shopper_jpeg("triangle-2")),
                           data={"box": "150,70,340,260", "k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["boxes"] == [{"box": [150, 70, 340, 260], "score": 1.0}]
    assert body["results"][0]["item_id"] == "triangle-2"


def test_search_a_forced_category(client, shopper_jpeg):
    body = client.post("/search", files=upload(shopper_jpeg("circle-1")),
                       data={"category": "squares", "k": "10"}).json()
    assert body["category"] == {"name": "squares", "score": 1.0, "forced": True}
    assert {hit["category"] for hit in body["results"]} == {"squares"} and len(body["results"]) == 4


def test_an_empty_category_means_the_predicted_one(client, shopper_jpeg):
    body = client.post("/search", files=upload(shopper_jpeg("circle-1")), data={"category": ""}).json()
    assert body["category"]["name"] == "circles" and "forced" not in body["category"]


def test_search_an_unknown_category(client, shopper_jpeg, check_error):
    message = check_error(client.post("/search", files=upload(shopper_jpeg("circle-1")), data={"category": "hats"}),
                          400, "bad_request")
    assert "hats" in message and "circles" in message


def test_search_one_colour(client, shopper_jpeg, check_error):
    every = client.post("/search", files=upload(shopper_jpeg("circle-1")), data={"k": "12"}).json()["results"]
    colour = every[0]["colours"][0]["name"]
    kept = client.post("/search", files=upload(shopper_jpeg("circle-1")), data={"k": "12", "colour": colour}).json()
    assert kept["results"] and len(kept["results"]) < len(every)
    assert all(colour in {c["name"] for c in hit["colours"]} for hit in kept["results"])
    assert "known colours" in check_error(
        client.post("/search", files=upload(shopper_jpeg("circle-1")), data={"colour": "octarine"}), 400, "bad_request")


@pytest.mark.parametrize("k", ["0", "101", "many"])
def test_search_a_bad_k(client, shopper_jpeg, check_error, k):
    assert "k" in check_error(client.post("/search", files=upload(shopper_jpeg("circle-1")), data={"k": k}),
                              422, "invalid_request")


@pytest.mark.parametrize("box", ["1,2,3", "a,b,c,d", "10,10,5,5", "0,0,500,100", "-1,0,10,10", "nan,0,1,1",
                                 "inf,0,9,9"])
def test_search_a_bad_box(client, shopper_jpeg, check_error, box):
    check_error(client.post("/search", files=upload(shopper_jpeg("circle-1")), data={"box": box}), 400, "bad_box")


def test_search_without_a_photo(client, check_error):
    assert "image" in check_error(client.post("/search", data={"k": "3"}), 422, "invalid_request")


def test_concurrent_searches_share_a_batch(make_client, served_index, shopper_jpeg):
    """Requests that arrive together are answered by one Engine.search call each batch."""
    batched = make_client(served_index, batch_wait_ms=400, max_batch=8, search_workers=1)
    photos = {item: shopper_jpeg(item) for item in ("circle-0", "square-0", "triangle-0", "circle-2", "triangle-2")}
    answers: dict[str, dict] = {}

    def search(item: str) -> None:
        answers[item] = batched.post("/search", files=upload(photos[item]), data={"k": "3"}).json()

    threads = [threading.Thread(target=search, args=(item,)) for item in photos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {item: answer["results"][0]["item_id"] for item, answer in answers.items()} == {i: i for i in photos}
    assert max(answer["batch"]["size"] for answer in answers.values()) >= 2
    serve = batched.get("/stats").json()["serve"]
    assert serve["searches"] == 5 and serve["batches"] < 5 and serve["largest_batch"] >= 2 and serve["workers"] == 1


def test_requests_with_other_parameters_are_searched_apart(make_client, served_index, shopper_jpeg):
    batched = make_client(served_index, batch_wait_ms=400, max_batch=8, search_workers=1)
    answers: dict[str, dict] = {}

    def search(name: str, data: dict) -> None:
        answers[name] = batched.post("/search", files=upload(shopper_jpeg("circle-0")), data=data).json()

    threads = [threading.Thread(target=search, args=args) for args in
               (("any", {"k": "2"}), ("squares", {"k": "2", "category": "squares"}), ("three", {"k": "3"}))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers["any"]["results"][0]["item_id"] == "circle-0" and len(answers["any"]["results"]) == 2
    assert {hit["category"] for hit in answers["squares"]["results"]} == {"squares"}
    assert len(answers["three"]["results"]) == 3


# --- GET /items/{id} and its image ------------------------------------------------------------------


def test_get_an_item(client):
    response = client.get("/items/circle-0")
    assert response.status_code == 200
    assert response.json() == {"item_id": "circle-0", "category": "circles", "title": "solid circle", "price": 10,
                               "url": "https://shop.example/circle-0", "group": "circle-0",
                               "images": ["/items/circle-0/image", "/items/circle-0/image?n=1"],
                               "main_image": "/items/circle-0/image"}


def test_get_an_unknown_item(client, check_error):
    assert "nope" in check_error(client.get("/items/nope"), 404, "unknown_item")


def test_get_an_items_images(client, catalog):
    main = client.get("/items/circle-0/image")
    assert main.status_code == 200 and main.headers["content-type"] == "image/png"
    assert main.content == catalog.images["circle-0"][0].read_bytes()
    assert main.headers["x-content-type-options"] == "nosniff"
    second = client.get("/items/circle-0/image", params={"n": 1})
    assert second.content == catalog.images["circle-0"][1].read_bytes()


def test_result_links_serve_the_result_images(client, catalog, shopper_jpeg):
    hit = client.post("/search", files=upload(shopper_jpeg("square-3")), data={"k": "1"}).json()["results"][0]
    assert client.get(hit["image"]).content == catalog.image("square-3").read_bytes()


def test_a_result_links_the_image_that_matched(client, catalog):
    back = catalog.images["circle-0"][1]
    hit = client.post("/search", files=upload(back.read_bytes(), "back.png", "image/png"), data={"k": "1"}).json()["results"][0]
    assert hit["item_id"] == "circle-0" and client.get(hit["image"]).content == back.read_bytes()


def test_get_an_image_that_does_not_exist(client, check_error):
    check_error(client.get("/items/circle-0/image", params={"n": 2}), 404, "unknown_image")
    check_error(client.get("/items/nope/image"), 404, "unknown_item")
    check_error(client.get("/items/circle-0/image", params={"n": -1}), 422, "invalid_request")


# --- POST /clicks ---------------------------------------------------------------------------------


def test_a_click_is_appended_to_the_click_log(client, served_index, shopper_jpeg):
    body = client.post("/search", files=upload(shopper_jpeg("triangle-3")), data={"k": "5"}).json()
    shown = [hit["item_id"] for hit in body["results"]]
    click = {"query_id": body["query_id"], "box": body["boxes"][0]["box"], "shown": shown, "clicked": [shown[1]]}

    response = client.post("/clicks", json=click)

    assert response.status_code == 201, response.text
    line = last_click(served_index)
    assert response.json() == line
    assert list(line) == ["ts", "query_image", "box", "shown", "clicked"]  # DESIGN.md's click-log format
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", line["ts"])
    assert line["query_image"] == body["query_image"] and (served_index / line["query_image"]).is_file()
    assert (line["box"], line["shown"], line["clicked"]) == (click["box"], shown, [shown[1]])


def test_clicks_go_to_the_click_log_setting(make_client, served_index, shopper_jpeg, tmp_path):
    log = tmp_path / "logs" / "clicks.jsonl"
    other = make_client(served_index, click_log=str(log))
    body = other.post("/search", files=upload(shopper_jpeg("circle-0")), data={"k": "2"}).json()
    shown = [hit["item_id"] for hit in body["results"]]
    assert other.post("/clicks", json={"query_id": body["query_id"], "box": None, "shown": shown,
                                       "clicked": shown[:1]}).status_code == 201
    line = json.loads(log.read_text().splitlines()[-1])
    # Outside the log's folder: an absolute path.
    assert line["query_image"] == str(served_index.resolve() / body["query_image"])
    assert line["box"] is None


def test_a_click_on_an_item_that_was_not_shown(client, shopper_jpeg, check_error):
    body = client.post("/search", files=upload(shopper_jpeg("circle-0")), data={"k": "2"}).json()
    click = {"query_id": body["query_id"], "box": None, "shown": ["circle-0", "circle-1"], "clicked": ["square-0"]}
    assert "square-0" in check_error(client.post("/clicks", json=click), 400, "bad_click")


def test_a_click_for_a_photo_never_searched(client, check_error):
    click = {"query_id": "0" * 64, "box": None, "shown": ["circle-0"], "clicked": ["circle-0"]}
    check_error(client.post("/clicks", json=click), 404, "unknown_query")


@pytest.mark.parametrize("change", [{"query_id": "../../etc/passwd"}, {"shown": []}, {"clicked": []},
                                    {"box": [1, 2, 3]}, {"box": [-1, 0, 5, 5]}, {"shown": "circle-0"}])
def test_malformed_clicks(client, check_error, change):
    click = {"query_id": "a" * 64, "box": None, "shown": ["circle-0"], "clicked": ["circle-0"], **change}
    check_error(client.post("/clicks", json=click), 422, "invalid_request")


def test_a_click_that_is_not_json(client, check_error):
    check_error(client.post("/clicks", content=b"{not json", headers={"content-type": "application/json"}),
                422, "invalid_request")


# --- GET /health, GET /stats, docs ------------------------------------------------------------------


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_stats(client, served_index):
    response = client.get("/stats")
    assert response.status_code == 200
    stats = response.json()
    assert stats["items"] == 12 and stats["images"] == 13
    assert stats["categories"] == ["circles", "squares", "triangles"]
    assert stats["serve"]["writes_enabled"] is True and stats["serve"]["searches"] >= 0
    assert "index" not in stats and str(served_index) not in response.text


def test_openapi_docs_are_served_without_a_cdn(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    scripts = re.findall(r'src="([^"]+)"', docs.text) + re.findall(r'href="([^"]+\.css)"', docs.text)
    assert scripts and all(url.startswith("/") for url in scripts)
    assert all(client.get(url).status_code == 200 for url in scripts)
    paths = client.get("/openapi.json").json()["paths"]
    routes = {"/search", "/items", "/items/{item_id}", "/items/{item_id}/image", "/clicks", "/health", "/stats"}
    assert routes <= set(paths)


def test_unknown_routes_and_methods(client, check_error):
    check_error(client.get("/nope"), 404, "not_found")
    check_error(client.put("/search"), 405, "method_not_allowed")


def test_what_start_up_made_is_out_of_the_garbage_collectors_reach(client):
    """A full collection over the start-up objects would stall the query that set it off."""
    client.get("/health")
    assert gc.get_freeze_count() > 10_000


# --- the page ---------------------------------------------------------------------------------------


def test_the_page_and_its_assets_come_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert {"static/app.js", "static/app.css"} <= set(assets)
    for asset in assets:
        assert client.get(f"/{asset}").status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
