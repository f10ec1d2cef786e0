"""Segments: the units a partition is made of, and their files.

A *base* segment is immutable and lives on disk: image ids (sorted), packed codes and
float16 features as `.npy` files opened memory-mapped, plus, when it holds at least
`ivf_min` images, a faiss `IndexBinaryIVF` read with `IO_FLAG_MMAP`; a smaller one is
searched exactly with an `IndexBinaryIDMap2(IndexBinaryFlat)` built on load. A *delta*
segment holds the recent writes in memory. Both are values: a write makes a new delta,
so a query that started on the old one finishes on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

IVF_TRAIN_PER_LIST = 64
DRIFT_RATIO = 1.15  # retrain IVF centroids when new data sits this much farther from them


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


def flat_index(rows: Rows, bits: int) -> faiss.IndexBinaryIDMap2:
    index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
    if len(rows):
        index.add_with_ids(np.ascontiguousarray(rows.codes), np.ascontiguousarray(rows.ids))
    return index


@dataclass(frozen=True)
class BaseSegment:
    """An immutable, memory-mapped segment file set."""

    name: str
    rows: Rows
    index: faiss.IndexBinary
    kind: str  # "flat" or "ivf"
    train_distance: float  # mean Hamming distance of the training codes to their IVF centroid

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def build(cls, folder: Path, name: str, rows: Rows, *, bits: int, ivf_min: int,
              previous: "BaseSegment | None" = None) -> "BaseSegment":
        """Write a new segment's files (fsynced) and open it."""
        folder.mkdir(parents=True, exist_ok=True)
        train_distance = 0.0
        if len(rows) >= ivf_min:
            index, train_distance = _ivf_index(rows, bits, previous)
            _write_durably(folder / f"{name}.faiss", lambda path: faiss.write_index_binary(index, str(path)))
        for part in ("ids", "codes", "features"):
            _write_durably(folder / f"{name}.{part}.npy", lambda path, part=part: np.save(path, getattr(rows, part)))
        fsync_folder(folder)
        return cls.load(folder, name, bits=bits, train_distance=train_distance)

    @classmethod
    def load(cls, folder: Path, name: str, *, bits: int, train_distance: float = 0.0) -> "BaseSegment":
        rows = Rows(*(np.load(folder / f"{name}.{part}.npy", mmap_mode="r") for part in ("ids", "codes", "features")))
        ivf_file = folder / f"{name}.faiss"
        if ivf_file.is_file():
            return cls(name, rows, faiss.read_index_binary(str(ivf_file), faiss.IO_FLAG_MMAP), "ivf", train_distance)
        return cls(name, rows, flat_index(rows, bits), "flat", 0.0)

    def search(self, codes: np.ndarray, count: int, nprobe: int) -> np.ndarray:
        """Ids of the `count` nearest codes per query (-1 pads)."""
        if not len(self.rows) or count <= 0:
            return np.full((len(codes), 0), -1, np.int64)
        count = min(count, len(self.rows))
        if self.kind == "ivf":
            _, ids = self.index.search(codes, count, params=faiss.SearchParametersIVF(nprobe=nprobe))
        else:
            _, ids = self.index.search(codes, count)
        return ids


@dataclass(frozen=True)
class DeltaSegment:
    """Recent writes, in memory, searched exactly."""

    rows: Rows
    index: faiss.IndexBinaryIDMap2

    @classmethod
    def empty(cls, bits: int, dim: int) -> "DeltaSegment":
        rows = Rows.empty(bits, dim)
        return cls(rows, flat_index(rows, bits))

    def __len__(self) -> int:
        return len(self.rows)

    def with_rows(self, added: Rows, removed: np.ndarray, bits: int) -> "DeltaSegment":
        """A new delta with `added` rows and without the `removed` ids: one `remove_ids` call per batch."""
        gone = np.isin(self.rows.ids, removed) if len(removed) else np.zeros(len(self.rows), bool)
        rows = self.rows.take(~gone).concat(added)
        index = _copy(self.index)
        if gone.any():
            index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(self.rows.ids[gone])))
        if len(added):
            index.add_with_ids(np.ascontiguousarray(added.codes), np.ascontiguousarray(added.ids))
        return DeltaSegment(rows, index)

    def search(self, codes: np.ndarray, count: int) -> np.ndarray:
        if not len(self.rows):
            return np.full((len(codes), 0), -1, np.int64)
        return self.index.search(codes, min(count, len(self.rows)))[1]


def _ivf_index(rows: Rows, bits: int, previous: BaseSegment | None) -> tuple[faiss.IndexBinaryIVF, float]:
    """An IVF over the rows, reusing the previous segment's centroids unless the data drifted."""
    codes = np.ascontiguousarray(rows.codes)
    nlist = int(np.clip(np.sqrt(len(rows)), 16, 4096))
    sample = codes[np.random.default_rng(0).permutation(len(codes))[: nlist * IVF_TRAIN_PER_LIST]]
    if previous is not None and previous.kind == "ivf" and 2 / 3 <= previous.index.nlist / nlist <= 1.5:
        index = _empty_ivf(_copy(previous.index.quantizer), bits, previous.index.nlist)
        index.is_trained = True
        if _mean_centroid_distance(index, sample) <= previous.train_distance * DRIFT_RATIO:
            index.add_with_ids(codes, np.ascontiguousarray(rows.ids))
            return index, previous.train_distance
    index = _empty_ivf(faiss.IndexBinaryFlat(bits), bits, nlist)
    index.train(sample)
    index.add_with_ids(codes, np.ascontiguousarray(rows.ids))
    return index, _mean_centroid_distance(index, sample)


def _copy(index: faiss.IndexBinary) -> faiss.IndexBinary:
    """A deep copy (faiss cannot clone every binary index type, but can serialize it)."""
    return faiss.deserialize_index_binary(faiss.serialize_index_binary(index))


def _empty_ivf(quantizer: faiss.IndexBinary, bits: int, nlist: int) -> faiss.IndexBinaryIVF:
    index = faiss.IndexBinaryIVF(quantizer, bits, nlist)
    index.own_fields = True
    quantizer.this.disown()
    return index


def _mean_centroid_distance(index: faiss.IndexBinaryIVF, codes: np.ndarray) -> float:
    distances, _ = index.quantizer.search(codes, 1)
    return float(distances.mean())


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
