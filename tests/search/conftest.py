"""The retrieval-quality modules' data: 300 Fashion-MNIST test images as a catalog, SIMULATED
shopper photos of 80 of them as queries, and indexes of that catalog (one per module that
builds one: pytest-xdist gives each module to one worker, so the slow builds run side by side)."""

from __future__ import annotations

from typing import Callable

import pytest

from snapshop.catalog.manifest import read_catalog
from snapshop.search.engine import Engine


@pytest.fixture(scope="session")
def datasets():
    """snapshop.datasets, with the Fashion-MNIST test images installed (else the test is skipped)."""
    datasets = pytest.importorskip("snapshop.datasets")
    try:
        datasets.load_fashion_mnist("test")
    except Exception as exc:  # the Debian package is installed by scripts/install.sh
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    return datasets


@pytest.fixture(scope="module")
def fashion(tmp_path_factory, datasets):
    """The catalog manifest and the SIMULATED queries' file."""
    root = tmp_path_factory.mktemp("quality")
    manifest = datasets.build_fashion_catalog(root / "catalog", n_items=300)
    queries = datasets.build_shopper_queries(root / "catalog", root / "queries", n_queries=80)
    return root, manifest, queries


@pytest.fixture(scope="module")
def index_fashion(fashion, make_settings) -> Callable[..., Engine]:
    """`index_fashion(name, **settings)`: an engine that indexed the catalog into its own folder."""
    def indexed(name: str, **overrides) -> Engine:
        root, manifest, _ = fashion
        settings = make_settings(index=str(root / name), **overrides)
        engine = Engine.open_or_create(settings.index, settings)
        engine.add(read_catalog(manifest))
        return engine

    return indexed
