"""Micro-batching: concurrent requests are collected for a few milliseconds and run as one batch.

Requests are submitted from any thread (the event loop included) and answered through
`concurrent.futures.Future`s; worker threads run the batches, so the event loop keeps
serving while the CNN works. While a batch runs, the next one fills up: under load the
batches grow by themselves. A worker that takes a lone request while another worker's
batch runs waits at most `wait_ms` for company; on an otherwise idle batcher it runs the
request at once, since nothing else is coming that waiting could catch (measured: the wait
cost every search at concurrency 1 its 5 ms and bought no throughput at 4 or 16). With
several workers, several batches run at once (worker `i` is passed to `run`, e.g. to use
its own engine).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batched(Generic[R]):
    """The answer to one submitted item, with how it was batched."""

    value: R
    batch_size: int
    queued_ms: float
    worker: int


@dataclass(frozen=True)
class _Pending(Generic[T]):
    item: T
    future: Future
    enqueued: float


@dataclass(frozen=True)
class BatcherStats:
    batches: int
    items: int
    largest_batch: int

    def to_json(self) -> dict[str, float]:
        mean = self.items / self.batches if self.batches else 0.0
        return {"batches": self.batches, "searches": self.items, "largest_batch": self.largest_batch,
                "mean_batch": round(mean, 2)}


class MicroBatcher(Generic[T, R]):
    """Run `run(worker, items) -> results` (one result per item, in order) on batches of submitted items.

    `workers` threads each take the next batch; worker `i` calls `run(i, items)`. Items with
    different `key`s never share a call of `run` (they still share a batch turn). An
    exception raised by `run` is the answer of every item of that call.
    """

    def __init__(self, run: Callable[[int, list[T]], list[R]], *, wait_ms: float, max_batch: int, workers: int = 1,
                 key: Callable[[T], Hashable] = lambda item: None, name: str = "snapshop-batcher") -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError(f"max_batch and workers must be at least 1, got {max_batch} and {workers}")
        self._run = run
        self._key = key
        self._wait = wait_ms / 1000
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending[T] | None] = queue.SimpleQueue()
        self._closed = False
        self._counts_lock = threading.Lock()
        self._batches = self._items = self._largest = self._busy_workers = 0
        self._threads = [threading.Thread(target=self._work, args=(worker,), name=f"{name}-{worker}", daemon=True)
                         for worker in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> Future:
        """Queue one item; the future resolves to a `Batched` answer (or raises what `run` raised)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put(_Pending(item, future, time.monotonic()))
        return future

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._items, self._largest)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued items, then stop the worker threads."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _work(self, worker: int) -> None:
        running = True
        while running:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            with self._counts_lock:
                others_busy = self._busy_workers > 0
                self._busy_workers += 1
            deadline = first.enqueued + self._wait if others_busy else 0.0
            while len(batch) < self._max_batch:
                try:
                    remaining = deadline - time.monotonic()
                    pending = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending is None:
                    running = False
                    break
                batch.append(pending)
            try:
                self._run_batch(worker, batch)
            finally:
                with self._counts_lock:
                    self._busy_workers -= 1
        while True:  # submitted while closing: refuse rather than leave them waiting
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is None:  # another worker's stop signal
                self._queue.put(None)
                break
            if late.future.set_running_or_notify_cancel():
                late.future.set_exception(RuntimeError("the batcher is closed"))

    def _run_batch(self, worker: int, batch: list[_Pending[T]]) -> None:
        started = time.monotonic()
        live = [pending for pending in batch if pending.future.set_running_or_notify_cancel()]
        if not live:
            return
        groups: dict[Hashable, list[_Pending[T]]] = defaultdict(list)
        for pending in live:
            groups[self._key(pending.item)].append(pending)
        for group in groups.values():
            try:
                results = self._run(worker, [pending.item for pending in group])
                if len(results) != len(group):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(group)} items")
            except Exception as exc:  # the answer of every item of this call; the worker carries on
                log.debug("batch of %d failed: %s", len(group), exc)
                for pending in group:
                    pending.future.set_exception(exc)
                continue
            for pending, result in zip(group, results):
                pending.future.set_result(Batched(result, len(live), (started - pending.enqueued) * 1000, worker))
        with self._counts_lock:
            self._batches += 1
            self._items += len(live)
            self._largest = max(self._largest, len(live))
