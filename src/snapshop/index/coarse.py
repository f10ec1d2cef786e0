"""K-means lists of a large base segment: which codes a query scans (faiss IVF's coarse step).

A base segment of `ListPlan.min_images` or more is split into about one list per
`ListPlan.list_size` images, by spherical k-means over their float features (the float16 rows
the re-rank reads); each image's code goes to the list of its nearest centroid. A query scores
every centroid of the partitions it searches with its float embedding and scans the `nprobe`
best lists of each shard (smaller segments, and every delta, are scanned whole): the scan reads
a fraction of the codes. (K-means over the codes' signs, scored with the query's projection,
measured worse: at 1M images, 650 of 1,953 lists hold 0.975 of the true top 10 by signs and
0.981 by features; docs/benchmarks.md.)

A compaction keeps the old centroids, and the lists its old rows were in, while they still fit:
the list count is within a factor of two of what the new size wants, and the new rows lie as
close to their centroids as the old ones do (less DRIFT_TOLERANCE). Else it trains anew.
(Measured at 1M images: rows the k-means did not see lie 0.011 further from their centroid, in
cosine, than the ones it did; another category's rows 0.33 further.)
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

ASSIGN_CHUNK = 65_536
KMEANS_ITERATIONS = 10
FIT_SAMPLE = 4_096  # rows compared, old and new, to tell drift
DRIFT_TOLERANCE = 0.03  # of mean cosine to the nearest centroid


@dataclass(frozen=True)
class ListPlan:
    """How large base segments are split: images per list, and the size from which they are."""

    list_size: int
    min_images: int

    def lists_for(self, images: int) -> int:
        """Lists a segment of this many images gets (1: scanned whole)."""
        return max(1, round(images / self.list_size)) if images >= self.min_images else 1


def trained_centroids(features: np.ndarray, lists: int, seed: int = 1) -> np.ndarray:
    """Spherical k-means centroids (lists x dim, unit length) of float features."""
    kmeans = faiss.Kmeans(features.shape[1], lists, niter=KMEANS_ITERATIONS, seed=seed, spherical=True,
                          min_points_per_centroid=1)  # lists of a few dozen images are allowed
    sample = _sample(np.arange(len(features)), lists * kmeans.cp.max_points_per_centroid, seed)
    kmeans.train(_as_float32(features[sample]))
    return kmeans.centroids


def nearest_lists(features: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid (by inner product: cosine, for unit features) and that cosine."""
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    lists, cosines = np.empty(len(features), np.int64), np.empty(len(features), np.float32)
    for start in range(0, len(features), ASSIGN_CHUNK):
        scores, nearest = quantizer.search(_as_float32(features[start : start + ASSIGN_CHUNK]), 1)
        lists[start : start + len(nearest)], cosines[start : start + len(nearest)] = nearest[:, 0], scores[:, 0]
    return lists, cosines


def planned_lists(plan: ListPlan, features: np.ndarray, kept: np.ndarray | None = None,
                  previous: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Centroids and each row's list for a new base segment of these rows' features (None:
    scanned whole).

    `previous` is the old base segment's centroids and lists; `kept[i]` the old row of row i
    (-1: a new row). The old centroids stay while they fit (see the module's docstring)."""
    lists = plan.lists_for(len(features))
    if lists == 1:
        return None
    if previous is not None and kept is not None and lists / 2 <= len(previous[0]) <= lists * 2:
        centroids, old_lists = previous
        old, new = np.flatnonzero(kept >= 0), np.flatnonzero(kept < 0)
        new_lists, new_cosines = nearest_lists(features[new], centroids)
        if _fit_as_well(features[_sample(old, FIT_SAMPLE)], new_cosines, centroids):
            list_of = np.where(kept >= 0, old_lists[np.maximum(kept, 0)], -1)
            list_of[new] = new_lists
            return centroids, list_of
    centroids = trained_centroids(features, lists)
    return centroids, nearest_lists(features, centroids)[0]


def _fit_as_well(old_features: np.ndarray, new_cosines: np.ndarray, centroids: np.ndarray) -> bool:
    """Whether new rows (their cosines to their nearest centroid) lie as close to the centroids
    as a sample of the old ones, less DRIFT_TOLERANCE."""
    if not len(new_cosines):
        return True
    if not len(old_features):
        return False
    new_fit = new_cosines[_sample(np.arange(len(new_cosines)), FIT_SAMPLE)].mean()
    return bool(new_fit >= nearest_lists(old_features, centroids)[1].mean() - DRIFT_TOLERANCE)


def _sample(rows: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """At most `count` of `rows`, in their order, chosen at random."""
    if len(rows) <= count:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), count, replace=False))]


def _as_float32(features: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(features, np.float32)
