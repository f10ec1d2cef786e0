"""The click log parser (DESIGN.md's "Click log"): bad lines reported by number, good ones kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapshop.errors import DatasetError
from snapshop.learn.clicklog import Impression, read_click_log


def good(**fields: object) -> dict:
    """A valid impression, with `fields` replacing its own."""
    return {"ts": "2026-11-24T10:00:00Z", "query_image": "q/1.jpg", "box": [1, 2, 30, 40],
            "shown": ["a", "b", "c"], "clicked": ["b"], **fields}


def write_log(path: Path, lines: list[object]) -> Path:
    """One line per entry: dicts as JSON, strings as they are."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def test_bad_lines_are_reported_by_number_and_good_lines_kept(tmp_path):
    lines = [
        good(),                                          # 1
        "{not json",                                     # 2
        "[1, 2]",                                        # 3
        "",                                              # 4 blank: ignored
        good(query_image=None),                          # 5
        good(shown=[], clicked=[]),                      # 6
        good(clicked=["z"]),                             # 7
        good(box=[30, 2, 1, 40]),                        # 8
        good(box=[1, 2, 3]),                             # 9
        good(dwell_ms=["b", 5]),                         # 10
        good(shown=["a", 7], clicked=[]),                # 11
        good(clicked="b"),                               # 12
        "   ",                                           # 13 blank: ignored
        good(query_image="q/2.jpg", clicked=[]),         # 14
    ]
    log = read_click_log(write_log(tmp_path / "clicks.jsonl", lines))

    assert [impression.line for impression in log.impressions] == [1, 14]
    reasons = {bad.line: bad.reason for bad in log.bad_lines}
    assert sorted(reasons) == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12]
    expected_words = {2: "not JSON", 3: "JSON object", 5: "query_image", 6: "shown", 7: "not shown",
                      8: "box", 9: "box", 10: "dwell_ms", 11: "shown", 12: "clicked"}
    for line, word in expected_words.items():
        assert word in reasons[line], (line, reasons[line])
    assert "z" in reasons[7]


def test_an_infinite_box_is_a_bad_line_not_a_crash(tmp_path):
    log = read_click_log(write_log(tmp_path / "clicks.jsonl", [good(), '{"query_image": "q.jpg", "box": [0, 0, '
                                                                  '1e400, 10], "shown": ["a"], "clicked": []}']))
    assert [impression.line for impression in log.impressions] == [1]
    assert [bad.line for bad in log.bad_lines] == [2] and "box" in log.bad_lines[0].reason


def test_a_good_line_keeps_every_field(tmp_path):
    line = good(box=[1.7, 2, 30, 40.2], shown=["a", "b", "a", "c"], dwell_ms={"b": 12000}, purchased=["b"])
    impression, = read_click_log(write_log(tmp_path / "clicks.jsonl", [line])).impressions

    assert impression.box == [1, 2, 30, 40]
    assert impression.shown == ["a", "b", "c"]  # repeats dropped, order kept
    assert impression.clicked == ["b"]
    assert impression.dwell_ms == {"b": 12000.0}
    assert impression.purchased == ["b"]
    assert impression.simulated is False


def test_query_image_is_resolved_against_the_logs_folder(tmp_path):
    absolute = tmp_path / "elsewhere" / "photo.jpg"
    (tmp_path / "logs").mkdir()
    log_path = write_log(tmp_path / "logs" / "clicks.jsonl", [good(query_image="q/1.jpg"), good(query_image=str(absolute))])
    relative, kept = read_click_log(log_path).impressions

    assert relative.query_image == tmp_path / "logs" / "q" / "1.jpg"
    assert kept.query_image == absolute


def test_known_items_drops_unknown_ids_and_reports_a_click_on_one(tmp_path):
    lines = [good(shown=["a", "ghost", "b"], clicked=["b"]),
             good(shown=["a", "ghost"], clicked=["ghost"]),
             good(shown=["ghost", "spook"], clicked=[])]
    asked: list[set[str]] = []

    def known_items(ids) -> set[str]:
        ids = set(ids)
        asked.append(ids)
        return ids & {"a", "b"}

    log = read_click_log(write_log(tmp_path / "clicks.jsonl", lines), known_items)

    assert asked == [{"a", "b", "ghost", "spook"}]
    impression, = log.impressions
    assert (impression.line, impression.shown, impression.clicked) == (1, ["a", "b"], ["b"])
    reasons = {bad.line: bad.reason for bad in log.bad_lines}
    assert sorted(reasons) == [2, 3]
    assert "ghost" in reasons[2] and "index" in reasons[2]
    assert "index" in reasons[3]


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00bad"])
def test_an_unreadable_log_is_a_dataset_error(tmp_path, content):
    path = tmp_path / "clicks.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match="click log"):
        read_click_log(path)


def test_simulated_means_every_line_says_so(tmp_path):
    simulated = [good(simulated=True), good(simulated=True)]
    assert read_click_log(write_log(tmp_path / "all.jsonl", simulated)).simulated
    assert not read_click_log(write_log(tmp_path / "some.jsonl", [good(simulated=True), good()])).simulated
    assert not read_click_log(write_log(tmp_path / "truthy.jsonl", [good(simulated="yes")])).simulated
    assert not read_click_log(write_log(tmp_path / "empty.jsonl", [])).simulated


def impression(shown: list[str], clicked: list[str]) -> Impression:
    return Impression(1, Path("q.jpg"), None, shown, clicked)


@pytest.mark.parametrize(("shown", "clicked", "skipped"), [
    (["a", "b", "c", "d"], ["c"], ["a", "b"]),
    (["a", "b", "c", "d"], ["a"], []),
    (["a", "b", "c", "d", "e"], ["b", "d"], ["a", "c"]),
    (["a", "b", "c"], [], []),
])
def test_skipped_items_are_those_shown_above_the_lowest_click(shown, clicked, skipped):
    assert impression(shown, clicked).skipped == skipped
