"""A Milvus node that fails: every acknowledged write is still there when it comes back.

Standalone Milvus is one node holding every role, so killing it (SIGKILL, no flush) is the
failure of the query node, the data node and the coordinators at once. Milvus promises that
what it acknowledged survives (its write-ahead log and object storage are on disk); snapshop
promises that what it acknowledged (committed to the index's database) reaches Milvus once
it is back, and that a deleted item is never returned in between.
"""

from __future__ import annotations

import json
import time

import pytest

from snapshop.catalog.manifest import read_catalog
from snapshop.errors import BackendError
from snapshop.search.engine import Engine
from snapshop.search.results import Query

pytest.importorskip("pymilvus", reason="the milvus backend tests need the cluster extra: pip install -e '.[cluster]'")

pytestmark = pytest.mark.milvus

DOWN_ERROR_WITHIN = 15.0  # seconds a search may take to report an unreachable server (timeout 5 s)
BACK_WITHIN = 90.0  # seconds a restarted server may take to load its collection again and answer


def top_item(engine: Engine, image) -> str:
    return engine.search([Query("q", image)], k=3)[0].results[0].item_id


def top_item_once_back(engine: Engine, image) -> str:
    """`top_item` once the restarted server answers: healthy comes before its collection is
    loaded again, and a search until then fails with a clear BackendError (a deadline)."""
    deadline = time.monotonic() + BACK_WITHIN
    while True:
        try:
            return top_item(engine, image)
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def stored_items(engine: Engine, item_ids: list[str]) -> list[str]:
    """The item ids Milvus itself holds among these (a Strong read, straight from the collection)."""
    quoted = ", ".join(json.dumps(i) for i in item_ids)
    rows = engine.index.collection.query(f"item_id in [{quoted}]", output_fields=["item_id"], consistency_level="Strong")
    return sorted(row["item_id"] for row in rows)


@pytest.fixture
def killable(milvus_server):
    """The session's server, running again (same data, same port) once the test is over."""
    yield milvus_server
    if not milvus_server.running:
        milvus_server.start()


def test_a_killed_server_comes_back_with_every_acknowledged_write(killable, fresh_index, make_settings,
                                                                  catalog, tmp_path):
    server = killable
    settings = make_settings(backend="milvus", milvus_uri=server.uri, milvus_timeout=5)
    engine = Engine.open(fresh_index, settings)
    engine.remove(["square-1"])
    write_rows(tmp_path / "renamed.jsonl", [{"item_id": "square-1-again", "image": str(catalog.image("square-1")),
                                             "category": "squares"}])
    engine.add(read_catalog(tmp_path / "renamed.jsonl"))
    collection = engine.index.collection.name
    assert stored_items(engine, ["square-1", "square-1-again"]) == ["square-1-again"]

    server.kill()
    started = time.monotonic()
    with pytest.raises(BackendError, match="Milvus at"):
        engine.search([Query("q", catalog.image("circle-0"))], k=3)
    assert time.monotonic() - started < DOWN_ERROR_WITHIN
    # a write while the server is down is kept by the index and pushed once it is back
    write_rows(tmp_path / "while-down.jsonl", [{"item_id": "circle-0-again", "image": str(catalog.image("circle-0")),
                                                "category": "circles"}])
    with pytest.raises(BackendError, match="kept in the index"):
        engine.add(read_catalog(tmp_path / "while-down.jsonl"))
    with pytest.raises(BackendError, match="kept in the index"):
        engine.remove(["triangle-3"])
    with pytest.raises(BackendError, match="cannot reach Milvus"):
        Engine.open(fresh_index, settings)

    server.start()  # the same data folder and port
    assert top_item_once_back(engine, catalog.image("square-1")) == "square-1-again"  # the open engine carries on
    assert "triangle-3" not in [hit.item_id for hit in engine.search([Query("q", catalog.image("triangle-3"))],
                                                                     k=12)[0].results]
    engine.close()
    reopened = Engine.open(fresh_index, settings)
    try:
        assert reopened.index.collection.name == collection  # Milvus kept the rows: no refill
        assert stored_items(reopened, ["square-1", "square-1-again", "circle-0-again", "triangle-3"]) == [
            "circle-0-again", "square-1-again"]
        assert top_item(reopened, catalog.image("circle-0")) in {"circle-0", "circle-0-again"}
    finally:
        reopened.close()
