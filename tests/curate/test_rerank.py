"""Curation: each signal moves results as documented, and each can be turned off."""

from __future__ import annotations

import numpy as np

from snapshop.curate.rerank import Candidate, CurationOptions, curate, other_colours

RED, BLUE = [{"name": "red", "share": 1.0}], [{"name": "blue", "share": 1.0}]


def candidates() -> list[Candidate]:
    return [
        Candidate("a", 1, 0.90, "a", 0.9, RED),
        Candidate("a-copy", 2, 0.89, "a", 0.9, RED),  # the same product from another seller
        Candidate("blurry", 3, 0.88, "blurry", 0.2, BLUE),
        Candidate("b", 4, 0.80, "b", 0.9, BLUE),
    ]


def ids(cards) -> list[str]:
    return [card.candidate.item_id for card in cards]


def test_identical_items_fold_into_one_card():
    cards = curate(candidates(), CurationOptions(collapse=True), k=10)
    assert ids(cards) == ["a", "blurry", "b"] and cards[0].also == ["a-copy"]
    assert ids(curate(candidates(), CurationOptions(collapse=False), k=10)) == ["a", "a-copy", "blurry", "b"]


def test_a_poor_photo_is_demoted_and_says_so():
    cards = curate(candidates(), CurationOptions(collapse=True, quality_weight=0.2), k=10)
    assert ids(cards) == ["a", "b", "blurry"]
    blurry = cards[2]
    assert blurry.signals["quality"] < 0 and blurry.signals["moved"] == -1
    assert ids(curate(candidates(), CurationOptions(collapse=True, quality_weight=0.0), k=10))[1] == "blurry"


def test_colour_filter_and_boost():
    assert ids(curate(candidates(), CurationOptions(colour="blue"), k=10)) == ["blurry", "b"]
    boosted = curate(candidates(), CurationOptions(collapse=True, colour_weight=0.2, query_colours=BLUE), k=10)
    assert ids(boosted) == ["blurry", "b", "a"] and boosted[0].signals["colour"] > 0


def test_diversity_pushes_down_a_near_copy_of_a_better_result():
    features = {1: np.array([1.0, 0.0]), 2: np.array([1.0, 0.0]), 3: np.array([0.0, 1.0]), 4: np.array([0.6, 0.8])}
    plain = curate(candidates(), CurationOptions(collapse=False), k=3, features=features)
    diverse = curate(candidates(), CurationOptions(collapse=False, diversity=0.5), k=3, features=features)
    assert ids(plain) == ["a", "a-copy", "blurry"]
    assert ids(diverse) == ["a", "blurry", "b"] and diverse[2].signals["diversity"] < 0


def test_k_limits_the_cards():
    assert len(curate(candidates(), CurationOptions(), k=2)) == 2


def test_the_same_shape_in_another_colour_is_suggested():
    pool = candidates() + [Candidate("b-red", 5, 0.7, "b-red", 0.9, RED)]
    features = {1: np.array([1.0, 0.0]), 2: np.array([1.0, 0.0]), 3: np.array([0.0, 1.0]),
                4: np.array([0.6, 0.8]), 5: np.array([0.6, 0.8])}
    cards = curate(pool, CurationOptions(), k=10)
    by_id = {card.candidate.item_id: card for card in cards}
    assert other_colours(by_id["b"], pool, features) == ["b-red"]
    assert other_colours(by_id["a"], pool, features) == []  # a-copy is the same product, not a variant


def test_a_group_shown_by_another_member_keeps_its_rank_report():
    pool = [Candidate("poor", 1, 0.9, "g", 0.1, RED), Candidate("good", 2, 0.89, "g", 0.9, RED),
            Candidate("c", 3, 0.5, "c", 0.9, BLUE)]
    cards = curate(pool, CurationOptions(collapse=True, quality_weight=0.2), k=10)
    assert ids(cards) == ["good", "c"] and cards[0].also == ["poor"] and "moved" not in cards[0].signals
