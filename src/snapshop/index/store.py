"""SQLite store inside the index folder: items, their images, vectors and fitted models.

SQLite is the source of truth and the write-ahead log of the index: every write is one
transaction, committed durably (WAL, synchronous=FULL) before `add` or `remove` reports
success. Each image that becomes searchable or stops being searchable appends a row to
`changes` in the same transaction, so any process can bring its in-memory index up to a
committed state by replaying the changes after the sequence number it has seen. A refit
of the codec (every code changes) appends one `reset` change instead.

Searches read through one connection per thread, so they see committed states only,
never the inside of a write that another thread of the same process has open.

A write is acknowledged once its WAL frames are fsynced; copying them back into the database
file (the checkpoint) happens afterwards on a background thread, not inside COMMIT.

Removing an item deletes its `items` row and logs its images' removal; the image rows
themselves (the bulk of the pages a removal would dirty) are swept by that thread after the
commit. Until then they are orphans: every read of images joins `items`, so none is seen.
(Indexes made before this keep `images.item_id REFERENCES items ON DELETE CASCADE`, and
their removals delete the image rows at once.)

The images a removal logs are found through `searchable_images` (item -> its images with a
code), without reading their rows (which hold the descriptor before the code). At 1,000,000
images, 10,000 removes took 0.28-0.37 s with it against 0.41-0.52 s without, and, with the
image rows out of the page cache, read 35 MB in 0.36 s against 335 MB in 1.36 s
(docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from snapshop.curate.duplicates import components
from snapshop.curate.quality import ImageQuality
from snapshop.errors import IndexError_

log = logging.getLogger(__name__)

SWEEP_BATCH = 2000

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id  TEXT PRIMARY KEY,
    category TEXT,
    fields   TEXT NOT NULL DEFAULT '{}'
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    image_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id    TEXT NOT NULL,
    source     TEXT NOT NULL,
    box        TEXT,
    descriptor BLOB NOT NULL,
    feature    BLOB,
    code       BLOB
);
CREATE INDEX IF NOT EXISTS images_by_item ON images(item_id);
CREATE INDEX IF NOT EXISTS pending_images ON images(item_id) WHERE code IS NULL;  -- images still to encode
CREATE INDEX IF NOT EXISTS searchable_images ON images(item_id) WHERE code IS NOT NULL;  -- what a removal logs
CREATE TABLE IF NOT EXISTS unswept_items (
    item_id TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id  INTEGER NOT NULL,
    item_id   TEXT NOT NULL,
    partition TEXT NOT NULL,
    op        TEXT NOT NULL CHECK (op IN ('add', 'remove', 'reset'))
);
CREATE TABLE IF NOT EXISTS image_traits (
    image_id INTEGER PRIMARY KEY REFERENCES images(image_id) ON DELETE CASCADE,
    quality  REAL NOT NULL,
    signals  TEXT NOT NULL,
    colours  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS duplicate_links (
    item_a   TEXT NOT NULL REFERENCES items(item_id) ON DELETE CASCADE,
    item_b   TEXT NOT NULL REFERENCES items(item_id) ON DELETE CASCADE,
    evidence TEXT NOT NULL,
    PRIMARY KEY (item_a, item_b)
);
CREATE INDEX IF NOT EXISTS links_by_b ON duplicate_links(item_b);
CREATE TABLE IF NOT EXISTS item_groups (
    item_id  TEXT PRIMARY KEY REFERENCES items(item_id) ON DELETE CASCADE,
    group_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_by_id ON item_groups(group_id);
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
    quality: ImageQuality | None = None
    colours: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class NewItem:
    """An item to store: its category, fields (title, price, ...) and embedded images."""

    item_id: str
    category: str | None
    fields: dict[str, Any]
    images: list[NewImage]


@dataclass(frozen=True)
class StoredVectors:
    """Searchable images: ids, item ids, partitions (categories), float features and codes (row-aligned)."""

    image_ids: np.ndarray
    item_ids: list[str]
    partitions: list[str]
    features: np.ndarray
    codes: np.ndarray


@dataclass(frozen=True)
class Change:
    """One entry of the change log: an image became searchable (add) or stopped being so (remove)."""

    seq: int
    image_id: int
    item_id: str
    partition: str
    op: str


@dataclass(frozen=True)
class ImageInfo:
    """What a search result needs to know of an image: its item, the item's category and
    product group (its own id when it has no duplicates), the image's quality and colours."""

    item_id: str
    category: str
    source: str
    group: str
    quality: float | None = None
    colours: list[dict] = field(default_factory=list)


