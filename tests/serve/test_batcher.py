"""The micro-batcher on its own: batching, grouping by key, errors, limits, cancellation, closing."""

from __future__ import annotations

import threading
import time

import pytest

from snapshop.serve.batcher import MicroBatcher


class Recorder:
    """A batch function that records each call and answers item * 10 (slowly, if asked)."""

    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.calls: list[list] = []
        self.delay = delay
        self.fail_on = fail_on
        self.started = threading.Event()
        self.workers: set[int] = set()

    def __call__(self, worker: int, items: list) -> list:
        self.started.set()
        self.workers.add(worker)
        self.calls.append(list(items))
        time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError(f"cannot do {self.fail_on}")
        return [item * 10 for item in items]


@pytest.fixture
def make_batcher():
    made = []

    def make(run, **options) -> MicroBatcher:
        batcher = MicroBatcher(run, **{"wait_ms": 200, "max_batch": 8, **options})
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(timeout=5)


def test_items_arriving_while_another_batch_runs_wait_for_company(make_batcher):
    run = Recorder(delay=0.5)
    batcher = make_batcher(run, wait_ms=300, workers=2)
    first = batcher.submit(0)
    assert run.started.wait(5)
    futures = [batcher.submit(item) for item in range(1, 5)]
    answers = [future.result(timeout=5) for future in futures]
    assert first.result(timeout=5).batch_size == 1
    assert run.calls == [[0], [1, 2, 3, 4]]
    assert [answer.value for answer in answers] == [10, 20, 30, 40]
    assert {answer.batch_size for answer in answers} == {4}
    assert {answer.worker for answer in answers} == {1 - first.result().worker}
    assert batcher.stats.to_json() == {"batches": 2, "searches": 5, "largest_batch": 4, "mean_batch": 2.5}


def test_a_lone_item_waits_at_most_wait_ms_while_another_batch_runs(make_batcher):
    run = Recorder(delay=0.5)
    batcher = make_batcher(run, wait_ms=50, workers=2)
    first = batcher.submit(0)
    assert run.started.wait(5)
    answer = batcher.submit(1).result(timeout=5)
    assert answer.value == 10 and answer.batch_size == 1 and answer.worker == 1 - first.result().worker
    assert 40 <= answer.queued_ms < 450  # it ran before the other batch ended


def test_a_lone_item_on_an_idle_batcher_runs_at_once(make_batcher):
    batcher = make_batcher(Recorder(), wait_ms=2000, workers=2)
    for item in range(3):  # one after another: each finds the batcher idle
        started = time.monotonic()
        answer = batcher.submit(item).result(timeout=5)
        assert answer.value == item * 10 and answer.batch_size == 1
        assert time.monotonic() - started < 1.0 and answer.queued_ms < 1000


def test_no_wait_runs_at_once(make_batcher):
    batcher = make_batcher(Recorder(), wait_ms=0)
    started = time.monotonic()
    assert batcher.submit(2).result(timeout=5).value == 20
    assert time.monotonic() - started < 0.5


def test_batches_hold_at_most_max_batch(make_batcher):
    run = Recorder()
    batcher = make_batcher(run, max_batch=3)
    futures = [batcher.submit(item) for item in range(7)]
    assert [future.result(timeout=5).value for future in futures] == [item * 10 for item in range(7)]
    assert [len(call) for call in run.calls] == [3, 3, 1]


def test_items_queued_while_a_batch_runs_form_the_next_batch(make_batcher):
    run = Recorder(delay=0.3)
    batcher = make_batcher(run, wait_ms=0)
    first = batcher.submit(0)
    assert run.started.wait(5)
    rest = [batcher.submit(item) for item in range(1, 5)]
    assert [future.result(timeout=5).value for future in [first, *rest]] == [0, 10, 20, 30, 40]
    assert run.calls == [[0], [1, 2, 3, 4]]


def test_different_keys_never_share_a_call(make_batcher):
    run = Recorder()
    batcher = make_batcher(run, key=lambda item: item % 2)
    futures = [batcher.submit(item) for item in range(6)]
    assert [future.result(timeout=5).value for future in futures] == [0, 10, 20, 30, 40, 50]
    assert sorted(run.calls) == [[0, 2, 4], [1, 3, 5]]
    assert futures[0].result().batch_size == 6  # one batch turn, two calls


def test_an_error_is_the_answer_of_its_call_only(make_batcher):
    run = Recorder(fail_on=3)
    batcher = make_batcher(run, key=lambda item: item % 2)
    futures = [batcher.submit(item) for item in range(4)]
    assert futures[0].result(timeout=5).value == 0 and futures[2].result(timeout=5).value == 20
    for future in (futures[1], futures[3]):
        with pytest.raises(ValueError, match="cannot do 3"):
            future.result(timeout=5)
    assert batcher.submit(5).result(timeout=5).value == 50  # the worker carries on


def test_a_batch_function_that_loses_results(make_batcher):
    batcher = make_batcher(lambda worker, items: items[:-1])
    with pytest.raises(RuntimeError, match="returned 0 results for 1"):
        batcher.submit(1).result(timeout=5)


def test_cancelled_items_are_not_run(make_batcher):
    run = Recorder(delay=0.3)
    batcher = make_batcher(run, wait_ms=0)
    first = batcher.submit(0)
    assert run.started.wait(5)
    dropped, kept = batcher.submit(1), batcher.submit(2)
    assert dropped.cancel()
    assert kept.result(timeout=5).value == 20 and first.result(timeout=5).value == 0
    assert run.calls == [[0], [2]]


def test_close_finishes_queued_items_then_refuses_new_ones(make_batcher):
    run = Recorder(delay=0.1)
    batcher = make_batcher(run, wait_ms=0, max_batch=1)
    futures = [batcher.submit(item) for item in range(3)]
    batcher.close(timeout=5)
    assert [future.result(timeout=0).value for future in futures] == [0, 10, 20]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(4)


def test_several_workers_run_batches_side_by_side(make_batcher):
    run = Recorder(delay=0.3)
    batcher = make_batcher(run, wait_ms=0, max_batch=2, workers=2)
    started = time.monotonic()
    futures = [batcher.submit(item) for item in range(4)]
    assert [future.result(timeout=5).value for future in futures] == [0, 10, 20, 30]
    assert time.monotonic() - started < 0.55  # two rounds of 0.3 s would take 0.6 s or more
    assert run.workers == {0, 1}
    assert sorted(item for call in run.calls for item in call) == [0, 1, 2, 3]


def test_close_stops_every_worker(make_batcher):
    batcher = make_batcher(Recorder(), workers=3, name="closing-test")
    assert batcher.submit(1).result(timeout=5).value == 10
    assert len([thread for thread in threading.enumerate() if thread.name.startswith("closing-test")]) == 3
    batcher.close(timeout=5)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("closing-test")]


@pytest.mark.parametrize("options", [{"max_batch": 0}, {"workers": 0}])
def test_max_batch_and_workers_must_be_positive(options):
    with pytest.raises(ValueError, match="at least 1"):
        MicroBatcher(Recorder(), **{"wait_ms": 1, "max_batch": 4, **options})
