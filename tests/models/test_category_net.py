"""The fine-tuned category network: trained on frozen-block maps, exported to ONNX, run on crops."""

from __future__ import annotations

import numpy as np
import pytest

from snapshop.errors import ModelError
from snapshop.models.backbone import default_cache_dir
from snapshop.models.category_net import (CategoryNetwork, export_category_network, fit_category_network,
                                          front_backbone, top_probabilities)

SHAPES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def trained(draw_product):
    """A network fine-tuned for 10 epochs on 243 product shots of three shapes in three of the
    four colours and patterns."""
    images, labels = [], []
    for label, shape in enumerate(SHAPES):
        for variant in range(3):
            for scale in np.linspace(0.35, 0.8, 27):
                images.append(draw_product(shape, variant, scale=float(scale)))
                labels.append(label)
    front = front_backbone(default_cache_dir())
    fronts = front.feature_maps(images).astype(np.float16)
    top = fit_category_network(fronts, np.array(labels), len(SHAPES), epochs=10)
    return front, top, CategoryNetwork(export_category_network(top))


def test_the_network_tells_shapes_of_an_unseen_colour_and_pattern_apart(trained, draw_product):
    _, _, network = trained
    shots = [draw_product(shape, 3, scale=scale) for shape in SHAPES for scale in (0.45, 0.6, 0.75)]
    probabilities = network.probabilities(shots)
    assert probabilities.shape == (9, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == np.repeat(np.arange(3), 3)).mean() >= 0.75


def test_the_exported_network_computes_what_was_trained(trained, draw_product):
    front, top, network = trained
    crops = [draw_product(shape, 3, scale=0.5) for shape in SHAPES]
    in_torch = top_probabilities(top, front.feature_maps(crops).astype(np.float16))
    assert np.allclose(network.probabilities(crops), in_torch, atol=2e-3)


def test_a_damaged_network_is_a_clear_model_error():
    with pytest.raises(ModelError, match="category network is not a usable ONNX model"):
        CategoryNetwork(b"not an onnx model")
