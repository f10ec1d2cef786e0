"""`snapshop eval --report`: the outcome's per-query records and the HTML page comparing model versions."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image
from typer.testing import CliRunner

from snapshop.cli import app
from snapshop.search.evaluate import evaluate, write_report
from snapshop.search.report import PLACEHOLDER, write_html_report

FOUND = ("circle-0", "square-0", "triangle-2")  # shopper photos the session index ranks first (test_engine.py)
UNKNOWN = "<b>gone</b>"  # a true item the catalog lacks: always a miss, and markup to escape
BOX = [150, 70, 340, 260]  # where shopper_photo pastes the product


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, catalog, draw_shopper_photo):
    """Shopper photos of three catalog items and one of an item the catalog lacks."""
    root = tmp_path_factory.mktemp("eval-report")
    rows = []
    for item_id in (*FOUND, UNKNOWN):
        source = "square-1" if item_id == UNKNOWN else item_id
        with Image.open(catalog.image(source)) as product:
            draw_shopper_photo(product.convert("RGB")).save(root / f"{source}.jpg", quality=90)
        rows.append({"image": f"{source}.jpg", "item_id": item_id, "category": catalog.categories[source], "box": BOX})
    (root / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "queries.jsonl"


@pytest.fixture(scope="module")
def outcome(engine, dataset):
    return evaluate(engine, dataset, details=True)


class Page(HTMLParser):
    """The elements of a page as (tag, attributes, text before the next tag opens or closes)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str]] = []
        self.reading = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), ""))
        self.reading = True

    def handle_endtag(self, tag):
        self.reading = False

    def handle_data(self, data):
        if self.reading:
            tag, attrs, text = self.elements[-1]
            self.elements[-1] = (tag, attrs, text + data)

    def sources(self) -> list[str]:
        return [attrs["src"] for tag, attrs, _ in self.elements if tag == "img"]

    def gallery_rows(self) -> list[dict]:
        """Each gallery row: version, hit/miss class, its result cards (marked or not, item id, image), verdict."""
        rows = []
        for tag, attrs, text in self.elements:
            classes = attrs.get("class", "").split()
            if tag == "div" and "row" in classes:
                rows.append({"outcome": classes[1], "cards": [], "verdict": ""})
            elif rows and tag == "span" and "version" in classes:
                rows[-1]["version"] = text
            elif rows and tag == "figure" and "card" in classes and "query-photo" not in classes:
                rows[-1]["cards"].append({"hit": "hit" in classes})
            elif rows and tag == "img" and rows[-1]["cards"]:
                rows[-1]["cards"][-1]["src"] = attrs["src"]
            elif rows and tag == "code" and rows[-1]["cards"]:
                rows[-1]["cards"][-1]["item_id"] = text
            elif rows and tag == "span" and "verdict" in classes:
                rows[-1]["verdict"] = text
        return rows


