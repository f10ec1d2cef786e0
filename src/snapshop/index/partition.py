"""One category partition of one shard: base segment + delta segment + tombstones.

A partition answers a query in two steps that its shard interleaves with the others': the
shortlist (the best codes of base and delta for the query's projection, tombstoned images
skipped: they are filtered here at search time) and the float16 features of whichever of
those candidates the shard keeps, which it re-ranks by float cosine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from snapshop.index.segments import BaseSegment, DeltaSegment, Rows


@dataclass(frozen=True)
class Shortlist:
    """Per query, candidates of one partition best first: image ids, code scores and rows
    (base rows first, then the delta's), -1 / -inf padded; `bound` is the highest score a
    code not fetched may have (-inf when every code was fetched)."""

    image_ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    bound: np.ndarray


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
        return self._base_size - len(self.tombstones) + len(self.delta)

    @property
    def _base_size(self) -> int:
        return len(self.base) if self.base else 0

    @cached_property
    def _dead(self) -> np.ndarray:
        """Per base row, whether it is tombstoned."""
        dead = np.zeros(self._base_size, bool)
        if len(self.tombstones):
            rows = self.base.rows.rows_of(self.tombstones)
            dead[rows[rows >= 0]] = True
        return dead

    def live_rows(self) -> Rows:
        """Every searchable row (base minus tombstones, plus delta), sorted by id."""
        if self.base is None:
            return self.delta.rows
        return self.base.rows.take(~self._dead).concat(self.delta.rows)

    def apply(self, added: Rows, removed: np.ndarray) -> "PartitionState":
        """A new state with rows added and ids removed (base ids become tombstones)."""
        removed = np.asarray(removed, np.int64)
        in_base = (self.base.rows.rows_of(removed) >= 0) if self.base is not None and len(removed) else np.zeros(len(removed), bool)
        tombstones = np.union1d(self.tombstones, removed[in_base]) if in_base.any() else self.tombstones
        delta = self.delta.with_rows(added, removed[~in_base]) if len(added) or (~in_base).any() else self.delta
        return replace(self, delta=delta, tombstones=tombstones)

    def shortlist(self, projections: np.ndarray, count: int) -> Shortlist:
        """The `count` best codes of base and delta per query that are not tombstoned."""
        parts, bound = [], np.full(len(projections), -np.inf, np.float32)
        if self.base is not None:
            ids, scores, rows = self.base.search(projections, count)
            bound = _bound(scores, count, self._base_size)
            if len(self.tombstones):
                alive = (rows >= 0) & ~self._dead[np.maximum(rows, 0)]
                ids, scores, rows = np.where(alive, ids, -1), np.where(alive, scores, -np.inf), np.where(alive, rows, -1)
            parts.append((ids, scores, rows))
        if len(self.delta) or self.base is None:
            ids, scores, rows = self.delta.search(projections, count)
            bound = np.maximum(bound, _bound(scores, count, len(self.delta)))
            parts.append((ids, scores, np.where(rows >= 0, rows + self._base_size, -1)))
        if len(parts) == 1 and not len(self.tombstones):
            return Shortlist(*parts[0], bound)  # one segment, nothing filtered: already best first
        ids, scores, rows = (np.concatenate([part[i] for part in parts], axis=1) for i in range(3))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :count]
        return Shortlist(*(np.take_along_axis(a, order, 1) for a in (ids, scores, rows)), bound)

    def gather_features(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Write the float16 features of candidate rows (as `shortlist` numbers them, ascending,
        none -1) into `out`: one ascending read of the base's memory map, then the delta's."""
        split = int(np.searchsorted(rows, self._base_size))
        if split:
            np.take(self.base.rows.features, rows[:split], axis=0, out=out[:split], mode="clip")
        if split < len(rows):
            np.take(self.delta.rows.features, rows[split:] - self._base_size, axis=0, out=out[split:], mode="clip")


def _bound(scores: np.ndarray, count: int, size: int) -> np.ndarray:
    """The score a code beyond the `count` fetched of `size` may reach: the last fetched one's."""
    if count >= size or scores.shape[1] == 0:
        return np.full(len(scores), -np.inf, np.float32)
    return scores[:, -1]
