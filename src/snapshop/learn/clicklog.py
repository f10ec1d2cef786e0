"""DESIGN.md's click log: JSON Lines, one search impression per line.

```
{"ts": "2026-11-24T10:00:00Z", "query_image": "q/123.jpg", "box": [x0, y0, x1, y1],
 "shown": ["item_a", "item_b", ...], "clicked": ["item_b"]}
```
Optional fields that make a click more trustworthy: `dwell_ms` (per clicked item, how long
the shopper stayed on its page) and `purchased` (item ids bought). A simulator's log says
`"simulated": true` on every line. Every line is validated on its own: a bad line is
reported with its number and skipped, never fatal to the whole log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from snapshop.errors import DatasetError

MAX_SHOWN = 1000
MAX_COORDINATE = 1_000_000  # pixels; also keeps infinities out


@dataclass(frozen=True)
class Impression:
    """One search: the photo, the box searched, the items shown (best first) and clicked."""

    line: int
    query_image: Path
    box: list[int] | None
    shown: list[str]
    clicked: list[str]
    dwell_ms: dict[str, float] = field(default_factory=dict)
    purchased: list[str] = field(default_factory=list)
    simulated: bool = False

    @property
    def skipped(self) -> list[str]:
        """Items shown above the lowest click and not clicked: seen and passed over."""
        lowest = max((self.shown.index(item) for item in self.clicked if item in self.shown), default=-1)
        return [item for item in self.shown[: lowest + 1] if item not in self.clicked]


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


@dataclass
class ClickLog:
    """The usable impressions of a log and the lines that were not."""

    path: Path
    impressions: list[Impression]
    bad_lines: list[BadLine]

    @property
    def simulated(self) -> bool:
        return bool(self.impressions) and all(impression.simulated for impression in self.impressions)


def read_click_log(path: Path | str, known_items: Callable[[Iterable[str]], set[str]] | None = None) -> ClickLog:
    """Parse and validate a click log; `query_image` is resolved against the log's folder.

    With `known_items` (the index's lookup), ids not in the index are dropped from `shown`
    and `clicked`; a line left with no known clicked item and nothing shown is reported.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the click log ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: the click log is not UTF-8 text") from None
    impressions, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            impressions.append(parse_impression(json.loads(line), number, path.parent))
        except json.JSONDecodeError as exc:
            bad.append(BadLine(number, f"not JSON ({exc.msg})"))
        except ValueError as exc:
            bad.append(BadLine(number, str(exc)))
    if known_items is not None:
        impressions, unknown = _resolve(impressions, known_items)
        bad += unknown
    return ClickLog(path, impressions, sorted(bad, key=lambda entry: entry.line))


def parse_impression(record: Any, line: int, folder: Path) -> Impression:
    """One validated impression; ValueError says what is wrong with the line."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    image = record.get("query_image")
    if not isinstance(image, str) or not image:
        raise ValueError("query_image must be a non-empty string")
    shown, clicked = _ids(record, "shown"), _ids(record, "clicked")
    if not shown:
        raise ValueError("shown must list at least one item id")
    if len(shown) > MAX_SHOWN:
        raise ValueError(f"shown lists more than {MAX_SHOWN} items")
    strays = [item for item in clicked if item not in shown]
    if strays:
        raise ValueError(f"clicked items that were not shown: {', '.join(strays[:3])}")
    box = record.get("box")
    if box is not None and not (isinstance(box, list) and len(box) == 4
                                and all(isinstance(v, (int, float)) and 0 <= v < MAX_COORDINATE for v in box)
                                and box[0] < box[2] and box[1] < box[3]):
        raise ValueError(f"box must be [x0, y0, x1, y1] with x0 < x1, y0 < y1, all in 0..{MAX_COORDINATE}")
    dwell = record.get("dwell_ms", {})
    if not isinstance(dwell, dict) or not all(isinstance(v, (int, float)) for v in dwell.values()):
        raise ValueError("dwell_ms must map item ids to milliseconds")
    purchased = _ids(record, "purchased")
    source = Path(image)
    return Impression(line, source if source.is_absolute() else folder / source,
                      [int(v) for v in box] if box is not None else None, shown, clicked,
                      {str(k): float(v) for k, v in dwell.items()}, purchased, record.get("simulated") is True)


def _ids(record: dict, name: str) -> list[str]:
    values = record.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{name} must be a list of item id strings")
    return list(dict.fromkeys(values))


def _resolve(impressions: list[Impression], known_items: Callable[[Iterable[str]], set[str]]
             ) -> tuple[list[Impression], list[BadLine]]:
    """Drop item ids the index does not hold; report lines left with nothing to learn from."""
    known = known_items({item for impression in impressions for item in impression.shown})
    kept, bad = [], []
    for impression in impressions:
        shown = [item for item in impression.shown if item in known]
        clicked = [item for item in impression.clicked if item in known]
        if impression.clicked and not clicked:
            bad.append(BadLine(impression.line, f"clicked item not in the index: {', '.join(impression.clicked[:3])}"))
            continue
        if not shown:
            bad.append(BadLine(impression.line, "none of the shown items is in the index"))
            continue
        kept.append(Impression(impression.line, impression.query_image, impression.box, shown, clicked,
                               impression.dwell_ms, [item for item in impression.purchased if item in known],
                               impression.simulated))
    return kept, bad