def read_page(path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


# --- the outcome -------------------------------------------------------------------------------


def test_outcome_carries_the_recall_curve_per_category_recall_and_confusion(outcome, catalog):
    pipeline = outcome["pipeline"]
    curve = pipeline["recall_curve"]
    assert len(curve) == 10 and curve == sorted(curve)
    assert (curve[0], curve[4], curve[9]) == (pipeline["recall@1"], pipeline["recall@5"], pipeline["recall@10"])
    assert pipeline["recall@1"] == 0.75  # the unknown item is never found
    assert len(outcome["baseline"]["recall_curve"]) == 10

    assert pipeline["per_category"]["circles"] == {"queries": 1, "recall@1": 1.0, "recall@10": 1.0}
    assert pipeline["per_category"]["squares"]["queries"] == 2
    assert pipeline["per_category"]["squares"]["recall@10"] == 0.5

    confusion = pipeline["confusion"]
    assert confusion["classes"] == ["circles", "squares", "triangles"]
    assert sum(map(sum, confusion["counts"])) == 4
    correct = sum(confusion["counts"][n][n] for n in range(3))
    assert correct / 4 == pipeline["category_accuracy"]


def test_outcome_records_each_query_with_its_rank_and_results(outcome, catalog):
    records = outcome["queries_detail"]
    assert [record["item_id"] for record in records] == [*FOUND, UNKNOWN]
    assert [record["rank"] for record in records] == [1, 1, 1, None]
    first = records[0]
    assert first["category"] == "circles" and first["predicted_category"] == "circles"
    assert first["box"] == BOX and len(first["box_found"]) == 4
    assert first["results"][0]["item_id"] == "circle-0"
    assert first["results"][0]["image"] in {str(path) for path in catalog.images["circle-0"]}
    assert 1 < len(first["results"]) <= 10 and first["error"] is None


def test_records_are_opt_in_and_stay_out_of_report_json(engine, dataset, outcome, tmp_path):
    assert "queries_detail" not in evaluate(engine, dataset, baseline=False)
    write_report([("v1", outcome)], tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())["v1"]
    assert "queries_detail" not in saved and saved["pipeline"]["recall_curve"] == outcome["pipeline"]["recall_curve"]


# --- the HTML report ---------------------------------------------------------------------------


def test_report_names_every_version_and_every_image_it_shows_exists(outcome, tmp_path):
    runs = [("efficientnet-lite0 1", outcome), ("candidate <v2>", outcome)]
    index = write_html_report(tmp_path / "report", runs)
    text, page = read_page(index)

    assert index == tmp_path / "report" / "index.html"
    assert "candidate &lt;v2&gt;" in text and "<v2>" not in text
    table = [text for tag, attrs, text in page.elements if tag == "td"]
    assert {"efficientnet-lite0 1", "candidate <v2>", "efficientnet-lite0 1 baseline"} <= set(table)

    sources = page.sources()
    plots = [source for source in sources if source.endswith(".png")]
    assert {"recall.png", "per_category.png", "latency.png", "confusion-0.png", "confusion-1.png"} == set(plots)
    for source in sources:
        path = index.parent / source
        with Image.open(path) as image:
            image.verify()
        if source in plots:
            assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"https?://", text)  # nothing fetched from elsewhere


def test_gallery_marks_the_true_item_as_a_hit_and_an_unfound_item_as_a_miss(outcome, tmp_path):
    rows = Page(write_html_report(tmp_path, [("v1", outcome), ("v2", outcome)]).read_text()).gallery_rows()

    assert len(rows) == 2 * 4 and [row["version"] for row in rows[:2]] == ["v1", "v2"]
    found, missed = rows[0], rows[-1]  # circle-0 (rank 1), then the unknown item
    assert found["outcome"] == "hit" and "hit at rank 1" in found["verdict"]
    assert found["cards"][0]["hit"] and found["cards"][0]["item_id"] == "circle-0"
    assert not any(card["hit"] for card in found["cards"][1:])
    assert len(found["cards"]) == min(5, len(outcome["queries_detail"][0]["results"]))
    assert missed["outcome"] == "miss" and missed["verdict"].startswith("miss")
    assert not any(card["hit"] for card in missed["cards"])


def test_item_ids_are_escaped(outcome, tmp_path):
    text = write_html_report(tmp_path, [("v1", outcome)]).read_text()
    assert "&lt;b&gt;gone&lt;/b&gt;" in text and "<b>" not in text


def test_an_unreadable_result_image_becomes_a_grey_placeholder(outcome, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    damaged = copy.deepcopy(outcome)
    for record in damaged["queries_detail"]:
        for hit in record["results"]:
            hit["image"] = str(broken)
    folder = tmp_path / "report"
    rows = Page(write_html_report(folder, [("v1", damaged)]).read_text()).gallery_rows()

    cards = [card for row in rows for card in row["cards"]]
    assert len(cards) == sum(min(5, len(record["results"])) for record in damaged["queries_detail"])
    for card in cards:
        with Image.open(folder / card["src"]) as thumbnail:
            assert thumbnail.convert("RGB").getpixel((5, 5)) == pytest.approx(PLACEHOLDER, abs=3)


def test_runs_on_different_query_sets_are_refused(outcome, tmp_path):
    other = {**outcome, "queries": 3}
    with pytest.raises(ValueError, match="same query set"):
        write_html_report(tmp_path, [("v1", outcome), ("v2", other)])


def test_eval_report_writes_the_html_page(shared_index, dataset, tmp_path):
    result = CliRunner().invoke(app, ["eval", str(dataset), "--index", str(shared_index), "--no-baseline",
                                      "--report", str(tmp_path / "report")])

    assert result.exit_code == 0, result.output
    index = tmp_path / "report" / "index.html"
    assert f"HTML report: {index}" in result.stdout
    assert {"report.json", "report.md", "index.html"} <= {path.name for path in index.parent.iterdir()}
    assert "efficientnet-lite0" in index.read_text()