VECTORS_SELECT = ("SELECT m.image_id, m.item_id, COALESCE(i.category, ''), m.feature, m.code "
                  "FROM images m JOIN items i USING(item_id) WHERE m.code IS NOT NULL")

_LOG_REMOVALS = (
    "INSERT INTO changes(image_id, item_id, partition, op) "
    "SELECT m.image_id, m.item_id, COALESCE(i.category, ''), 'remove' FROM images m JOIN items i USING(item_id) "
    "WHERE m.item_id = ? AND m.code IS NOT NULL"
)
_LOG_ADDITION = (
    "INSERT INTO changes(image_id, item_id, partition, op) "
    "SELECT m.image_id, m.item_id, COALESCE(i.category, ''), 'add' FROM images m JOIN items i USING(item_id) "
    "WHERE m.image_id = ?"
)


class MetadataStore:
    """Items, images, the change log and fitted models of one index, in `meta.sqlite`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._db = self._connect()
        try:
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{path}: the index database is damaged ({exc})") from None
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._writing_thread: int | None = None
        self._upkeep = _Upkeep(self._connect)

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path}: the index database is damaged ({exc})") from None
        return db

    @property
    def _read(self) -> sqlite3.Connection:
        """The writer's connection inside its own transaction; otherwise this thread's reader."""
        if self._writing_thread == threading.get_ident():
            return self._db
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def close(self) -> None:
        self._upkeep.close()
        self._db.close()
        reader = getattr(self._local, "db", None)
        if reader is not None:
            reader.close()

    def transaction(self) -> "_Transaction":
        """Use as `with store.transaction():`; commits durably on success, rolls back on error."""
        return _Transaction(self)

    def snapshot(self) -> "_Snapshot":
        """Use as `with store.snapshot():`; every read inside sees one committed state."""
        return _Snapshot(self._read)

    # --- writes (call inside a transaction) ---

    def upsert_items(self, items: Sequence[NewItem]) -> list[list[int]]:
        """Replace items and all their images (a few statements for the whole batch; the last
        of repeated item ids wins); returns each item's new image ids."""
        latest = {item.item_id: item for item in items}
        replaced = [(item_id,) for item_id in sorted(self._found_in("items", latest) | self._found_in("unswept_items", latest))]
        self._db.executemany(_LOG_REMOVALS, replaced)
        self._db.executemany("DELETE FROM items WHERE item_id = ?", replaced)
        self._db.executemany("DELETE FROM images WHERE item_id = ?", replaced)  # also a removed item's unswept images
        self._db.executemany("DELETE FROM unswept_items WHERE item_id = ?", replaced)
        self._db.executemany("INSERT INTO items(item_id, category, fields) VALUES (?, ?, ?)", (
            (item.item_id, item.category, json.dumps(item.fields, ensure_ascii=False, default=str))
            for item in latest.values()))
        next_id = self._next_image_id()
        image_ids: dict[str, list[int]] = {}
        rows, traits = [], []
        for item in latest.values():
            image_ids[item.item_id] = list(range(next_id, next_id + len(item.images)))
            for image_id, image in zip(image_ids[item.item_id], item.images):
                rows.append((image_id, item.item_id, image.source, json.dumps(image.box), _blob(image.descriptor)))
                if image.quality is not None:
                    traits.append((image_id, image.quality.score, json.dumps(image.quality.signals),
                                   json.dumps(image.colours)))
            next_id += len(item.images)
        self._db.executemany("INSERT INTO images(image_id, item_id, source, box, descriptor) VALUES (?, ?, ?, ?, ?)",
                             rows)
        self._db.executemany("INSERT INTO image_traits(image_id, quality, signals, colours) VALUES (?, ?, ?, ?)",
                             traits)
        return [image_ids[item.item_id] for item in items]

    def _next_image_id(self) -> int:
        """The id the next image gets: ids are never reused, not even those of deleted images."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
        return max(row[0] if row else 0, self._db.execute("SELECT COALESCE(MAX(image_id), 0) FROM images").fetchone()[0]) + 1

    def link_duplicates(self, links: list[tuple[str, str, dict]]) -> None:
        """Record verified identical-item pairs (evidence as JSON)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO duplicate_links(item_a, item_b, evidence) VALUES (?, ?, ?)",
            ((min(a, b), max(a, b), json.dumps(evidence)) for a, b, evidence in links if a != b))

    def regroup(self, item_ids: Iterable[str]) -> None:
        """Recompute the product groups of these items (and of everything linked to them)."""
        members, frontier, links = set(), set(item_ids), set()
        while frontier:
            members |= frontier
            found = self._links_touching(frontier)
            links |= found
            frontier = {item for link in found for item in link} - members
        group = components(links, members)
        existing = self.existing_items(members)
        sizes: dict[str, int] = {}
        for name in group.values():
            sizes[name] = sizes.get(name, 0) + 1
        for chunk in _chunked(sorted(members)):
            self._db.execute(f"DELETE FROM item_groups WHERE item_id IN ({','.join('?' * len(chunk))})", chunk)
        self._db.executemany("INSERT INTO item_groups(item_id, group_id) VALUES (?, ?)",
                             ((item, name) for item, name in group.items() if sizes[name] > 1 and item in existing))

    def delete_items(self, item_ids: Iterable[str]) -> list[str]:
        """Delete items; returns the ids that existed, in the order given. Their image rows
        are left to the background sweep. Deleted in id order: neighbouring rows share b-tree
        pages, so fewer pages are written."""
        existing = self.existing_items(item_ids := list(dict.fromkeys(item_ids)))
        in_id_order = [(item_id,) for item_id in sorted(existing)]
        self._db.executemany(_LOG_REMOVALS, in_id_order)
        self._db.executemany("DELETE FROM items WHERE item_id = ?", in_id_order)
        self._db.executemany("INSERT OR IGNORE INTO unswept_items(item_id) VALUES (?)", in_id_order)
        return [item_id for item_id in item_ids if item_id in existing]

    def set_vectors(self, image_ids: np.ndarray, features: np.ndarray, codes: np.ndarray, *, reset: bool = False) -> None:
        """Store float features and codes. New searchable images are logged as adds; a
        `reset` (every image re-encoded by a new codec) is logged once instead."""
        self._db.executemany(
            "UPDATE images SET feature = ?, code = ? WHERE image_id = ?",
            ((_blob(f), c.tobytes(), int(i)) for i, f, c in zip(image_ids, features, codes)),
        )
        if reset:
            self._db.execute("INSERT INTO changes(image_id, item_id, partition, op) VALUES (0, '', '', 'reset')")
        else:
            self._db.executemany(_LOG_ADDITION, ((int(i),) for i in image_ids))

    def save_fitted(self, name: str, blob: bytes, info: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO fitted(name, blob, info) VALUES (?, ?, ?)", (name, blob, json.dumps(info))
        )

    def prune_changes(self, upto: int) -> None:
        """Forget changes every segment on disk already holds."""
        self._db.execute("DELETE FROM changes WHERE seq <= ?", (upto,))

    # --- reads ---

    def _links_touching(self, item_ids: set[str]) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for chunk in _chunked(sorted(item_ids)):
            marks = ",".join("?" * len(chunk))
            found.update(self._read.execute(
                f"SELECT item_a, item_b FROM duplicate_links WHERE item_a IN ({marks}) OR item_b IN ({marks})",
                chunk + chunk).fetchall())
        return found

    def linked_items(self, item_ids: Iterable[str]) -> set[str]:
        """Items recorded as identical to any of these (not the items themselves)."""
        wanted = set(item_ids)
        return {item for link in self._links_touching(wanted) for item in link} - wanted

    def duplicate_groups(self) -> dict[str, list[str]]:
        """Every product group of two or more items: group id -> item ids."""
        groups: dict[str, list[str]] = {}
        for item_id, group_id in self._read.execute("SELECT item_id, group_id FROM item_groups ORDER BY group_id, item_id"):
            groups.setdefault(group_id, []).append(item_id)
        return groups

    def duplicate_links(self) -> list[tuple[str, str, dict]]:
        """Every verified identical-item pair, with its evidence."""
        rows = self._read.execute("SELECT item_a, item_b, evidence FROM duplicate_links ORDER BY item_a, item_b")
        return [(a, b, json.loads(evidence)) for a, b, evidence in rows]

    def fitted(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        row = self._read.execute("SELECT blob, info FROM fitted WHERE name = ?", (name,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def existing_items(self, item_ids: Iterable[str]) -> set[str]:
        return self._found_in("items", item_ids)

    def _found_in(self, table: str, item_ids: Iterable[str]) -> set[str]:
        """The ids that have a row in `table` (items, or unswept_items: removed, rows not yet swept)."""
        found: set[str] = set()
        for chunk in _chunked(list(item_ids)):
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._read.execute(f"SELECT item_id FROM {table} WHERE item_id IN ({marks})", chunk))
        return found

    def item(self, item_id: str) -> dict[str, Any] | None:
        return self.items([item_id]).get(item_id)

    def items(self, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Items that exist, by id: category, fields, image sources, main image, product group."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunked(list(dict.fromkeys(item_ids))):
            marks = ",".join("?" * len(chunk))
            images: dict[str, list[tuple[str, float | None]]] = {}
            for item_id, source, quality in self._read.execute(
                    "SELECT m.item_id, m.source, t.quality FROM images m LEFT JOIN image_traits t USING(image_id) "
                    f"WHERE m.item_id IN ({marks}) ORDER BY m.image_id", chunk):
                images.setdefault(item_id, []).append((source, quality))
            for item_id, category, fields, group in self._read.execute(
                    "SELECT i.item_id, i.category, i.fields, g.group_id FROM items i "
                    f"LEFT JOIN item_groups g USING(item_id) WHERE i.item_id IN ({marks})", chunk):
                stored = images.get(item_id, [])
                main = max(stored, key=lambda r: -1.0 if r[1] is None else r[1])[0] if stored else None
                found[item_id] = {"item_id": item_id, "category": category, "images": [r[0] for r in stored],
                                  "main_image": main, "group": group or item_id, **json.loads(fields)}
        return found

    def image_info(self, image_ids: Iterable[int]) -> dict[int, ImageInfo]:
        """Item, category and source of the images that still exist."""
        found: dict[int, ImageInfo] = {}
        for chunk in _chunked([int(i) for i in image_ids]):
            marks = ",".join("?" * len(chunk))
            rows = self._read.execute(
                "SELECT m.image_id, m.item_id, COALESCE(i.category, ''), m.source, COALESCE(g.group_id, m.item_id), "
                "t.quality, t.colours FROM images m JOIN items i USING(item_id) "
                "LEFT JOIN item_groups g USING(item_id) LEFT JOIN image_traits t USING(image_id) "
                f"WHERE m.image_id IN ({marks})", chunk)
            found.update((r[0], ImageInfo(r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else []))
                         for r in rows)
        return found

    def counts(self) -> dict[str, int]:
        db = self._read

        def count(where: str) -> int:
            return db.execute(f"SELECT COUNT(*) FROM images WHERE {where}").fetchone()[0]

        unswept = "item_id IN (SELECT item_id FROM unswept_items)"
        with self.snapshot():  # counted without a join: the few unswept images are subtracted
            return {"items": db.execute("SELECT COUNT(*) FROM items").fetchone()[0],
                    "images": count("1") - count(unswept),
                    "pending": count("code IS NULL") - count(f"code IS NULL AND {unswept}")}

    def category_counts(self) -> dict[str, int]:
        rows = self._read.execute(
            "SELECT COALESCE(i.category, ''), COUNT(*) FROM images m JOIN items i USING(item_id) GROUP BY 1 ORDER BY 1"
        )
        return dict(rows.fetchall())

    def searchable_counts(self) -> dict[str, int]:
        """Searchable images (those with a code) per category ('' when none)."""
        rows = self._read.execute(
            "SELECT COALESCE(i.category, ''), COUNT(*) FROM images m JOIN items i USING(item_id) "
            "WHERE m.code IS NOT NULL GROUP BY 1 ORDER BY 1")
        return dict(rows.fetchall())

    def descriptors(self, *, pending_only: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Image ids, pooled descriptors and item categories ('' when none)."""
        where = "WHERE m.code IS NULL" if pending_only else ""
        rows = self._read.execute(
            f"SELECT m.image_id, m.descriptor, COALESCE(i.category, '') FROM images m JOIN items i USING(item_id) {where} ORDER BY m.image_id"
        ).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        return ids, _stack([r[1] for r in rows], np.float16).astype(np.float32), [r[2] for r in rows]

    def vectors(self, image_ids: Iterable[int] | None = None) -> StoredVectors:
        """Searchable images (all, or those of `image_ids` that still exist), by image id."""
        if image_ids is None:
            rows = self._read.execute(VECTORS_SELECT + " ORDER BY m.image_id").fetchall()
        else:
            rows = []
            for chunk in _chunked(sorted({int(i) for i in image_ids})):
                rows += self._read.execute(VECTORS_SELECT + f" AND m.image_id IN ({','.join('?' * len(chunk))})",
                                           chunk).fetchall()
            rows.sort()
        return _stored_vectors(rows)

    def vector_batches(self, size: int) -> Iterator[StoredVectors]:
        """Every searchable image, by image id, `size` at a time (memory bounded by one batch)."""
        after = -1
        while rows := self._read.execute(VECTORS_SELECT + " AND m.image_id > ? ORDER BY m.image_id LIMIT ?",
                                         (after, size)).fetchall():
            yield _stored_vectors(rows)
            after = rows[-1][0]

    def last_seq(self) -> int:
        """The sequence number of the latest change ever logged (pruned ones included)."""
        row = self._read.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return row[0] if row else 0

    def changes_since(self, seq: int) -> list[Change]:
        rows = self._read.execute(
            "SELECT seq, image_id, item_id, partition, op FROM changes WHERE seq > ? ORDER BY seq", (seq,))
        return [Change(*row) for row in rows]

    def images_of(self, item_ids: Iterable[str]) -> list[int]:
        """Ids of the searchable images of these items."""
        found: list[int] = []
        for chunk in _chunked(sorted(set(item_ids))):
            found += [r[0] for r in self._read.execute(
                "SELECT m.image_id FROM images m JOIN items USING(item_id) "
                f"WHERE m.code IS NOT NULL AND m.item_id IN ({','.join('?' * len(chunk))})", chunk)]
        return sorted(found)

    def item_ids(self) -> list[str]:
        """Every item id, sorted."""
        return [r[0] for r in self._read.execute("SELECT item_id FROM items ORDER BY item_id")]

    def image_boxes(self) -> list[tuple[str, str, list[int] | None]]:
        """(item_id, source, box found at indexing) of every image."""
        rows = self._read.execute(
            "SELECT m.item_id, m.source, m.box FROM images m JOIN items USING(item_id) ORDER BY m.image_id").fetchall()
        return [(item_id, source, json.loads(box) if box else None) for item_id, source, box in rows]

    def image_rows(self) -> Iterator[tuple[int, str, str]]:
        """(image_id, item_id, source) of every image."""
        yield from self._read.execute(
            "SELECT m.image_id, m.item_id, m.source FROM images m JOIN items USING(item_id) ORDER BY m.image_id").fetchall()


class _Transaction:
    """BEGIN IMMEDIATE on the writer's connection; reads in this thread see the open write."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._db.execute("BEGIN IMMEDIATE")
        self._store._writing_thread = threading.get_ident()
        return self._store._db

    def __exit__(self, kind, value, traceback) -> None:
        self._store._writing_thread = None
        self._store._db.execute("COMMIT" if kind is None else "ROLLBACK")
        if kind is None:
            self._store._upkeep.request()


class _Upkeep:
    """After each commit, on its own thread and connection: deletes the image rows of removed
    items (SWEEP_BATCH items per transaction, so a writer waits for one batch at most), then
    copies committed WAL frames into the database file (SQLite's passive checkpoint: it never
    blocks readers or the writer). At 1,000,000 items both used to happen inside the commit
    of 10,000 removes: the cascading image deletes dirtied ~56 MB of pages, the checkpoint
    took ~0.5 s."""

    def __init__(self, connect) -> None:
        self._connect = connect
        self._due = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Run soon; requests made while it runs are served by one more run."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlite-upkeep", daemon=True)
            self._thread.start()
        self._due.set()

    def _run(self) -> None:
        db = self._connect()
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._closing:
                    return
                try:
                    self._sweep(db)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # e.g. busy past the timeout; nothing is lost
                    log.warning("index upkeep postponed until after the next write: %s", exc)
        finally:
            db.close()

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Delete the unswept image rows of removed items, a batch of items per transaction
        (the write lock is taken only when there is something to sweep)."""
        while not self._closing and db.execute("SELECT 1 FROM unswept_items LIMIT 1").fetchone():
            db.execute("BEGIN IMMEDIATE")
            try:
                batch = db.execute("SELECT item_id FROM unswept_items LIMIT ?", (SWEEP_BATCH,)).fetchall()
                db.executemany("DELETE FROM images WHERE item_id = ?", batch)
                db.executemany("DELETE FROM unswept_items WHERE item_id = ?", batch)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Stop the thread (after the batch or checkpoint it may be running); the store's last
        connection to close checkpoints whatever is left."""
        if self._thread is not None:
            self._closing = True
            self._due.set()
            self._thread.join()
            self._thread = None


class _Snapshot:
    """A read transaction: one committed state for every read inside it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = db.in_transaction

    def __enter__(self) -> None:
        if not self._outer:
            self._db.execute("BEGIN")

    def __exit__(self, kind, value, traceback) -> None:
        if not self._outer:
            self._db.execute("COMMIT")


def _stored_vectors(rows: list[tuple]) -> StoredVectors:
    """Rows of VECTORS_SELECT as arrays."""
    return StoredVectors(
        image_ids=np.array([r[0] for r in rows], np.int64),
        item_ids=[r[1] for r in rows],
        partitions=[r[2] for r in rows],
        features=_stack([r[3] for r in rows], np.float16),
        codes=_stack([r[4] for r in rows], np.uint8),
    )


def _chunked(values: list, size: int = 500) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, np.float16).tobytes()


def _stack(blobs: list[bytes], dtype: type) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 0), dtype)
    return np.frombuffer(b"".join(blobs), dtype).reshape(len(blobs), -1)
