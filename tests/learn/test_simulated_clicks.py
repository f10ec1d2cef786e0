"""Simulated shoppers: a reproducible, position-biased, noisy click log in DESIGN.md's format."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from snapshop.cli import app
from snapshop.learn.clicklog import read_click_log
from snapshop.learn.simulate import ResultPage, ShopperModel, write_shoppers

EVERYTHING_SEEN = dict(eta=0.0, leave=0.0, click_true=1.0)  # every shopper looks at every result


def page(number: int, true_rank: int, *, size: int = 20) -> ResultPage:
    """A result page of `size` items with the true product at `true_rank`."""
    items = [f"wrong-{number}-{rank}" for rank in range(size)]
    items[true_rank] = f"true-{number}"
    return ResultPage(Path(f"photos/{number}.jpg"), f"true-{number}", [0, 0, 50, 50], [(item, []) for item in items])


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def clicked_true(record: dict) -> bool:
    return all(item.startswith("true-") for item in record["clicked"])


def test_a_fixed_seed_writes_the_same_log(tmp_path):
    pages = [page(n, n % 7) for n in range(50)]
    write_shoppers(pages, tmp_path / "first.jsonl", seed=3)
    write_shoppers(pages, tmp_path / "second.jsonl", seed=3)
    write_shoppers(pages, tmp_path / "other.jsonl", seed=4)

    assert (tmp_path / "first.jsonl").read_bytes() == (tmp_path / "second.jsonl").read_bytes()
    assert (tmp_path / "first.jsonl").read_bytes() != (tmp_path / "other.jsonl").read_bytes()


def test_every_line_is_a_valid_simulated_impression(tmp_path):
    pages = [page(n, n % 5) for n in range(40)]
    report = write_shoppers(pages, tmp_path / "logs" / "clicks.jsonl", seed=0)
    log = read_click_log(tmp_path / "logs" / "clicks.jsonl")

    assert log.bad_lines == [] and log.simulated
    assert all(record["simulated"] is True for record in records(log.path))
    assert [impression.query_image.resolve() for impression in log.impressions] == [p.query_image.resolve() for p in pages]
    assert [impression.box for impression in log.impressions] == [p.box for p in pages]
    assert report.impressions == 40 and report.with_click == sum(bool(i.clicked) for i in log.impressions)


def test_without_noise_no_click_is_wrong(tmp_path):
    pages = [page(n, n % 10) for n in range(200)]
    report = write_shoppers(pages, tmp_path / "clicks.jsonl", model=ShopperModel(noise=0.0), seed=1)
    lines = records(tmp_path / "clicks.jsonl")

    assert report.clicks > 0 and report.wrong_clicks == 0
    assert all(clicked_true(record) for record in lines)


def test_with_full_noise_every_shopper_who_saw_a_wrong_item_clicks_the_best_ranked_one(tmp_path):
    pages = [page(n, n % 3, size=6) for n in range(30)] + [page(30 + n, 0, size=1) for n in range(10)]
    write_shoppers(pages, tmp_path / "clicks.jsonl", model=ShopperModel(noise=1.0, **EVERYTHING_SEEN), seed=2)
    lines = records(tmp_path / "clicks.jsonl")

    for shown_page, record in zip(pages, lines):
        best_wrong = next((item for item, _ in shown_page.hits if item != shown_page.true_item), None)
        assert record["clicked"] == [best_wrong or shown_page.true_item]
        assert best_wrong is None or record["purchased"] == []  # nobody buys the wrong item


def test_a_card_folding_in_the_true_item_counts_as_a_right_click(tmp_path):
    folded = ResultPage(Path("photo.jpg"), "truth", None, [("twin", ["truth"]), ("other", [])])
    report = write_shoppers([folded] * 20, tmp_path / "clicks.jsonl", model=ShopperModel(noise=0.0, **EVERYTHING_SEEN))

    assert report.clicks == 20 and report.wrong_clicks == 0
    assert all(record["clicked"] == ["twin"] for record in records(tmp_path / "clicks.jsonl"))


def test_shoppers_click_the_top_result_far_more_often_than_the_sixteenth(tmp_path):
    top, low = [page(n, 0) for n in range(400)], [page(n, 15) for n in range(400)]
    model = ShopperModel(noise=0.0, leave=0.0)
    top_report = write_shoppers(top, tmp_path / "top.jsonl", model=model, seed=5)
    low_report = write_shoppers(low, tmp_path / "low.jsonl", model=model, seed=5)

    assert top_report.with_click > 0.8 * 400
    assert low_report.with_click < top_report.with_click / 2.5


def test_some_shoppers_leave_without_a_click(tmp_path):
    pages = [page(n, 0) for n in range(200)]
    report = write_shoppers(pages, tmp_path / "clicks.jsonl", seed=6)
    assert 0 < report.with_click < report.impressions
    assert write_shoppers(pages, tmp_path / "gone.jsonl", model=ShopperModel(leave=1.0)).with_click == 0


def test_the_reported_wrong_click_share_is_the_logs(tmp_path):
    pages = [page(n, n % 4) for n in range(300)]
    summary = write_shoppers(pages, tmp_path / "clicks.jsonl", model=ShopperModel(noise=0.3), seed=7).to_json()
    lines = records(tmp_path / "clicks.jsonl")
    clicks = [item for record in lines for item in record["clicked"]]
    wrong = [item for item in clicks if not item.startswith("true-")]

    assert summary["simulated"] is True
    assert summary["clicks"] == len(clicks) and summary["wrong_clicks"] == len(wrong) > 0
    assert summary["wrong_click_share"] == round(len(wrong) / len(clicks), 4)
    assert summary["with_click"] == sum(bool(record["clicked"]) for record in lines)


def test_wrong_clicks_have_short_visits(tmp_path):
    pages = [page(n, n % 4) for n in range(300)]
    write_shoppers(pages, tmp_path / "clicks.jsonl", model=ShopperModel(noise=0.3), seed=8)
    dwell = [(clicked_true(record), record["dwell_ms"][record["clicked"][0]])
             for record in records(tmp_path / "clicks.jsonl") if record["clicked"]]
    right = sorted(ms for true, ms in dwell if true)
    wrong = sorted(ms for true, ms in dwell if not true)

    assert right[len(right) // 2] > 3 * wrong[len(wrong) // 2]


def test_simulate_clicks_command_writes_a_simulated_log(fresh_index, catalog, draw_shopper_photo, tmp_path):
    shots = tmp_path / "shots"
    shots.mkdir()
    lines = []
    for item_id in catalog.item_ids[::2] + catalog.item_ids[1:4]:
        photo = shots / f"{item_id}.png"
        draw_shopper_photo(Image.open(catalog.image(item_id))).save(photo)
        lines.append(json.dumps({"image": f"shots/{photo.name}", "item_id": item_id}) + "\n")
    (tmp_path / "queries.jsonl").write_text("".join(lines))
    out = tmp_path / "logs" / "clicks.jsonl"

    result = CliRunner().invoke(app, ["simulate-clicks", str(tmp_path / "queries.jsonl"), "--index", str(fresh_index),
                                      "--out", str(out), "--shown", "5"])

    assert result.exit_code == 0, result.output
    assert "simulated" in result.stdout
    log = read_click_log(out)
    assert log.bad_lines == [] and log.simulated and len(log.impressions) == len(lines) == 9
    assert all(impression.query_image.is_file() for impression in log.impressions)
    assert all(1 <= len(impression.shown) <= 5 and set(impression.shown) <= set(catalog.item_ids)
               for impression in log.impressions)
