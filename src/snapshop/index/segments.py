"""Segments: the units a partition is made of, their files, and how their codes are searched.

A *base* segment is immutable and lives on disk: image ids (sorted), packed codes and
float16 features as `.npy` files opened memory-mapped, plus its code index (`.signs.faiss`).
A *delta* segment holds the recent writes in memory. Both are values: a write makes a new
delta, so a query that started on the old one finishes on it.

Codes are searched asymmetrically: a query keeps its float projection on the code's axes
(the signs of which would be its own code), and an image scores the inner product of that
projection with its code's signs, +1 or -1 per bit (Gordo et al., "Asymmetric distances for
binary embeddings"). Only the catalog side is quantized, so the shortlist ranks far closer to
float cosine than Hamming distance between two codes does (measured in docs/benchmarks.md:
on 1M images, recall@10 0.92 against Hamming's 0.65 with the same 1,600-image shortlist).
faiss computes it with its 4-bit fast-scan product quantizer whose every codebook is the 16
corners of a 4-d cube (±1 on each axis): a code's PQ encoding is then its own bits, stored once,
32 bytes per image at 256 bits, and each image's score is a sum of SIMD table lookups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

CORNERS = np.array([[1.0 if (corner >> axis) & 1 else -1.0 for axis in range(4)] for corner in range(16)], np.float32)
ADD_CHUNK = 65_536


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
        """Both sets of rows, sorted by id."""
        ids = np.concatenate([self.ids, other.ids])
        order = np.argsort(ids, kind="stable")
        return Rows(ids[order], np.concatenate([self.codes, other.codes])[order],
                    np.concatenate([self.features, np.asarray(other.features, np.float16)])[order])

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where absent."""
        if not len(self.ids):
            return np.full(ids.shape, -1, np.int64)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)


def code_signs(codes: np.ndarray) -> np.ndarray:
    """Packed codes (N x bits/8 uint8, first bit in the high bit of a byte) as ±1 floats, N x bits."""
    return np.unpackbits(codes, axis=1).astype(np.float32) * 2 - 1


def sign_code_index(codes: np.ndarray) -> faiss.IndexPQFastScan:
    """A faiss index of packed codes that scores a query projection q against code b as
    sum_i q_i * (±1 by bit i of b); its labels are row numbers."""
    bits = codes.shape[1] * 8
    index = faiss.IndexPQFastScan(bits, bits // 4, 4, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.tile(CORNERS, (bits // 4, 1)).ravel(), index.pq.centroids)
    index.is_trained = True
    for start in range(0, len(codes), ADD_CHUNK):  # each cube corner encodes as itself: the code's own bits
        index.add(code_signs(np.asarray(codes[start : start + ADD_CHUNK])))
    return index


def search_codes(index: faiss.IndexPQFastScan, rows: Rows, projections: np.ndarray,
                 count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `count` best-scoring codes per query: their ids, scores and rows (-1 / -inf / -1 pad)."""
    count = min(count, len(rows))
    if count <= 0:
        empty = np.full((len(projections), 0), -1, np.int64)
        return empty, empty.astype(np.float32), empty
    scores, found = index.search(projections, count)
    ids = np.where(found >= 0, rows.ids[np.maximum(found, 0)], -1)
    return ids, np.where(found >= 0, scores, -np.inf).astype(np.float32), found


@dataclass(frozen=True)
class BaseSegment:
    """An immutable segment: memory-mapped rows and their code index."""

    name: str
    rows: Rows
    index: faiss.IndexPQFastScan

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def build(cls, folder: Path, name: str, rows: Rows) -> "BaseSegment":
        """Write a new segment's files (fsynced) and open it."""
        folder.mkdir(parents=True, exist_ok=True)
        index = sign_code_index(np.ascontiguousarray(rows.codes))
        _write_durably(folder / f"{name}.signs.faiss", lambda path: faiss.write_index(index, str(path)))
        for part in ("ids", "codes", "features"):
            _write_durably(folder / f"{name}.{part}.npy", lambda path, part=part: np.save(path, getattr(rows, part)))
        fsync_folder(folder)
        return cls.load(folder, name)

    @classmethod
    def load(cls, folder: Path, name: str) -> "BaseSegment":
        """Open a segment: rows memory-mapped (plain ndarray views of the maps: indexing a
        np.memmap costs a Python wrapper per call); the code index read (or, for a segment
        written by an older snapshop, built from the codes)."""
        rows = Rows(*(np.asarray(np.load(folder / f"{name}.{part}.npy", mmap_mode="r"))
                      for part in ("ids", "codes", "features")))
        index_file = folder / f"{name}.signs.faiss"
        index = faiss.read_index(str(index_file)) if index_file.is_file() else sign_code_index(rows.codes)
        return cls(name, rows, index)

    def search(self, projections: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return search_codes(self.index, self.rows, projections, count)


@dataclass(frozen=True)
class DeltaSegment:
    """Recent writes, in memory; a write builds a new one (its code index in one batch)."""

    rows: Rows
    index: faiss.IndexPQFastScan

    @classmethod
    def empty(cls, bits: int, dim: int) -> "DeltaSegment":
        rows = Rows.empty(bits, dim)
        return cls(rows, sign_code_index(rows.codes))

    def __len__(self) -> int:
        return len(self.rows)

    def with_rows(self, added: Rows, removed: np.ndarray) -> "DeltaSegment":
        """A new delta with `added` rows and without the `removed` ids."""
        gone = np.isin(self.rows.ids, removed) if len(removed) else np.zeros(len(self.rows), bool)
        rows = self.rows.take(~gone).concat(added)
        return DeltaSegment(rows, sign_code_index(rows.codes))

    def search(self, projections: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return search_codes(self.index, self.rows, projections, count)


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
