"""The engine on the live index: writes visible without a reopen, across processes, background
compaction, shards and replicas through the whole pipeline."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from snapshop.catalog.manifest import read_catalog
from snapshop.errors import IndexError_
from snapshop.search.engine import Engine
from snapshop.search.results import Query


def manifest(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return read_catalog(path)


def found(engine: Engine, image, k: int = 12) -> list[str]:
    return [hit.item_id for hit in engine.search([Query("q", image)], k=k)[0].results]


@pytest.fixture
def pair(fresh_index, settings):
    """A writer and a reader on one index folder, as two processes would hold it."""
    writer, reader = Engine.open_or_create(fresh_index, settings), Engine.open(fresh_index, settings)
    yield writer, reader
    writer.close()
    reader.close()


def test_another_engine_sees_adds_and_removes_on_its_next_search(pair, catalog, draw_product, tmp_path):
    writer, reader = pair
    assert "circle-1" in found(reader, catalog.image("circle-1"))
    image = tmp_path / "new.png"
    draw_product("circle", 3, scale=0.5).save(image)
    writer.add(manifest(tmp_path / "new.jsonl", [{"item_id": "new-circle", "image": str(image), "category": "circles"}]))
    writer.remove(["circle-1"])
    assert found(reader, image)[0] == "new-circle"  # no reopen, no rebuild
    assert "circle-1" not in found(reader, catalog.image("circle-1"))
    assert reader.stats()["items"] == 12


def test_a_write_from_another_engine_is_refused_while_one_writes(pair, catalog):
    writer, reader = pair
    with writer.folder.write_lock():
        with pytest.raises(IndexError_, match="another process is writing"):
            reader.remove(["circle-1"])
    assert reader.item("circle-1") is not None


def test_background_compaction_runs_when_a_delta_outgrows_its_threshold(fresh_index, make_settings, catalog, draw_product, tmp_path):
    engine = Engine.open_or_create(fresh_index, make_settings(compact_delta=2))
    rows = []
    for n in range(3):
        path = tmp_path / f"sq{n}.png"
        draw_product("square", n, scale=0.4 + 0.1 * n).save(path)
        rows.append({"item_id": f"sq{n}", "image": str(path), "category": "squares"})
    engine.add(manifest(tmp_path / "more.jsonl", rows))
    engine.close()  # waits for the background compaction
    reopened = Engine.open(fresh_index, make_settings())
    squares = [seg for seg in reopened.stats()["segments"] if seg["partition"] == "squares"]
    assert squares and all(seg["delta_images"] == 0 and seg["base_images"] == 7 for seg in squares)
    assert found(reopened, tmp_path / "sq2.png")[0] == "sq2"
    reopened.close()


def test_searches_keep_answering_while_the_index_compacts(fresh_index, settings, catalog):
    engine = Engine.open(fresh_index, settings)
    query = [Query("q", catalog.image("triangle-3"))]
    expected = [hit.item_id for hit in engine.search(query, k=5)[0].results]
    answers, stop = [], threading.Event()

    def search() -> None:
        while not stop.is_set():
            answers.append([hit.item_id for hit in engine.search(query, k=5)[0].results])

    thread = threading.Thread(target=search)
    thread.start()
    for _ in range(3):
        engine.compact()
    stop.set()
    thread.join()
    engine.close()
    assert answers and all(answer == expected for answer in answers)


@pytest.mark.parametrize("shards,replicas", [(3, 1), (2, 2)])
def test_shards_and_replicas_give_the_same_answers_as_one_shard(fresh_index, make_settings, catalog, tmp_path, shards, replicas):
    single = Engine.open(fresh_index, make_settings())
    queries = [Query(item, catalog.image(item)) for item in catalog.item_ids]
    expected = [[(hit.item_id, round(hit.score, 4)) for hit in result.results] for result in single.search(queries, k=8)]
    single.close()
    copy = tmp_path / "sharded"
    shutil.copytree(fresh_index, copy)
    sharded = Engine.open(copy, make_settings(shards=shards, replicas=replicas))
    sharded.compact()  # re-shards the segments on disk
    assert {seg["shard"] for seg in sharded.stats()["segments"]} == set(range(shards))
    answers = [[(hit.item_id, round(hit.score, 4)) for hit in result.results] for result in sharded.search(queries, k=8)]
    sharded.close()
    assert answers == expected
