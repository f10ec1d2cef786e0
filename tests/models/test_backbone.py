"""ONNX backbones: the built-in EfficientNet-Lite0, user models by path, and the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from snapshop.errors import ModelError, SnapshopError
from snapshop.models.backbone import (Backbone, ModelSpec, Preprocessing, default_cache_dir, list_embedders,
                                      resolve_model)


def photos(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (int(rng.integers(120, 300)), int(rng.integers(120, 300)), 3), np.uint8))
            for _ in range(count)]


# --- the built-in model ----------------------------------------------------------------------


def test_builtin_models_are_registered():
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(list_embedders())


def test_builtin_model_is_cached_in_snapshop_cache(backbone):
    spec = backbone.spec
    assert spec.name == "efficientnet-lite0"
    assert spec.onnx_path.is_file() and spec.onnx_path.is_relative_to(default_cache_dir())
    assert spec.preprocessing == Preprocessing(224, 127.0, 128.0)
    assert len(spec.version) == 16 and spec.version == resolve_model("efficientnet-lite0").version
    assert spec.to_json()["version"] == spec.version


def test_feature_maps_at_224_and_at_the_detection_size(backbone):
    images = photos(3)
    maps = backbone.feature_maps(images)
    assert maps.shape == (3, 1280, 7, 7) and maps.dtype == np.float32
    assert backbone.feature_maps(images, 320).shape == (3, 1280, 10, 10)
    assert backbone.channels == 1280
    assert np.isfinite(maps).all() and maps.min() >= 0.0  # ReLU6 features


def test_batching_does_not_change_the_features(backbone):
    images = photos(5, seed=1)
    one_batch = backbone.feature_maps(images)
    small = Backbone(backbone.spec, batch_size=2)
    assert np.allclose(small.feature_maps(images), one_batch, atol=1e-4)
    assert np.allclose(backbone.feature_maps(images[3:4]), one_batch[3:4], atol=1e-4)


def test_different_images_give_different_features(backbone):
    white = Image.new("RGB", (224, 224), "white")
    checked = Image.fromarray(((np.indices((224, 224)).sum(axis=0) // 16 % 2) * 255).astype(np.uint8)).convert("RGB")
    maps = backbone.feature_maps([white, checked, white])
    assert np.allclose(maps[0], maps[2])
    assert not np.allclose(maps[0], maps[1], atol=1e-2)


def test_no_images_gives_an_empty_batch(backbone):
    assert backbone.feature_maps([]).shape[0] == 0


# --- user models by path ---------------------------------------------------------------------


def test_user_onnx_model_by_path(tiny_onnx):
    spec = resolve_model(str(tiny_onnx))
    assert spec.name == "tiny" and spec.onnx_path == tiny_onnx.resolve()
    assert spec.preprocessing == Preprocessing()
    model = Backbone(spec)
    assert model.channels == 8
    maps = model.feature_maps([Image.new("RGB", (50, 30), (255, 255, 255))])
    assert maps.shape == (1, 8, 56, 56)  # resized to 224, then a stride-4 convolution
    # The tiny model averages the normalised input: (255 - 127) / 128 = 1.0.
    assert np.allclose(maps, 1.0, atol=1e-5)


def test_sidecar_json_sets_the_preprocessing(tmp_path, tiny_onnx):
    model_path = tmp_path / "mine.onnx"
    model_path.write_bytes(tiny_onnx.read_bytes())
    model_path.with_suffix(".json").write_text(json.dumps({"input_size": 64, "mean": 0.0, "std": 255.0}))
    spec = resolve_model(str(model_path))
    assert spec.preprocessing == Preprocessing(64, 0.0, 255.0)
    maps = Backbone(spec).feature_maps([Image.new("RGB", (10, 10), (51, 51, 51))])
    assert maps.shape == (1, 8, 16, 16) and np.allclose(maps, 0.2, atol=1e-5)


def test_bad_sidecar_is_a_model_error(tmp_path, tiny_onnx):
    model_path = tmp_path / "mine.onnx"
    model_path.write_bytes(tiny_onnx.read_bytes())
    model_path.with_suffix(".json").write_text(json.dumps({"size": 64}))
    with pytest.raises(ModelError, match="input_size"):
        resolve_model(str(model_path))


def test_version_is_the_content_hash(tmp_path, tiny_onnx):
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_onnx.read_bytes())
    assert resolve_model(str(copy)).version == resolve_model(str(tiny_onnx)).version
    assert resolve_model(str(copy)).version != resolve_model("efficientnet-lite0").version


def test_unknown_model_name():
    with pytest.raises(ModelError, match="efficientnet-lite0"):
        resolve_model("resnet-9000")


def test_missing_onnx_file(tmp_path):
    with pytest.raises(ModelError, match="no such"):
        resolve_model(str(tmp_path / "missing.onnx"))


def test_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"definitely not a protobuf")
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        Backbone(ModelSpec("broken", path, Preprocessing()))


def test_model_without_feature_maps_is_refused(tmp_path, make_tiny_onnx):
    path = make_tiny_onnx(tmp_path / "flat.onnx", flatten=True)
    with pytest.raises(ModelError, match="feature maps"):
        Backbone(resolve_model(str(path)))


def test_model_errors_are_user_errors():
    assert issubclass(ModelError, SnapshopError)
