"""The Milvus index backend: the binary codes of an index in a Milvus collection.

Needs the `cluster` extra (`pip install snapshop[cluster]`) and a Milvus 2.3+ server
(standalone or a cluster; Milvus Lite cannot stand in: it has no BIN_IVF_FLAT).

```
collection snapshop_<id>_g<generation>      (its name is kept in <index>/milvus.json)
  image_id  INT64          primary key (an item has several images: one row each)
  item_id   VARCHAR
  category  VARCHAR        partition key: a category search reads only its partitions
  code      BINARY_VECTOR  the 256-bit code; index BIN_IVF_FLAT, metric HAMMING
```

SQLite (`index.store`) stays the source of truth: items, images, float features and the
change log. Every process brings the collection up to the committed log before it
searches, under `<index>/milvus.lock`: an `add` change becomes a Milvus upsert (done as
delete + insert, see `_upsert`), a `remove` a Milvus delete (both idempotent, so a push
cut short by a crash is simply pushed again), and `milvus.json` records the change-log
position the collection holds.
A refit of the codec (a `reset` in the log), a pruned log, or another server fills a new
collection from the store and swaps it in; the old one is dropped.

Search asks Milvus for the Hamming shortlist only and re-ranks it with the float16
features read from the local store by primary key: Milvus 2.3 allows one vector field
per collection, and the measurement in docs/scaling.md found the store lookup faster
than returning 256 floats per candidate from Milvus. Candidates the store no longer
holds (deleted, even inside the consistency window) are dropped there, so a deleted
image is never returned.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from snapshop.errors import BackendError
from snapshop.index import rerank
from snapshop.index.live import Candidates, IndexParams, checked_queries, file_stamp
from snapshop.index.store import Change, MetadataStore
from snapshop.models.projection import sign_code
from snapshop.settings import Settings

try:
    import grpc
    from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, MilvusException, connections, utility
    from pymilvus.client.types import LoadState
except ImportError:  # pragma: no cover - the message is the point
    raise BackendError("the milvus backend needs the cluster extra: pip install 'snapshop[cluster]'") from None

log = logging.getLogger(__name__)
# pymilvus logs every retry of a request; its final failure becomes one BackendError here.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

STATE = "milvus.json"
SYNC_LOCK = "milvus.lock"
# Timeouts are whole seconds: pymilvus retries an unreachable server until an int timeout
# runs out, but 75 times (about 3.5 minutes) when it is given a float.
CONNECT_TIMEOUT = 10  # seconds to reach the server
ADMIN_TIMEOUT = 120  # seconds for a collection's creation, load, flush or compaction
PUSH_BATCH = 5000  # rows per upsert / ids per delete request
MAX_TOPK = 16384  # Milvus's largest search limit
PARTITION_BUCKETS = 64  # physical partitions the category partition key hashes into
NAME_LENGTH = 1024  # longest item_id / category stored


@dataclass
class SyncState:
    """The contents of milvus.json: which collection on which server holds the log up to `seq`,
    for which index folder (a copied folder must not push into its original's collection)."""

    uri: str
    collection: str
    codec: str
    seq: int
    generation: int = 0
    folder: str = ""

    @classmethod
    def read(cls, path: Path) -> "SyncState | None":
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("%s is damaged (%s); the collection is filled again from the database", path, exc)
            return None

    def write(self, path: Path) -> None:
        """Atomic replace with fsync."""
        scratch = path.with_suffix(".json.tmp")
        with open(scratch, "w") as handle:
            json.dump(asdict(self), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)


class MilvusIndex:
    """The searchable images of one index folder, in a Milvus collection kept current from the change log."""

    def __init__(self, folder: Path, store: MetadataStore, params: IndexParams, codec: str, settings: Settings) -> None:
        self.folder = Path(folder)
        self.store = store
        self.params = params
        self.codec = codec
        self.uri = settings.milvus_uri
        self.consistency = settings.milvus_consistency
        self.nlist = settings.milvus_nlist
        self.timeout = int(settings.milvus_timeout)
        self.seq = 0
        self._partitions: dict[str, int] = {}
        self._wrote = False  # this process pushed writes: its searches read them (Session consistency)
        self._lock = threading.Lock()
        self._alias = f"snapshop-{uuid.uuid4().hex[:12]}"
        self._state_stamp: tuple[int, int] | None = None
        with _milvus_errors(self.uri):
            try:
                connections.connect(alias=self._alias, uri=self.uri, token=settings.milvus_token,
                                    timeout=CONNECT_TIMEOUT)
            except MilvusException as exc:
                raise BackendError(f"cannot reach Milvus at {self.uri} ({_reason(exc)})") from None
        self.collection: Collection | None = None
        self._sync()

    @property
    def state_path(self) -> Path:
        return self.folder / STATE

    # --- keeping up with the change log ------------------------------------------------------

    def refresh(self) -> bool:
        """Push the changes committed since the last look. True when the codec was refit (a
        `reset`): the caller reloads its fitted models and opens a new index."""
        if self.store.last_seq() == self.seq and file_stamp(self.state_path) == self._state_stamp:
            return False
        if any(change.op == "reset" for change in self.store.changes_since(self.seq)):
            return True
        self._sync()
        return False

    def _sync(self) -> None:
        """Bring the collection up to the committed change log (one process at a time). When
        Milvus fails meanwhile, the changes stay committed in the store for the next push."""
        with self._lock, _file_lock(self.folder / SYNC_LOCK), self.store.snapshot():
            last = self.store.last_seq()
            try:
                with _milvus_errors(self.uri):
                    state = self._brought_up_to(last)
            except BackendError as exc:
                held = SyncState.read(self.state_path)
                pending = last - (held.seq if held is not None and held.uri == self.uri else 0)
                if pending > 0:
                    raise BackendError(f"{exc}; the {pending} change(s) committed since the last push are "
                                       "kept in the index and pushed when Milvus answers again") from None
                raise
            state.write(self.state_path)
            self._state_stamp = file_stamp(self.state_path)
            self.seq = last
            self._partitions = {name: count for name, count in self.store.searchable_counts().items() if count}

    def _brought_up_to(self, last: int) -> SyncState:
        """The collection holding the log up to `last`: this one with the changes pushed, or a new one filled."""
        state = SyncState.read(self.state_path)
        here = str(self.folder.resolve())
        if state is not None and state.folder not in ("", here):
            log.warning("this index was copied or moved from %s: it gets a collection of its own; drop %s on %s "
                        "once that folder is gone", state.folder, state.collection, state.uri)
            state = None  # the original's collection: never written from here
        if not self._usable(state):
            return self._fill(state, last)
        state.folder = here
        if state.seq < last:
            changes = self.store.changes_since(state.seq)
            if not changes or changes[0].seq != state.seq + 1 or any(c.op == "reset" for c in changes):
                return self._fill(state, last)  # the log was pruned past this collection, or refit
            self._open(state.collection)
            self._push(changes)
            state.seq = last
        else:
            self._open(state.collection)
        return state

    def _usable(self, state: SyncState | None) -> bool:
        """The state names a collection on this server, for this codec, that still exists."""
        return (state is not None and state.uri == self.uri and state.codec == self.codec
                and utility.has_collection(state.collection, using=self._alias, timeout=self.timeout))

    def _fill(self, previous: SyncState | None, last: int) -> SyncState:
        """A new collection holding every searchable image of the store; the previous one dropped."""
        if previous is not None and previous.uri == self.uri:
            prefix, generation = previous.collection.rsplit("_g", 1)[0], previous.generation + 1
        else:
            prefix, generation = f"snapshop_{uuid.uuid4().hex[:12]}", 0
        name = f"{prefix}_g{generation}"
        log.info("filling Milvus collection %s from the database", name)
        self.collection = self._create(name)
        for vectors in self.store.vector_batches(PUSH_BATCH):
            self._upsert(vectors.image_ids, vectors.item_ids, vectors.partitions, vectors.codes)
        self._wrote = True
        if previous is not None and previous.uri == self.uri and previous.collection != name:
            utility.drop_collection(previous.collection, using=self._alias, timeout=ADMIN_TIMEOUT)
        return SyncState(self.uri, name, self.codec, last, generation, str(self.folder.resolve()))

    def _create(self, name: str) -> Collection:
        """An empty, indexed, loaded collection (shards and replicas from the settings)."""
        fields = [
            FieldSchema("image_id", DataType.INT64, is_primary=True, auto_id=False),
            FieldSchema("item_id", DataType.VARCHAR, max_length=NAME_LENGTH),
            FieldSchema("category", DataType.VARCHAR, max_length=NAME_LENGTH, is_partition_key=True),
            FieldSchema("code", DataType.BINARY_VECTOR, dim=self.params.bits),
        ]
        schema = CollectionSchema(fields, description=f"snapshop index {self.folder.name}")
        collection = Collection(name, schema, using=self._alias, shards_num=self.params.shards,
                                num_partitions=PARTITION_BUCKETS, consistency_level=self.consistency,
                                timeout=ADMIN_TIMEOUT)
        collection.create_index("code", {"index_type": "BIN_IVF_FLAT", "metric_type": "HAMMING",
                                         "params": {"nlist": self.nlist}}, timeout=ADMIN_TIMEOUT)
        self._load(collection)
        return collection

    def _open(self, name: str) -> None:
        if self.collection is None or self.collection.name != name:
            collection = Collection(name, using=self._alias, timeout=self.timeout)
            self._load(collection)
            self.collection = collection

    def _load(self, collection: Collection) -> None:
        try:
            collection.load(replica_number=self.params.replicas, timeout=ADMIN_TIMEOUT)
        except MilvusException as exc:
            raise BackendError(f"Milvus at {self.uri} cannot load {self.params.replicas} replica(s) of "
                               f"{collection.name} ({_reason(exc)})") from None

    def _push(self, changes: list[Change]) -> None:
        """Apply changes: removes as deletes, adds (of images still in the store) as upserts."""
        gone = {c.image_id for c in changes if c.op == "remove"}
        removed = sorted(gone)
        added = self.store.vectors(c.image_id for c in changes if c.op == "add" and c.image_id not in gone)
        for start in range(0, len(removed), PUSH_BATCH):
            self.collection.delete(f"image_id in {removed[start:start + PUSH_BATCH]}", timeout=self.timeout)
        self._upsert(added.image_ids, added.item_ids, added.partitions, added.codes)
        self._wrote = True

    def _upsert(self, image_ids: np.ndarray, item_ids: list[str], categories: list[str], codes: np.ndarray) -> None:
        """Upsert as delete + insert: Milvus 2.3.5's own upsert routes rows of a partition-key
        collection to a partition that a category filter never reads (seen here; the rows are
        found only by an unfiltered search)."""
        for start in range(0, len(image_ids), PUSH_BATCH):
            rows = slice(start, start + PUSH_BATCH)
            self.collection.delete(f"image_id in {image_ids[rows].tolist()}", timeout=self.timeout)
            self.collection.insert([image_ids[rows].tolist(), item_ids[rows], categories[rows],
                                    [code.tobytes() for code in codes[rows]]], timeout=self.timeout)

    # --- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(self._partitions.values())

    @property
    def partitions(self) -> dict[str, int]:
        """Searchable image count per category, from the store at the log position pushed."""
        return dict(self._partitions)

    def search(self, projections: np.ndarray, features: np.ndarray, shortlist: int,
               partitions: Sequence[str] | None = None, *, explain: bool = False) -> Candidates:
        """The Hamming shortlist of the queries' codes (the signs of `projections`, which shortlist
        better than the signs of the bare rotation: docs/benchmarks.md) from Milvus,
        re-ranked by float cosine; best `shortlist` first (with `explain`, a report per partition).

        Milvus is asked once for `shortlist` candidates per partition searched, at most 16384:
        its binary vectors are compared by Hamming distance only, which ranks worse than the
        faiss backend's asymmetric scores (docs/benchmarks.md)."""
        projections, features = checked_queries(self.params, projections, features)
        codes = sign_code(projections)
        names = list(self._partitions) if partitions is None else [p for p in partitions if p in self._partitions]
        if not names or not len(codes):
            empty = np.full((len(codes), 0), -1, np.int64)
            return Candidates(empty, empty.astype(np.float32), empty.astype(object))
        start = time.perf_counter()
        ids = self._shortlist(codes, min(shortlist * len(names), MAX_TOPK),
                              None if partitions is None else names)
        hamming_ms = (time.perf_counter() - start) * 1000
        candidates = self._rerank(ids, features, shortlist)
        total_ms = round((time.perf_counter() - start) * 1000, 3)
        if not explain:
            return candidates
        found = candidates.image_ids >= 0
        report = [{"partition": name, "shard": 0, "base": f"milvus {self.collection.name}",
                   "base_images": self._partitions[name], "delta_images": 0, "tombstones": 0,
                   "candidates": int(((candidates.partitions == name) & found).sum() / len(codes)),
                   "ms": total_ms, "hamming_ms": round(hamming_ms, 3)} for name in names]
        return Candidates(candidates.image_ids, candidates.scores, candidates.partitions, report)

    def _shortlist(self, codes: np.ndarray, limit: int, names: list[str] | None) -> list[list[int]]:
        """Image ids of each query's `limit` nearest codes (Hamming) in these categories (None: all)."""
        expr = None if names is None else f"category in [{', '.join(json.dumps(n, ensure_ascii=False) for n in names)}]"
        level = "Session" if self._wrote and self.consistency in ("Bounded", "Eventually") else self.consistency

        def search():
            return self.collection.search(
                data=[code.tobytes() for code in codes], anns_field="code",
                param={"metric_type": "HAMMING", "params": {"nprobe": self.params.nprobe}},
                limit=limit, expr=expr, output_fields=[], consistency_level=level, timeout=self.timeout)

        with _milvus_errors(self.uri):
            try:
                answer = search()
            except (MilvusException, grpc.RpcError):
                # A restarted server may still be loading the collection (or have released it;
                # its proxy then answers the search with a gRPC deadline error):
                # load it (this waits until it is searchable) and ask once more.
                if utility.load_state(self.collection.name, using=self._alias, timeout=self.timeout) == LoadState.Loaded:
                    raise
                self._load(self.collection)
                answer = search()
        return [list(hits.ids) for hits in answer]

    def _rerank(self, shortlists: list[list[int]], features: np.ndarray, shortlist: int) -> Candidates:
        """Cosine re-rank with the store's float16 features; images the store no longer holds are dropped."""
        stored = self.store.vectors({i for ids in shortlists for i in ids})
        row_of = {int(image_id): row for row, image_id in enumerate(stored.image_ids)}
        width = min(shortlist, max((len(ids) for ids in shortlists), default=0))
        out_ids = np.full((len(shortlists), width), -1, np.int64)
        out_scores = np.full((len(shortlists), width), -np.inf, np.float32)
        out_names = np.full((len(shortlists), width), "", object)
        for q, ids in enumerate(shortlists):
            rows = [row_of[i] for i in ids if i in row_of]
            if not rows:
                continue
            scores = rerank.cosines(stored.features[rows][None], features[q : q + 1])[0]
            order = np.argsort(-scores, kind="stable")[:width]
            out_ids[q, :len(order)] = stored.image_ids[rows][order]
            out_scores[q, :len(order)] = scores[order]
            out_names[q, :len(order)] = [stored.partitions[rows[i]] for i in order]
        return Candidates(out_ids, out_scores, out_names)

    def segment_report(self) -> list[dict]:
        """The collection's segments as Milvus's query nodes report them (rows still in the
        message stream, not yet in a segment, are not counted)."""
        with _milvus_errors(self.uri):
            segments = utility.get_query_segment_info(self.collection.name, using=self._alias, timeout=self.timeout)
        return [{"partition": "*", "shard": 0, "base": f"milvus segment {s.segmentID} ({s.index_name or 'no index'})",
                 "base_images": s.num_rows, "delta_images": 0, "tombstones": 0} for s in segments]

    # --- compaction -----------------------------------------------------------------------------

    def due_for_compaction(self) -> list[tuple[str, int]]:
        """Never: Milvus seals, indexes and compacts its segments itself (`compact` also prunes the log)."""
        return []

    def compact(self, keys: Sequence[tuple[str, int]] | None = None) -> list[dict]:
        """Seal the growing segments (so they are indexed), ask Milvus to compact, and prune
        the change log up to what this collection and any faiss segments both hold."""
        self._sync()
        with _milvus_errors(self.uri):
            self.collection.flush(timeout=ADMIN_TIMEOUT)
            self.collection.compact(timeout=ADMIN_TIMEOUT)
            self.collection.wait_for_compaction_completed(timeout=ADMIN_TIMEOUT)
        upto = min([self.seq, *_faiss_segment_seqs(self.folder)])
        with self.store.transaction():
            self.store.prune_changes(upto)
        return [{"partition": name, "shard": 0, "images": count, "base": self.collection.name}
                for name, count in self._partitions.items()]

    def close(self) -> None:
        connections.disconnect(self._alias)


def _faiss_segment_seqs(folder: Path) -> list[int]:
    """Change-log positions the faiss base segments of this folder hold (they must not be pruned past)."""
    from snapshop.index.live import LAYOUT, Layout

    layout = Layout.read(folder / LAYOUT)
    return [entry.seq for entry in layout.segments] if layout is not None else []


@contextmanager
def _milvus_errors(uri: str) -> Iterator[None]:
    """A refused or failed Milvus request as one line for the user."""
    try:
        yield
    except (MilvusException, grpc.RpcError) as exc:
        raise BackendError(f"Milvus at {uri}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The message of a Milvus error (or of a gRPC call's error), on one line."""
    message = exc.details() if isinstance(exc, grpc.Call) else getattr(exc, "message", exc)
    return " ".join(str(message or exc).split())


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (waits for another process's push to finish)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
