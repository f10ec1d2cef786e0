"""From clicks to a new model version and back: `snapshop train`, `model list`, `model use`.

One real training (EfficientNet-Lite0 + head exported to ONNX, the catalog embedded again)
is shared by the module; every test that changes versions works on a copy of its index.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from snapshop.cli import app
from snapshop.index.folder import IndexFolder
from snapshop.learn.loop import use_version
from snapshop.search.engine import Engine
from snapshop.search.results import Query, SearchResult

pytestmark = pytest.mark.timeout(1800)  # the training alone takes ~2 CPU minutes, far longer on a busy machine
runner = CliRunner()
PHOTO_STYLES = (  # (side, top-left corner, background) of the shopper photos
    dict(side=190, at=(150, 70), background=(225, 222, 215)),
    dict(side=160, at=(30, 120), background=(200, 215, 225)),
)
UNSEEN_STYLE = dict(side=175, at=(200, 40), background=(215, 225, 205))  # photos not in the click log


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code 1 and one line on stderr naming every needle."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, lines
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


def listed_versions(index: Path) -> list[dict]:
    result = invoke("model", "list", "--index", index, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def search_one(engine: Engine, photo: Path, k: int = 5) -> SearchResult:
    result, = engine.search([Query(photo.name, photo)], k=k)
    assert result.error is None, result.error
    return result


def top_hits_right(engine: Engine, photos: dict[str, Path]) -> int:
    """How many photos have their own item as the first result."""
    return sum(search_one(engine, photo).results[0].item_id == item_id for item_id, photo in photos.items())


def assert_consistent(result: SearchResult, photo: Path, item_ids: list[str]) -> None:
    """A whole answer: results of indexed items, boxes inside the photo."""
    width, height = Image.open(photo).size
    assert result.results and all(hit.item_id in item_ids for hit in result.results)
    assert result.boxes and all(0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height
                                for box in result.boxes)


@dataclass
class Trained:
    """The index after `snapshop train --switch always`, and what was around it."""

    index: Path
    old_version: str
    new_version: str
    output: str
    early: Engine  # opened and used before the training
    unseen: dict[str, Path]  # a shopper photo of each item that the log does not hold


def shopper_photos(catalog, draw_shopper_photo, folder: Path, style: dict, suffix: str) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    photos = {}
    for item_id in catalog.item_ids:
        photos[item_id] = folder / f"{item_id}-{suffix}.png"
        draw_shopper_photo(Image.open(catalog.image(item_id)), **style).save(photos[item_id])
    return photos


def write_click_log(path: Path, photos: list[tuple[str, Path]], item_ids: list[str]) -> None:
    """Every photo's shopper clicks its item (long stay), shown at rank 0-2; four also open a
    wrong item and come straight back (to be filtered out)."""
    lines = []
    for number, (item_id, photo) in enumerate(photos):
        others = [other for other in item_ids if other != item_id]
        shown = others[: number % 3] + [item_id] + others[number % 3 :]
        relative = str(photo.relative_to(path.parent))
        lines.append({"query_image": relative, "shown": shown, "clicked": [item_id], "dwell_ms": {item_id: 30_000}})
        if number % 6 == 0:
            lines.append({"query_image": relative, "shown": shown, "clicked": [others[0]], "dwell_ms": {others[0]: 1_500}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, index_template, catalog, settings, draw_shopper_photo):
    root = tmp_path_factory.mktemp("trained")
    index = root / "index"
    shutil.copytree(index_template, index)
    photos = [(item_id, path) for number, style in enumerate(PHOTO_STYLES)
              for item_id, path in shopper_photos(catalog, draw_shopper_photo, root / "shots", style, str(number)).items()]
    write_click_log(root / "clicks.jsonl", photos, catalog.item_ids)
    unseen = shopper_photos(catalog, draw_shopper_photo, root / "unseen", UNSEEN_STYLE, "unseen")
    (old_version, _), = IndexFolder(index).versions()
    early = Engine.open(index, settings)
    search_one(early, unseen["square-1"])

    with pytest.MonkeyPatch.context() as patch:  # what the autouse `_isolated` does for each test
        patch.chdir(root)
        for name in [name for name in os.environ if name.startswith("SNAPSHOP_") and name != "SNAPSHOP_CACHE"]:
            patch.delenv(name)
        result = invoke("train", root / "clicks.jsonl", "--index", index, "--epochs", 2, "--switch", "always")

    assert result.exit_code == 0, (result.output, result.exception)
    new_version = next(version for version, _ in IndexFolder(index).versions() if version != old_version)
    yield Trained(index, old_version, new_version, result.stdout, early, unseen)
    early.close()


@pytest.fixture
def trained_copy(trained, tmp_path) -> Path:
    """A private copy of the trained index, for tests that switch versions or write."""
    path = tmp_path / "index"
    shutil.copytree(trained.index, path)
    return path


def test_train_reports_the_new_active_version(trained):
    assert "trained on" in trained.output and "recall@1" in trained.output
    assert f"model version {trained.new_version}: now active" in trained.output


def test_model_list_shows_both_versions_with_the_new_one_active(trained):
    old, new = listed_versions(trained.index)

    assert (old["version"], new["version"]) == (trained.old_version, trained.new_version)
    assert (old["active"], new["active"]) == (False, True)
    assert old["training"] is None and new["model"] == "efficientnet-lite0+clicks"
    training = new["training"]
    assert training["triplets"] + training["held_out_triplets"] == 2 * 12  # the four wrong clicks were filtered
    assert training["trained_from"] == trained.old_version and training["simulated_log"] is False
    assert [epoch["epoch"] for epoch in training["history"]] == [1, 2]
    assert 0.0 <= training["recall@1"] <= 1.0 or training["held_out_triplets"] == 0


def test_the_trained_model_file_builds_a_new_index(trained, catalog, settings, tmp_path):
    model_file = trained.index / f"trained-{trained.new_version}.onnx"
    assert model_file.is_file()

    result = invoke("add", catalog.manifest, "--index", tmp_path / "new", "--model", model_file)

    assert result.exit_code == 0, (result.output, result.exception)
    assert "added 12 items" in result.stdout
    engine = Engine.open(tmp_path / "new", settings)
    assert engine.manifest.model_version == trained.new_version
    assert top_hits_right(engine, trained.unseen) >= 10
    engine.close()


def test_the_new_version_finds_shopper_photos_it_was_not_trained_on(trained, settings):
    engine = Engine.open(trained.index, settings)
    assert engine.manifest.model_version == trained.new_version
    assert top_hits_right(engine, trained.unseen) >= 10
    engine.close()


def test_an_engine_opened_before_the_switch_moves_to_the_new_version(trained, catalog):
    photo = trained.unseen["triangle-1"]
    assert trained.early.manifest.model_version == trained.old_version

    result = search_one(trained.early, photo)

    assert trained.early.manifest.model_version == trained.new_version
    assert_consistent(result, photo, catalog.item_ids)
    assert "triangle-1" in [hit.item_id for hit in result.results[:3]]


def diamond(size: int = 256) -> Image.Image:
    """A product unlike the catalog's: a purple diamond with a yellow rim."""
    image = Image.new("RGB", (size, size), "white")
    corners = [(size / 2, 30), (size - 30, size / 2), (size / 2, size - 30), (30, size / 2)]
    ImageDraw.Draw(image).polygon(corners, fill=(120, 40, 150), outline=(240, 200, 30), width=10)
    return image


