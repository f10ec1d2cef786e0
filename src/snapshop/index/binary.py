"""Hamming search over binary codes with faiss, partitioned by category, then float re-rank.

Each partition is an exact `IndexBinaryIDMap2(IndexBinaryFlat)` keyed by image id. The
shortlist of R nearest codes is re-ranked by cosine on float16 features held in one
row-aligned array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np


@dataclass(frozen=True)
class Candidates:
    """Per query, image ids best first with their cosine scores; -1 / -inf pad short lists."""

    image_ids: np.ndarray
    scores: np.ndarray


class BinaryIndex:
    """Binary codes in per-category faiss partitions plus float features for re-rank."""

    def __init__(self, *, bits: int, dim: int) -> None:
        if bits % 8:
            raise ValueError(f"bits must be a multiple of 8, got {bits}")
        self.bits = bits
        self.dim = dim
        self._partitions: dict[str, faiss.IndexBinaryIDMap2] = {}
        self._features = np.zeros((0, dim), np.float16)
        self._row_of_id = np.full(0, -1, np.int64)

    def __len__(self) -> int:
        return sum(index.ntotal for index in self._partitions.values())

    @property
    def partitions(self) -> dict[str, int]:
        """Image count per partition."""
        return {name: index.ntotal for name, index in sorted(self._partitions.items()) if index.ntotal}

    def add(self, image_ids: np.ndarray, partitions: Sequence[str], codes: np.ndarray, features: np.ndarray) -> None:
        """Add images; codes must be packed uint8 (N x bits/8)."""
        image_ids = np.ascontiguousarray(image_ids, np.int64)
        if codes.dtype != np.uint8 or codes.shape[1:] != (self.bits // 8,):
            raise TypeError(f"codes must be uint8 of shape (N, {self.bits // 8}), got {codes.dtype} {codes.shape}")
        self._store_features(image_ids, features)
        labels = np.asarray(partitions)
        for name in np.unique(labels):
            mask = labels == name
            self._partition(str(name)).add_with_ids(np.ascontiguousarray(codes[mask]), image_ids[mask])

    def remove(self, image_ids: np.ndarray) -> None:
        """Remove images from every partition (one `remove_ids` call per partition)."""
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(image_ids, np.int64))
        for index in self._partitions.values():
            index.remove_ids(selector)
        known = image_ids[image_ids < len(self._row_of_id)]
        self._row_of_id[known] = -1

    def search(
        self, codes: np.ndarray, features: np.ndarray, shortlist: int, partitions: Sequence[str] | None = None
    ) -> Candidates:
        """Hamming shortlist of `shortlist` per partition, re-ranked by float cosine, best first."""
        names = [n for n in (self._partitions if partitions is None else partitions) if n in self._partitions]
        found = [self._partitions[n].search(np.ascontiguousarray(codes), shortlist)[1] for n in names]
        ids = np.concatenate(found, axis=1) if found else np.full((len(codes), 0), -1, np.int64)
        rows = np.where(ids >= 0, self._row_of_id[np.maximum(ids, 0)] if len(self._row_of_id) else -1, -1)
        candidate_features = self._features[np.maximum(rows, 0)].astype(np.float32)
        scores = np.einsum("qrd,qd->qr", candidate_features, np.asarray(features, np.float32))
        scores = np.where(rows >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        return Candidates(
            image_ids=np.where(np.take_along_axis(rows, order, 1) >= 0, np.take_along_axis(ids, order, 1), -1),
            scores=np.take_along_axis(scores, order, 1),
        )

    def _partition(self, name: str) -> faiss.IndexBinaryIDMap2:
        if name not in self._partitions:
            self._partitions[name] = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.bits))
        return self._partitions[name]

    def _store_features(self, image_ids: np.ndarray, features: np.ndarray) -> None:
        start = len(self._features)
        self._features = np.concatenate([self._features, np.asarray(features, np.float16)])
        needed = int(image_ids.max()) + 1 if len(image_ids) else 0
        if needed > len(self._row_of_id):
            grown = np.full(max(needed, 2 * len(self._row_of_id)), -1, np.int64)
            grown[: len(self._row_of_id)] = self._row_of_id
            self._row_of_id = grown
        self._row_of_id[image_ids] = np.arange(start, start + len(image_ids))
