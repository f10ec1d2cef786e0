"""Result curation after the float re-rank: quality, colour, identical items, diversity.

Input: the best image of each candidate item, in cosine order. Each signal adjusts the score
and can be turned off; the output cards say which signals moved them.

* quality: `- quality_weight * (1 - quality)`, so a poor photo drops below a clean twin;
* colour: `+ colour_weight * overlap` with the query product's colours; a colour filter keeps
  only products showing that colour;
* identical items: one card per product group, the others listed in `also`;
* diversity: greedily, `- diversity * max cosine` to the cards already chosen (MMR);
* other colours: candidates shaped like a card's product but in other colours are suggested.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snapshop.curate.colour import colour_overlap, has_colour

VARIANT_COSINE = 0.7  # images at least this close show the same model (measured: docs/benchmarks.md)
VARIANT_COLOUR_OVERLAP = 0.3


@dataclass(frozen=True)
class Candidate:
    """One catalog item as the float re-rank found it."""

    item_id: str
    image_id: int
    score: float
    group: str
    quality: float | None
    colours: list[dict]


@dataclass(frozen=True)
class CurationOptions:
    collapse: bool = True
    quality_weight: float = 0.0
    diversity: float = 0.0
    colour_weight: float = 0.0
    colour: str | None = None  # keep only products of this colour
    query_colours: list[dict] = field(default_factory=list)


@dataclass
class Card:
    """One result: a candidate, its curated score, the identical items folded in, what moved it."""

    candidate: Candidate
    score: float
    also: list[str] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)


def curate(candidates: list[Candidate], options: CurationOptions, k: int,
           features: dict[int, np.ndarray] | None = None) -> list[Card]:
    """The top-k cards. `features` (image id -> unit vector) is needed for diversity."""
    if options.colour is not None:
        candidates = [c for c in candidates if has_colour(c.colours, options.colour)]
    cards = []
    for candidate in candidates:
        signals: dict[str, float] = {}
        if options.quality_weight and candidate.quality is not None:
            signals["quality"] = -options.quality_weight * (1.0 - candidate.quality)
        if options.colour_weight and options.query_colours:
            signals["colour"] = options.colour_weight * colour_overlap(options.query_colours, candidate.colours)
        cards.append(Card(candidate, candidate.score + sum(signals.values()), signals=signals))
    cards.sort(key=lambda card: -card.score)
    if options.collapse:
        cards = _collapse(cards)
    if options.diversity and features:
        cards = _diversify(cards, features, options.diversity, k)
    chosen = cards[:k]
    key = (lambda c: c.group) if options.collapse else (lambda c: c.item_id)  # a card is its group when folded
    plain = sorted((Card(c, c.score) for c in candidates), key=lambda card: -card.score)
    plain_rank = {key(card.candidate): rank for rank, card in enumerate(_collapse(plain) if options.collapse else plain)}
    for rank, card in enumerate(chosen):
        moved = plain_rank[key(card.candidate)] - rank
        if moved:
            card.signals["moved"] = moved
    return chosen


def other_colours(card: Card, candidates: list[Candidate], features: dict[int, np.ndarray], *,
                  min_cosine: float = VARIANT_COSINE, max_overlap: float = VARIANT_COLOUR_OVERLAP,
                  limit: int = 3) -> list[str]:
    """"Same product, other colour": candidates shaped like the card's product (cosine of their
    images at least `min_cosine`) whose colours it barely shares, best match first."""
    mine = features.get(card.candidate.image_id)
    if mine is None:
        return []
    folded = {card.candidate.item_id, *card.also}
    found = []
    for other in candidates:
        if other.item_id in folded or other.group == card.candidate.group or other.image_id not in features:
            continue
        cosine = float(features[other.image_id] @ mine)
        if cosine >= min_cosine and colour_overlap(card.candidate.colours, other.colours) <= max_overlap:
            found.append((cosine, other.item_id))
    return [item_id for _, item_id in sorted(found, reverse=True)[:limit]]


def _collapse(cards: list[Card]) -> list[Card]:
    """One card per product group: the best-scored member, the others in `also`."""
    first: dict[str, Card] = {}
    for card in cards:
        group = card.candidate.group
        if group in first:
            first[group].also.append(card.candidate.item_id)
        else:
            first[group] = card
    return list(first.values())


def _diversify(cards: list[Card], features: dict[int, np.ndarray], weight: float, k: int) -> list[Card]:
    """Maximal marginal relevance: each next card pays `weight` times its highest cosine to those above."""
    pool = [card for card in cards if card.candidate.image_id in features]
    vectors = np.stack([features[card.candidate.image_id] for card in pool]) if pool else np.zeros((0, 1))
    chosen: list[int] = []
    penalty = np.zeros(len(pool))
    while pool and len(chosen) < min(k, len(pool)):
        adjusted = np.array([card.score for card in pool]) - weight * penalty
        adjusted[chosen] = -np.inf
        best = int(np.argmax(adjusted))
        if penalty[best] > 0:
            pool[best].signals["diversity"] = -weight * float(penalty[best])
            pool[best].score = float(adjusted[best])
        chosen.append(best)
        penalty = np.maximum(penalty, vectors @ vectors[best])
    return [pool[i] for i in chosen]
