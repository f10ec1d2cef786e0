"""`snapshop eval --versions`: model versions of one index evaluated side by side in one run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from snapshop.catalog.manifest import read_catalog
from snapshop.cli import app
from snapshop.index.folder import IndexFolder
from snapshop.models.backbone import resolve_model
from snapshop.search.engine import Engine


@pytest.fixture
def two_versions(fresh_index, catalog, make_settings, make_tiny_onnx, tmp_path):
    """The session index plus a second version built with a tiny 8-channel model (not active)."""
    spec = resolve_model(str(make_tiny_onnx(tmp_path / "tiny.onnx")))
    folder = IndexFolder(fresh_index).new_version_folder(spec.version)
    settings = make_settings(index=fresh_index, dim=8, bits=8)
    engine = Engine(folder, settings, folder.create(spec, dim=8, bits=8, pooling="gem"))
    engine.add(read_catalog(catalog.manifest))
    engine.close()
    return fresh_index, spec.version


@pytest.fixture
def queries(catalog, tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps({"image": str(catalog.image(item)), "item_id": item}) + "\n"
                            for item in catalog.item_ids[:4]))
    return path


def test_all_versions_are_evaluated_side_by_side(two_versions, queries, tmp_path):
    index, version = two_versions
    report = tmp_path / "report"
    done = CliRunner().invoke(app, ["eval", str(queries), "--index", str(index), "--versions", "all",
                                    "--no-baseline", "--report", str(report)])
    assert done.exit_code == 0, done.output
    saved = json.loads((report / "report.json").read_text())
    labels = list(saved)
    assert len(labels) == 2 and labels[1] == f"tiny {version}"
    assert all(saved[label]["pipeline"]["recall@1"] is not None for label in labels)
    assert f"model tiny {version}" in done.output and labels[0] in done.output
    assert f"tiny {version}" in (report / "index.html").read_text()


def test_the_active_version_alone_by_default_and_a_named_one_on_request(two_versions, queries):
    index, version = two_versions
    active = CliRunner().invoke(app, ["eval", str(queries), "--index", str(index), "--no-baseline", "--json"])
    assert active.exit_code == 0, active.output
    assert json.loads(active.stdout)["index"]["model"]["name"] == "efficientnet-lite0"
    named = CliRunner().invoke(app, ["eval", str(queries), "--index", str(index), "--versions", version,
                                     "--no-baseline", "--json"])
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["index"]["model"]["version"] == version


def test_an_unknown_version_is_a_clear_error(two_versions, queries):
    index, version = two_versions
    done = CliRunner().invoke(app, ["eval", str(queries), "--index", str(index), "--versions", "nope"])
    assert done.exit_code == 1
    assert "no model version 'nope'" in done.output and version in done.output