def test_rolling_back_brings_the_old_version_up_to_date(trained_copy, trained, settings, tmp_path, draw_shopper_photo):
    diamond().save(tmp_path / "diamond.png")
    (tmp_path / "more.jsonl").write_text(json.dumps({"item_id": "diamond-9", "image": "diamond.png",
                                                     "category": "squares", "title": "purple diamond"}) + "\n")
    assert invoke("add", tmp_path / "more.jsonl", "--index", trained_copy).exit_code == 0
    assert invoke("remove", "triangle-3", "--index", trained_copy).exit_code == 0

    result = invoke("model", "use", trained.old_version, "--index", trained_copy)

    assert result.exit_code == 0, (result.output, result.exception)
    assert "1 items embedded again, 1 removed" in result.stdout
    assert [entry["active"] for entry in listed_versions(trained_copy)] == [True, False]
    engine = Engine.open(trained_copy, settings)
    assert engine.manifest.model_version == trained.old_version
    assert engine.item("diamond-9") is not None and engine.item("triangle-3") is None
    photo = tmp_path / "diamond-shot.png"
    draw_shopper_photo(diamond()).save(photo)
    assert search_one(engine, photo).results[0].item_id == "diamond-9"
    hits = search_one(engine, trained.unseen["triangle-3"], k=20).results
    engine.close()
    assert hits and "triangle-3" not in {hit.item_id for hit in hits}


def test_using_an_unknown_version_names_the_known_ones(trained):
    line = assert_one_line_error(invoke("model", "use", "NOPE", "--index", trained.index),
                                 "NOPE", trained.old_version, trained.new_version)
    assert line.startswith("error:")
    assert listed_versions(trained.index)[1]["active"]


@pytest.mark.parametrize("clicks", [
    [{"query_image": "q.png", "shown": ["circle-0", "square-1"], "clicked": []}],
    [{"query_image": "q.png", "shown": ["circle-0", "ghost"], "clicked": ["ghost"]}, "not json"],
])
def test_training_on_a_log_without_a_usable_click_is_a_user_error(fresh_index, tmp_path, clicks):
    log = tmp_path / "clicks.jsonl"
    log.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in clicks))

    assert_one_line_error(invoke("train", log, "--index", fresh_index, "--epochs", 1), "no usable click", str(log))
    assert not (fresh_index / "versions").exists()


def test_searches_during_switches_see_one_whole_version(trained_copy, trained, catalog, make_settings):
    engine = Engine.open(trained_copy, make_settings())
    photo = trained.unseen["square-2"]
    switched = threading.Event()
    failures: list[BaseException] = []

    def switch_back_and_forth() -> None:
        try:
            for version in (trained.old_version, trained.new_version):
                use_version(make_settings(index=trained_copy), version)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)
        finally:
            switched.set()

    switcher = threading.Thread(target=switch_back_and_forth)
    switcher.start()
    answers = []
    deadline = time.monotonic() + 150
    while not answers or (not switched.is_set() and time.monotonic() < deadline):
        answers.append((search_one(engine, photo), engine.manifest.model_version))
    switcher.join(timeout=30)

    assert switched.is_set() and not failures, failures
    assert answers
    for result, version in answers:
        assert_consistent(result, photo, catalog.item_ids)
        assert version in (trained.old_version, trained.new_version)
    search_one(engine, photo)
    assert engine.manifest.model_version == trained.new_version
    engine.close()
