"""The live index: category partitions x shards x replicas, kept current from the change log.

```
snapshop-index/
  segments.json          which base segment each (partition, shard) has, and the change-log
                         position (seq) it holds; replaced atomically after fsync
  segments/<name>.*.npy        ids, codes, float16 features of a base segment (memory-mapped;
                               the codes also packed into a faiss list in memory)
```

SQLite (`index.store`) is the source of truth; segment files are a derived, durable
cache of it. Opening an index loads the base segments and replays the changes after each
one's seq into in-memory deltas and tombstones; `refresh` replays new changes the same way,
so writes by this or another process are visible to the next query without a rebuild.
`compact` folds a partition's delta and tombstones into a new base and swaps it in: a query
sees the whole old state or the whole new one, because each query reads one immutable view.

Items are placed on shards by a hash of `item_id`. A query fans out to every shard; each
shard answers from one of its replicas in turn (another one when it fails): one scan of the
searched partitions' codes gives its best `shortlist` candidates (index/scan.py), it re-ranks
those by float cosine, and the merger keeps the global best.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import faiss
import numpy as np

from snapshop.errors import IndexError_
from snapshop.index import rerank
from snapshop.index.coarse import ListPlan, planned_lists
from snapshop.index.partition import PartitionState
from snapshop.index.scan import PAD, ROW_MASK, CodeScan
from snapshop.index.segments import BaseSegment, Rows
from snapshop.index.store import Change, MetadataStore, StoredVectors
from snapshop.settings import Settings

log = logging.getLogger(__name__)

LAYOUT = "segments.json"
SEGMENTS = "segments"
LOAD_ATTEMPTS = 3
RERANK_BLOCK = 32_768  # candidate rows gathered for one re-rank call (16 MB of float16 at 256 dimensions)


@dataclass(frozen=True)
class Candidates:
    """Per query, image ids best first with their cosine scores and partitions; -1 / -inf pad short lists."""

    image_ids: np.ndarray
    scores: np.ndarray
    partitions: np.ndarray
    explain: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class IndexParams:
    """How the index is split and searched."""

    bits: int
    dim: int
    shards: int = 1
    replicas: int = 1
    nprobe: int = 16  # inverted lists a Milvus search visits
    lists_probed: int = 500  # k-means lists a search scans per shard (every delta and small base whole)
    centroid_weight: float = 0.12  # of a probed list's centroid score, added to its codes' (index/scan.py)
    list_size: int = 512  # images per k-means list of a large base segment ...
    lists_from: int = 65_536  # ... of this many images or more
    compact_delta: int = 10_000
    compact_tombstones: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings, *, bits: int, dim: int) -> "IndexParams":
        """The parameters the settings (snapshop.settings) give, for codes of `bits` and features of `dim`."""
        return cls(bits=bits, dim=dim, **{name: getattr(settings, name) for name in cls.__dataclass_fields__
                                          if name not in ("bits", "dim")})


def checked_queries(params: IndexParams, projections: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A search's queries as contiguous float32: projections N x bits, features N x dim (else a TypeError / ValueError)."""
    projections = np.asarray(projections)
    if projections.dtype.kind != "f" or projections.ndim != 2 or projections.shape[1] != params.bits:
        raise TypeError(f"projections must be float of shape (N, {params.bits}), got {projections.dtype} {projections.shape}")
    features = np.asarray(features)
    if features.shape != (len(projections), params.dim):
        raise ValueError(f"features must be of shape ({len(projections)}, {params.dim}), got {features.shape}")
    return np.ascontiguousarray(projections, np.float32), np.ascontiguousarray(features, np.float32)


@dataclass(frozen=True)
class SegmentEntry:
    """One base segment in segments.json: its file name stem, place, and the change-log seq it holds."""

    name: str
    partition: str
    shard: int
    seq: int


