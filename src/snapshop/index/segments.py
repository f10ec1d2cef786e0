"""Segments: the units a partition is made of, and their files.

A *base* segment is immutable and lives on disk: image ids (sorted), packed codes and
float16 features as `.npy` files opened memory-mapped; its codes are also held in memory as
faiss lists (packed when the segment is opened): one list, or when it is large, k-means lists
(index/coarse.py) whose centroids (in feature space: `.feature_centroids.npy`) and each row's
list (`.lists.npy`) are two more files. A segment written before the centroids moved from the
codes' sign space to feature space (`.centroids.npy`) opens as one list, scanned whole, until a
compaction (`snapshop compact`) splits it anew.
A *delta* segment holds the recent writes in memory. Both are values: a write makes a new
delta, so a query that started on the old one finishes on it.

The codes of each segment are a `CodeList` (index/scan.py), which a shard's `CodeScan` stacks
with the others' to search them in one pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snapshop.index.scan import CodeList

CENTROIDS = "feature_centroids"  # the file part of a split segment's centroids


@dataclass(frozen=True)
class Rows:
    """Row-aligned image ids (ascending), packed codes and float16 features."""

    ids: np.ndarray
    codes: np.ndarray
    features: np.ndarray

    @classmethod
    def empty(cls, bits: int, dim: int) -> "Rows":
        return cls(np.zeros(0, np.int64), np.zeros((0, bits // 8), np.uint8), np.zeros((0, dim), np.float16))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, keep: np.ndarray) -> "Rows":
        return Rows(self.ids[keep], self.codes[keep], self.features[keep])

    def concat(self, other: "Rows") -> "Rows":
        """Both sets of rows, sorted by id: each row copied once, straight into its place (a
        compaction of 100,000 images that copied its features into fresh memory three times
        took 0.8-2.0 s on this project's machine, mostly page faults; 0.16-0.21 s now)."""
        if not len(other):
            return self
        if len(other) > 1 and (np.diff(other.ids) < 0).any():
            other = other.take(np.argsort(other.ids, kind="stable"))
        at_self = np.arange(len(self)) + np.searchsorted(other.ids, self.ids)
        at_other = np.arange(len(other)) + np.searchsorted(self.ids, other.ids, side="right")
        merged = []
        for mine, theirs in zip((self.ids, self.codes, self.features), (other.ids, other.codes, other.features)):
            into = np.empty((len(self) + len(other), *mine.shape[1:]), mine.dtype)
            into[at_self], into[at_other] = mine, theirs
            merged.append(into)
        return Rows(*merged)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where absent."""
        if not len(self.ids):
            return np.full(ids.shape, -1, np.int64)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)


@dataclass(frozen=True)
class BaseSegment:
    """An immutable segment: memory-mapped rows, their codes' lists and, where it is split into
    k-means lists, its centroids (lists x dim) and each row's list."""

    name: str
    rows: Rows
    codes: CodeList
    centroids: np.ndarray | None = None
    list_of: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def build(cls, folder: Path, name: str, rows: Rows,
              lists: tuple[np.ndarray, np.ndarray] | None = None) -> "BaseSegment":
        """Write a new segment's files (fsynced) and open it; `lists`: its centroids and each row's list."""
        folder.mkdir(parents=True, exist_ok=True)
        parts = {"ids": rows.ids, "codes": rows.codes, "features": rows.features}
        if lists is not None:
            parts |= {CENTROIDS: np.asarray(lists[0], np.float32), "lists": np.asarray(lists[1], np.int32)}
        for part, values in parts.items():
            _write_durably(folder / f"{name}.{part}.npy", lambda path, values=values: np.save(path, values))
        fsync_folder(folder)
        return cls.load(folder, name)

    @classmethod
    def load(cls, folder: Path, name: str) -> "BaseSegment":
        """Open a segment: rows memory-mapped (plain ndarray views of the maps: indexing a
        np.memmap costs a Python wrapper per call), codes packed into faiss lists."""
        rows = Rows(*(np.asarray(np.load(folder / f"{name}.{part}.npy", mmap_mode="r"))
                      for part in ("ids", "codes", "features")))
        if not (folder / f"{name}.{CENTROIDS}.npy").exists():
            return cls(name, rows, CodeList(rows.codes))
        centroids = np.load(folder / f"{name}.{CENTROIDS}.npy")
        list_of = np.asarray(np.load(folder / f"{name}.lists.npy", mmap_mode="r"))
        return cls(name, rows, CodeList(rows.codes, list_of, centroids), centroids, list_of)


@dataclass(frozen=True)
class DeltaSegment:
    """Recent writes, in memory; a write builds a new one (its codes' list in one batch)."""

    rows: Rows
    codes: CodeList

    @classmethod
    def empty(cls, bits: int, dim: int) -> "DeltaSegment":
        rows = Rows.empty(bits, dim)
        return cls(rows, CodeList(rows.codes))

    def __len__(self) -> int:
        return len(self.rows)

    def with_rows(self, added: Rows, removed: np.ndarray) -> "DeltaSegment":
        """A new delta with `added` rows and without the `removed` ids."""
        gone = np.isin(self.rows.ids, removed) if len(removed) else np.zeros(len(self.rows), bool)
        rows = self.rows.take(~gone).concat(added)
        return DeltaSegment(rows, CodeList(rows.codes))


def _write_durably(path: Path, write) -> None:
    write(path)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so a rename inside it survives a crash."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
