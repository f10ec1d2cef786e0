"""The per-client rate limit: on its own with a clock the test moves, then on POST /clicks."""

from __future__ import annotations

import pytest

from snapshop.serve.limits import RateLimiter
from snapshop.serve.service import CLICK_BURST


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_through_then_the_rate_holds():
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.wait_seconds("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.wait_seconds("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.wait_seconds("a") == pytest.approx(0.25)  # a refused request takes no token
    clock.now += 0.25
    assert limiter.wait_seconds("a") == 0
    assert limiter.wait_seconds("a") == pytest.approx(0.5)


def test_clients_have_their_own_buckets_and_idle_ones_fill_up_to_the_burst():
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    assert [limiter.wait_seconds("a") for _ in range(2)] == [0, 0]
    assert limiter.wait_seconds("a") > 0
    assert limiter.wait_seconds("b") == 0
    clock.now += 3600
    assert [limiter.wait_seconds("a") for _ in range(3)] == [0, 0, pytest.approx(1.0)]


def test_only_the_most_recent_clients_are_remembered():
    limiter = RateLimiter(1.0, 1, max_clients=2, clock=Clock())
    for client in ("a", "b", "c"):
        assert limiter.wait_seconds(client) == 0
    assert limiter.wait_seconds("c") > 0 and limiter.wait_seconds("b") > 0
    assert limiter.wait_seconds("a") == 0  # forgotten, so a full bucket again


@pytest.mark.parametrize("rate, burst", [(0, 1), (1, 0)])
def test_rate_and_burst_must_be_positive(rate, burst):
    with pytest.raises(ValueError, match="rate must be positive"):
        RateLimiter(rate, burst)


def test_clicks_from_one_address_are_rate_limited(make_client, served_index, check_error):
    fresh = make_client(served_index)
    click = {"query_id": "0" * 64, "box": None, "shown": ["circle-0"], "clicked": ["circle-0"]}
    responses = [fresh.post("/clicks", json=click) for _ in range(CLICK_BURST + 20)]  # refills 2 a second
    assert {response.status_code for response in responses[:CLICK_BURST]} == {404}
    response = next(response for response in responses if response.status_code != 404)
    assert "too many clicks" in check_error(response, 429, "too_many_requests")
    assert int(response.headers["retry-after"]) >= 1
