"""Pooling of a CNN feature map (N x C x h x w) into one descriptor per image (N x C).

GAP averages, GeM takes a generalized mean (p=3, Radenovic et al.), R-MAC sums
L2-normalised max-pooled regions over three scales (Tolias et al.). `layout` keeps where
things are: the GeM of each cell of a 3 x 3 grid, side by side, for the category
classifier (a product's kind shows in its shape: sleeves, legs, a heel, a handle).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

EPS = 1e-6


def gap(maps: np.ndarray) -> np.ndarray:
    """Global average pooling."""
    return maps.mean(axis=(2, 3))


def gem(maps: np.ndarray, p: float = 3.0) -> np.ndarray:
    """Generalized-mean pooling; p=1 is GAP, p→∞ is max pooling."""
    return np.power(np.power(np.maximum(maps, EPS), p).mean(axis=(2, 3)), 1.0 / p)


def rmac(maps: np.ndarray, levels: int = 3) -> np.ndarray:
    """Regional maximum activations: square regions at `levels` scales with ~40% overlap."""
    _, _, height, width = maps.shape
    total = np.zeros(maps.shape[:2], np.float32)
    for level in range(1, levels + 1):
        side = max(1, int(round(2 * min(height, width) / (level + 1))))
        for top in _starts(height, side, level):
            for left in _starts(width, side, level):
                region = maps[:, :, top : top + side, left : left + side].max(axis=(2, 3))
                total += region / (np.linalg.norm(region, axis=1, keepdims=True) + EPS)
    return total


def layout(maps: np.ndarray, grid: int = 3) -> np.ndarray:
    """GeM of each cell of a `grid` x `grid` split of the map, each L2-normalised, concatenated
    and L2-normalised again: N x (grid * grid * C) float32."""
    cells = [gem(maps[:, :, rows, cols]) for rows in _spans(maps.shape[2], grid) for cols in _spans(maps.shape[3], grid)]
    return l2_normalize(np.concatenate([l2_normalize(cell.astype(np.float32)) for cell in cells], axis=1))


def _spans(length: int, count: int) -> list[slice]:
    """`count` consecutive slices covering 0..length, none empty (they overlap when length < count)."""
    return [slice(min(i * length // count, length - 1), max((i + 1) * length // count, i * length // count + 1))
            for i in range(count)]


def _starts(length: int, side: int, count: int) -> list[int]:
    if count == 1 or length <= side:
        return [max(0, (length - side) // 2)]
    return sorted({int(round(i * (length - side) / (count - 1))) for i in range(count)})


POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"gap": gap, "gem": gem, "rmac": rmac}


def pool(maps: np.ndarray, method: str) -> np.ndarray:
    """Pool with the named method; the descriptor is L2-normalised."""
    try:
        pooled = POOLINGS[method](maps)
    except KeyError:
        raise ValueError(f"unknown pooling {method!r}; choose from {', '.join(POOLINGS)}") from None
    return l2_normalize(pooled.astype(np.float32))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / (np.linalg.norm(vectors, axis=-1, keepdims=True) + EPS)
