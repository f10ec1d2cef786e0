"""Triplets from clicks: positives, skipped negatives, trusted clicks, the held-out split."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapshop.learn.clicklog import Impression
from snapshop.learn.mining import SKIPPED_BELOW, Triplet, TrustPolicy, held_out, mine_triplets

SHOWN = ["a", "b", "c", "d", "e", "f", "g"]


def impression(photo: str, clicked: list[str], *, line: int = 1, shown: list[str] = SHOWN,
               dwell_ms: dict[str, float] | None = None, purchased: list[str] | None = None) -> Impression:
    return Impression(line, Path(photo), [0, 0, 10, 10], shown, clicked, dwell_ms or {}, purchased or [])


def test_positive_is_the_click_and_negatives_are_skipped_above_and_just_below():
    triplet, = mine_triplets([impression("q1.jpg", ["c"], line=7)])

    assert SKIPPED_BELOW == 2
    assert triplet == Triplet(Path("q1.jpg"), [0, 0, 10, 10], "c", ("a", "b", "d", "e"), 7)


def test_every_click_is_a_triplet_and_never_its_own_or_another_clicks_negative():
    first, second = mine_triplets([impression("q1.jpg", ["b", "d"])])

    assert (first.positive, second.positive) == ("b", "d")
    assert first.negatives == ("a", "c")
    assert second.negatives == ("a", "c", "e", "f")


def test_a_click_on_the_last_results_has_fewer_negatives_below():
    triplet, = mine_triplets([impression("q1.jpg", ["f"])])
    assert triplet.negatives == ("a", "b", "c", "d", "e", "g")


def test_with_dwell_evidence_only_trusted_clicks_are_kept():
    log = [
        impression("short.jpg", ["a"], line=1, dwell_ms={"a": 3_000}),
        impression("long.jpg", ["b"], line=2, dwell_ms={"b": 30_000}),
        impression("bought.jpg", ["c"], line=3, dwell_ms={"c": 2_000}, purchased=["c"]),
        impression("again.jpg", ["d"], line=4),
        impression("again.jpg", ["d"], line=5),
        impression("no-dwell.jpg", ["e"], line=6),
        impression("again.jpg", ["e"], line=7, dwell_ms={"e": 1_000}),
    ]
    kept = [(t.line, t.positive) for t in mine_triplets(log)]

    assert kept == [(2, "b"), (3, "c"), (4, "d"), (5, "d")]
    assert [t.line for t in mine_triplets(log, TrustPolicy(use_all=True))] == [1, 2, 3, 4, 5, 6, 7]
    assert [t.line for t in mine_triplets(log, TrustPolicy(min_dwell_ms=2_500))] == [1, 2, 3, 4, 5]


def test_a_log_without_evidence_fields_keeps_every_click():
    log = [impression(f"q{n}.jpg", [SHOWN[n]], line=n) for n in range(5)]
    assert [t.line for t in mine_triplets(log)] == [0, 1, 2, 3, 4]


def test_held_out_is_stable_and_close_to_the_fraction():
    triplets = [Triplet(Path(f"photos/{n}.jpg"), None, "a", (), n) for n in range(4000)]
    first = [held_out(t, 0.2) for t in triplets]
    again = [held_out(Triplet(t.query_image, [1, 1, 2, 2], "z", ("b",), 0), 0.2) for t in triplets]

    assert first == again  # the photo decides, nothing else
    assert sum(first) / len(first) == pytest.approx(0.2, abs=0.03)
    assert not any(held_out(t, 0.0) for t in triplets)
    assert all(held_out(t, 1.0) for t in triplets)
    wider = [held_out(t, 0.5) for t in triplets]
    assert all(w for f, w in zip(first, wider) if f)  # a larger share holds out a superset
