"""Triplets from a click log: anchor = the query photo (its box's crop), positive = the
clicked item, negatives = the items shown around it and skipped.

A click is noisy evidence: a shopper may open a wrong item and come straight back. Where
the log says how long the shopper stayed (`dwell_ms`) or what they bought, only clicks
with a long stay or a purchase, or clicked again by another impression of the same photo,
are used; a log without those fields is taken as it is.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from snapshop.learn.clicklog import Impression

SKIPPED_BELOW = 2  # shown right below the click: seen too, most likely (Joachims' "skip next")


@dataclass(frozen=True)
class TrustPolicy:
    """Which clicks count as labels."""

    min_dwell_ms: float = 10_000.0
    use_all: bool = False  # take every click (to measure what noisy labels cost)


@dataclass(frozen=True)
class Triplet:
    """One training example: the photo and box of a search, the clicked item, the skipped ones."""

    query_image: Path
    box: list[int] | None
    positive: str
    negatives: tuple[str, ...]
    line: int


def mine_triplets(impressions: list[Impression], policy: TrustPolicy = TrustPolicy()) -> list[Triplet]:
    """One triplet per trusted click."""
    evidence = any(impression.dwell_ms or impression.purchased for impression in impressions)
    repeated = Counter((impression.query_image, item) for impression in impressions for item in impression.clicked)
    triplets = []
    for impression in impressions:
        for item in impression.clicked:
            trusted = (policy.use_all or not evidence or item in impression.purchased
                       or impression.dwell_ms.get(item, 0.0) >= policy.min_dwell_ms
                       or repeated[(impression.query_image, item)] > 1)
            if not trusted:
                continue
            rank = impression.shown.index(item)
            seen = impression.shown[: rank + 1 + SKIPPED_BELOW]
            negatives = tuple(other for other in seen if other not in impression.clicked)
            triplets.append(Triplet(impression.query_image, impression.box, item, negatives, impression.line))
    return triplets


def held_out(triplet: Triplet, fraction: float) -> bool:
    """Whether a triplet's photo belongs to the held-out part of the log: a hash of the photo's
    file and folder names, stable when the log and its photos move elsewhere together."""
    photo = triplet.query_image
    digest = hashlib.sha1(f"{photo.parent.name}/{photo.name}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction
