"""One category partition of one shard: base segment + delta segment + tombstones.

Its shard searches the codes of every partition in one scan (`code_lists` names them, with
their rows and which are tombstoned: those are filtered at search time), then reads the ids
and float16 features of the candidates it keeps from those rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple

import numpy as np

from snapshop.index.scan import CodeList
from snapshop.index.segments import BaseSegment, DeltaSegment, Rows


class SegmentCodes(NamedTuple):
    """What a shard's scan needs of one segment: its codes' lists, its rows and which rows are
    tombstoned (None: none)."""

    codes: CodeList
    rows: Rows
    dead: np.ndarray | None


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
        base = self.base.rows.take(~self._dead) if len(self.tombstones) else self.base.rows
        return base.concat(self.delta.rows)

    def apply(self, added: Rows, removed: np.ndarray) -> "PartitionState":
        """A new state with rows added and ids removed (base ids become tombstones)."""
        removed = np.asarray(removed, np.int64)
        in_base = (self.base.rows.rows_of(removed) >= 0) if self.base is not None and len(removed) else np.zeros(len(removed), bool)
        tombstones = np.union1d(self.tombstones, removed[in_base]) if in_base.any() else self.tombstones
        delta = self.delta.with_rows(added, removed[~in_base]) if len(added) or (~in_base).any() else self.delta
        return replace(self, delta=delta, tombstones=tombstones)

    def code_lists(self) -> list[SegmentCodes]:
        """Each non-empty segment's codes, base first, then the delta."""
        lists = []
        if self.base is not None:
            lists.append(SegmentCodes(self.base.codes, self.base.rows, self._dead if len(self.tombstones) else None))
        if len(self.delta):
            lists.append(SegmentCodes(self.delta.codes, self.delta.rows, None))
        return lists
