"""SQLite store inside the index folder: items, their images, vectors and fitted models.

SQLite is the source of truth: every write is one transaction, committed durably
(WAL, synchronous=FULL) before `add` or `remove` reports success.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from snapshop.errors import IndexError_

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id  TEXT PRIMARY KEY,
    category TEXT,
    fields   TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS images (
    image_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id    TEXT NOT NULL REFERENCES items(item_id) ON DELETE CASCADE,
    source     TEXT NOT NULL,
    box        TEXT,
    descriptor BLOB NOT NULL,
    feature    BLOB,
    code       BLOB
);
CREATE INDEX IF NOT EXISTS images_by_item ON images(item_id);
CREATE TABLE IF NOT EXISTS fitted (
    name      TEXT PRIMARY KEY,
    blob      BLOB NOT NULL,
    info      TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass(frozen=True)
class NewImage:
    """An embedded catalog image ready to be stored."""

    item_id: str
    source: str
    box: list[int]
    descriptor: np.ndarray


@dataclass(frozen=True)
class StoredVectors:
    """Every searchable image: ids, item ids, categories, float features and codes (row-aligned)."""

    image_ids: np.ndarray
    item_ids: list[str]
    categories: list[str]
    features: np.ndarray
    codes: np.ndarray


class MetadataStore:
    """Items, images and fitted models of one index, in `meta.sqlite`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{path}: the index database is damaged ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def transaction(self) -> "sqlite3.Connection":
        """Use as `with store.transaction() as db:`; commits on success, rolls back on error."""
        return _Transaction(self._db)

    # --- writes (call inside a transaction) ---

    def upsert_item(self, item_id: str, category: str | None, fields: dict[str, Any], images: list[NewImage]) -> None:
        """Replace an item and all its images."""
        self._db.execute("DELETE FROM items WHERE item_id = ?", (item_id,))
        self._db.execute(
            "INSERT INTO items(item_id, category, fields) VALUES (?, ?, ?)",
            (item_id, category, json.dumps(fields, ensure_ascii=False, default=str)),
        )
        self._db.executemany(
            "INSERT INTO images(item_id, source, box, descriptor) VALUES (?, ?, ?, ?)",
            [(item_id, image.source, json.dumps(image.box), _blob(image.descriptor)) for image in images],
        )

    def delete_items(self, item_ids: Iterable[str]) -> list[str]:
        """Delete items (and their images); returns the ids that existed."""
        deleted = []
        for item_id in item_ids:
            if self._db.execute("DELETE FROM items WHERE item_id = ?", (item_id,)).rowcount:
                deleted.append(item_id)
        return deleted

    def set_vectors(self, image_ids: np.ndarray, features: np.ndarray, codes: np.ndarray) -> None:
        self._db.executemany(
            "UPDATE images SET feature = ?, code = ? WHERE image_id = ?",
            ((_blob(f), c.tobytes(), int(i)) for i, f, c in zip(image_ids, features, codes)),
        )

    def save_fitted(self, name: str, blob: bytes, info: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO fitted(name, blob, info) VALUES (?, ?, ?)", (name, blob, json.dumps(info))
        )

    # --- reads ---

    def fitted(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        row = self._db.execute("SELECT blob, info FROM fitted WHERE name = ?", (name,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def existing_items(self, item_ids: Iterable[str]) -> set[str]:
        ids = list(item_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._db.execute(f"SELECT item_id FROM items WHERE item_id IN ({marks})", chunk))
        return found

    def item(self, item_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT category, fields FROM items WHERE item_id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        images = [r[0] for r in self._db.execute("SELECT source FROM images WHERE item_id = ? ORDER BY image_id", (item_id,))]
        return {"item_id": item_id, "category": row[0], "images": images, **json.loads(row[1])}

    def image_source(self, image_id: int) -> str | None:
        row = self._db.execute("SELECT source FROM images WHERE image_id = ?", (image_id,)).fetchone()
        return row[0] if row else None

    def counts(self) -> dict[str, int]:
        items = self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        images = self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        pending = self._db.execute("SELECT COUNT(*) FROM images WHERE code IS NULL").fetchone()[0]
        return {"items": items, "images": images, "pending": pending}

    def category_counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT COALESCE(i.category, ''), COUNT(*) FROM images m JOIN items i USING(item_id) GROUP BY 1 ORDER BY 1"
        )
        return dict(rows.fetchall())

    def descriptors(self, *, pending_only: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Image ids, pooled descriptors and item categories ('' when none)."""
        where = "WHERE m.code IS NULL" if pending_only else ""
        rows = self._db.execute(
            f"SELECT m.image_id, m.descriptor, COALESCE(i.category, '') FROM images m JOIN items i USING(item_id) {where} ORDER BY m.image_id"
        ).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        return ids, _stack([r[1] for r in rows], np.float16).astype(np.float32), [r[2] for r in rows]

    def vectors(self) -> StoredVectors:
        rows = self._db.execute(
            "SELECT m.image_id, m.item_id, COALESCE(i.category, ''), m.feature, m.code "
            "FROM images m JOIN items i USING(item_id) WHERE m.code IS NOT NULL ORDER BY m.image_id"
        ).fetchall()
        return StoredVectors(
            image_ids=np.array([r[0] for r in rows], np.int64),
            item_ids=[r[1] for r in rows],
            categories=[r[2] for r in rows],
            features=_stack([r[3] for r in rows], np.float16),
            codes=_stack([r[4] for r in rows], np.uint8),
        )

    def image_rows(self) -> Iterator[tuple[int, str, str]]:
        """(image_id, item_id, source) of every image."""
        yield from self._db.execute("SELECT image_id, item_id, source FROM images ORDER BY image_id")


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind, value, traceback) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, np.float16).tobytes()


def _stack(blobs: list[bytes], dtype: type) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 0), dtype)
    return np.frombuffer(b"".join(blobs), dtype).reshape(len(blobs), -1)
