"""Typed results of a search, and their `--json` form (DESIGN.md's search object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapshop.models.localize import Box


@dataclass(frozen=True)
class Query:
    """A query photo: a name to report, its file path or bytes, and optionally the box to search."""

    name: str
    source: str | Path | bytes
    box: list[int] | None = None


@dataclass(frozen=True)
class Hit:
    """One result: a catalog item, its best-matching image and cosine score."""

    item_id: str
    score: float
    image: str
    category: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    group: str | None = None  # product group: identical items share it
    also: list[str] = field(default_factory=list)  # identical items folded into this result
    quality: float | None = None
    colours: list[dict] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)  # what curation changed: score deltas, rank moved
    curated_score: float | None = None
    close: bool | None = None  # at or above the calibrated no-match threshold
    other_colours: list[str] = field(default_factory=list)  # the same model in other colours
    image_number: int = 0  # position of `image` among the item's images

    def to_json(self) -> dict[str, Any]:
        data = {**self.fields, "item_id": self.item_id, "score": round(self.score, 4),
                "image": self.image, "category": self.category, "group": self.group or self.item_id,
                "also": self.also}
        if self.quality is not None:
            data["quality"] = round(self.quality, 3)
        if self.colours:
            data["colours"] = self.colours
        if self.signals:
            data["signals"] = {name: round(value, 4) for name, value in self.signals.items()}
            data["curated_score"] = round(self.curated_score, 4)
        if self.close is not None:
            data["close"] = self.close
        if self.other_colours:
            data["other_colours"] = self.other_colours
        return data


@dataclass(frozen=True)
class CategoryScore:
    """The category a search ran in, with its fused probability."""

    name: str
    score: float
    forced: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "score": round(self.score, 4)}
        if self.forced:
            data["forced"] = True
        return data


@dataclass
class SearchResult:
    """Everything one query returns; `error` is set (and the rest empty) when it failed."""

    query: str
    category: CategoryScore | None = None
    boxes: list[Box] = field(default_factory=list)
    results: list[Hit] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)
    searched_categories: list[str] = field(default_factory=list)
    explain: list[dict[str, Any]] | None = None
    match: str | None = None  # "close" or "none" against the calibrated threshold; None: not calibrated
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"query": self.query, "error": self.error}
        return {
            "query": self.query,
            "category": self.category.to_json() if self.category else None,
            "searched_categories": self.searched_categories,
            "boxes": [{"box": box.as_list(), "score": box.score} for box in self.boxes],
            "results": [hit.to_json() for hit in self.results],
            "timing_ms": {stage: round(ms, 2) for stage, ms in self.timing_ms.items()},
            **({"match": self.match} if self.match is not None else {}),
            **({"explain": self.explain} if self.explain is not None else {}),
        }
