"""The code scan: sign codes in faiss fast-scan form, and one search over many segments' codes.

Codes are searched asymmetrically: a query keeps its float projection on the code's axes
(the signs of which would be its own code), and an image scores the inner product of that
projection with its code's signs, +1 or -1 per bit (Gordo et al., "Asymmetric distances for
binary embeddings"). Only the catalog side is quantized, so the shortlist ranks far closer to
float cosine than Hamming distance between two codes does (measured in docs/benchmarks.md:
on 1M images, recall@10 0.92 against Hamming's 0.65 with the same 1,600-image shortlist).
faiss computes it with its 4-bit fast-scan product quantizer whose every codebook is the 16
corners of a 4-d cube (±1 on each axis): a code's PQ encoding is then its own bits, stored once,
32 bytes per image at 256 bits, and each image's score is a sum of SIMD table lookups.

A segment's codes are one faiss inverted-lists object (`CodeList`), labelled `tag << 32 | row`:
a single list, or, for a large base segment, one list per k-means centroid (index/coarse.py).
A shard stacks the lists of all its segments, without copying them, under one fast-scan IVF
index (`CodeScan`) and searches the lists a query asks for with `search_preassigned` (each
query its own lists): one pass and one heap of R for every partition, where a scan per
partition kept a heap each and the shard merged them (1M images in ten partitions, shortlist
2600, same machine and day: 4.6-4.9 ms a query against 7.7-8.7 ms; docs/benchmarks.md).

A shortlist many times smaller than the codes of whole segments is found by threshold instead
(`CodeScan.above_threshold`): faiss's top-k scan slows as k grows (its reservoir refills and
re-selects from the start of the scan, when its threshold is still low), while a scan against
a fixed threshold only collects what passes. Every large segment keeps a sample of its codes (one in
SAMPLE_STRIDE); the score that a little more than the wanted share of the sample exceeds is the
threshold, and one faiss range search over the lists returns every code above it.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import faiss
import numpy as np

CORNERS = np.array([[1.0 if (corner >> axis) & 1 else -1.0 for axis in range(4)] for corner in range(16)], np.float32)
ADD_CHUNK = 65_536
BLOCK = 32  # codes per fast-scan block
IN_PROBE_ORDER = 11  # faiss's IVF fast-scan implementation that visits a query's lists in the order given, into a reservoir
REVERSED_BITS = np.array([int(f"{byte:08b}"[::-1], 2) for byte in range(256)], np.uint8)
TAG_SHIFT = 32
ROW_MASK = (1 << TAG_SHIFT) - 1
PAD = np.iinfo(np.int64).max  # a label that sorts after every real one: it pads a shortlist
_tags = itertools.count(1)  # process-wide: two lists stacked together never share a tag
SAMPLE_STRIDE = 32  # a large segment's sample holds one code in 32 ...
SAMPLED_LIST_MIN = 4_096  # ... of segments this large or larger
THRESHOLD_SCAN_MIN = 64  # a threshold scan pays when the sampled codes outnumber the wanted ones 64 times
THRESHOLD_SCAN_BATCH_MAX = 2  # larger batches are cheaper by top-k: faiss shares each pass over the codes among them
MARGIN_SIGMAS = 3  # the threshold is this many standard deviations of the sample's count below the wanted share
RANGE_INDEXES_KEPT = 64  # views of probed subsets kept for threshold scans
PROBE_PLANS_KEPT = 64  # sets of searched segments whose lists are kept numbered


def code_signs(codes: np.ndarray) -> np.ndarray:
    """Packed codes (N x bits/8 uint8, first bit in the high bit of a byte) as ±1 floats, N x bits."""
    return np.unpackbits(codes, axis=1).astype(np.float32) * 2 - 1


def _with_corner_codebooks(index: faiss.IndexPQFastScan | faiss.IndexIVFPQFastScan, bits: int):
    faiss.copy_array_to_vector(np.tile(CORNERS, (bits // 4, 1)).ravel(), index.pq.centroids)
    index.is_trained = True
    return index


def sign_code_index(codes: np.ndarray) -> faiss.IndexPQFastScan:
    """A flat faiss index of packed codes that scores a query projection q against code b as
    sum_i q_i * (±1 by bit i of b); its labels are row numbers. (The engine holds its codes as
    `CodeList`s; this is the same scan over one array, for comparisons.)"""
    bits = codes.shape[1] * 8
    index = _with_corner_codebooks(faiss.IndexPQFastScan(bits, bits // 4, 4, faiss.METRIC_INNER_PRODUCT), bits)
    for start in range(0, len(codes), ADD_CHUNK):  # each cube corner encodes as itself: the code's own bits
        index.add(code_signs(np.asarray(codes[start : start + ADD_CHUNK])))
    return index


def _lists_index(bits: int, lists: int) -> faiss.IndexIVFPQFastScan:
    """An IVF fast-scan index over the corner codebooks whose lists are chosen by the caller
    (a range search scans every list, its coarse quantizer's zeros being all alike)."""
    quantizer = faiss.IndexFlatL2(bits)
    quantizer.add(np.zeros((lists, bits), np.float32))
    index = faiss.IndexIVFPQFastScan(quantizer, bits, lists, bits // 4, 4, faiss.METRIC_INNER_PRODUCT)
    index.by_residual = False
    return _with_corner_codebooks(index, bits)


class CodeList:
    """One segment's codes as faiss inverted lists, labelled `tag << 32 | row`: one list, or
    one per k-means centroid (`centroids`, lists x feature dim), each code in the one `list_of` names.

    A code's PQ encoding over the corner codebooks is its own bits (the low nibble of a PQ byte
    holds dims 8j..8j+3, dim 8j in its lowest bit: our packed bytes with their bits reversed),
    so the lists are filled by faiss's own fast-scan packer, block by block, without encoding
    float vectors (30 ms for 100,000 codes against 380 ms through `IndexPQFastScan.add`).
    A large segment keeps a sample of its codes (one in SAMPLE_STRIDE), in one list."""

    def __init__(self, codes: np.ndarray, list_of: np.ndarray | None = None, centroids: np.ndarray | None = None, *,
                 sampled: bool = True) -> None:
        self.tag = next(_tags)
        self.size, self.bits = len(codes), codes.shape[1] * 8
        self.centroids = centroids
        self.lists = 1 if centroids is None else len(centroids)
        list_of = np.zeros(self.size, np.int64) if centroids is None else np.asarray(list_of, np.int64)
        self.sample = (CodeList(np.ascontiguousarray(codes[::SAMPLE_STRIDE]), sampled=False)
                       if sampled and self.size >= SAMPLED_LIST_MIN else None)
        self.list_sizes = np.bincount(list_of, minlength=self.lists).astype(np.int64)
        self._owner = _lists_index(self.bits, self.lists)
        self.invlists = self._owner.invlists
        inverted = faiss.downcast_InvertedLists(self.invlists)
        members = np.argsort(list_of, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(self.list_sizes)])
        for number in np.flatnonzero(self.list_sizes):
            rows = members[bounds[number] : bounds[number + 1]]
            blocks = _fast_scan_blocks(codes[rows], inverted.packer)
            labels = rows | (self.tag << TAG_SHIFT)
            inverted.add_entries(int(number), len(rows), faiss.swig_ptr(labels), faiss.swig_ptr(blocks))  # copied

    @property
    def nbytes(self) -> int:
        """Memory it holds: packed codes (whole blocks of 32 per list), an 8-byte label per code,
        its centroids and its sample's."""
        own = int((-(-self.list_sizes // BLOCK)).sum()) * BLOCK * self.bits // 8 + 8 * self.size
        own += self.centroids.nbytes if self.centroids is not None else 0
        return own + (self.sample.nbytes if self.sample is not None else 0)


def _fast_scan_blocks(codes: np.ndarray, packer: faiss.CodePacker) -> np.ndarray:
    """Packed codes (N x bits/8) laid out as faiss fast-scan blocks of 32 codes."""
    blocks = -(-len(codes) // BLOCK)
    pq_codes = np.zeros((blocks * BLOCK, codes.shape[1]), np.uint8)
    pq_codes[: len(codes)] = REVERSED_BITS[codes]
    packed = np.empty((blocks, packer.block_size), np.uint8)
    for block in range(blocks):
        packer.pack_all(faiss.swig_ptr(pq_codes[block * BLOCK : (block + 1) * BLOCK]), faiss.swig_ptr(packed[block]))
    return packed


class CodeScan:
    """The lists of many segments stacked (faiss VStackInvertedLists, no copy) under one index.

    The stack numbers the lists of segment i from `first[i]` on. `probe` names the lists a
    search scans: the one list of each segment kept whole, and of the segments split into
    k-means lists, the `nprobe` (over them all) whose centroids score best with the query's
    float embedding. A search answers with labels: sorted, a query's labels group by segment
    (segments in `by_label` order, each from its `first_labels` on), rows ascending."""

    def __init__(self, lists: Sequence[CodeList]) -> None:
        self.lists = list(lists)
        self.sizes = np.array([code_list.size for code_list in self.lists], np.int64)
        counts = np.array([code_list.lists for code_list in self.lists], np.int64)
        self.first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.list_sizes = (np.concatenate([code_list.list_sizes for code_list in self.lists])
                           if self.lists else np.zeros(0, np.int64))
        tags = np.array([code_list.tag for code_list in self.lists], np.int64)
        self.by_label = np.argsort(tags)  # segment numbers in the order of their labels
        self.first_labels = tags[self.by_label] << TAG_SHIFT  # and the smallest label each can have
        if self.lists:
            self._index = _with_priors(_stacked(self.lists))
            self._single_query_index = _with_priors(_in_probe_order(self._index))
        self.split = np.array([code_list.centroids is not None for code_list in self.lists], bool)
        split_counts = np.where(self.split, counts, 0)
        self._first_centroid = np.cumsum(split_counts) - split_counts  # a split segment's first row of _centroids
        self._centroids = (np.ascontiguousarray(np.concatenate([self.lists[number].centroids
                                                                for number in np.flatnonzero(self.split)]), np.float32)
                           if self.split.any() else None)
        sampled = [number for number, code_list in enumerate(self.lists) if code_list.sample is not None]
        self._samples = CodeScan([self.lists[number].sample for number in sampled]) if sampled else None
        self._sample_of = np.full(len(self.lists), -1, np.int64)
        self._sample_of[sampled] = np.arange(len(sampled))
        self._padded_list_sizes = np.append(self.list_sizes, 0)  # -1 pads a probe
        self._range_indexes: dict[bytes, faiss.IndexIVFPQFastScan] = {}
        self._probe_plans: dict[bytes, tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]] = {}
        self._search_widths: dict[int, faiss.SearchParametersIVF] = {}

    def lists_of(self, segments: np.ndarray) -> np.ndarray:
        """The stack's numbers of every list of the given segments."""
        if not len(segments):
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(self.first[number], self.first[number] + self.lists[number].lists)
                               for number in segments])

    def probe(self, features: np.ndarray, segments: np.ndarray, nprobe: int,
              centroid_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
        """The lists to scan of the given segments, for queries with these float embeddings: one
        row for every query where that is all their lists, else a row per query (see the
        class's docstring); and, with the latter, each list's prior (see `top_k`): its
        centroid's score above the mean of the probed centroids', times `centroid_weight` (0
        for a list scanned whole)."""
        whole, split, ranges = self._probe_plan(segments)
        if len(split) <= nprobe:
            return np.concatenate([whole, split]), None
        nearest, scores = self._nearest_centroids(features, nprobe, ranges)
        priors = centroid_weight * (scores - scores.mean(axis=1, keepdims=True))
        if not len(whole):
            return split[nearest], priors
        shape = (len(features), len(whole))
        return (np.concatenate([np.broadcast_to(whole, shape), split[nearest]], axis=1),
                np.concatenate([np.zeros(shape, np.float32), priors], axis=1))

    def _nearest_centroids(self, features: np.ndarray, nprobe: int,
                           ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the `nprobe` best scoring with its embedding of the centroids in `ranges`
        (start, stop), nearest first, as positions in the ranges taken in turn; and their
        scores. faiss scores them on the caller's one thread (numpy's BLAS woke a second thread on every query, and with a
        compaction beside it on two cores, queries stalled 30-40 ms), only those of the searched
        segments; numpy picks the best (0.07 ms a query at 1M, against 0.13 ms for a faiss flat
        index's own top-k)."""
        scores = np.empty(sum(stop - start for start, stop in ranges), np.float32)
        nearest = np.empty((len(features), nprobe), np.int64)
        nearest_scores = np.empty((len(features), nprobe), np.float32)
        for query, feature in enumerate(np.ascontiguousarray(features, np.float32)):
            at = 0
            for start, stop in ranges:
                faiss.fvec_inner_products_ny(faiss.swig_ptr(scores[at:]), faiss.swig_ptr(feature),
                                             faiss.swig_ptr(self._centroids[start:]), self._centroids.shape[1], stop - start)
                at += stop - start
            best = np.argpartition(-scores, nprobe - 1)[:nprobe]
            nearest[query] = best = best[np.argsort(-scores[best])]
            nearest_scores[query] = scores[best]
        return nearest, nearest_scores

    def _probe_plan(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """The lists of the given segments scanned whole, those of the split ones, and where the
        latter's centroids lie in the stacked centroids (start, stop, in the order of their lists;
        neighbours joined), kept for the next query that searches the same segments."""
        key = segments.tobytes()
        plan = self._probe_plans.get(key)
        if plan is None:
            split_segments = segments[self.split[segments]]
            ranges: list[tuple[int, int]] = []
            for number in split_segments:  # neighbours in the stacked centroids as one range
                start = int(self._first_centroid[number])
                if ranges and ranges[-1][1] == start:
                    start = ranges.pop()[0]
                ranges.append((start, int(self._first_centroid[number]) + self.lists[number].lists))
            if len(self._probe_plans) >= PROBE_PLANS_KEPT:
                self._probe_plans.clear()
            plan = self._probe_plans[key] = (self.lists_of(segments[~self.split[segments]]), self.lists_of(split_segments),
                                             ranges)
        return plan

    def top_k(self, projections: np.ndarray, count: int, probe: np.ndarray,
              priors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss's scan of the probed lists (as `probe` gives them, -1 pads): the best `count`
        codes per query, best first, as scores and labels (-1 pads: fewer codes were probed).
        A list's prior (`priors`, as `probe`) is added to the score of each of its codes."""
        queries = len(projections)
        count = min(count, int(self.probed_codes(probe).max(initial=0)))
        if count <= 0:
            return np.zeros((queries, 0), np.float32), np.zeros((queries, 0), np.int64)
        assign = np.ascontiguousarray(np.broadcast_to(probe, (queries, probe.shape[-1])), np.int64)
        projections = np.ascontiguousarray(projections, np.float32)  # named: faiss gets raw pointers
        priors = (np.zeros(assign.shape, np.float32) if priors is None
                  else np.ascontiguousarray(np.broadcast_to(priors, assign.shape), np.float32))
        scores = np.empty((queries, count), np.float32)
        labels = np.empty((queries, count), np.int64)
        width = self._search_widths.get(assign.shape[1])  # faiss reads rows of its nprobe keys
        if width is None:
            width = self._search_widths[assign.shape[1]] = faiss.SearchParametersIVF(nprobe=assign.shape[1])
        index = self._single_query_index if queries == 1 else self._index
        index.search_preassigned_c(queries, faiss.swig_ptr(projections), count, faiss.swig_ptr(assign),
                                   faiss.swig_ptr(priors), faiss.swig_ptr(scores), faiss.swig_ptr(labels),
                                   False, width)
        return scores, labels

    def probed_codes(self, probe: np.ndarray) -> np.ndarray:
        """Codes in the probed lists, per row of `probe`."""
        return self._padded_list_sizes[np.atleast_2d(probe)].sum(axis=1)

    def above_threshold(self, projections: np.ndarray, count: int,
                        segments: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Per query, every code of the given segments (all their lists) scoring above a
        threshold that a little more than `count` of them pass, as scores and labels (in no
        order). The threshold is the score of the sample's best `count x sample / sampled` codes
        and MARGIN_SIGMAS times that count's square root more (a count of codes above a score
        spreads about as much), so fewer than `count` rarely pass. None where the
        segments are too few or too small, or the batch too large, for a threshold scan to pay."""
        if self._samples is None or not len(segments) or len(projections) > THRESHOLD_SCAN_BATCH_MAX:
            return None
        samples = self._sample_of[segments]
        sampled_total = int(self.sizes[segments][samples >= 0].sum())
        samples = samples[samples >= 0]
        sample_total = int(self._samples.sizes[samples].sum())
        if sampled_total < THRESHOLD_SCAN_MIN * count:
            return None
        expected = count * sample_total / sampled_total  # of the wanted codes, how many the sample holds
        share = min(sample_total, int(np.ceil(expected + MARGIN_SIGMAS * np.sqrt(expected))) + 1)
        thresholds = self._samples.top_k(projections, share, self._samples.lists_of(samples))[0][:, -1]
        index = self._range_index(segments)
        answers = []
        for projection, threshold in zip(np.ascontiguousarray(projections, np.float32), thresholds):
            _, scores, labels = index.range_search(projection[None], float(threshold))
            answers.append((scores, labels))
        return answers

    def _range_index(self, segments: np.ndarray) -> faiss.IndexIVFPQFastScan:
        """An index over just the given segments' lists (a faiss range search visits every list
        of its index; and adds no priors), kept for the next query that searches them."""
        key = segments.tobytes()
        index = self._range_indexes.get(key)
        if index is None:
            if len(self._range_indexes) >= RANGE_INDEXES_KEPT:
                self._range_indexes.clear()  # an index a query still searches keeps its lists alive itself
            index = self._range_indexes[key] = _stacked([self.lists[number] for number in segments])
        return index


def _stacked(lists: Sequence[CodeList]) -> faiss.IndexIVFPQFastScan:
    """One index over the given lists, every one probed by default. It holds (faiss's Python
    convention, `referenced_objects`) the stack and the lists its raw pointers lead to, so they
    live as long as any holder of the index: a query may still search one that was dropped."""
    index = _lists_index(lists[0].bits, sum(code_list.lists for code_list in lists))
    pointers = faiss.InvertedListsPtrVector()
    for code_list in lists:
        pointers.push_back(code_list.invlists)
    stack = faiss.VStackInvertedLists(len(lists), pointers.data())  # numbers each one's lists after the last
    index.replace_invlists(stack, False)  # owned by the Python objects kept below
    index.ntotal = sum(code_list.size for code_list in lists)
    index.nprobe = index.nlist
    index.referenced_objects = [*getattr(index, "referenced_objects", []), stack, pointers, list(lists)]  # and its quantizer
    return index


def _with_priors(index: faiss.IndexIVFPQFastScan) -> faiss.IndexIVFPQFastScan:
    """The index, adding each probed list's "coarse distance" to its codes' scores: faiss's
    inner-product fast-scan does so for an index "by residual"; the codes are still the
    images' own (the lists are filled by the packer, never encoded as residuals)."""
    index.by_residual = True
    return index


def _in_probe_order(index: faiss.IndexIVFPQFastScan) -> faiss.IndexIVFPQFastScan:
    """A second index over the same lists (no copy) that scans a single query's lists in the
    order its probe names them, nearest first, so its top-k threshold rises early. faiss's
    default visits them in list order, to share each list among a batch's queries: better for
    batches, slower for one query (1M images, 488 of 1,953 lists, shortlist 2,600: 1.19-1.20 ms
    against 1.43-1.48 ms; every list: 4.2 ms against 5.0 ms; batches of 8 in probe order: 1.23-1.30
    ms a query against 1.13-1.18 ms)."""
    twin = faiss.IndexIVFPQFastScan(index.quantizer, index.d, index.nlist, index.pq.M, 4, faiss.METRIC_INNER_PRODUCT)
    twin.by_residual = False
    _with_corner_codebooks(twin, index.d)
    twin.replace_invlists(index.invlists, False)
    twin.ntotal, twin.nprobe, twin.implem = index.ntotal, index.nprobe, IN_PROBE_ORDER
    twin.referenced_objects = [*getattr(twin, "referenced_objects", []), index]  # its lists live as long as it does
    return twin
