"""The search page in a real browser: Debian chromium driven by Playwright, against a real uvicorn server.

Screenshots at phone and desktop sizes go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root, and quiet: without the background-networking flags chromium calls out on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
TIMEOUT_MS = 60_000


@dataclass
class LiveServer:
    url: str
    index: Path

    def clicks(self) -> list[dict]:
        log = self.index / "clicks.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, index_template, make_settings):
    """snapshop's app on uvicorn, on a free port of 127.0.0.1, in a thread."""
    import uvicorn

    from snapshop.serve import create_app

    index = tmp_path_factory.mktemp("page") / "index"
    shutil.copytree(index_template, index)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(index, make_settings()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield LiveServer(f"http://127.0.0.1:{port}", index)
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: scripts/install.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Visit:
    """One browser context on the page, with every request it made and every script error it hit."""

    page: object
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def visit(browser, live_server):
    """Open the page (desktop size unless given other context options); check it stayed on this server."""
    opened: list[tuple[object, Visit]] = []

    def open_page(**options) -> Visit:
        context = browser.new_context(**(options or DESKTOP))
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        seen = Visit(page)
        page.on("request", lambda request: seen.requests.append(request.url))
        page.on("pageerror", lambda error: seen.errors.append(str(error)))
        page.goto(live_server.url + "/")
        opened.append((context, seen))
        return seen

    yield open_page
    for context, seen in opened:
        context.close()
        outside = [url for url in seen.requests if not url.startswith((live_server.url + "/", "blob:", "data:"))]
        assert not outside, f"the page called out: {outside}"
        assert not seen.errors, f"script errors: {seen.errors}"


def photo_file(data: bytes, name: str = "shot.jpg", mime: str = "image/jpeg") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def searched(page, action) -> dict:
    """Run `action`, wait for the search it starts and for the page to show it; return the server's answer."""
    with page.expect_response(lambda response: response.url.endswith("/search")) as answer:
        action()
    page.wait_for_selector('#status:not([data-state="loading"])')
    return answer.value.json()


def shown_ids(page) -> list[str]:
    return page.eval_on_selector_all("#results .result", "items => items.map(item => item.dataset.itemId)")


def box_of(page, selector: str) -> list[int]:
    return [int(v) for v in page.get_attribute(selector, "data-box").split(",")]


def status(page) -> tuple[str, str]:
    return page.get_attribute("#status", "data-state"), page.inner_text("#status")


def test_upload_see_boxes_and_results_click_a_result_switch_category(visit, live_server, shopper_jpeg):
    page = visit().page
    page.wait_for_selector(".chip")  # the chips come from GET /stats, after the page has loaded
    assert page.locator(".chip").all_inner_texts() == ["Any category", "circles", "squares", "triangles"]

    searched(page, lambda: page.set_input_files("#file", photo_file(shopper_jpeg("square-1"))))

    assert status(page)[0] == "done"
    ids = shown_ids(page)
    assert ids[0] == "square-1" and 1 <= len(ids) <= 12
    first = page.locator("#results .result").first
    assert first.locator(".title").inner_text() == "stripes square"
    assert first.locator(".price").inner_text() == "11.00"
    assert re.match(r"score 0\.\d\d", first.locator(".score").inner_text())
    # The thumbnail loads after the results are drawn: decode() waits for it, and fails if it cannot load.
    assert first.locator("img").evaluate("image => image.decode().then(() => image.naturalWidth)") == 256
    # The detected box is drawn over the product (pasted at 150..340 x 70..260 of the 420x320 photo).
    assert page.locator(".box").count() >= 1 and page.locator(".box.active .handle").count() == 4
    photo = page.locator("#photo").bounding_box()
    drawn = page.locator(".box.active").bounding_box()
    scale = photo["width"] / 420
    assert abs(photo["height"] / 320 - scale) < 0.01
    centre = ((drawn["x"] - photo["x"] + drawn["width"] / 2) / scale,
              (drawn["y"] - photo["y"] + drawn["height"] / 2) / scale)
    assert 150 < centre[0] < 340 and 70 < centre[1] < 260
    assert page.get_attribute('.chip[data-category="squares"]', "class") == "chip predicted"
    # The details panel: per-stage timings.
    page.click("#timings summary")
    stages = page.locator("#timing-rows th").all_inner_texts()
    assert {"decode", "detect", "embed", "category", "search", "round trip"} <= set(stages)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-desktop.png"))

    # A click on a result opens it and is logged for training.
    before = len(live_server.clicks())
    first.locator(".open").click()
    assert page.locator("#item").is_visible() and page.inner_text("#item-title") == "stripes square"
    assert page.get_attribute("#item-link", "href") == "https://shop.example/square-1"
    deadline = time.monotonic() + 10
    while len(live_server.clicks()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    click = live_server.clicks()[-1]
    assert click["clicked"] == ["square-1"] and click["shown"] == ids
    assert click["box"] == box_of(page, ".box.active")
    assert (live_server.index / click["query_image"]).is_file()
    page.keyboard.press("Escape")
    assert not page.locator("#item").is_visible()

    # Another category: the same photo searched in triangles only.
    answer = searched(page, lambda: page.click('.chip[data-category="triangles"]'))
    assert answer["category"] == {"name": "triangles", "score": 1.0, "forced": True}
    assert shown_ids(page) and all(item.startswith("triangle-") for item in shown_ids(page))
    assert page.get_attribute('.chip[data-category="triangles"]', "aria-pressed") == "true"
    assert "in triangles" in status(page)[1]
    answer = searched(page, lambda: page.click('.chip[data-category=""]'))
    assert "forced" not in answer["category"] and shown_ids(page)[0] == "square-1"


def test_tap_draw_and_adjust_a_box(visit, shopper_jpeg):
    page = visit().page
    searched(page, lambda: page.set_input_files("#file", photo_file(shopper_jpeg("triangle-2"))))
    detected = box_of(page, ".box.active")
    photo = page.locator("#photo").bounding_box()
    scale = photo["width"] / 420

    def drag(start: tuple[float, float], end: tuple[float, float]) -> None:
        page.mouse.move(photo["x"] + start[0] * scale, photo["y"] + start[1] * scale)
        page.mouse.down()
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        page.mouse.move(photo["x"] + middle[0] * scale, photo["y"] + middle[1] * scale, steps=4)
        page.mouse.move(photo["x"] + end[0] * scale, photo["y"] + end[1] * scale, steps=4)
        page.mouse.up()

    # Draw a box by hand around the product: that box is searched.
    drawn = searched(page, lambda: drag((140, 60), (350, 270)))["boxes"][0]["box"]
    assert all(abs(a - b) <= 3 for a, b in zip(drawn, [140, 60, 350, 270])), drawn
    assert box_of(page, ".box.active") == drawn and shown_ids(page)[0] == "triangle-2"

    # Adjust it: drag its bottom-right corner in.
    handle = page.locator(".box.active .handle.se").bounding_box()
    corner = ((handle["x"] + handle["width"] / 2 - photo["x"]) / scale,
              (handle["y"] + handle["height"] / 2 - photo["y"]) / scale)
    adjusted = searched(page, lambda: drag(corner, (320, 250)))["boxes"][0]["box"]
    assert adjusted[:2] == drawn[:2] and all(abs(a - b) <= 3 for a, b in zip(adjusted[2:], [320, 250])), adjusted

    # Tap the detected box again: it is searched.
    answer = searched(page, lambda: page.click(f'.box[data-box="{",".join(map(str, detected))}"]'))
    assert answer["boxes"] == [{"box": detected, "score": 1.0}]
    assert box_of(page, ".box.active") == detected


def test_more_like_this(visit, shopper_jpeg):
    page = visit().page
    searched(page, lambda: page.set_input_files("#file", photo_file(shopper_jpeg("circle-0"))))
    second = shown_ids(page)[1]
    searched(page, lambda: page.locator("#results .result").nth(1).locator(".more").click())
    assert shown_ids(page)[0] == second
    assert page.get_attribute("#photo", "src").startswith("blob:")


def test_drop_and_paste_a_photo(visit, shopper_jpeg):
    page = visit().page
    for event in ("drop", "paste"):
        item = "square-0" if event == "drop" else "triangle-0"
        script = """([event, bytes]) => {
            const file = new File([new Uint8Array(bytes)], "shot.jpg", {type: "image/jpeg"});
            const data = new DataTransfer();
            data.items.add(file);
            const init = {bubbles: true, cancelable: true};
            const fired = event === "drop" ? new DragEvent("drop", {...init, dataTransfer: data})
                                           : new ClipboardEvent("paste", {...init, clipboardData: data});
            document.getElementById(event === "drop" ? "drop" : "results").dispatchEvent(fired);
        }"""
        searched(page, lambda: page.evaluate(script, [event, list(shopper_jpeg(item))]))
        assert shown_ids(page)[0] == item, event


def test_loading_error_and_no_match_states(visit, shopper_jpeg):
    page = visit().page
    # Loading: visible while the server works (held back here until checked).
    held = []
    page.route("**/search", lambda route: held.append(route))
    page.set_input_files("#file", photo_file(shopper_jpeg("circle-2")))
    page.wait_for_selector('#status[data-state="loading"]')
    assert page.locator("#status .spinner").is_visible() and "Searching" in status(page)[1]
    while not held:
        page.wait_for_timeout(20)
    held[0].continue_()
    page.unroute("**/search")
    page.wait_for_selector('#status[data-state="done"]')

    # An error: a file that is not a photo.
    searched(page, lambda: page.set_input_files("#file", photo_file(b"no photo here", "notes.txt", "text/plain")))
    state, text = status(page)
    assert state == "error" and "not a readable image" in text

    # No close match: when the engine says so ("match": "none"), the page says so and still shows the nearest.
    def no_match(route):
        answer = route.fetch()
        route.fulfill(response=answer, json={**answer.json(), "match": "none"})

    page.route("**/search", no_match)
    searched(page, lambda: page.set_input_files("#file", photo_file(shopper_jpeg("circle-2"))))
    state, text = status(page)
    assert state == "nomatch" and "No close match" in text
    assert shown_ids(page) and "weak" in page.get_attribute("#results", "class")


def test_phone_screen(visit, live_server, shopper_jpeg):
    page = visit(**PHONE).page
    assert page.get_attribute("#camera", "capture") == "environment"
    assert page.get_attribute("#camera", "accept") == "image/*"
    searched(page, lambda: page.set_input_files("#camera", photo_file(shopper_jpeg("circle-0"))))
    assert shown_ids(page)[0] == "circle-0"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    cards = page.locator("#results .result")
    first, second = cards.first.bounding_box(), cards.nth(1).bounding_box()
    assert first["width"] >= 140 and second["y"] == first["y"]  # two columns
    photo = page.locator("#photo").bounding_box()
    assert photo["width"] <= 390 and photo["height"] <= 0.5 * 844
    before = len(live_server.clicks())
    cards.first.locator(".open").tap()
    assert page.locator("#item").is_visible()
    deadline = time.monotonic() + 10
    while len(live_server.clicks()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_server.clicks()[-1]["clicked"] == ["circle-0"]
    page.keyboard.press("Escape")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-phone.png"), full_page=True)


def test_api_docs_load_without_a_cdn(visit, live_server):
    page = visit().page
    page.goto(live_server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    assert page.locator(".opblock-summary-path", has_text="/search").count() >= 1
