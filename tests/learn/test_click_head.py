"""The click head on random feature maps: the foundation's projection, a learned box, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from snapshop.learn.mining import Triplet
from snapshop.learn.model import ClickHead, load_head, save_head
from snapshop.learn.train import TrainConfig, _batch_loss
from snapshop.models.pooling import gem

CHANNELS, DIM = 16, 8


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tensors this small run fastest on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    torch.manual_seed(0)
    return np.random.default_rng(0)


@pytest.fixture
def projection(rng) -> tuple[np.ndarray, np.ndarray]:
    """A fitted projection's mean and orthonormal components (C x D)."""
    components = np.linalg.qr(rng.normal(size=(CHANNELS, CHANNELS)))[0][:, :DIM]
    return rng.normal(0, 0.1, CHANNELS).astype(np.float32), components.astype(np.float32)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def assert_boxes_valid(boxes: torch.Tensor) -> None:
    values = boxes.detach().numpy()
    assert values.shape[1] == 4
    assert ((values >= 0) & (values <= 1)).all()
    assert (values[:, 0] < values[:, 2]).all() and (values[:, 1] < values[:, 3]).all()


def test_from_projection_with_a_box_over_the_whole_map_is_the_foundations_model(rng, projection):
    mean, components = projection
    maps = rng.random((6, CHANNELS, 4, 4)).astype(np.float32)
    head = ClickHead.from_projection(mean, components)
    with torch.no_grad():
        head.log_spread.fill_(10.0)  # a box far wider than the map, clamped to all of it
    embedding, boxes, _ = head(torch.from_numpy(maps))

    expected = unit((unit(gem(maps)) - mean) @ components)
    assert np.abs(embedding.detach().numpy() - expected).max() < 5e-3
    assert np.allclose(np.linalg.norm(embedding.detach().numpy(), axis=1), 1.0, atol=1e-5)
    assert np.allclose(boxes.detach().numpy(), [[0, 0, 1, 1]] * len(maps))


def test_an_untrained_head_boxes_the_centre_of_the_crop(rng, projection):
    maps = torch.from_numpy(rng.random((3, CHANNELS, 7, 7)).astype(np.float32))
    embedding, boxes, product = ClickHead.from_projection(*projection)(maps)

    assert_boxes_valid(boxes)
    assert np.allclose(boxes.detach().numpy(), [[0.083, 0.083, 0.917, 0.917]] * 3, atol=1e-3)
    assert np.allclose(torch.linalg.norm(embedding, dim=1).detach().numpy(), 1.0, atol=1e-5)
    assert torch.allclose(product, embedding, atol=1e-4)  # untrained, a query's box is the product's


def test_a_catalog_shot_is_embedded_over_its_whole_product_whatever_the_box(rng, projection):
    head = ClickHead.from_projection(*projection)
    maps = torch.from_numpy(rng.random((3, CHANNELS, 7, 7)).astype(np.float32))
    before = head.embed_product(maps)
    with torch.no_grad():
        head.log_spread.fill_(-1.0)  # a much smaller query box
    embedding, _, product = head(maps)

    assert torch.allclose(product, before)
    assert not torch.allclose(embedding, product, atol=1e-3)


def test_the_box_is_learned_through_the_loss_on_the_embedding(rng, projection):
    head = ClickHead.from_projection(*projection)
    maps = torch.from_numpy(rng.random((4, CHANNELS, 7, 7)).astype(np.float32))
    embedding = head(maps)[0]
    loss = torch.relu(0.5 + embedding[0] @ embedding[2] - embedding[0] @ embedding[1])
    loss.backward()

    assert head.cell_scores.weight.grad is not None
    assert head.cell_scores.weight.grad.abs().sum() > 0
    assert head.log_spread.grad is not None and head.log_spread.grad.abs() > 0


def test_a_new_refiner_starts_as_the_identity_and_keeps_the_heads_weights(rng, projection):
    head = ClickHead.from_projection(*projection)
    with torch.no_grad():
        head.cell_scores.weight.normal_()
    refined = head.with_refiner(8)
    maps = torch.from_numpy(rng.random((3, CHANNELS, 7, 7)).astype(np.float32))

    assert refined.refine_units == 8 and head.refine_units == 0
    for before, after in zip(head(maps), refined(maps)):
        assert torch.allclose(before, after, atol=1e-6)
    assert refined.with_refiner(16).refine_units == 8  # a trained refiner is kept, not replaced


def test_the_refiner_is_trained_through_the_embedding(rng, projection):
    head = ClickHead.from_projection(*projection).with_refiner(8)
    maps = torch.from_numpy(rng.random((4, CHANNELS, 7, 7)).astype(np.float32))
    embedding = head(maps)[0]
    torch.relu(0.5 + embedding[0] @ embedding[2] - embedding[0] @ embedding[1]).backward()

    assert head.refine.expand.weight.grad.abs().sum() > 0  # zero at the start, so only it moves first


@pytest.mark.parametrize("refine", [0, 8])
def test_save_and_load_give_the_same_outputs(rng, tmp_path, refine):
    head = ClickHead(CHANNELS, DIM, refine)
    with torch.no_grad():
        head.cell_scores.weight.normal_()
        head.log_spread.fill_(0.3)
        for parameter in head.refine.parameters() if refine else []:
            parameter.normal_(0, 0.1)
    maps = torch.from_numpy(rng.random((5, CHANNELS, 7, 7)).astype(np.float32))
    save_head(head, tmp_path / "head.npz")
    loaded = load_head(tmp_path / "head.npz")

    assert loaded.refine_units == refine
    for before, after in zip(head(maps), loaded(maps)):
        assert torch.allclose(before, after)
    assert_boxes_valid(loaded(maps)[1])


def synthetic_clicks(rng: np.random.Generator, items: int = 40, photos_per_item: int = 4
                     ) -> tuple[list[Triplet], np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Cached "maps": one catalog map per item, shopper photos as noisy copies of their item's map."""
    catalog_maps = rng.gamma(0.5, size=(items, CHANNELS, 4, 4)).astype(np.float32)
    triplets, anchors = [], []
    for item in range(items):
        others = [other for other in range(items) if other != item]
        for photo in range(photos_per_item):
            anchors.append(catalog_maps[item] * rng.uniform(0.5, 1.5, catalog_maps[item].shape)
                           + 0.3 * rng.random(catalog_maps[item].shape))
            negatives = tuple(str(other) for other in rng.choice(others, 3, replace=False))
            triplets.append(Triplet(Path(f"{item}-{photo}.jpg"), None, str(item), negatives, len(triplets)))
    images_of = {str(item): [item] for item in range(items)}
    return triplets, np.array(anchors, np.float32), catalog_maps, images_of


@pytest.mark.parametrize("loss,refine", [("triplet", 0), ("npair", 0), ("npair", 8)])
def test_a_short_training_run_lowers_the_loss(rng, loss, refine):
    triplets, anchor_maps, catalog_maps, images_of = synthetic_clicks(rng)
    head = ClickHead(CHANNELS, DIM, refine)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    config = TrainConfig(loss=loss)
    losses = []
    for _ in range(60):
        rows = rng.choice(len(triplets), 32, replace=False)
        batch_loss = _batch_loss(head, rows, triplets, anchor_maps, catalog_maps, images_of, config, rng)
        optimizer.zero_grad()
        batch_loss.backward()
        optimizer.step()
        losses.append(batch_loss.item())

    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
