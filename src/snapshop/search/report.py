"""`snapshop eval --report`: one static HTML page comparing model versions on the same query set.

Plots are PNGs drawn with matplotlib's object API (no pyplot, no global backend); the gallery's
thumbnails are small JPEGs drawn with Pillow. No script, nothing fetched from elsewhere.
"""

from __future__ import annotations

import hashlib
import html
import random
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from snapshop.catalog.images import load_image
from snapshop.errors import ImageError

METRICS = ("recall@1", "recall@5", "recall@10", "mAP@10", "category_accuracy", "box_iou", "duplicate_rate")
GALLERY = 12  # example queries
GALLERY_SEED = 0
SHOWN = 5  # results per gallery row
THUMB = 112  # longest side of a thumbnail, pixels
PLACEHOLDER = (190, 190, 190)
FOUND_BOX, TRUE_BOX = (255, 120, 0), (0, 110, 255)

Runs = list[tuple[str, dict[str, Any]]]  # (version label, `evaluate()` outcome)
Boxes = tuple[tuple[tuple[float, ...], tuple[int, int, int]], ...]  # (x0, y0, x1, y1), RGB outline

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; } td, th { padding: .25rem .6rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.query { margin: 1.5rem 0; } .row { display: flex; gap: .5rem; align-items: flex-start; margin: .3rem 0; }
.version { width: 10rem; font-weight: bold; } figure { margin: 0; width: 120px; font-size: .75rem; }
.card { border: 3px solid transparent; } .card.hit { border-color: #1a9e3a; }
.row.miss .verdict { color: #c62828; font-weight: bold; } .row.hit .verdict { color: #1a9e3a; }
.legend-found { color: rgb(255, 120, 0); } .legend-true { color: rgb(0, 110, 255); }
"""


def write_html_report(folder: Path, runs: list[tuple[str, dict[str, Any]]]) -> Path:
    """Write `folder/index.html` with its plots and thumbnails; return its path.

    Each run is a version label and the `evaluate(..., details=True)` outcome of that version on the same query set.
    """
    if not runs:
        raise ValueError("the report needs at least one run")
    if len({(outcome["dataset"], outcome["queries"]) for _, outcome in runs}) > 1:
        raise ValueError("every run of one report must evaluate the same query set")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first = runs[0][1]
    sections = [
        ("Metrics", _metrics_table(runs)),
        ("Recall@K", _image(folder, "recall.png", _recall_plot(runs))),
        ("Recall per true category", _image(folder, "per_category.png", _category_plot(runs))),
        ("Milliseconds per query and stage", _image(folder, "latency.png", _latency_plot(runs))),
        ("Category confusion", "".join(_image(folder, f"confusion-{number}.png", _confusion_plot(label, outcome))
                                       for number, (label, outcome) in enumerate(runs))),
        ("Example queries", _gallery(folder, runs)),
    ]
    body = "".join(f"<section><h2>{title}</h2>{content}</section>\n" for title, content in sections)
    versions = ", ".join(html.escape(label) for label, _ in runs)
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>snapshop evaluation</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>snapshop evaluation: {versions}</h1>\n"
            f"<p>{first['queries']} queries from <code>{html.escape(first['dataset'])}</code> against "
            f"{first['index']['items']} items.</p>\n{body}</body></html>\n")
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


# --- the metrics table -------------------------------------------------------------------------


def _metrics_table(runs: Runs) -> str:
    header = "".join(f"<th>{name}</th>" for name in (*METRICS, "ms/query"))
    rows = []
    for label, outcome in runs:
        named = [(label, outcome["pipeline"])]
        if "baseline" in outcome:
            named.append((f"{label} baseline", outcome["baseline"]))
        for name, metrics in named:
            cells = "".join(f"<td>{_cell(metrics.get(metric))}</td>" for metric in METRICS)
            rows.append(f"<tr><td>{html.escape(name)}</td>{cells}"
                        f"<td>{sum(metrics['ms_per_query'].values()):.1f}</td></tr>")
    return f"<table id=\"metrics\"><tr><th>version</th>{header}</tr>{''.join(rows)}</table>"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --- plots -------------------------------------------------------------------------------------


def _image(folder: Path, name: str, figure: Figure | None) -> str:
    """Save the figure as `name` and return its <img>; no figure (nothing to plot) says so."""
    if figure is None:
        return "<p>No categories to plot (no labelled or no predicted categories).</p>"
    figure.savefig(folder / name, dpi=100)
    return f"<img src=\"{name}\" alt=\"{name}\">"


def _recall_plot(runs: Runs) -> Figure:
    """recall@K against K, a line per version; the baseline dashed in the version's colour."""
    figure = Figure(figsize=(6.4, 4), layout="constrained")
    axes = figure.subplots()
    cutoffs = list(range(1, len(runs[0][1]["pipeline"]["recall_curve"]) + 1))
    for number, (label, outcome) in enumerate(runs):
        axes.plot(cutoffs, outcome["pipeline"]["recall_curve"], marker="o", color=f"C{number}", label=_literal(label))
        if "baseline" in outcome:
            axes.plot(cutoffs, outcome["baseline"]["recall_curve"], linestyle="--", color=f"C{number}",
                      label=_literal(f"{label} baseline"))
    axes.set(xlabel="K", ylabel="recall@K", xticks=cutoffs, ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _category_plot(runs: Runs) -> Figure | None:
    """Grouped bars per true category: a bar per version, solid to recall@1, pale to recall@10."""
    categories = sorted({name for _, outcome in runs for name in outcome["pipeline"]["per_category"]})
    if not categories:
        return None
    width = 0.8 / len(runs)
    figure = Figure(figsize=(max(6.4, 0.25 * len(categories) * (len(runs) + 1)), 4.4), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(categories))
    for number, (label, outcome) in enumerate(runs):
        per_category = outcome["pipeline"]["per_category"]
        found = [per_category.get(name, {}) for name in categories]
        shift = positions + (number - (len(runs) - 1) / 2) * width
        axes.bar(shift, [entry.get("recall@10") or 0 for entry in found], width, color=f"C{number}", alpha=0.35)
        axes.bar(shift, [entry.get("recall@1") or 0 for entry in found], width, color=f"C{number}",
                 label=_literal(label))
    axes.set_xticks(positions, [_literal(name) for name in categories], rotation=30, ha="right")
    axes.set(ylabel="recall@1 (solid), recall@10 (pale)", ylim=(0, 1.02))
    axes.legend(fontsize="small")
    return figure


def _latency_plot(runs: Runs) -> Figure:
    """A bar per version stacking its stages' milliseconds, the total on top."""
    stages = list(dict.fromkeys(stage for _, outcome in runs for stage in outcome["pipeline"]["ms_per_query"]))
    figure = Figure(figsize=(max(5.0, 1.4 * len(runs) + 3), 4), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(runs))
    totals = np.zeros(len(runs))
    palette = colormaps["Set2"]
    for number, stage in enumerate(stages):
        ms = np.array([outcome["pipeline"]["ms_per_query"].get(stage, 0.0) for _, outcome in runs])
        axes.bar(positions, ms, 0.6, bottom=totals, color=palette(number % palette.N), label=_literal(stage))
        totals += ms
    for position, total in zip(positions, totals):
        axes.text(position, total, f"{total:.1f}", ha="center", va="bottom", fontsize="small")
    axes.set_xticks(positions, [_literal(label) for label, _ in runs], rotation=15, ha="right")
    axes.set(ylabel="ms per query")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    return figure


def _confusion_plot(label: str, outcome: dict[str, Any]) -> Figure | None:
    """Rows true, columns predicted; the counts written in, the colour their share of the row."""
    classes = outcome["pipeline"]["confusion"]["classes"]
    if not classes:
        return None
    counts = np.array(outcome["pipeline"]["confusion"]["counts"], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.45 * len(classes) + 2.5)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    axes = figure.subplots()
    shown = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    names = [_literal(name) for name in classes]
    axes.set_xticks(range(len(classes)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), names)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            axes.text(column, row, f"{count:.0f}", ha="center", va="center", fontsize="small",
                      color="white" if shares[row, column] > 0.5 else "black")
    axes.set(xlabel="predicted", ylabel="true", title=_literal(label))
    figure.colorbar(shown, ax=axes, shrink=0.8, label="share of the true category")
    return figure


def _literal(text: str) -> str:
    """Text shown as written: matplotlib reads $...$ as mathematics."""
    return str(text).replace("$", r"\$")


# --- the gallery -------------------------------------------------------------------------------


def _gallery(folder: Path, runs: Runs) -> str:
    details = [outcome.get("queries_detail", []) for _, outcome in runs]
    numbers = _gallery_queries(details)
    if not numbers:
        return "<p>No per-query records in these runs (evaluate with details=True).</p>"
    thumbnail = _Thumbnails(folder / "thumbs")
    legend = ("<p>Box found <span class=\"legend-found\">orange</span>, true box "
              "<span class=\"legend-true\">blue</span>; the true item's card has a green border.</p>")
    blocks = []
    for number in numbers:
        truth = details[0][number]
        category = f" ({html.escape(str(truth['category']))})" if truth.get("category") is not None else ""
        rows = "".join(_gallery_row(label, records[number], thumbnail) for (label, _), records in zip(runs, details))
        blocks.append(f"<div class=\"query\"><p>Query <code>{html.escape(Path(truth['image']).name)}</code>, "
                      f"true item <code>{html.escape(truth['item_id'])}</code>{category}</p>{rows}</div>")
    return legend + "".join(blocks)


def _gallery_queries(details: list[list[dict[str, Any]]]) -> list[int]:
    """GALLERY query numbers, the same for every version, drawn with a fixed seed; missed (by some version) and
    found queries alternate while both last."""
    count = min(len(records) for records in details)
    missed_by_some = [any(_missed(records[n]) for records in details) for n in range(count)]
    missed = [n for n in range(count) if missed_by_some[n]]
    found = [n for n in range(count) if not missed_by_some[n]]
    draw = random.Random(GALLERY_SEED)
    draw.shuffle(missed)
    draw.shuffle(found)
    alternating = [n for pair in zip_longest(missed, found) for n in pair if n is not None]
    return sorted(alternating[:GALLERY])


def _missed(record: dict[str, Any]) -> bool:
    return record["rank"] is None or record["rank"] > SHOWN


def _gallery_row(label: str, record: dict[str, Any], thumbnail: _Thumbnails) -> str:
    """One version's answer to one query: the photo with its boxes, the top results, hit or miss."""
    boxes = tuple((tuple(box), colour) for box, colour in ((record["box"], TRUE_BOX), (record["box_found"], FOUND_BOX))
                  if box)
    predicted = html.escape(str(record["predicted_category"] or "-"))
    cards = [f"<figure class=\"card query-photo\"><img src=\"{thumbnail(record['image'], boxes)}\" alt=\"query\">"
             f"<figcaption>predicted {predicted}</figcaption></figure>"]
    for rank, hit in enumerate(record["results"][:SHOWN], start=1):
        marked = " hit" if record["item_id"] in (hit["item_id"], *hit["also"]) else ""
        cards.append(f"<figure class=\"card{marked}\"><img src=\"{thumbnail(hit['image'])}\" alt=\"result {rank}\">"
                     f"<figcaption>{rank}. <code>{html.escape(hit['item_id'])}</code> {hit['score']:.3f}</figcaption>"
                     "</figure>")
    if record["error"]:
        verdict = f"miss: {html.escape(record['error'])}"
    elif _missed(record):
        verdict = f"miss: the true item is not in the top {SHOWN}"
    else:
        verdict = f"hit at rank {record['rank']}"
    return (f"<div class=\"row {'miss' if _missed(record) else 'hit'}\"><span class=\"version\">{html.escape(label)}"
            f"</span>{''.join(cards)}<span class=\"verdict\">{verdict}</span></div>")


class _Thumbnails:
    """Small JPEGs of images with boxes drawn, each written once into `folder` (grey when unreadable)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: set[str] = set()
        folder.mkdir(exist_ok=True)

    def __call__(self, source: str, boxes: Boxes = ()) -> str:
        """The thumbnail's path in the page."""
        name = hashlib.sha1(repr((source, boxes)).encode()).hexdigest()[:16] + ".jpg"
        if name not in self.written:
            _draw_thumbnail(source, boxes).save(self.folder / name, "JPEG", quality=85)
            self.written.add(name)
        return f"{self.folder.name}/{name}"


def _draw_thumbnail(source: str, boxes: Boxes) -> Image.Image:
    """The image scaled to THUMB on its longest side with the boxes outlined; a grey square when unreadable."""
    try:
        image = load_image(source)
    except ImageError:
        return Image.new("RGB", (THUMB, THUMB), PLACEHOLDER)
    scale = THUMB / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    for box, colour in boxes:
        x0, x1 = sorted((box[0] * scale, box[2] * scale))
        y0, y1 = sorted((box[1] * scale, box[3] * scale))
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
    return image
