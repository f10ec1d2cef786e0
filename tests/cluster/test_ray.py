"""`add --ray`: catalog ingest by Ray Data batch inference on a local two-node Ray cluster."""

from __future__ import annotations

import json

import numpy as np
import pytest

from typer.testing import CliRunner

from snapshop.catalog.manifest import read_catalog
from snapshop.cli import app
from snapshop.search.engine import Engine
from snapshop.search.results import Query

ray = pytest.importorskip("ray", reason="the Ray ingest test needs the cluster extra: pip install -e '.[cluster]'")

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a worker node, one CPU each, on this machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ray_ingest_matches_a_local_add(two_nodes, catalog, tmp_path, settings, engine):
    from snapshop.catalog.distributed import ray_embedder

    rows = [json.loads(line) for line in catalog.manifest.read_text().splitlines()]
    rows = [{**row, "image": str(catalog.root / row["image"])} for row in rows]
    manifest = tmp_path / "with-a-missing-image.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows + [{"item_id": "ghost", "image": "missing.png"}]))
    parsed = read_catalog(manifest)
    ingest = Engine.open_or_create(tmp_path / "index", settings)
    try:
        embed = ray_embedder(ingest, parsed, two_nodes.address, cpus=2)
        assert len(ray.nodes()) == 2
        report = ingest.add(parsed, embed=embed)
        assert report.items_added == 12 and report.images == 13
        assert [error.item_id for error in report.errors] == ["ghost"]  # gathered on the driver
        _, ours, _ = ingest.store.descriptors()
        _, theirs, _ = engine.store.descriptors()
        np.testing.assert_allclose(ours, theirs, atol=2e-3)  # the same descriptors as a local add
        result = ingest.search([Query("q", catalog.image("triangle-1"))], k=3)[0]
        assert result.results[0].item_id == "triangle-1"
    finally:
        ingest.close()


def test_cli_add_with_ray(two_nodes, catalog, tmp_path):
    result = CliRunner().invoke(app, ["add", str(catalog.manifest), "--index", str(tmp_path / "index"),
                                      "--ray", two_nodes.address])
    assert result.exit_code == 0, result.output
    assert "added 12 items, updated 0, embedded 13 images, skipped 0 rows" in result.output
