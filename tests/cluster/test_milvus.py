"""The milvus backend against a real Milvus server: the faiss backend's retrieval tests, the
same top-10 as faiss on the same data, writes mapped to upsert / delete, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from snapshop.catalog.manifest import read_catalog
from snapshop.cli import app
from snapshop.errors import BackendError
from snapshop.search.engine import Engine
from snapshop.search.results import Query

pytest.importorskip("pymilvus", reason="the milvus backend tests need the cluster extra: pip install -e '.[cluster]'")

pytestmark = pytest.mark.milvus


@pytest.fixture(scope="module")
def milvus_settings(make_settings, milvus_uri):
    return make_settings(backend="milvus", milvus_uri=milvus_uri)


@pytest.fixture(scope="module")
def milvus_engine(milvus_settings, tmp_path_factory, index_template):
    """The session index (built with faiss) opened on Milvus: the collection is filled from the store."""
    import shutil

    path = tmp_path_factory.mktemp("milvus-shared") / "index"
    shutil.copytree(index_template, path)
    opened = Engine.open(path, milvus_settings)
    yield opened
    opened.close()


def top(result, count: int = 10) -> list[str]:
    return [hit.item_id for hit in result.results[:count]]


def test_collection_holds_the_catalog(milvus_engine):
    from snapshop.index.milvus import MilvusIndex

    assert isinstance(milvus_engine.index, MilvusIndex)
    stats = milvus_engine.stats()
    assert stats["partitions"] == {"circles": 5, "squares": 4, "triangles": 4}
    counted = milvus_engine.index.collection.query("", output_fields=["count(*)"], consistency_level="Strong")
    assert counted[0]["count(*)"] == 13
    state = json.loads((milvus_engine.folder.path / "milvus.json").read_text())
    assert state["seq"] == milvus_engine.store.last_seq() and state["collection"].startswith("snapshop_")


def test_exact_copy_finds_its_item_first(milvus_engine, catalog):
    results = milvus_engine.search([Query(i, catalog.image(i)) for i in catalog.item_ids], k=5)
    assert [top(r, 1)[0] for r in results] == catalog.item_ids
    for result in results:
        assert result.results[0].score > 0.98
        assert result.category.name == catalog.categories[result.query]


@pytest.mark.parametrize("item_id", ["circle-0", "square-0", "triangle-2"])
def test_shifted_resized_copy_on_a_background_finds_its_item_first(milvus_engine, catalog, draw_shopper_photo,
                                                                   tmp_path, item_id):
    from PIL import Image

    path = tmp_path / "shot.jpg"
    with Image.open(catalog.image(item_id)) as product:
        draw_shopper_photo(product.convert("RGB")).save(path, quality=90)
    result = milvus_engine.search([Query("shot", path)], k=5)[0]
    assert top(result, 1) == [item_id]


def test_both_backends_give_the_same_top_10(milvus_engine, engine, catalog):
    queries = [Query(i, catalog.image(i)) for i in catalog.item_ids]
    for category in (None, "circles"):
        faiss_results = engine.search(queries, k=10, category=category)
        milvus_results = milvus_engine.search(queries, k=10, category=category)
        for ours, theirs in zip(milvus_results, faiss_results):
            assert [round(h.score, 4) for h in ours.results] == [round(h.score, 4) for h in theirs.results]
            # equal scores may swap places; the sets at each score agree
            by_score = lambda result: sorted((round(h.score, 4), h.item_id) for h in result.results)
            assert by_score(ours) == by_score(theirs)


def test_index_level_search_matches_faiss(milvus_engine, engine):
    vectors = engine.store.vectors()
    features = vectors.features.astype(np.float32)
    projections = engine.codec.rotation.project(features)
    ours = milvus_engine.index.search(projections, features, shortlist=20)
    theirs = engine.index.search(projections, features, shortlist=20)
    assert (ours.image_ids[:, 0] == vectors.image_ids).all()
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
    only = milvus_engine.index.search(projections[:3], features[:3], shortlist=20, partitions=["squares"])
    assert set(only.partitions[only.image_ids >= 0]) == {"squares"}
    assert milvus_engine.index.search(projections[:2], features[:2], 5, partitions=["nope"]).image_ids.shape == (2, 0)


def test_writes_become_upserts_and_deletes(fresh_index, milvus_settings, catalog, tmp_path):
    engine = Engine.open(fresh_index, milvus_settings)
    try:
        query = [Query("q", catalog.image("square-1"))]
        assert top(engine.search(query, k=3)[0], 1) == ["square-1"]
        engine.remove(["square-1"])
        assert "square-1" not in top(engine.search(query, k=12)[0], 12)  # at once, whatever the consistency
        rows = [{"item_id": "square-1-again", "image": str(catalog.image("square-1")), "category": "squares"}]
        (tmp_path / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        engine.add(read_catalog(tmp_path / "more.jsonl"))
        assert top(engine.search(query, k=3)[0], 1) == ["square-1-again"]  # read-your-writes in the writer
        stored = engine.index.collection.query("item_id in ['square-1', 'square-1-again']",
                                               output_fields=["item_id", "category"], consistency_level="Strong")
        assert [(r["item_id"], r["category"]) for r in stored] == [("square-1-again", "squares")]
    finally:
        engine.close()
    # another process (a new engine) with Strong consistency sees the same
    reader = Engine.open(fresh_index, milvus_settings.replace(milvus_consistency="Strong"))
    try:
        assert top(reader.search(query, k=3)[0], 1) == ["square-1-again"]
    finally:
        reader.close()


def test_a_pruned_log_or_a_lost_collection_refills_it(fresh_index, milvus_settings, catalog):
    engine = Engine.open(fresh_index, milvus_settings)
    report = engine.compact()  # flush, Milvus compaction, log pruned
    assert sum(entry["images"] for entry in report) == 13
    engine.close()
    state = json.loads((fresh_index / "milvus.json").read_text())
    state["collection"] = state["collection"].rsplit("_g", 1)[0] + "_g99"  # a collection the server lacks
    (fresh_index / "milvus.json").write_text(json.dumps(state))
    reopened = Engine.open(fresh_index, milvus_settings)
    try:
        assert reopened.index.collection.name.endswith(f"_g{state['generation'] + 1}")
        assert top(reopened.search([Query("q", catalog.image("triangle-3"))], k=3)[0], 1) == ["triangle-3"]
    finally:
        reopened.close()


def test_replicas_beyond_the_query_nodes_are_a_clear_error(fresh_index, milvus_settings):
    with pytest.raises(BackendError, match="cannot load 2 replica"):
        Engine.open(fresh_index, milvus_settings.replace(replicas=2))


def test_unreachable_server_is_one_line_on_the_command_line(fresh_index, catalog):
    result = CliRunner().invoke(app, ["search", str(catalog.image("circle-0")), "--index", str(fresh_index),
                                      "--backend", "milvus", "--uri", "http://127.0.0.1:1"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: cannot reach Milvus at http://127.0.0.1:1")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_cli_search_with_the_milvus_backend(fresh_index, catalog, milvus_uri):
    result = CliRunner().invoke(app, ["search", str(catalog.image("circle-2")), "--index", str(fresh_index),
                                      "--backend", "milvus", "--uri", milvus_uri, "--json", "-k", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["results"][0]["item_id"] == "circle-2"


def test_a_copied_index_folder_gets_a_collection_of_its_own(fresh_index, milvus_settings, catalog, tmp_path):
    import shutil

    original = Engine.open(fresh_index, milvus_settings)
    collection = original.index.collection.name
    original.close()
    shutil.copytree(fresh_index, tmp_path / "copy")
    copy = Engine.open(tmp_path / "copy", milvus_settings)
    try:
        assert copy.index.collection.name != collection
        copy.remove(["circle-0"])
    finally:
        copy.close()
    reopened = Engine.open(fresh_index, milvus_settings)
    try:
        assert reopened.index.collection.name == collection
        held = reopened.index.collection.query("item_id == 'circle-0'", output_fields=["item_id"], consistency_level="Strong")
        assert {row["item_id"] for row in held} == {"circle-0"}  # the copy's remove never reached the original's
        assert top(reopened.search([Query("q", catalog.image("circle-0"))], k=3)[0], 1) == ["circle-0"]
    finally:
        reopened.close()
