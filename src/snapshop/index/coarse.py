"""K-means lists of a large base segment: which codes a query scans (faiss IVF's coarse step).

A base segment of `ListPlan.min_images` or more is split into about one list per
`ListPlan.list_size` codes, by spherical k-means over its codes' signs (±1 per bit); each code
goes to the list of its nearest centroid. A query scores every centroid of the partitions it
searches with its float projection and scans the `nprobe` best lists of each shard (smaller
segments, and every delta, are scanned whole): the scan reads a fraction of the codes.

A compaction keeps the old centroids, and the lists its old rows were in, while they still fit:
the list count is within a factor of two of what the new size wants, and the new rows lie as
close to their centroids as the old ones do (less DRIFT_TOLERANCE). Else it trains anew.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from snapshop.index.scan import code_signs

ASSIGN_CHUNK = 65_536
KMEANS_ITERATIONS = 10
FIT_SAMPLE = 4_096  # codes compared, old and new, to tell drift
DRIFT_TOLERANCE = 0.03  # of mean cosine to the nearest centroid


@dataclass(frozen=True)
class ListPlan:
    """How large base segments are split: codes per list, and the size from which they are."""

    list_size: int
    min_images: int

    def lists_for(self, images: int) -> int:
        """Lists a segment of this many images gets (1: scanned whole)."""
        return max(1, round(images / self.list_size)) if images >= self.min_images else 1


def trained_centroids(codes: np.ndarray, lists: int, seed: int = 1) -> np.ndarray:
    """Spherical k-means centroids (lists x bits, unit length) of packed codes' signs."""
    kmeans = faiss.Kmeans(codes.shape[1] * 8, lists, niter=KMEANS_ITERATIONS, seed=seed, spherical=True,
                          min_points_per_centroid=1)  # lists of a few dozen codes are allowed
    kmeans.train(code_signs(_sample(codes, lists * kmeans.cp.max_points_per_centroid, seed)))
    return kmeans.centroids


def nearest_lists(codes: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each code's nearest centroid (by inner product with its signs) and their cosine."""
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    lists, cosines = np.empty(len(codes), np.int64), np.empty(len(codes), np.float32)
    scale = 1 / np.sqrt(centroids.shape[1])  # a code's signs have length sqrt(bits)
    for start in range(0, len(codes), ASSIGN_CHUNK):
        scores, nearest = quantizer.search(code_signs(np.asarray(codes[start : start + ASSIGN_CHUNK])), 1)
        lists[start : start + len(nearest)], cosines[start : start + len(nearest)] = nearest[:, 0], scores[:, 0] * scale
    return lists, cosines


def planned_lists(plan: ListPlan, codes: np.ndarray, kept: np.ndarray | None = None,
                  previous: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Centroids and each code's list for a new base segment of `codes` (None: scanned whole).

    `previous` is the old base segment's centroids and lists; `kept[i]` the old row of code i
    (-1: a new code). The old centroids stay while they fit (see the module's docstring)."""
    lists = plan.lists_for(len(codes))
    if lists == 1:
        return None
    if previous is not None and kept is not None and lists / 2 <= len(previous[0]) <= lists * 2:
        centroids, old_lists = previous
        old, new = np.flatnonzero(kept >= 0), np.flatnonzero(kept < 0)
        new_lists, new_cosines = nearest_lists(codes[new], centroids)
        if _fit_as_well(codes[_sample(old, FIT_SAMPLE)], new_cosines, centroids):
            list_of = np.where(kept >= 0, old_lists[np.maximum(kept, 0)], -1)
            list_of[new] = new_lists
            return centroids, list_of
    centroids = trained_centroids(codes, lists)
    return centroids, nearest_lists(codes, centroids)[0]


def _fit_as_well(old_codes: np.ndarray, new_cosines: np.ndarray, centroids: np.ndarray) -> bool:
    """Whether new codes (their cosines to their nearest centroid) lie as close to the centroids
    as a sample of the old ones, less DRIFT_TOLERANCE."""
    if not len(new_cosines):
        return True
    if not len(old_codes):
        return False
    new_fit = new_cosines[_sample(np.arange(len(new_cosines)), FIT_SAMPLE)].mean()
    return bool(new_fit >= nearest_lists(old_codes, centroids)[1].mean() - DRIFT_TOLERANCE)


def _sample(rows: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """At most `count` of `rows`, in their order, chosen at random."""
    if len(rows) <= count:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), count, replace=False))]
