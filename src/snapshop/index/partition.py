"""One category partition of one shard: base segment + delta segment + tombstones.

Search takes the Hamming shortlist of R codes from the base (tombstoned ids skipped,
they are filtered here at search time) and R from the delta, and re-ranks them by float
cosine on the float16 features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from snapshop.index.segments import BaseSegment, DeltaSegment, Rows


@dataclass(frozen=True)
class PartitionHits:
    """Per query: image ids best first and their cosine scores (-1 / -inf pad)."""

    image_ids: np.ndarray
    scores: np.ndarray
    explain: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionState:
    """An immutable state of one partition of one shard; writes make a new one.

    `seq` is the change-log position the base segment holds: changes after it are in the
    delta and the tombstones.
    """

    partition: str
    shard: int
    base: BaseSegment | None
    delta: DeltaSegment
    tombstones: np.ndarray
    seq: int

    @classmethod
    def empty(cls, partition: str, shard: int, *, bits: int, dim: int, seq: int = 0) -> "PartitionState":
        return cls(partition, shard, None, DeltaSegment.empty(bits, dim), np.zeros(0, np.int64), seq)

    def __len__(self) -> int:
        return (len(self.base) if self.base else 0) - len(self.tombstones) + len(self.delta)

    def live_rows(self) -> Rows:
        """Every searchable row (base minus tombstones, plus delta), sorted by id."""
        if self.base is None:
            return self.delta.rows
        base = self.base.rows
        keep = ~np.isin(base.ids, self.tombstones)
        kept = Rows(np.asarray(base.ids[keep]), np.asarray(base.codes[keep]), np.asarray(base.features[keep]))
        return kept.concat(self.delta.rows)

    def apply(self, added: Rows, removed: np.ndarray, bits: int) -> "PartitionState":
        """A new state with rows added and ids removed (base ids become tombstones)."""
        removed = np.asarray(removed, np.int64)
        in_base = (self.base.rows.rows_of(removed) >= 0) if self.base is not None and len(removed) else np.zeros(len(removed), bool)
        tombstones = np.union1d(self.tombstones, removed[in_base]) if in_base.any() else self.tombstones
        delta = self.delta.with_rows(added, removed[~in_base], bits) if len(added) or (~in_base).any() else self.delta
        return replace(self, delta=delta, tombstones=tombstones)

    def search(self, codes: np.ndarray, features: np.ndarray, shortlist: int, nprobe: int) -> PartitionHits:
        start = time.perf_counter()
        parts = [(self.base.rows if self.base else None, self._base_shortlist(codes, shortlist, nprobe)),
                 (self.delta.rows, self.delta.search(codes, shortlist))]
        ids = np.concatenate([found for _, found in parts], axis=1)
        scores = np.concatenate([_rerank(rows, found, features) for rows, found in parts], axis=1)
        ids = np.where(np.isfinite(scores), ids, -1)
        order = np.argsort(-scores, axis=1, kind="stable")
        explain = {"partition": self.partition, "shard": self.shard, "base": self.base.kind if self.base else None,
                   "base_images": len(self.base) if self.base else 0, "delta_images": len(self.delta),
                   "tombstones": len(self.tombstones), "candidates": int((ids >= 0).sum() / max(len(ids), 1)),
                   "ms": round((time.perf_counter() - start) * 1000, 3)}
        return PartitionHits(np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1), explain)

    def _base_shortlist(self, codes: np.ndarray, shortlist: int, nprobe: int) -> np.ndarray:
        """The base's R nearest codes that are not tombstoned (over-fetched by the tombstone count)."""
        if self.base is None:
            return np.full((len(codes), 0), -1, np.int64)
        ids = self.base.search(codes, shortlist + len(self.tombstones), nprobe)
        if len(self.tombstones):
            alive = (ids >= 0) & ~np.isin(ids, self.tombstones)
            alive &= np.cumsum(alive, axis=1) <= shortlist
            ids = np.where(alive, ids, -1)
        return ids


def _rerank(rows: Rows | None, ids: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Cosine of each query with each candidate's float16 feature; -inf where there is none."""
    if rows is None or ids.shape[1] == 0:
        return np.full(ids.shape, -np.inf, np.float32)
    found = rows.rows_of(np.maximum(ids, 0))
    valid = (ids >= 0) & (found >= 0)
    scores = np.einsum("qrd,qd->qr", rows.features[np.maximum(found, 0)].astype(np.float32), features)
    return np.where(valid, scores, -np.inf)