@dataclass
class Layout:
    """The contents of segments.json."""

    codec: str
    shards: int
    generation: int = 0
    segments: list[SegmentEntry] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> "Layout | None":
        try:
            data = json.loads(path.read_text())
            known = set(SegmentEntry.__dataclass_fields__)
            return cls(data["codec"], data["shards"], data["generation"],
                       [SegmentEntry(**{k: v for k, v in s.items() if k in known}) for s in data["segments"]])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s is damaged (%s); rebuilding the index from the database", path, exc)
            return None

    def write(self, path: Path) -> None:
        """Atomic replace with fsync of the file and its folder."""
        scratch = path.with_suffix(".json.tmp")
        with open(scratch, "w") as handle:
            json.dump({**asdict(self), "segments": [asdict(s) for s in self.segments]}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@dataclass(frozen=True)
class ShardHits:
    """One shard's answer: per query, re-ranked image ids best first, their cosines and partitions."""

    image_ids: np.ndarray
    scores: np.ndarray
    partitions: np.ndarray
    explain: list[dict]


class ShardCodes:
    """A shard's code lists stacked for one scan, with the partition (by number) and the rows
    each segment belongs to, and which of its rows are tombstoned."""

    def __init__(self, states: Sequence[PartitionState]) -> None:
        owned = [(number, segment) for number, state in enumerate(states) for segment in state.code_lists()]
        segments = [segment for _, segment in owned]
        self.scan = CodeScan([segment.codes for segment in segments])
        self.owner = np.array([number for number, _ in owned], np.int64)
        self.list_owner = np.repeat(self.owner, [segment.codes.lists for segment in segments])
        self.rows = [segment.rows for segment in segments]
        self._segments_of = [np.flatnonzero(self.owner == number) for number in range(len(states))]
        self.dead = (np.concatenate([np.zeros(segment.codes.size, bool) if segment.dead is None else segment.dead
                                     for segment in segments])
                     if any(segment.dead is not None for segment in segments) else None)
        start = np.concatenate([[0], np.cumsum(self.scan.sizes)[:-1]]).astype(np.int64)
        self._dead_offset = start[self.scan.by_label] - self.scan.first_labels  # by label order, as first_labels
        self.dead_count = np.array([0 if segment.dead is None else int(segment.dead.sum()) for segment in segments],
                                   np.int64)

    def shortlist(self, projections: np.ndarray, features: np.ndarray, shortlist: int, partitions: np.ndarray,
                  nprobe: int, centroid_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Per query (its projection and float embedding), the labels of the best `shortlist` live
        codes of the given partitions, sorted (grouped by segment, PAD last; see CodeScan); and
        the lists it probed.

        Segments split into k-means lists are scanned in the `nprobe` lists whose centroids
        score best with the query's embedding, the others whole; a code in a probed list scores
        `centroid_weight` times its centroid's score above the probed ones' mean more (a second,
        partly independent estimate of its cosine: see docs/index.md). Where every list is
        scanned, a threshold scan answers where it pays and passes enough live codes. Else a top-k scan
        (over a few hundred lists scattered in memory, faster than a threshold scan: 1M images,
        490 of 1,953 lists, shortlist 3,000: 1.8 ms, against 1.9 ms and 0.4 ms for the sample's
        threshold) fetches as many more than the shortlist as the tombstones' share of the
        segments predicts (twice over), since tombstoned codes are dropped after the scan, and
        asks again for a query left short."""
        segments = (np.concatenate([self._segments_of[number] for number in partitions])
                    if len(partitions) else np.zeros(0, np.int64))
        probe, priors = self.scan.probe(features, segments, nprobe, centroid_weight)
        dead_share = int(self.dead_count[segments].sum()) / max(int(self.scan.sizes[segments].sum()), 1)
        total = int(self.scan.probed_codes(probe).max(initial=0))
        width = min(shortlist, total)
        labels = np.full((len(projections), width), PAD, np.int64)
        left = np.ones(len(projections), bool)
        above = self.scan.above_threshold(projections, width, segments) if width and probe.ndim == 1 else None
        for query, (scores, found) in enumerate(above or []):
            if dead_share:
                alive = ~self._tombstoned(found)
                scores, found = scores[alive], found[alive]
            if len(scores) >= width:
                best = np.argpartition(-scores, width - 1)[:width] if len(scores) > width else slice(None)
                labels[query], left[query] = found[best], False
        if left.all():
            labels = self._top_k(projections, width, probe, priors, total, dead_share)
        elif left.any():  # only where every list is probed: no priors
            labels[left] = self._top_k(projections[left], width, probe, None, total, dead_share)
        labels.sort(axis=1)
        return labels, probe

    def _top_k(self, projections: np.ndarray, width: int, probe: np.ndarray, priors: np.ndarray | None,
               total: int, dead_share: float) -> np.ndarray:
        """The labels of the top-k scan's best `width` live codes per query (PAD pads)."""
        extra = int(np.ceil(2 * width * dead_share)) + 16 if dead_share else 0
        while True:
            _, labels = self.scan.top_k(projections, width + extra, probe, priors)
            live = labels >= 0
            if dead_share:
                live &= ~self._tombstoned(labels)
            if labels.shape[1] >= total or (live.sum(axis=1) >= width).all():
                break
            extra *= 2
        if live.all():
            return labels[:, :width]
        kept = np.full((len(labels), width), PAD, np.int64)
        for query, (found, alive) in enumerate(zip(labels, live)):
            best = found[alive][:width]  # best first
            kept[query, : len(best)] = best
        return kept

    def _tombstoned(self, labels: np.ndarray) -> np.ndarray:
        """Whether each label is a tombstoned code's (only when some segment has tombstones;
        garbage for -1 pads): a label plus its segment's offset is its place in `dead`."""
        return self.dead.take(labels + self._dead_offset[np.searchsorted(self.scan.first_labels, labels, "right") - 1],
                              mode="clip")


class ShardReplica:
    """One copy of one shard: its partitions' states (an immutable mapping, replaced on write)."""

    def __init__(self, shard: int, states: dict[str, PartitionState]) -> None:
        self.shard = shard
        self.states = states
        self.codes = ShardCodes(list(states.values()))  # by the writer that publishes it, not by a query
        self._names = np.asarray(list(states) + [None], object)
        self._numbers = {name: number for number, name in enumerate(states)}
        self._explained = [self._explain(state) for state in states.values()]  # what a state holds, once
        self._rows_by_label = [self.codes.rows[number] for number in self.codes.scan.by_label]
        self._label_bounds = np.append(self.codes.scan.first_labels, PAD)  # where each one's labels start; pads
        self._segment_by_label = np.append(self.codes.scan.by_label, -1)

    def search(self, projections: np.ndarray, features: np.ndarray, shortlist: int,
               partitions: Sequence[str] | None, nprobe: int, centroid_weight: float = 0.0, *,
               explain: bool = False) -> ShardHits:
        """The best `shortlist` codes over the searched partitions (one scan), re-ranked; with
        `explain`, what each partition held and gave, and the timings."""
        searched = np.array(sorted({self._numbers[name] for name in (self._numbers if partitions is None else partitions)
                                    if name in self._numbers}), np.int64)
        if not len(searched):
            empty = np.full((len(projections), 0), -1, np.int64)
            return ShardHits(empty, empty.astype(np.float32), empty.astype(object), [])
        start = time.perf_counter()
        labels, probe = self.codes.shortlist(projections, features, shortlist, searched, nprobe, centroid_weight)
        shortlist_ms = round((time.perf_counter() - start) * 1000, 3)
        start = time.perf_counter()
        ids, cosines, segments = self._rerank(labels, features)
        rerank_ms = round((time.perf_counter() - start) * 1000, 3)
        owner = np.where(segments >= 0, self.codes.owner[segments], len(self._numbers))  # a pad's segment, -1, picks any
        if not explain:
            return ShardHits(ids, cosines, self._names[owner], [])
        per_partition = np.bincount(owner.ravel(), minlength=len(self._numbers) + 1) / max(len(owner), 1)
        probed = np.atleast_2d(probe)
        lists_probed = np.bincount(self.codes.list_owner[probed[probed >= 0]], minlength=len(self._numbers)) / len(probed)
        report = [{**self._explained[number], "candidates": int(per_partition[number]),
                   "lists_probed": round(float(lists_probed[number]), 1), "ms": shortlist_ms, "rerank_ms": rerank_ms}
                  for number in searched]
        return ShardHits(ids, cosines, self._names[owner], report)

    def _rerank(self, labels: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shortlisted codes' image ids, float cosines with their query and segment numbers,
        best first (-1 / -inf / -1 pad).

        Each query's labels come sorted, so each segment's ids and features are copied in one
        ascending pass straight into the re-rank's input, a block of queries at a time
        (RERANK_BLOCK rows at most)."""
        rows = labels & ROW_MASK
        ids = np.full(labels.shape, -1, np.int64)
        segments = np.empty(labels.shape, np.int64)
        cosines = np.empty(labels.shape, np.float32)
        step = max(1, RERANK_BLOCK // max(labels.shape[1], 1))
        for start in range(0, len(labels), step):
            block = slice(start, start + step)
            stored = np.empty((*labels[block].shape, features.shape[1]), np.float16)  # pads: scored, then -inf
            for query, query_labels in enumerate(labels[block], start):
                bounds = np.searchsorted(query_labels, self._label_bounds)
                segments[query] = np.repeat(self._segment_by_label, np.diff(bounds, append=labels.shape[1]))
                bounds = bounds.tolist()
                for segment, low, high in zip(self._rows_by_label, bounds, bounds[1:]):
                    if high > low:
                        np.take(segment.ids, rows[query, low:high], out=ids[query, low:high])
                        np.take(segment.features, rows[query, low:high], axis=0, out=stored[query - start, low:high])
            cosines[block] = rerank.cosines(stored, features[block])
        cosines[segments < 0] = -np.inf
        order = np.argsort(-cosines, axis=1)
        return tuple(np.take_along_axis(a, order, 1) for a in (ids, cosines, segments))

    def _explain(self, state: PartitionState) -> dict:
        return segment_summary(state, self.shard)


class LiveIndex:
    """Searchable state of one index folder, current with the store's change log."""

    def __init__(self, folder: Path, store: MetadataStore, params: IndexParams, codec: str) -> None:
        self.folder = Path(folder)
        self.store = store
        self.params = params
        self.codec = codec
        self.seq = 0
        self.shards: list[list[ShardReplica]] = []
        self._replaced: list[list[ShardReplica]] = []
        self._layout_stamp: tuple[int, int] | None = None
        self._apply_lock = threading.Lock()
        self._turn = [itertools.count() for _ in range(params.shards)]
        self._pool = ThreadPoolExecutor(max_workers=params.shards) if params.shards > 1 else None
        self._load()

    # --- loading and catching up --------------------------------------------------------------

    @property
    def layout_path(self) -> Path:
        return self.folder / LAYOUT

    def _usable_layout(self) -> Layout:
        layout = Layout.read(self.layout_path)
        if layout is None or layout.codec != self.codec:  # segment names stay unique: generations go on
            return Layout(self.codec, self.params.shards, layout.generation if layout else 0)
        return layout

    def _load(self) -> None:
        """Open the base segments of the layout and replay the changes after them."""
        for attempt in range(LOAD_ATTEMPTS):
            try:
                self._load_once()
                return
            except FileNotFoundError as exc:  # a compaction swapped segments while we read the layout
                log.info("segment file vanished while loading (%s); again", exc)
        raise IndexError_(f"{self.folder}: segment files keep changing while loading; is a compaction stuck?")

    def _load_once(self) -> None:
        with self._apply_lock, self.store.snapshot():
            stamp = file_stamp(self.layout_path)
            layout = self._usable_layout()
            if layout.shards != self.params.shards:
                layout = Layout(self.codec, self.params.shards)  # re-shard: the next compaction writes it
            seq = self.store.last_seq()
            replicas = []
            for replica in range(self.params.replicas):
                opened = self._opened_segments(replica)
                states: dict[tuple[str, int], PartitionState] = {}
                for entry in layout.segments:
                    base = opened.get(entry.name) or BaseSegment.load(self.folder / SEGMENTS, entry.name)
                    empty = self._empty(entry.partition, entry.shard, entry.seq)
                    states[(entry.partition, entry.shard)] = PartitionState(
                        entry.partition, entry.shard, base, empty.delta, empty.tombstones, entry.seq)
                replicas.append(states)
            covered = {(e.partition, e.shard) for e in layout.segments}
            uncovered = self._rows_without_segment(covered, seq)
            for states in replicas:
                for key, rows in uncovered.items():
                    states[key] = self._empty(*key, seq).apply(rows, np.zeros(0, np.int64))
            lowest = min([e.seq for e in layout.segments], default=seq)
            self._publish(replicas, seq=lowest)
            self._replay(self.store.changes_since(lowest), upto=seq)
            self._layout_stamp = stamp

    def _opened_segments(self, replica: int) -> dict[str, BaseSegment]:
        """The base segments the current view of a replica has open, by name: a reload after a
        compaction opens only the new ones (a segment file never changes under its name)."""
        return {state.base.name: state.base for shard in self.shards for state in shard[replica].states.values()
                if state.base is not None}

    def _rows_without_segment(self, covered: set[tuple[str, int]], seq: int) -> dict[tuple[str, int], Rows]:
        """Rows of the (partition, shard)s that have no base segment yet, read from the store."""
        partitions = {name for name in self.store.category_counts()}
        if all((p, s) in covered for p in partitions for s in range(self.params.shards)):
            return {}
        vectors = self.store.vectors()
        keys = [(p, self.shard_of(item)) for p, item in zip(vectors.partitions, vectors.item_ids)]
        return {key: rows for key, rows in _group(vectors, keys).items() if key not in covered}

    def refresh(self) -> bool:
        """Apply the changes committed since the last look. True when the codec was refit
        (a `reset`): the caller must reload its fitted models, and this index is rebuilt."""
        if self.store.last_seq() == self.seq and file_stamp(self.layout_path) == self._layout_stamp:
            return False
        with self._apply_lock, self.store.snapshot():
            stamp = file_stamp(self.layout_path)
            changes = self.store.changes_since(self.seq)
            reset = any(c.op == "reset" for c in changes)
            gap = bool(changes) and changes[0].seq != self.seq + 1
            if not (reset or gap) and (stamp == self._layout_stamp or self._open_changed_segments()):
                self._layout_stamp = stamp
                if changes:
                    self._replay(changes, upto=changes[-1].seq)
                return False
        if reset:
            return True
        self._load()
        return False

    def _open_changed_segments(self) -> bool:
        """After another process's compaction: open the segments whose names changed and swap
        in their partitions' states alone. False where only a full load will do (a re-shard,
        another codec, a partition left without a segment, a segment gone meanwhile)."""
        layout = Layout.read(self.layout_path)
        if layout is None or layout.codec != self.codec or layout.shards != self.params.shards:
            return False
        current = self._replica_states()[0]
        entries = {(e.partition, e.shard): e for e in layout.segments}
        if any(state.base is not None and key not in entries for key, state in current.items()):
            return False
        changed = [e for key, e in entries.items()
                   if key not in current or current[key].base is None or current[key].base.name != e.name]
        try:
            self._swap_states({(e.partition, e.shard): (BaseSegment.load(self.folder / SEGMENTS, e.name), e.seq)
                               for e in changed})
        except FileNotFoundError:
            return False
        return True

    def _replay(self, changes: list[Change], *, upto: int) -> None:
        """Apply changes (seq <= upto) to every replica; each state skips what its base holds."""
        changes = [c for c in changes if c.seq <= upto and c.op != "reset"]
        if changes:
            added = self.store.vectors(c.image_id for c in changes if c.op == "add")
            rows_by_id = {int(i): row for row, i in enumerate(added.image_ids)}
            updated = []
            for replica_states in self._replica_states():
                updated.append(self._apply(replica_states, changes, added, rows_by_id))
            self._publish(updated, seq=upto)
        else:
            self.seq = max(self.seq, upto)

    def _apply(self, states: dict[tuple[str, int], PartitionState], changes: list[Change],
               added: StoredVectors, rows_by_id: dict[int, int]) -> dict[tuple[str, int], PartitionState]:
        per_key: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for change in changes:
            key = (change.partition, self.shard_of(change.item_id))
            state = states.get(key)
            if state is not None and change.seq <= state.seq:
                continue
            adds, removes = per_key.setdefault(key, ([], []))
            if change.op == "add" and change.image_id in rows_by_id:
                adds.append(rows_by_id[change.image_id])
            elif change.op == "remove":
                removes.append(change.image_id)
        new_states = dict(states)
        for key, (adds, removes) in per_key.items():
            state = new_states.get(key) or self._empty(*key, 0)
            rows = Rows(added.image_ids[adds], added.codes[adds], added.features[adds]) if adds else \
                Rows.empty(self.params.bits, self.params.dim)
            new_states[key] = state.apply(rows, np.array(removes, np.int64))
        return new_states

    def _empty(self, partition: str, shard: int, seq: int) -> PartitionState:
        return PartitionState.empty(partition, shard, bits=self.params.bits, dim=self.params.dim, seq=seq)

    def _replica_states(self) -> list[dict[tuple[str, int], PartitionState]]:
        return [
            {(name, shard.shard): state for shard in (self.shards[s][r] for s in range(len(self.shards)))
             for name, state in shard.states.items()}
            for r in range(self.params.replicas)
        ] if self.shards else [{} for _ in range(self.params.replicas)]

    def _publish(self, replicas: list[dict[tuple[str, int], PartitionState]], *, seq: int) -> None:
        """Swap in a new view: one list assignment, so a query sees the old or the new one whole.
        The view it replaces is kept until the next publish: else the last query still on it
        would free it, and unmapping a compacted segment's files took that query 7-12 ms."""
        self._replaced = self.shards
        self.shards = [
            [ShardReplica(shard, {p: st for (p, s), st in states.items() if s == shard}) for states in replicas]
            for shard in range(self.params.shards)
        ]
        self.seq = seq

    def shard_of(self, item_id: str) -> int:
        return zlib.crc32(item_id.encode()) % self.params.shards

    # --- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(self.partitions.values())

    @property
    def partitions(self) -> dict[str, int]:
        """Searchable image count per partition (partitions with none left out)."""
        counts: dict[str, int] = {}
        for replicas in self.shards:
            for name, state in replicas[0].states.items():
                counts[name] = counts.get(name, 0) + len(state)
        return {name: count for name, count in sorted(counts.items()) if count}

    def image_ids(self) -> np.ndarray:
        """Every searchable image id, ascending (first replica of each shard)."""
        parts = [state.live_rows().ids for replicas in self.shards for state in replicas[0].states.values()]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def segment_report(self) -> list[dict]:
        """Per (partition, shard): base kind, size and lists, delta size, tombstones."""
        return [segment_summary(state, replicas[0].shard)
                for replicas in self.shards for _, state in sorted(replicas[0].states.items())]

    def search(self, projections: np.ndarray, features: np.ndarray, shortlist: int,
               partitions: Sequence[str] | None = None, *, explain: bool = False) -> Candidates:
        """Every shard's best `shortlist` re-ranked candidates, merged; best first (with
        `explain`, each shard's report per partition).

        `projections` are the queries' float projections on the code's axes (N x bits: their
        signs are the queries' codes), `features` their float embeddings (N x dim)."""
        projections, features = checked_queries(self.params, projections, features)
        shards = self.shards  # one view for the whole query
        if self._pool is not None:
            answers = list(self._pool.map(lambda s: self._ask_shard(s, projections, features, shortlist, partitions,
                                                                    explain), shards))
        else:
            answers = [self._ask_shard(s, projections, features, shortlist, partitions, explain) for s in shards]
        if not answers:
            empty = np.full((len(projections), 0), -1, np.int64)
            return Candidates(empty, empty.astype(np.float32), empty.astype(object))
        if len(answers) == 1:
            return Candidates(answers[0].image_ids, answers[0].scores, answers[0].partitions, answers[0].explain)
        ids, scores, names = (np.concatenate([getattr(a, part) for a in answers], axis=1)
                              for part in ("image_ids", "scores", "partitions"))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :shortlist]
        return Candidates(np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1),
                          np.take_along_axis(names, order, 1), [entry for a in answers for entry in a.explain])

    def _ask_shard(self, replicas: list[ShardReplica], projections: np.ndarray, features: np.ndarray, shortlist: int,
                   partitions: Sequence[str] | None, explain: bool) -> ShardHits:
        """The shard's answer from its replicas in turn; a failing replica hands over to the next."""
        first = next(self._turn[replicas[0].shard]) % len(replicas)
        failures = []
        for replica in replicas[first:] + replicas[:first]:
            try:
                with _one_faiss_thread():
                    return replica.search(projections, features, shortlist, partitions, self.params.lists_probed,
                                          self.params.centroid_weight, explain=explain)
            except Exception as exc:  # noqa: BLE001 - any replica fault is survivable while another answers
                log.warning("shard %d: a replica failed (%s); asking another", replica.shard, exc)
                failures.append(exc)
        raise IndexError_(f"shard {replicas[0].shard}: every replica failed ({failures[-1]})")

    # --- compaction -----------------------------------------------------------------------------

    def due_for_compaction(self) -> list[tuple[str, int]]:
        """(partition, shard)s whose delta or tombstones outgrew their thresholds."""
        if not self.shards:
            return []
        if Layout.read(self.layout_path) is None and len(self) >= self.params.compact_delta:
            return self._all_keys()
        return [
            (name, replicas[0].shard) for replicas in self.shards for name, state in replicas[0].states.items()
            if len(state.delta) >= self.params.compact_delta or len(state.tombstones) >= self.params.compact_tombstones
        ]

    def _all_keys(self) -> list[tuple[str, int]]:
        return [(name, replicas[0].shard) for replicas in self.shards for name in replicas[0].states]

    def compact(self, keys: Sequence[tuple[str, int]] | None = None) -> list[dict]:
        """Fold delta and tombstones of `keys` (all when None) into new base segments and swap
        them in. The caller holds the index's write lock, so nothing commits meanwhile."""
        layout = self._usable_layout()
        reshard = layout.shards != self.params.shards
        if reshard:  # every segment anew
            layout, keys = Layout(self.codec, self.params.shards, layout.generation), None
        shards, seq = self.shards, self.seq
        states = {(name, replicas[0].shard): state for replicas in shards for name, state in replicas[0].states.items()}
        entries = {(e.partition, e.shard): e for e in layout.segments}
        report, built = [], {}
        for key in (list(states) if keys is None else [k for k in keys if k in states]):
            rows = states[key].live_rows()
            entries.pop(key, None)
            built[key] = None
            if len(rows):
                name = self._new_segment_name(layout, key)
                with _one_faiss_thread():  # k-means lists: the queries that go on meanwhile keep a core
                    lists = self._planned_lists(states[key].base, rows)
                built[key] = BaseSegment.build(self.folder / SEGMENTS, name, rows, lists)
                entries[key] = SegmentEntry(name, key[0], key[1], seq)
            report.append({"partition": key[0], "shard": key[1], "images": len(rows),
                           "base": entries[key].name if key in entries else None})
        layout.segments = sorted(entries.values(), key=lambda e: (e.partition, e.shard))
        layout.write(self.layout_path)
        if reshard:
            self._load()
        else:
            with self._apply_lock, self.store.snapshot():
                self._swap_states({key: (base, seq) for key, base in built.items()})
                self._layout_stamp = file_stamp(self.layout_path)
        with self.store.transaction():
            self.store.prune_changes(min((e.seq for e in layout.segments), default=0))
        self._remove_unused_files(layout)
        return report

    def _planned_lists(self, old_base: BaseSegment | None, rows: Rows) -> tuple[np.ndarray, np.ndarray] | None:
        """The k-means lists of a new base segment of `rows`, with the old base's centroids where they still fit."""
        plan = ListPlan(self.params.list_size, self.params.lists_from)
        if old_base is None or old_base.centroids is None:
            return planned_lists(plan, rows.features)
        return planned_lists(plan, rows.features, old_base.rows.rows_of(rows.ids), (old_base.centroids, old_base.list_of))

    def _swap_states(self, built: dict[tuple[str, int], tuple[BaseSegment | None, int]]) -> None:
        """Publish new states for the partitions given a new base segment (holding the changes
        up to its seq; None: nothing left), with the changes this index applied since. Every
        other partition keeps its state: a reload would replay the change log since the oldest
        segment, seconds of Python at 1M images that queries wait on for the interpreter. The
        caller holds the apply lock and a store snapshot."""
        if not built:
            return
        later = [c for c in self.store.changes_since(min(seq for _, seq in built.values()))
                 if c.seq <= self.seq and (c.partition, self.shard_of(c.item_id)) in built]
        added = self.store.vectors(c.image_id for c in later if c.op == "add")
        rows_by_id = {int(i): row for row, i in enumerate(added.image_ids)}
        replicas = []
        for replica, states in enumerate(self._replica_states()):
            for key, (base, seq) in built.items():
                states.pop(key, None)  # a partition left empty gets a fresh state from its later changes
                if base is not None:
                    base = base if replica == 0 else BaseSegment.load(self.folder / SEGMENTS, base.name)
                    states[key] = replace(self._empty(*key, seq), base=base)
            replicas.append(self._apply(states, later, added, rows_by_id) if later else states)
        self._publish(replicas, seq=self.seq)

    def _new_segment_name(self, layout: Layout, key: tuple[str, int]) -> str:
        """A name no segment file has: a file's contents never change under a reader that mapped
        it (a lost segments.json restarts the generations, so taken names are skipped)."""
        while True:
            layout.generation += 1
            name = f"p{hashlib.sha1(key[0].encode()).hexdigest()[:10]}-s{key[1]}-g{layout.generation}"
            if not (self.folder / SEGMENTS / f"{name}.ids.npy").exists():
                return name

    def _remove_unused_files(self, layout: Layout) -> None:
        keep = {entry.name for entry in layout.segments}
        for path in (self.folder / SEGMENTS).glob("*"):
            if path.name.split(".")[0] not in keep:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def segment_summary(state: PartitionState, shard: int) -> dict:
    """What a partition of a shard holds: base kind ("codes": one list) and size, delta,
    tombstones, and the lists a scan of them all would visit (the base's and the delta's)."""
    base_lists = state.base.codes.lists if state.base else 0
    return {"partition": state.partition, "shard": shard,
            "base": ("k-means lists" if base_lists > 1 else "codes") if state.base else None,
            "base_images": len(state.base) if state.base else 0, "delta_images": len(state.delta),
            "tombstones": len(state.tombstones), "lists": base_lists + (1 if len(state.delta) else 0)}


@contextmanager
def _one_faiss_thread() -> Iterator[None]:
    """One OpenMP thread for this thread's faiss work: spinning OpenMP workers fight over busy
    cores (measured on 2 cores with other work running: 33 ms a query in batches of 32 with two
    threads, 9 ms with one); parallelism comes from shards and concurrent queries."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _group(vectors: StoredVectors, keys: list[tuple[str, int]]) -> dict[tuple[str, int], Rows]:
    rows_of: dict[tuple[str, int], list[int]] = {}
    for row, key in enumerate(keys):
        rows_of.setdefault(key, []).append(row)
    return {key: Rows(vectors.image_ids[rows], vectors.codes[rows], vectors.features[rows])
            for key, rows in rows_of.items()}


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime, inode) of a file that is replaced atomically; None when it does not exist."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_mtime_ns, status.st_ino
