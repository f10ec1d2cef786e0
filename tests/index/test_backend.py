"""The index backend interface: the embedded faiss index satisfies it and stays the default."""

from __future__ import annotations

import sys

import pytest

from snapshop.errors import BackendError, SettingsError
from snapshop.index.backend import IndexBackend
from snapshop.index.live import LiveIndex
from snapshop.settings import load_settings


def test_the_faiss_backend_is_the_default_and_satisfies_the_interface(engine):
    assert engine.settings.backend == "faiss"
    assert isinstance(engine.index, LiveIndex) and isinstance(engine.index, IndexBackend)


def test_an_unknown_backend_is_refused():
    with pytest.raises(SettingsError, match="backend must be one of faiss, milvus"):
        load_settings(environ={"SNAPSHOP_BACKEND": "elastic"})


def test_milvus_consistency_levels_are_checked():
    assert load_settings(environ={}).milvus_consistency == "Bounded"
    with pytest.raises(SettingsError, match="milvus_consistency"):
        load_settings({"milvus_consistency": "Sometimes"}, environ={})


def test_the_milvus_backend_without_the_cluster_extra_is_a_clear_error(monkeypatch, fresh_index, make_settings):
    from snapshop.search.engine import Engine

    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "snapshop.index.milvus", raising=False)
    with pytest.raises(BackendError, match=r"pip install 'snapshop\[cluster\]'"):
        Engine.open(fresh_index, make_settings(backend="milvus"))
